/**
 * Drivers for the real registry clients the integration tests pull with: skopeo, crane, containerd (ctr) and podman.
 *
 * Facts these drivers rely on (see shared/reference/testbed.md §4, §5):
 * - skopeo 1.9 ignores $CONTAINERS_REGISTRIES_CONF; the hidden global `--registries-conf` flag works. podman honours
 *   the environment variable.
 * - ctr resolves and fetches client-side, so mirrors are configured per call with `--hosts-dir DIR`
 *   (`DIR/<registry host[:port]>/hosts.toml`); the daemon's own config_path is irrelevant to ctr.
 * - The only fallback-proof hosts.toml has `server = <proxy>` plus a `[host."<proxy>"]` table; without a [host] table
 *   containerd 1.6.20 rejects the file and silently pulls from the real registry.
 * - containerd needs root (mounts, chown) and a unix socket path shorter than 108 bytes, hence /tmp/pc-XXXXXX.
 *
 * Every driver throws {@link ToolMissingError} when its binary is absent: a missing tool must fail loudly, never turn
 * a test into a silent skip. Every spawned process has a timeout (default 120 s) after which its whole process group
 * is killed.
 */
import { spawn } from 'node:child_process';
import { accessSync, constants as fsConstants } from 'node:fs';
import { mkdir, mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { hostsTomlFile } from '../../src/clients/config.js';

export const DEFAULT_TIMEOUT_MS = 120_000;

export interface ToolResult {
  /** Exit code; -1 if the process was killed by a signal (including our timeout). */
  code: number;
  stdout: string;
  stderr: string;
  /** True when we killed the process because it exceeded its timeout. */
  timedOut: boolean;
}

export interface RunOptions {
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

export class ToolMissingError extends Error {
  constructor(tool: string) {
    super(
      `required tool "${tool}" was not found on PATH or in ${toolsBinDir()} — run scripts/install-tools.sh ` +
        `(and put its bin dir on PATH); integration tests do not skip silently`,
    );
    this.name = 'ToolMissingError';
  }
}

/** Where scripts/install-tools.sh puts Go-built tools (crane, opa): searched after PATH. */
function toolsBinDir(): string {
  return path.join(process.env.PORTCULLIS_TOOLS ?? path.join(os.homedir(), '.cache', 'portcullis-tools'), 'bin');
}

/** Absolute path of an executable, or undefined. */
export function findTool(name: string): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(path.delimiter).filter(Boolean), toolsBinDir(), '/usr/sbin', '/sbin'];
  for (const dir of dirs) {
    const candidate = path.join(dir, name);
    try {
      accessSync(candidate, fsConstants.X_OK);
      return candidate;
    } catch {
      // not here; keep looking
    }
  }
  return undefined;
}

export function hasTool(name: string): boolean {
  return findTool(name) !== undefined;
}

/** Absolute path of an executable, or a ToolMissingError. */
export function requireTool(name: string): string {
  const p = findTool(name);
  if (p === undefined) throw new ToolMissingError(name);
  return p;
}

/**
 * Run a command to completion, capturing output. The child gets its own process group so that a timeout kills it and
 * anything it spawned, and nothing else.
 */
export function runTool(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<ToolResult> {
  const bin = cmd.includes('/') ? cmd : requireTool(cmd);
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  return new Promise((resolve, reject) => {
    const child = spawn(bin, [...args], {
      env: opts.env ?? process.env,
      cwd: opts.cwd,
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let timedOut = false;
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup(child.pid, 'SIGKILL');
    }, timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      const stderr = Buffer.concat(err).toString('utf8');
      resolve({
        code: code ?? -1,
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: timedOut ? `${stderr}\n[harness] killed after ${timeoutMs} ms timeout: ${cmd} ${args.join(' ')}` : stderr,
        timedOut,
      });
    });
  });
}

function killGroup(pid: number | undefined, signal: NodeJS.Signals): void {
  if (pid === undefined) return;
  try {
    process.kill(-pid, signal); // negative pid: the process group we created with detached: true
  } catch {
    try {
      process.kill(pid, signal);
    } catch {
      // already gone
    }
  }
}

/** SIGTERM to a daemon's process group, SIGKILL after 10 s if it is still there; resolves once it has exited. */
export async function stopGroup(pid: number | undefined, exited: Promise<void>): Promise<void> {
  killGroup(pid, 'SIGTERM');
  const gone = await Promise.race([exited.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 10_000))]);
  if (!gone) {
    killGroup(pid, 'SIGKILL');
    await exited;
  }
}

