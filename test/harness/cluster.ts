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
const READY_MS = 30_000;
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
  /** Extra `storage.s3` settings (partSize, abandonedUploadAge, …). */
  s3?: Record<string, unknown>;
}

export interface RunningCluster {
  replicas: Replica[];
  /** The shared HMAC key (tests sign their own internal requests with it). */
  secret: Buffer;
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
  const replicas = await Promise.all(
    ports.map(async (port, i) => {
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
          settings: { no_match: 'deny', scopes: [{ name: 'all', images: ['**'] }] },
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
        },
        cluster: { self: urls[i], peers: urls, secret: { file: secretFile }, probeInterval: '500ms', ...o.cluster },
      };
      await writeFile(config, JSON.stringify(doc, null, 2));
      return spawnReplica(urls[i]!, config, { PC_S3_AK: o.weed.accessKeyId, PC_S3_SK: o.weed.secretAccessKey });
    }),
  );
  return {
    replicas,
    secret,
    async stop() {
      for (const r of replicas) r.kill('SIGKILL');
      await Promise.all(replicas.map((r) => r.exited));
    },
  };
}

/** Starts `node dist/cli.js serve --config <config>` and waits until `<url>/readyz` answers 200. */
export async function spawnReplica(url: string, config: string, env: Record<string, string>): Promise<Replica> {
  const child = spawn(process.execPath, [CLI, 'serve', '--config', config], { stdio: ['ignore', 'pipe', 'pipe'], cwd: ROOT, env: { ...process.env, ...env } });
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
