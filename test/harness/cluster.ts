/**
 * Test harness: a cluster of real Portcullis processes (`node dist/cli.js serve`, built by `npm run build`) on
 * loopback, sharing one S3 bucket (a real SeaweedFS) and a cluster secret, each listing all of them as peers. The
 * processes are separate so that a test can kill -9 one of them; every one is killed when the test process exits.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { freePort } from './registry.js';
import type { RunningSeaweed } from './seaweedfs.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const CLI = path.join(ROOT, 'dist', 'cli.js');
// A bound, not a measure: three Node processes compiling the policy at once on a loaded 2-core machine take a while.
const READY_MS = 90_000;
const OUTPUT_KEEP = 200_000;

export interface Replica {
  /** `http://127.0.0.1:PORT`, also its `cluster.self`. */
  url: string;
  host: string;
  child: ChildProcess;
  exited: Promise<void>;
  output(): string;
  kill(signal?: NodeJS.Signals): void;
}

export interface StartClusterOptions {
  replicas: number;
  /** Working directory: configs, data dirs, the secret file. */
  dir: string;
  upstream: { name: string; registry: string; url: string; aliases?: string[] };
  weed: RunningSeaweed;
  bucket: string;
  /** Key prefix in the bucket (each test its own). */
  prefix: string;
  /** Extra `cluster` settings (probeInterval, failuresToDown, …). */
  cluster?: Record<string, unknown>;
  logLevel?: string;
  /** Policy settings (default: every image admitted). */
  settings?: Record<string, unknown>;
  /** `storage.meta: redis` on this server, entries signed with `signingKey` (32+ bytes). */
  redis?: { url: string; signingKey: string; keyPrefix?: string };
  /** Per replica, the `cli.js` to run (default this build's dist/cli.js): the rolling-upgrade test runs an older build. */
  clis?: string[];
  /** Merged into every replica's config (its `storage` into theirs): storage.meta redis, scan settings, … */
  extra?: Record<string, unknown>;
  /** Extra `storage.s3` settings (partSize, abandonedUploadAge, …). */
  s3?: Record<string, unknown>;
}

export interface RunningCluster {
  replicas: Replica[];
  /** The shared HMAC key (tests sign their own internal requests with it). */
  secret: Buffer;
  /**
   * Starts one more replica with an empty data dir (no SQLite, no local cache), on the same bucket and Redis; it
   * lists the others as peers, they do not list it (it takes no ownership from them).
   */
  addReplica(): Promise<Replica>;
  stop(): Promise<void>;
}

const live = new Set<ChildProcess>();
let hooked = false;

export async function startCluster(o: StartClusterOptions): Promise<RunningCluster> {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build first (npm test does)`);
  if (!hooked) {
    hooked = true;
    process.on('exit', () => {
      for (const c of live) c.kill('SIGKILL');
    });
  }
  await mkdir(o.dir, { recursive: true });
  const secret = Buffer.from(randomBytes(32).toString('hex'));
  const secretFile = path.join(o.dir, 'cluster-secret');
  await writeFile(secretFile, secret, { mode: 0o600 });
  const ports: number[] = [];
  while (ports.length < o.replicas) {
    const p = await freePort();
    if (!ports.includes(p)) ports.push(p);
  }
  const urls = ports.map((p) => `http://127.0.0.1:${p}`);
  const env = { PC_S3_AK: o.weed.accessKeyId, PC_S3_SK: o.weed.secretAccessKey, ...(o.redis ? { PC_REDIS_SIGNING_KEY: o.redis.signingKey } : {}) };
  const start = async (port: number, i: number, peers: string[]): Promise<Replica> => {
    const dataDir = path.join(o.dir, `replica-${i}`);
    const config = path.join(o.dir, `replica-${i}.json`);
    const doc = {
      listen: `127.0.0.1:${port}`,
      dataDir,
      upstreams: [{ ...o.upstream, retries: 2 }],
      log: { level: o.logLevel ?? 'warn' },
      decisionLog: { sink: 'none' },
      shutdownGrace: '2s',
      policy: {
        bundleFile: path.join(ROOT, 'policies', 'bundle.tar.gz'),
        settings: o.settings ?? { no_match: 'deny', scopes: [{ name: 'all', images: ['**'] }] },
      },
      storage: {
        blobs: 's3',
        s3: {
          endpoint: o.weed.endpoint,
          region: 'us-east-1',
          bucket: o.bucket,
          prefix: o.prefix,
          forcePathStyle: true,
          allowInsecureHttp: true,
          credentials: { accessKeyId: { env: 'PC_S3_AK' }, secretAccessKey: { env: 'PC_S3_SK' } },
          partSize: '5MiB',
          ...o.s3,
        },
        ...(o.redis
          ? {
              meta: 'redis',
              redis: {
                url: o.redis.url,
                allowInsecure: true,
                signingKey: { env: 'PC_REDIS_SIGNING_KEY' },
                ...(o.redis.keyPrefix ? { keyPrefix: o.redis.keyPrefix } : {}),
              },
            }
          : {}),
      },
      cluster: { self: `http://127.0.0.1:${port}`, peers, secret: { file: secretFile }, probeInterval: '500ms', ...o.cluster },
    };
    const { storage: extraStorage, ...extraConfig } = (o.extra ?? {}) as { storage?: Record<string, unknown> };
    Object.assign(doc, extraConfig, { storage: { ...doc.storage, ...extraStorage } });
    await writeFile(config, JSON.stringify(doc, null, 2));
    return spawnReplica(`http://127.0.0.1:${port}`, config, env, o.clis?.[i] ?? CLI);
  };
  // One that fails to start must not leave the others running.
  const started = await Promise.allSettled(ports.map((port, i) => start(port, i, urls)));
  const replicas = started.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  const failed = started.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) {
    for (const r of replicas) r.kill('SIGKILL');
    await Promise.all(replicas.map((r) => r.exited));
    throw failed.reason;
  }
  const extra: Replica[] = [];
  return {
    replicas,
    secret,
    async addReplica() {
      let port = await freePort();
      while (ports.includes(port)) port = await freePort();
      ports.push(port);
      const r = await start(port, ports.length - 1, [...urls, `http://127.0.0.1:${port}`]);
      extra.push(r);
      return r;
    },
    async stop() {
      for (const r of [...replicas, ...extra]) r.kill('SIGKILL');
      await Promise.all([...replicas, ...extra].map((r) => r.exited));
    },
  };
}

/** Starts `node <cli> serve --config <config>` (this build's dist/cli.js by default) and waits until `<url>/readyz` answers 200. */
export async function spawnReplica(url: string, config: string, env: Record<string, string>, cli: string = CLI): Promise<Replica> {
  const child = spawn(process.execPath, [cli, 'serve', '--config', config], { stdio: ['ignore', 'pipe', 'pipe'], cwd: ROOT, env: { ...process.env, ...env } });
  live.add(child);
  let out = '';
  const keep = (b: Buffer): void => {
    out += b.toString();
    if (out.length > OUTPUT_KEEP) out = out.slice(-OUTPUT_KEEP);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  const exited = new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    child.once('exit', () => {
      live.delete(child);
      resolve();
    });
  });
  const deadline = Date.now() + READY_MS;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`replica ${url} exited during start-up:\n${out}`);
    const ok = await fetch(`${url}/readyz`).then(
      (r) => r.ok,
      () => false,
    );
    if (ok) break;
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`replica ${url} not ready within ${READY_MS} ms:\n${out}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    url,
    host: url.slice('http://'.length),
    child,
    exited,
    output: () => out,
    kill: (signal = 'SIGKILL') => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    },
  };
}