/** Throw with the command's stderr if it failed: for set-up steps whose failure is not what a test is about. */
export function expectOk(r: ToolResult, what: string): ToolResult {
  if (r.code !== 0) {
    throw new Error(`${what} failed (exit ${r.code}${r.timedOut ? ', timed out' : ''}):\n${r.stderr}\n${r.stdout}`);
  }
  return r;
}

async function shortTempDir(prefix: string): Promise<string> {
  // Under /tmp, not os.tmpdir(): containerd's socket path must stay below the 108-byte sun_path limit.
  return mkdtemp(path.join('/tmp', prefix));
}

const INSECURE_POLICY = JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] });

// ---------------------------------------------------------------------------------------------------------------
// skopeo

export interface SkopeoCopyOptions {
  /** `--all`: copy every platform of an index. */
  all?: boolean;
  /** registries.conf for mirror tests; passed as the global `--registries-conf` (skopeo 1.9 ignores the env var). */
  registriesConf?: string;
  /** `--src-creds user:pass`. */
  srcCreds?: string;
  /** Signature policy file; default: `--insecure-policy` so the host's /etc/containers/policy.json is irrelevant. */
  policy?: string;
  timeoutMs?: number;
}

/** `skopeo copy --src-tls-verify=false <src> dir:<destDir>`; `src` is a `docker://host/repo:tag` reference. */
export async function skopeoCopy(src: string, destDir: string, opts: SkopeoCopyOptions = {}): Promise<ToolResult> {
  const global: string[] = [];
  if (opts.registriesConf !== undefined) global.push('--registries-conf', opts.registriesConf);
  global.push(...(opts.policy !== undefined ? ['--policy', opts.policy] : ['--insecure-policy']));
  const args = [...global, 'copy', '--src-tls-verify=false'];
  if (opts.all) args.push('--all');
  if (opts.srcCreds !== undefined) args.push('--src-creds', opts.srcCreds);
  args.push(src, `dir:${destDir}`);
  return runTool('skopeo', args, { timeoutMs: opts.timeoutMs });
}

/** Any other skopeo invocation (inspect, push from an OCI layout, ...). */
export function skopeo(args: readonly string[], opts: RunOptions = {}): Promise<ToolResult> {
  return runTool('skopeo', args, opts);
}

// ---------------------------------------------------------------------------------------------------------------
// crane

export interface CranePullOptions {
  /** e.g. `linux/amd64`, or `all`. */
  platform?: string;
  /** `tarball` (default of crane: a docker-save style tar) or `oci` (an OCI layout directory). */
  format?: 'tarball' | 'oci';
  timeoutMs?: number;
}

/** `crane pull --insecure [--platform P] [--format F] <ref> <dest>`. */
export function cranePull(ref: string, dest: string, opts: CranePullOptions = {}): Promise<ToolResult> {
  const args = ['pull', '--insecure'];
  if (opts.platform !== undefined) args.push('--platform', opts.platform);
  if (opts.format !== undefined) args.push('--format', opts.format);
  args.push(ref, dest);
  return runTool('crane', args, { timeoutMs: opts.timeoutMs });
}

/** `crane digest --insecure <ref>`; the digest is `stdout.trim()`. */
export function craneDigest(ref: string, opts: RunOptions = {}): Promise<ToolResult> {
  return runTool('crane', ['digest', '--insecure', ref], opts);
}

/** `crane manifest --insecure <ref>`; the raw manifest bytes are `stdout`. */
export function craneManifest(ref: string, opts: RunOptions = {}): Promise<ToolResult> {
  return runTool('crane', ['manifest', '--insecure', ref], opts);
}

/** Any other crane invocation (append, copy, push ...). */
export function crane(args: readonly string[], opts: RunOptions = {}): Promise<ToolResult> {
  return runTool('crane', args, opts);
}

// ---------------------------------------------------------------------------------------------------------------
// containerd

export interface ContainerdHandle {
  /** Path of the gRPC unix socket (pass to `ctr --address`). */
  address: string;
  /** Temp dir holding root, state, config and log; removed by stop(). */
  dir: string;
  /** `ctr --address <sock> ...args`. Add `-n <namespace>` to args yourself if needed. */
  ctr(args: readonly string[], opts?: RunOptions): Promise<ToolResult>;
  /** `ctr [-n ns] images pull [--hosts-dir D] [--snapshotter S] [--platform P] <ref>`. */
  pull(ref: string, opts?: CtrPullOptions): Promise<ToolResult>;
  /** The daemon's log so far (stdout+stderr), for failure messages. */
  log(): Promise<string>;
  stop(): Promise<void>;
}

export interface CtrPullOptions {
  /** Directory laid out as `<dir>/<registry host>/hosts.toml`, e.g. made by {@link writeHostsDir}. */
  hostsDir?: string;
  namespace?: string;
  /** Default: containerd's default (overlayfs). `native` avoids overlay mounts. */
  snapshotter?: 'overlayfs' | 'native';
  platform?: string;
  /** `ctr content fetch` instead: download only, no unpack. */
  fetchOnly?: boolean;
  timeoutMs?: number;
}

