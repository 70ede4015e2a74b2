/**
 * Test harness: run a real CNCF Distribution 2.8 registry (Debian's `docker-registry`) on loopback.
 *
 * `startRegistry()` writes a throw-away config.yml into a fresh temp dir, starts
 * `docker-registry serve <config>` bound to 127.0.0.1 on a free port, waits until `GET /v2/`
 * answers, and returns a handle with the URL, the storage dir and the parsed access log.
 *
 * Why these choices:
 * - `http.addr` is ALWAYS given explicitly: Debian's default config binds ":5000" on all interfaces
 *   and this sandbox must only use loopback (testbed.md §2.1).
 * - The free port is found by binding port 0 and releasing it; docker-registry cannot report the port it
 *   bound itself. There is a small race, so start-up is retried on a new port if the process dies early.
 * - The access log (gorilla CombinedLoggingHandler, stderr) is the only record of which requests the
 *   upstream served, so tests use `requests()` to count e.g. upstream blob GETs made by the proxy.
 * - No silent skip: if `docker-registry` is missing the promise rejects with an actionable message.
 * - Every child is also killed from a process 'exit' hook so a crashed test run leaves no registry behind.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { get as httpGet } from 'node:http';
import { get as httpsGet } from 'node:https';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { connect as tlsConnect } from 'node:tls';
import { join } from 'node:path';

/** Auth modes that Distribution 2.8 supports and that tests need. */
export type RegistryAuth =
  | {
      kind: 'token';
      /** Token endpoint URL put into the `Www-Authenticate: Bearer realm=...` challenge. */
      realm: string;
      /** Must equal the `aud` claim of issued tokens. */
      service: string;
      /** Must equal the `iss` claim of issued tokens. */
      issuer: string;
      /** PEM file with the certificate(s) that the token's x5c chain must end in. */
      rootCertBundlePath: string;
    }
  | {
      kind: 'htpasswd';
      /** bcrypt-only htpasswd file (2.8 rejects $apr1$ MD5 entries; a missing file gets a random user). */
      path: string;
    };

export interface StartRegistryOptions {
  auth?: RegistryAuth;
  /** Serve HTTPS with this certificate and key (PEM files); `url` is then https://. */
  tls?: { cert: string; key: string };
  /**
   * Serve another instance's storage (its `dataDir`): e.g. push to a plain-http registry and read the same content
   * from a TLS one, since the test harness pushes with fetch, which would not trust a test CA.
   */
  storageFrom?: string;
  /** Extra environment for the child, e.g. REGISTRY_* overrides. */
  env?: Record<string, string>;
}

/** One parsed access-log line. */
export interface RegistryRequest {
  method: string;
  /** Request target as logged, including any query string. */
  path: string;
  status: number;
  userAgent: string;
}

export interface RunningRegistry {
  /** `http://127.0.0.1:PORT` */
  url: string;
  /** `127.0.0.1:PORT` (what image references and hosts.toml need). */
  host: string;
  /** Filesystem storage root (inspect or corrupt blobs from tests). */
  dataDir: string;
  /** Raw access-log lines seen so far (since the last clearLog()). */
  accessLog(): string[];
  /** Access-log lines parsed into method/path/status/user agent. */
  requests(): RegistryRequest[];
  /**
   * Resolve with the matching requests once at least `count` match (default 1). Needed because the
   * registry writes the access-log line after the response, so it may trail the client slightly.
   * Rejects after `timeoutMs` (default 2000) with the log so far.
   */
  waitForRequests(match: (r: RegistryRequest) => boolean, count?: number, timeoutMs?: number): Promise<RegistryRequest[]>;
  /**
   * Resolve once the log lines of every request answered so far are in: a probe request with a unique marker is
   * sent, and once its own line arrives, every earlier request's line has too. "No more requests came" then needs
   * no sleep.
   */
  settleLog(): Promise<void>;
  /** Forget the access log collected so far (e.g. after seeding images). */
  clearLog(): void;
  /** The last lines of all registry output, for diagnostics in failing tests. */
  output(): string;
  stop(): Promise<void>;
}

const READY_TIMEOUT_MS = 10_000;
const START_ATTEMPTS = 3;
const OUTPUT_KEEP_LINES = 400;

/**
 * Apache combined log format as written by gorilla/handlers, e.g.
 * `127.0.0.1 - - [02/Jan/2026:10:00:00 +0000] "GET /v2/a/blobs/sha256:.. HTTP/1.1" 200 479 "" "curl/8.0"`.
 */
