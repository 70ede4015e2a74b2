/**
 * Test harness: a real S3-compatible server, SeaweedFS (`weed server -s3`, built by scripts/install-tools.sh), on
 * loopback ports in a throw-away directory, with S3 authentication on (one identity), so that presigned URLs and
 * unsigned requests behave as on a production store.
 *
 * Every port is given explicitly (master, volume, filer, S3, and their gRPC ports; Iceberg and Lance off): the
 * defaults are fixed ports, and some bind every interface. The process is killed from a process 'exit' hook as well,
 * so a crashed test run leaves no server behind. No silent skip: a missing `weed` fails with the installer's name.
 */
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { selfSignedServer } from './pki.js';
import { freePort } from './registry.js';

export interface RunningSeaweed {
  /** `http://127.0.0.1:PORT`: the S3 API. */
  endpoint: string;
  /** With `tls: true`: the same API over https (`https://127.0.0.1:PORT`), and the PEM file its certificate is. */
  https?: { endpoint: string; caFile: string };
  accessKeyId: string;
  secretAccessKey: string;
  /** `weed version`'s line, for the README's "verified against". */
  version: string;
  /** A client with the identity's keys, path-style, checksums only when required (as Portcullis sets it). */
  client(): S3Client;
  createBucket(name: string): Promise<void>;
  /** The last lines of the server's output, for diagnostics. */
  output(): string;
  stop(): Promise<void>;
}

const READY_TIMEOUT_MS = 90_000;
const OUTPUT_KEEP = 300;
const live = new Set<ChildProcess>();
let hooked = false;

function assertBinary(): string {
  const r = spawnSync('weed', ['version'], { encoding: 'utf8' });
  if (r.error || r.status !== 0) {
    throw new Error(`weed (SeaweedFS) is not on PATH; install it with scripts/install-tools.sh test. Cause: ${r.error?.message ?? r.stderr}`);
  }
  return (r.stdout || r.stderr).trim().split('\n')[0] ?? 'unknown';
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export interface StartSeaweedOptions {
  /**
   * Bytes the test may store at once, counting aborted parts (volumes reclaim space only when vacuumed). Default:
   * 16 volumes of 64 MB; a larger figure gets 256 MB volumes, enough of them, and a margin.
   */
  capacity?: number;
  /** Serve the S3 API over https as well (a self-signed certificate for 127.0.0.1): `RunningSeaweed.https`. */
  tls?: boolean;
}

export async function startSeaweed(o: StartSeaweedOptions = {}): Promise<RunningSeaweed> {
  const volumeMB = o.capacity !== undefined && o.capacity > 768 * 1024 ** 2 ? 256 : 64;
  const volumes = Math.max(16, Math.ceil((o.capacity ?? 0) / (volumeMB * 1024 ** 2)) + 8);
  const version = assertBinary();
  if (!hooked) {
    hooked = true;
    process.on('exit', () => {
      for (const c of live) c.kill('SIGKILL');
    });
  }
  const dir = await mkdtemp(join(tmpdir(), 'pc-weed-'));
  const accessKeyId = `AK${randomBytes(8).toString('hex')}`;
  const secretAccessKey = randomBytes(20).toString('hex');
  const s3config = join(dir, 's3.json');
  await writeFile(
    s3config,
    JSON.stringify({
      identities: [
        { name: 'portcullis', credentials: [{ accessKey: accessKeyId, secretKey: secretAccessKey }], actions: ['Admin', 'Read', 'Write', 'List', 'Tagging'] },
      ],
    }),
  );
  const ports: number[] = [];
  while (ports.length < 9) {
    const p = await freePort();
    if (!ports.includes(p)) ports.push(p);
  }
  const [master, masterGrpc, volume, volumeGrpc, filer, filerGrpc, s3, s3Grpc, s3Https] = ports as [
    number,
    number,
    number,
    number,
    number,
    number,
    number,
    number,
    number,
  ];
  const tls = o.tls ? await selfSignedServer(dir, 's3') : undefined;
  const args = [
    'server',
    `-dir=${dir}`,
    '-ip=127.0.0.1',
    '-ip.bind=127.0.0.1',
    `-master.port=${master}`,
    `-master.port.grpc=${masterGrpc}`,
    `-master.volumeSizeLimitMB=${volumeMB}`,
    `-volume.port=${volume}`,
    `-volume.port.grpc=${volumeGrpc}`,
    `-volume.max=${volumes}`,
    '-filer',
    `-filer.port=${filer}`,
    `-filer.port.grpc=${filerGrpc}`,
    '-s3',
    `-s3.port=${s3}`,
    `-s3.port.grpc=${s3Grpc}`,
    '-s3.port.iceberg=0',
    '-s3.port.lance=0',
    `-s3.config=${s3config}`,
    `-s3.localSocket=${join(dir, 's3.sock')}`,
    ...(tls ? [`-s3.port.https=${s3Https}`, `-s3.cert.file=${tls.cert}`, `-s3.key.file=${tls.key}`] : []),
  ];
  const child = spawn('weed', args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(child);
  const lines: string[] = [];
  const keep = (b: Buffer): void => {
    for (const l of b.toString().split('\n')) if (l) lines.push(l);
    if (lines.length > OUTPUT_KEEP) lines.splice(0, lines.length - OUTPUT_KEEP);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  let exited = false;
  child.once('exit', () => {
    exited = true;
    live.delete(child);
  });
  const endpoint = `http://127.0.0.1:${s3}`;
  const client = (): S3Client =>
    new S3Client({
      region: 'us-east-1',
      endpoint,
      forcePathStyle: true,
      credentials: { accessKeyId, secretAccessKey },
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    });
  const stop = async (): Promise<void> => {
    if (!exited) {
      const gone = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 5_000);
      await gone;
      clearTimeout(t);
    }
    await rm(dir, { recursive: true, force: true });
  };
  // Ready when a bucket can be created: the S3 gateway needs the master, a volume server and the filer up.
  const probe = client();
  const deadline = Date.now() + READY_TIMEOUT_MS;
  const ready = `ready-${randomBytes(4).toString('hex')}`;
  for (let attempt = 0; ; attempt++) {
    if (exited) {
      await stop();
      throw new Error(`weed server exited during start-up:\n${lines.slice(-40).join('\n')}`);
    }
    try {
      await probe.send(new CreateBucketCommand({ Bucket: ready }));
      break;
    } catch (e) {
      if (Date.now() > deadline) {
        await stop();
        throw new Error(`weed server not ready after ${READY_TIMEOUT_MS} ms (${String(e)}):\n${lines.slice(-40).join('\n')}`, { cause: e });
      }
      await sleep(Math.min(1000, 100 * (attempt + 1)));
    }
  }
  probe.destroy();
  return {
    endpoint,
    ...(tls ? { https: { endpoint: `https://127.0.0.1:${s3Https}`, caFile: tls.cert } } : {}),
    accessKeyId,
    secretAccessKey,
    version,
    client,
    createBucket: async (name) => {
      const c = client();
      try {
        await c.send(new CreateBucketCommand({ Bucket: name }));
      } finally {
        c.destroy();
      }
    },
    output: () => lines.join('\n'),
    stop,
  };
}