export interface StartContainerdOptions {
  /** containerd log level; `debug` shows the per-host resolve attempts (useful to see fallbacks). */
  logLevel?: 'debug' | 'info' | 'warn';
  /** How long to wait for `ctr version` to answer. Default 30 s. */
  startTimeoutMs?: number;
}

/**
 * Start a private containerd 1.6 (config version 2, CRI disabled, no metrics listener) whose root, state, socket and
 * log live in a fresh /tmp/pc-XXXXXX. Resolves once `ctr version` succeeds. Requires root.
 */
export async function startContainerd(opts: StartContainerdOptions = {}): Promise<ContainerdHandle> {
  const containerdBin = requireTool('containerd');
  const ctrBin = requireTool('ctr');
  if (typeof process.getuid === 'function' && process.getuid() !== 0) {
    throw new Error('startContainerd: containerd needs root (mounts, chown of snapshots); run the tests as root');
  }
  const dir = await shortTempDir('pc-');
  const address = path.join(dir, 'c.sock');
  const logPath = path.join(dir, 'containerd.log');
  const config = [
    'version = 2',
    `root = "${dir}/root"`,
    `state = "${dir}/state"`,
    // ctr resolves and pulls client-side; CRI would only add start-up time and CNI warnings.
    'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
    '[grpc]',
    `  address = "${address}"`,
    '[ttrpc]',
    `  address = "${address}.ttrpc"`,
    '[debug]',
    `  level = "${opts.logLevel ?? 'info'}"`,
    '[metrics]',
    '  address = ""', // no TCP listener: nothing may bind outside our control
    '[plugins]',
    '  [plugins."io.containerd.internal.v1.opt"]',
    `    path = "${dir}/opt"`, // default /opt/containerd would be shared between instances
    '',
  ].join('\n');
  const configPath = path.join(dir, 'config.toml');
  await writeFile(configPath, config);

  const logFile = await open(logPath, 'a');
  const child = spawn(containerdBin, ['--config', configPath], {
    stdio: ['ignore', logFile.fd, logFile.fd],
    detached: true, // own process group: stop() kills containerd and its shims, nothing else
  });
  await logFile.close(); // the child holds its own copy of the descriptor
  let exited = false;
  const exitPromise = new Promise<void>((resolve) => {
    child.on('exit', () => {
      exited = true;
      resolve();
    });
    child.on('error', () => {
      exited = true;
      resolve();
    });
  });

  const ctr = (args: readonly string[], runOpts: RunOptions = {}): Promise<ToolResult> => runTool(ctrBin, ['--address', address, ...args], runOpts);

  const stop = async (): Promise<void> => {
    if (!exited) await stopGroup(child.pid, exitPromise);
    await rm(dir, { recursive: true, force: true, maxRetries: 3 });
  };

  const deadline = Date.now() + (opts.startTimeoutMs ?? 30_000);
  let last: ToolResult | undefined;
  while (Date.now() < deadline) {
    if (exited) break;
    last = await ctr(['version'], { timeoutMs: 5_000 });
    if (last.code === 0) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  if (!last || last.code !== 0) {
    const logText = await readFile(logPath, 'utf8').catch(() => '');
    await stop();
    throw new Error(
      `containerd did not come up (${exited ? 'it exited' : 'timeout'}); last ctr version: ${last?.stderr ?? 'n/a'}\n` +
        `--- containerd log ---\n${logText.slice(-4000)}`,
    );
  }

  return {
    address,
    dir,
    ctr,
    pull(ref, p = {}) {
      const args: string[] = [];
      if (p.namespace !== undefined) args.push('-n', p.namespace);
      args.push(...(p.fetchOnly ? ['content', 'fetch'] : ['images', 'pull']));
      if (p.hostsDir !== undefined) args.push('--hosts-dir', p.hostsDir);
      if (p.snapshotter !== undefined && !p.fetchOnly) args.push('--snapshotter', p.snapshotter);
      if (p.platform !== undefined) args.push('--platform', p.platform);
      args.push(ref);
      return ctr(args, { timeoutMs: p.timeoutMs });
    },
    log: () => readFile(logPath, 'utf8'),
    stop,
  };
}

/**
 * Write `<dir>/<registryHost>/hosts.toml` sending every request for `registryHost` (e.g. `127.0.0.1:5001`,
 * `docker.io`) to `proxyUrl` and nowhere else: the proxy is both the `server` and the only `[host]`, so a 403/404
 * from it cannot fall back to the real registry (testbed §5 conclusion 1). Returns the hosts.toml path.
 */
export async function writeHostsDir(dir: string, registryHost: string, proxyUrl: string): Promise<string> {
  // The product's own generator (`portcullis client-config containerd`), so that real containerd checks what users get.
  const f = hostsTomlFile('containerd', registryHost, proxyUrl);
  const file = path.join(dir, f.path);
  await mkdir(path.dirname(file), { recursive: true });
  await writeFile(file, f.content);
  return file;
}

// ---------------------------------------------------------------------------------------------------------------
// podman

/** Global flags for a rootful podman with a private store: no systemd, no journald, no shared /var/lib/containers. */
function podmanGlobalArgs(dir: string, storageDriver: 'vfs' | 'overlay'): string[] {
  return [
    '--root',
    path.join(dir, 'root'),
    '--runroot',
    path.join(dir, 'runroot'),
    '--tmpdir',
    path.join(dir, 'tmp'),
    '--storage-driver',
    storageDriver,
    '--cgroup-manager',
    'cgroupfs',
    '--events-backend',
    'file',
  ];
}

export interface PodmanPullOptions {
  /** registries.conf, given through $CONTAINERS_REGISTRIES_CONF (podman honours it). Default: an empty one. */
  registriesConf?: string;
  /** `--tls-verify`; default false so plain-http loopback registries work. */
  tlsVerify?: boolean;
  /** `--creds user:pass`. */
  creds?: string;
  /** Default `vfs`: needs no overlay mounts. */
  storageDriver?: 'vfs' | 'overlay';
  /** Reuse a store dir across pulls (you remove it); default: a fresh temp store per call, removed afterwards. */
  storeDir?: string;
  timeoutMs?: number;
}

async function podmanEnv(dir: string, registriesConf: string | undefined): Promise<NodeJS.ProcessEnv> {
  let conf = registriesConf;
  if (conf === undefined) {
    // Hermetic default: the host's registries.conf must not add mirrors or search registries to our tests.
    conf = path.join(dir, 'registries.conf');
    await writeFile(conf, 'unqualified-search-registries = []\n');
  }
  return { ...process.env, CONTAINERS_REGISTRIES_CONF: conf };
}

/** `podman pull` with a private store under /tmp; `ref` is `host/repo:tag` (no transport prefix). */
export async function podmanPull(ref: string, opts: PodmanPullOptions = {}): Promise<ToolResult> {
  requireTool('podman');
  const dir = opts.storeDir ?? (await shortTempDir('pcp-'));
  await mkdir(dir, { recursive: true });
  try {
    const policy = path.join(dir, 'policy.json');
    await writeFile(policy, INSECURE_POLICY);
    const args = [...podmanGlobalArgs(dir, opts.storageDriver ?? 'vfs'), 'pull', `--tls-verify=${opts.tlsVerify ?? false}`, '--signature-policy', policy];
    if (opts.creds !== undefined) args.push('--creds', opts.creds);
    args.push(ref);
    return await runTool('podman', args, { timeoutMs: opts.timeoutMs, env: await podmanEnv(dir, opts.registriesConf) });
  } finally {
    if (opts.storeDir === undefined) await rm(dir, { recursive: true, force: true, maxRetries: 3 });
  }
}

/** `podman login` to a loopback registry (plain http) into its own auth file, with a private store. */
export async function podmanLogin(host: string, user: string, password: string, authFile: string, timeoutMs?: number): Promise<ToolResult> {
  requireTool('podman');
  const dir = await shortTempDir('pcp-');
  try {
    const args = [...podmanGlobalArgs(dir, 'vfs'), 'login', '--tls-verify=false', '--authfile', authFile, '-u', user, '-p', password, host];
    return await runTool('podman', args, { timeoutMs, env: await podmanEnv(dir, undefined) });
  } finally {
    await rm(dir, { recursive: true, force: true, maxRetries: 3 });
  }
}

/** Whether `podman info` runs with the private-store flags; includes the reason when it does not. */
export async function podmanProbe(): Promise<{ ok: boolean; detail: string }> {
  if (!hasTool('podman')) return { ok: false, detail: new ToolMissingError('podman').message };
  const dir = await shortTempDir('pcp-');
  try {
    const r = await runTool('podman', [...podmanGlobalArgs(dir, 'vfs'), 'info', '--format', '{{.Version.Version}} {{.Store.GraphDriverName}}'], {
      timeoutMs: 60_000,
      env: await podmanEnv(dir, undefined),
    });
    return { ok: r.code === 0, detail: r.code === 0 ? r.stdout.trim() : r.stderr.trim() };
  } finally {
    await rm(dir, { recursive: true, force: true, maxRetries: 3 });
  }
}