const ACCESS_LINE = /^\S+ \S+ \S+ \[[^\]]*\] "([A-Z]+) (\S+) HTTP\/[\d.]+" (\d{3}) \S+ "(?:[^"\\]|\\.)*" "((?:[^"\\]|\\.)*)"/;

/** Parse one access-log line; undefined for the registry's other (logrus) output. */
export function parseAccessLine(line: string): RegistryRequest | undefined {
  const m = ACCESS_LINE.exec(line);
  if (!m) return undefined;
  return { method: m[1]!, path: m[2]!, status: Number(m[3]), userAgent: m[4]!.replace(/\\(.)/g, '$1') };
}

const live = new Set<ChildProcess>();
let exitHookInstalled = false;

/** Safety net: a test that throws before stop() must not leak a registry process. */
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const child of live) child.kill('SIGKILL');
  });
}

/** Fail loudly (not skip) when the binary is absent, naming the installer. */
function assertBinary(): void {
  const r = spawnSync('docker-registry', ['--version'], { encoding: 'utf8' });
  if (r.error || r.status !== 0) {
    throw new Error(
      'docker-registry (CNCF Distribution 2.8) is not on PATH; install it with scripts/install-tools.sh ' +
        `(Debian package "docker-registry"). Cause: ${r.error?.message ?? r.stderr}`,
    );
  }
}

/** Ask the kernel for a free loopback port (bind :0, read it, release it). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => (port ? resolve(port) : reject(new Error('could not determine a free port'))));
    });
  });
}

/** YAML is emitted by hand: every value is JSON-quoted, which is valid YAML and avoids a dependency. */
function configYaml(port: number, dataDir: string, auth: RegistryAuth | undefined, tls?: { cert: string; key: string }): string {
  const q = (s: string): string => JSON.stringify(s);
  const lines = [
    'version: 0.1',
    'log:',
    '  level: info',
    '  formatter: text',
    'storage:',
    '  filesystem:',
    `    rootdirectory: ${q(dataDir)}`,
    '  delete:',
    '    enabled: true',
    '  cache:',
    '    blobdescriptor: inmemory',
    'http:',
    `  addr: ${q(`127.0.0.1:${port}`)}`,
    // A fixed secret per instance silences the "generating a random secret" warning.
    `  secret: ${q(randomBytes(16).toString('hex'))}`,
    '  headers:',
    '    X-Content-Type-Options: [nosniff]',
  ];
  if (tls) lines.push('  tls:', `    certificate: ${q(tls.cert)}`, `    key: ${q(tls.key)}`);
  if (auth?.kind === 'token') {
    lines.push(
      'auth:',
      '  token:',
      `    realm: ${q(auth.realm)}`,
      `    service: ${q(auth.service)}`,
      `    issuer: ${q(auth.issuer)}`,
      `    rootcertbundle: ${q(auth.rootCertBundlePath)}`,
    );
  } else if (auth?.kind === 'htpasswd') {
    lines.push('auth:', '  htpasswd:', '    realm: "portcullis-test"', `    path: ${q(auth.path)}`);
  }
  return lines.join('\n') + '\n';
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function tlsHandshake(port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const s = tlsConnect({ host: '127.0.0.1', port, rejectUnauthorized: false }, () => {
      s.destroy();
      resolve();
    });
    s.setTimeout(1000, () => s.destroy(new Error('TLS handshake timed out')));
    s.once('error', reject);
  });
}

export async function startRegistry(opts: StartRegistryOptions = {}): Promise<RunningRegistry> {
  assertBinary();
  installExitHook();
  let lastError: Error | undefined;
  for (let attempt = 0; attempt < START_ATTEMPTS; attempt++) {
    try {
      return await startOnce(opts);
    } catch (e) {
      lastError = e as Error;
      // Only a lost port race is worth retrying; anything else (bad config) fails the same way again.
      if (!/address already in use/.test(lastError.message)) throw lastError;
    }
  }
  throw lastError ?? new Error('docker-registry did not start');
}

