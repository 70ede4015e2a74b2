/**
 * Moving a node from the filesystem store to S3 without starting cold (`portcullis storage import`), against a real
 * SeaweedFS and a real Distribution registry: a cache filled by pulling through a filesystem-backed proxy is imported
 * (every blob re-hashed; a damaged one skipped, reported and never visible in the bucket; pushed reports published),
 * then an S3-backed proxy on the same data dir serves the image with the upstream STOPPED. A second import uploads
 * nothing. And the bucket's layout marker: written on first use, a newer one refused. And `portcullis backup` /
 * `restore` of what is durable: a CRITICAL report pushed, backed up, wiped (data dir and bucket documents), restored:
 * the image is denied again; a damaged backup is refused before anything is written.
 */
import { GetObjectCommand, HeadObjectCommand, ListObjectsV2Command, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { DeleteObjectCommand } from '@aws-sdk/client-s3';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { S3BlobStore } from '../../src/cache/s3-blobstore.js';
import { LayoutTooNewError } from '../../src/cache/layout.js';
import { parseConfig } from '../../src/config/load.js';
import { storageSchema } from '../../src/config/storage.js';
import { backup, restore } from '../../src/server/backup.js';
import { importToS3 } from '../../src/server/storage-import.js';
import { MANIFEST_ACCEPT, pushImage, sha256 } from '../harness/images.js';
import { startProxy } from '../harness/proxy.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';
import { startSeaweed, type RunningSeaweed } from '../harness/seaweedfs.js';

const BUCKET = 'portcullis-import';
const REPORT_TOKEN = 'import-report-token-77d1';
const clean = readFileSync('test/fixtures/scan/trivy-clean.json', 'utf8');
const critical = readFileSync('test/fixtures/scan/trivy-critical.json', 'utf8');
const ZERO = `sha256:${'0'.repeat(64)}`;

let weed: RunningSeaweed;
let reg: RunningRegistry;
let s3: S3Client;
let tmp: string;

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'pc-import-'));
  weed = await startSeaweed();
  await weed.createBucket(BUCKET);
  s3 = weed.client();
  reg = await startRegistry();
  process.env.PC_IMPORT_AK = weed.accessKeyId;
  process.env.PC_IMPORT_SK = weed.secretAccessKey;
  process.env.PC_IMPORT_REPORT_TOKEN = REPORT_TOKEN;
}, 120_000);
afterAll(async () => {
  s3?.destroy();
  await Promise.all([reg?.stop(), weed?.stop()]);
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

const s3Storage = (prefix: string) => ({
  blobs: 's3',
  s3: {
    endpoint: weed.endpoint,
    bucket: BUCKET,
    prefix,
    forcePathStyle: true,
    allowInsecureHttp: true,
    credentials: { accessKeyId: { env: 'PC_IMPORT_AK' }, secretAccessKey: { env: 'PC_IMPORT_SK' } },
  },
});
const scan = { order: ['reports'], reports: { token: { env: 'PC_IMPORT_REPORT_TOKEN' }, maxSize: '64KiB' } };

async function exists(key: string): Promise<boolean> {
  return s3.send(new HeadObjectCommand({ Bucket: BUCKET, Key: key })).then(
    () => true,
    () => false,
  );
}

describe('storage import: filesystem cache → S3', () => {
  it('imports every verified blob and the pushed reports; an S3-backed proxy then serves the image with the upstream stopped', async () => {
    const img = await pushImage(reg.url, 'import/app', 'v1', { layers: 3 });
    const blobs = [img.config, ...img.layers];
    const dataDir = join(tmp, 'node');
    const upstreams = [{ name: 'local', registry: reg.host, url: reg.url }];
    const fsProxy = await startProxy({ upstreams, dataDir, extra: { scan } });
    try {
      const m = await fetch(`${fsProxy.url}/v2/${reg.host}/import/app/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT } });
      expect(m.status).toBe(200);
      await m.arrayBuffer();
      for (const b of blobs)
        expect(sha256(new Uint8Array(await (await fetch(`${fsProxy.url}/v2/${reg.host}/import/app/blobs/${b.digest}`)).arrayBuffer()))).toBe(b.digest);
      const pushed = await fetch(`${fsProxy.url}/api/v1/reports/${reg.host}/import/app@${img.digest}`, {
        method: 'PUT',
        headers: { authorization: `Bearer ${REPORT_TOKEN}`, 'content-type': 'application/json' },
        body: clean.replaceAll(`registry.example/demo/app@${ZERO}`, `${reg.host}/import/app@${img.digest}`),
      });
      expect(pushed.status).toBe(201);
    } finally {
      await fsProxy.stop({ keepData: true });
    }
    // A damaged blob in the local store: its bytes do not hash to its name.
    const bad = sha256(Buffer.from('what this blob should have held'));
    mkdirSync(join(dataDir, 'blobs', 'sha256', bad.slice(7, 9)), { recursive: true });
    writeFileSync(join(dataDir, 'blobs', 'sha256', bad.slice(7, 9), bad.slice(7)), 'tampered bytes');

    const config = parseConfig(
      JSON.stringify({ dataDir, upstreams, storage: s3Storage('moved/'), scan, policy: { bundleFile: 'policies/bundle.tar.gz' } }),
      'import.json',
      {},
    );
    const lines: string[] = [];
    const r = await importToS3({ from: dataDir, config, concurrency: 2, progress: (l) => lines.push(l) });
    expect(r.blobs).toMatchObject({ total: blobs.length + 1, imported: blobs.length, present: 0 });
    expect(r.corrupt.map((c) => c.digest)).toEqual([bad]);
    expect(r.failed).toEqual([]);
    expect(r.reports).toEqual({ total: 1, published: 1, present: 0 });
    expect(lines.filter((l) => /^\[\d+\/5\] /.test(l))).toHaveLength(5);
    for (const b of blobs) expect(await exists(`moved/v1/blobs/sha256/${b.digest.slice(7)}`)).toBe(true);
    expect(await exists(`moved/v1/blobs/sha256/${bad.slice(7)}`)).toBe(false);
    const docs = await s3.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: `moved/meta/v1/reports/${img.digest}/` }));
    expect(docs.Contents ?? []).toHaveLength(1);

    // Again: nothing to upload, nothing published twice.
    const again = await importToS3({ from: dataDir, config, concurrency: 2 });
    expect(again.blobs).toMatchObject({ imported: 0, present: blobs.length });
    expect(again.reports).toEqual({ total: 1, published: 0, present: 1 });

    // The node now runs on S3, in place (same data dir: its decisions stay); the upstream is gone.
    await reg.stop();
    const s3Proxy = await startProxy({ upstreams, dataDir, extra: { scan, storage: s3Storage('moved/') } });
    try {
      const m = await fetch(`${s3Proxy.url}/v2/${reg.host}/import/app/manifests/${img.digest}`, { headers: { accept: MANIFEST_ACCEPT } });
      expect(m.status).toBe(200);
      await m.arrayBuffer();
      for (const b of blobs) {
        const res = await fetch(`${s3Proxy.url}/v2/${reg.host}/import/app/blobs/${b.digest}`);
        expect(res.status).toBe(200);
        expect(sha256(new Uint8Array(await res.arrayBuffer()))).toBe(b.digest);
      }
    } finally {
      await s3Proxy.stop();
    }
  });
});

describe("the bucket's layout marker", () => {
  const store = (prefix: string): S3BlobStore =>
    new S3BlobStore({
      client: weed.client(),
      config: storageSchema.parse({ blobs: 's3', s3: { endpoint: weed.endpoint, bucket: BUCKET, prefix, forcePathStyle: true, allowInsecureHttp: true } }).s3!,
      tmpDir: join(tmp, `tmp-${prefix.replace('/', '')}`),
      maxSize: 1024 ** 3,
      redirectExpiry: 60_000,
    });

  it('is written on first use; a layout no older release can read stops the start, naming the object', async () => {
    const a = store('marked/');
    await a.ready;
    await a.close();
    const body = await s3.send(new GetObjectCommand({ Bucket: BUCKET, Key: 'marked/layout.json' }));
    expect(JSON.parse(await body.Body!.transformToString())).toEqual({ format: 'portcullis-blobs', version: 1, compatible: 1 });
    await s3.send(
      new PutObjectCommand({ Bucket: BUCKET, Key: 'future/layout.json', Body: JSON.stringify({ format: 'portcullis-blobs', version: 3, compatible: 2 }) }),
    );
    const b = store('future/');
    await expect(b.ready).rejects.toBeInstanceOf(LayoutTooNewError);
    await expect(b.ready).rejects.toThrow(`s3://${BUCKET}/future/layout.json: blob layout version 3`);
    await b.close();
  });
});

describe('backup and restore of what is durable', () => {
  it('a CRITICAL report pushed, backed up, wiped and restored is in force again; a damaged backup writes nothing', async () => {
    // Its own upstream: the import test above stopped the shared one.
    const up = await startRegistry();
    onTestFinished(() => up.stop());
    const img = await pushImage(up.url, 'backup/app', 'v1');
    const dataDir = join(tmp, 'backed-up');
    const upstreams = [{ name: 'local', registry: up.host, url: up.url }];
    const settings = { no_match: 'deny', scopes: [{ name: 'all', images: ['**'], scan: { on_missing: 'allow' } }] };
    const extra = { scan: { ...scan, admin: { token: { env: 'PC_IMPORT_REPORT_TOKEN' } } }, storage: s3Storage('backup/') };
    const manifest = async (url: string): Promise<Response> => fetch(`${url}/v2/${up.host}/backup/app/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT } });
    const p1 = await startProxy({ upstreams, dataDir, settings, extra });
    try {
      expect((await manifest(p1.url)).status).toBe(200);
      const pushed = await fetch(`${p1.url}/api/v1/reports/${up.host}/backup/app@${img.digest}`, {
        method: 'PUT',
        headers: { authorization: `Bearer ${REPORT_TOKEN}`, 'content-type': 'application/json' },
        body: critical.replaceAll(`registry.example/demo/app@${ZERO}`, `${up.host}/backup/app@${img.digest}`),
      });
      expect(pushed.status).toBe(201);
      expect((await manifest(p1.url)).status).toBe(403);
    } finally {
      await p1.stop({ keepData: true });
    }
    const config = parseConfig(JSON.stringify({ dataDir, upstreams, ...extra, policy: { bundleFile: 'policies/bundle.tar.gz' } }), 'backup.json', {});
    const file = join(tmp, 'portcullis.backup');
    // Every durable document in the bucket but the epoch: the report, and what the replica keeps there besides
    // (admitted manifests, closure hints, tag mappings: cache/durable-state.ts).
    const listed = await s3.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: 'backup/meta/v1/' }));
    const durable = (listed.Contents ?? []).filter((o) => !(o.Key ?? '').startsWith('backup/meta/v1/epoch')).length;
    expect(durable).toBeGreaterThanOrEqual(1);
    expect(await backup(config, file)).toEqual({ reports: 1, documents: durable });
    const lines = readFileSync(file, 'utf8').trim().split('\n');
    expect(JSON.parse(lines[0]!)).toMatchObject({ format: 'portcullis-backup', version: 1, schemas: { 'scan.sqlite': 1 }, layout: 1 });

    // Lose everything durable: the node's data dir and the bucket's report documents.
    const wipe = async (): Promise<void> => {
      rmSync(dataDir, { recursive: true, force: true });
      const docs = await s3.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: 'backup/meta/v1/reports/' }));
      for (const o of docs.Contents ?? []) await s3.send(new DeleteObjectCommand({ Bucket: BUCKET, Key: o.Key }));
    };
    await wipe();
    const p2 = await startProxy({ upstreams, dataDir, settings, extra });
    try {
      expect((await manifest(p2.url)).status).toBe(200);
    } finally {
      await p2.stop();
    }
    await wipe();

    // A damaged copy (one byte of an item changed) is refused as a whole, before anything is written.
    const damaged = join(tmp, 'damaged.backup');
    const item = JSON.parse(lines[1]!) as { data: string };
    const flipped = Buffer.from(item.data, 'base64');
    flipped[10] = flipped[10]! ^ 1;
    writeFileSync(damaged, readFileSync(file, 'utf8').replace(item.data, flipped.toString('base64')));
    await expect(restore(config, damaged)).rejects.toThrow(/sha256/);
    const none = await s3.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: 'backup/meta/v1/reports/' }));
    expect(none.Contents ?? []).toEqual([]);

    // The wipe took the report documents; the others are still there.
    expect(await restore(config, file)).toEqual({ reports: { restored: 1, present: 0 }, documents: { restored: 1, present: durable - 1 } });
    expect(await restore(config, file)).toEqual({ reports: { restored: 0, present: 1 }, documents: { restored: 0, present: durable } });
    const p3 = await startProxy({ upstreams, dataDir, settings, extra });
    try {
      const denied = await manifest(p3.url);
      expect(denied.status).toBe(403);
      expect(denied.headers.get('portcullis-reason')).toMatch(/CRITICAL|critical/);
    } finally {
      await p3.stop();
    }
  });
});