async function startOnce(opts: StartRegistryOptions): Promise<RunningRegistry> {
  const dir = await mkdtemp(join(tmpdir(), 'portcullis-registry-'));
  const dataDir = opts.storageFrom ?? join(dir, 'data');
  const configPath = join(dir, 'config.yml');
  const port = await freePort();
  await writeFile(configPath, configYaml(port, dataDir, opts.auth, opts.tls));

  const child = spawn('docker-registry', ['serve', configPath], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...opts.env },
  });
  live.add(child);

  let accessLines: string[] = [];
  const outputTail: string[] = [];
  // Output arrives in arbitrary chunks; keep the partial last line per stream until its newline comes.
  const attach = (stream: NodeJS.ReadableStream): void => {
    let partial = '';
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => {
      const parts = (partial + chunk).split('\n');
      partial = parts.pop() ?? '';
      for (const line of parts) {
        if (parseAccessLine(line)) accessLines.push(line);
        outputTail.push(line);
        if (outputTail.length > OUTPUT_KEEP_LINES) outputTail.shift();
      }
    });
  };
  attach(child.stdout);
  attach(child.stderr);

  let exited: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  const exitPromise = new Promise<void>((resolve) => {
    child.once('exit', (code, signal) => {
      exited = { code, signal };
      live.delete(child);
      resolve();
    });
  });

  const url = `${opts.tls ? 'https' : 'http'}://127.0.0.1:${port}`;
  const stop = async (): Promise<void> => {
    if (!exited) {
      child.kill('SIGTERM');
      // Distribution shuts down promptly on SIGTERM; escalate if it does not.
      const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
      await exitPromise;
      clearTimeout(timer);
    }
    await rm(dir, { recursive: true, force: true });
  };

  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    if (exited) {
      await stop();
      throw new Error(`docker-registry exited during start-up (code ${exited.code}, signal ${exited.signal}):\n` + outputTail.slice(-30).join('\n'));
    }
    try {
      // Any HTTP answer (200, or 401 with auth) means the listener is up; with TLS, a completed handshake does.
      if (opts.tls) await tlsHandshake(port);
      else await (await fetch(`${url}/v2/`, { signal: AbortSignal.timeout(1000) })).arrayBuffer();
      break;
    } catch {
      if (Date.now() > deadline) {
        await stop();
        throw new Error(`docker-registry did not answer GET ${url}/v2/ within ${READY_TIMEOUT_MS} ms:\n` + outputTail.slice(-30).join('\n'));
      }
      await sleep(50);
    }
  }
  // The readiness probe itself is not something tests should count.
  accessLines = [];

  const requests = (): RegistryRequest[] => accessLines.map((l) => parseAccessLine(l)).filter((r): r is RegistryRequest => !!r);
  return {
    url,
    host: `127.0.0.1:${port}`,
    dataDir,
    accessLog: () => [...accessLines],
    requests,
    waitForRequests: async (match, count = 1, timeoutMs = 2000) => {
      const until = Date.now() + timeoutMs;
      for (;;) {
        const hits = requests().filter(match);
        if (hits.length >= count) return hits;
        if (Date.now() > until) {
          throw new Error(`expected ${count} matching registry requests within ${timeoutMs} ms, saw ${hits.length}:\n` + accessLines.join('\n'));
        }
        await sleep(20);
      }
    },
    settleLog: async () => {
      const marker = `/v2/settle-${randomBytes(8).toString('hex')}/tags/list`;
      // node:http(s) rather than fetch: a TLS registry's certificate is the test's own.
      await new Promise<void>((resolve, reject) => {
        const get = opts.tls ? httpsGet : httpGet;
        get(`${url}${marker}`, { rejectUnauthorized: false }, (res) => {
          res.resume();
          res.on('end', resolve);
        }).on('error', reject);
      });
      const hits = (): number => requests().filter((r) => r.path === marker).length;
      for (let i = 0; hits() === 0; i++) {
        if (i > 500) throw new Error(`the registry's access log never showed ${marker}:\n${outputTail.join('\n')}`);
        await sleep(20);
      }
    },
    clearLog: () => {
      accessLines = [];
    },
    output: () => outputTail.join('\n'),
    stop,
  };
}

/**
 * Write a bcrypt htpasswd file; Node has no bcrypt built in and Distribution 2.8 only accepts bcrypt
 * entries. Uses the `htpasswd` CLI (apache2-utils) if present, else python3's crypt module (glibc
 * libxcrypt makes `$2b$` hashes, which Go's bcrypt accepts). scripts/install-tools.sh does not install
 * apache2-utils, hence the fallback. Returns the file path.
 */
export async function writeHtpasswd(users: Record<string, string>, path?: string): Promise<string> {
  const file = path ?? join(await mkdtemp(join(tmpdir(), 'portcullis-htpasswd-')), 'htpasswd');
  const lines: string[] = [];
  for (const [user, password] of Object.entries(users)) {
    if (user.includes(':') || /[\r\n]/.test(user + password)) throw new Error(`unusable htpasswd user ${user}`);
    // -n prints the entry instead of editing a file, -B bcrypt, -b password from argv.
    const h = spawnSync('htpasswd', ['-nbB', user, password], { encoding: 'utf8' });
    if (!h.error && h.status === 0) {
      lines.push(h.stdout.trim());
      continue;
    }
    const py = spawnSync(
      'python3',
      ['-W', 'ignore', '-c', 'import crypt,sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=32)))', password],
      { encoding: 'utf8' },
    );
    const hash = py.stdout?.trim() ?? '';
    if (py.error || py.status !== 0 || !hash.startsWith('$2')) {
      throw new Error(
        'cannot make a bcrypt htpasswd entry: neither `htpasswd` (apt-get install apache2-utils) nor ' +
          `python3's crypt module worked: ${h.error?.message ?? h.stderr} / ${py.error?.message ?? py.stderr}`,
      );
    }
    lines.push(`${user}:${hash}`);
  }
  await writeFile(file, lines.join('\n') + '\n', { mode: 0o600 });
  return file;
}
