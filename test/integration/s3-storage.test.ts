/**
 * `storage.blobs: s3` against a real S3-compatible server (SeaweedFS, test/harness/seaweedfs.ts) and a real
 * Distribution upstream; the hostile upstream is the fake one (test/harness/fake-upstream.ts), since a real registry
 * will not send wrong bytes. What is shown: the bytes a client gets and the object that lands under the digest key;
 * that a mismatch or a crash leaves no object and, once swept, no incomplete upload; that a second writer is
 * harmless; Range reads; presigned redirects that work and expire (time injected through the signing date); and
 * eviction that keeps to the size bound without removing a blob that is being read.
 */
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  UploadPartCommand,
  type S3Client,
} from '@aws-sdk/client-s3';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileBlobStore } from '../../src/cache/blobstore.js';
import { S3BlobStore } from '../../src/cache/s3-blobstore.js';
import { storageSchema, type S3Config } from '../../src/config/storage.js';
import type { Digest } from '../../src/routing/reference.js';
import { startFakeUpstream, type FakeUpstream } from '../harness/fake-upstream.js';
import { MANIFEST_ACCEPT, pushImage, type PushedImage } from '../harness/images.js';
import { startProxy, type RunningProxy } from '../harness/proxy.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';
import { startSeaweed, type RunningSeaweed } from '../harness/seaweedfs.js';

const MiB = 1024 * 1024;
const sha = (b: Buffer): Digest => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const keyOf = (prefix: string, digest: string): string => `${prefix}v1/blobs/sha256/${digest.slice(7)}`;
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';

let weed: RunningSeaweed;
let s3: S3Client;
const BUCKET = 'portcullis-test';
const ENV_AK = 'PC_TEST_S3_ACCESS_KEY';
const ENV_SK = 'PC_TEST_S3_SECRET_KEY';

/** The storage section a proxy (or a store) under test uses: its own prefix, so tests never see each other's objects. */
function storage(prefix: string, more: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    blobs: 's3',
    s3: {
      endpoint: weed.endpoint,
      region: 'us-east-1',
      bucket: BUCKET,
      prefix,
      forcePathStyle: true,
      allowInsecureHttp: true,
      credentials: { accessKeyId: { env: ENV_AK }, secretAccessKey: { env: ENV_SK } },
      partSize: '5MiB',
    },
    ...more,
  };
}

/** The same storage section with a local disk tier (storage.s3.localCache). */
function withLocalCache(s: Record<string, unknown>): Record<string, unknown> {
  return { ...s, s3: { ...(s.s3 as object), localCache: { maxSize: '64MiB' } } };
}

async function objects(prefix: string): Promise<Array<{ key: string; size: number }>> {
  const r = await s3.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: prefix }));
  // The layout marker (cache/s3-layout.ts) sits at the prefix's root; these tests count blobs.
  return (r.Contents ?? []).filter((o) => o.Key !== `${prefix}layout.json`).map((o) => ({ key: o.Key ?? '', size: o.Size ?? 0 }));
}

async function uploads(prefix: string): Promise<Array<{ key: string; id: string }>> {
  const r = await s3.send(new ListMultipartUploadsCommand({ Bucket: BUCKET, Prefix: prefix }));
  return (r.Uploads ?? []).map((u) => ({ key: u.Key ?? '', id: u.UploadId ?? '' }));
}

async function objectBytes(key: string): Promise<Buffer> {
  const r = await s3.send(new GetObjectCommand({ Bucket: BUCKET, Key: key }));
  return Buffer.from(await (r.Body as { transformToByteArray(): Promise<Uint8Array> }).transformToByteArray());
}

/** A store on the test bucket with its own prefix (a second "replica" is a second store on the same prefix). */
async function store(
  prefix: string,
  opts: { maxSize?: number; partSize?: string; now?: () => number; redirectExpiry?: string; hot?: FileBlobStore } = {},
): Promise<{ store: S3BlobStore; done: () => Promise<void> }> {
  const cfg = storageSchema.parse({ ...storage(prefix), ...(opts.redirectExpiry ? { redirect: true, redirectExpiry: opts.redirectExpiry } : {}) });
  const s3cfg = { ...(cfg.s3 as S3Config), ...(opts.partSize ? { partSize: Number(opts.partSize.replace('MiB', '')) * MiB } : {}) };
  const tmp = await mkdtemp(join(tmpdir(), 'pc-s3store-'));
  const st = new S3BlobStore({
    client: weed.client(),
    config: s3cfg,
    tmpDir: tmp,
    maxSize: opts.maxSize ?? 1 << 30,
    redirectExpiry: cfg.redirectExpiry,
    ...(opts.now ? { now: opts.now } : {}),
    ...(opts.hot ? { hot: opts.hot } : {}),
  });
  await st.ready;
  return {
    store: st,
    done: async () => {
      await st.close();
      await rm(tmp, { recursive: true, force: true });
    },
  };
}

async function write(st: S3BlobStore, bytes: Buffer): Promise<Digest> {
  const digest = sha(bytes);
  const w = await st.createWriter(digest, bytes.length);
  await w.write(bytes);
  await w.commit();
  return digest;
}

/** Waits (bounded: 30 s, for a busy machine) until no download is running, so its commit or abort has happened. */
async function downloadsSettled(p: RunningProxy): Promise<void> {
  for (let i = 0; i < 3000 && p.proxy.app.downloads.active > 0; i++) await new Promise((res) => setTimeout(res, 10));
  expect(p.proxy.app.downloads.active).toBe(0);
}

/** GET with node:http so that a broken transfer (complete: false) is visible. */
function rawGet(
  url: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: Buffer; complete: boolean }> {
  return new Promise((resolve) => {
    let settled = false;
    const req = http.get(url, { agent: false, headers }, (res) => {
      const chunks: Buffer[] = [];
      const finish = (): void => {
        if (settled) return;
        settled = true;
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks), complete: res.complete });
      };
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', finish);
      res.on('error', finish);
      res.on('close', finish);
    });
    req.on('error', () => {
      if (!settled) {
        settled = true;
        resolve({ status: 0, headers: {}, body: Buffer.alloc(0), complete: false });
      }
    });
  });
}

beforeAll(async () => {
  weed = await startSeaweed();
  s3 = weed.client();
  await weed.createBucket(BUCKET);
  process.env[ENV_AK] = weed.accessKeyId;
  process.env[ENV_SK] = weed.secretAccessKey;
}, 120_000);

afterAll(async () => {
  s3?.destroy();
  await weed?.stop();
});

describe('storage.blobs: s3 behind a real Distribution upstream', () => {
  let reg: RunningRegistry;
  let proxy: RunningProxy;
  let img: PushedImage;
  let H: string;
  const prefix = 'pull/';

  beforeAll(async () => {
    reg = await startRegistry();
    H = reg.host;
    // 12 MiB: three 5 MiB parts, so the cold path is a real multipart upload.
    img = await pushImage(reg.url, 'team/app', 'v1', { layers: 1, layerSizeMiB: 12 });
    proxy = await startProxy({ upstreams: [{ name: 'local', registry: H, url: reg.url }], extra: { storage: storage(prefix) } });
  }, 120_000);
  afterAll(async () => {
    await proxy?.stop();
    await reg?.stop();
  });

  it('a cold pull serves the right bytes and the blob lands in the bucket under its digest key', async () => {
    const m = await fetch(`${proxy.url}/v2/${H}/team/app/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT } });
    expect(m.status).toBe(200);
    await m.arrayBuffer();
    const layer = img.layers[0]!;
    const r = await rawGet(`${proxy.url}/v2/${H}/team/app/blobs/${layer.digest}`);
    expect(r.status).toBe(200);
    expect(r.complete).toBe(true);
    expect(sha(r.body)).toBe(layer.digest);
    expect(r.body.length).toBe(layer.size);
    // The commit follows the last byte to the client; wait (bounded) for the download to settle.
    await downloadsSettled(proxy);
    const head = await s3.send(new HeadObjectCommand({ Bucket: BUCKET, Key: keyOf(prefix, layer.digest) }));
    expect(head.ContentLength).toBe(layer.size);
    expect(sha(await objectBytes(keyOf(prefix, layer.digest)))).toBe(layer.digest);
    expect(await uploads(prefix)).toEqual([]);
    expect(proxy.proxy.app.blobStore.has(layer.digest as Digest)).toBe(true);
  });

  it('a warm blob streams from S3, whole and as Range requests', async () => {
    const layer = img.layers[0]!;
    const whole = await rawGet(`${proxy.url}/v2/${H}/team/app/blobs/${layer.digest}`);
    expect(whole.status).toBe(200);
    expect(sha(whole.body)).toBe(layer.digest);
    for (const [start, end] of [
      [0, 0],
      [5 * MiB - 3, 5 * MiB + 3],
      [layer.size - 10, layer.size - 1],
    ] as const) {
      const r = await rawGet(`${proxy.url}/v2/${H}/team/app/blobs/${layer.digest}`, { range: `bytes=${start}-${end}` });
      expect(r.status).toBe(206);
      expect(r.headers['content-range']).toBe(`bytes ${start}-${end}/${layer.size}`);
      expect(r.body.equals(whole.body.subarray(start, end + 1))).toBe(true);
    }
    // A range outside the blob is refused without touching the bytes.
    expect((await rawGet(`${proxy.url}/v2/${H}/team/app/blobs/${layer.digest}`, { range: `bytes=${layer.size}-` })).status).toBe(416);
  });

  it('an object altered in the bucket breaks a whole-blob transfer instead of completing it, and is dropped', async () => {
    const layer = img.layers[0]!;
    const key = keyOf(prefix, layer.digest);
    const good = await objectBytes(key);
    const bad = Buffer.from(good);
    bad.writeUInt8(bad.readUInt8(bad.length - 1) ^ 0xff, bad.length - 1);
    await s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: key, Body: bad }));
    try {
      const r = await rawGet(`${proxy.url}/v2/${H}/team/app/blobs/${layer.digest}`);
      expect(r.status).toBe(200);
      expect(r.complete).toBe(false);
      expect(r.body.length).toBeLessThan(layer.size);
      // Dropped from the index (and deleted): the next request fetches it from the upstream again.
      expect(proxy.proxy.app.blobStore.has(layer.digest as Digest)).toBe(false);
      const again = await rawGet(`${proxy.url}/v2/${H}/team/app/blobs/${layer.digest}`);
      expect(again.complete).toBe(true);
      expect(sha(again.body)).toBe(layer.digest);
    } finally {
      await downloadsSettled(proxy);
    }
    expect(sha(await objectBytes(key))).toBe(layer.digest);
  });

  it('a restarted proxy finds the blob in the bucket and serves it without the upstream', async () => {
    const layer = img.layers[0]!;
    const again = await startProxy({ upstreams: [{ name: 'local', registry: H, url: reg.url }], extra: { storage: storage(prefix) } });
    try {
      expect(again.proxy.app.blobStore.has(layer.digest as Digest)).toBe(true);
      // Admit the image on the new instance, then forget the upstream's access log: the blob must not be fetched.
      await (await fetch(`${again.url}/v2/${H}/team/app/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT } })).arrayBuffer();
      reg.clearLog();
      const r = await rawGet(`${again.url}/v2/${H}/team/app/blobs/${layer.digest}`);
      expect(sha(r.body)).toBe(layer.digest);
      expect(reg.requests().filter((q) => q.path.includes('/blobs/'))).toEqual([]);
    } finally {
      await again.stop();
    }
  });
});

describe('a hostile upstream', () => {
  let up: FakeUpstream;
  let proxy: RunningProxy;
  const prefix = 'hostile/';

  beforeAll(async () => {
    up = await startFakeUpstream({ strictAccept: true });
    proxy = await startProxy({ upstreams: [{ name: 'fake', registry: up.host, url: up.url }], extra: { storage: storage(prefix) } });
  }, 60_000);
  afterAll(async () => {
    await proxy?.stop();
    await up?.stop();
  });

  it('wrong bytes leave no object and no incomplete multipart upload', async () => {
    const repo = 'evil/app';
    const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } }));
    // Larger than two parts: parts are uploaded before the mismatch shows at the end.
    const layer = randomBytes(11 * MiB);
    const configDigest = up.addBlob(repo, config);
    const layerDigest = up.addBlob(repo, layer);
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: OCI_MANIFEST,
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: configDigest, size: config.length },
        layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: layerDigest, size: layer.length }],
      }),
    );
    up.addManifest(repo, 'v1', manifest, OCI_MANIFEST);
    await (await fetch(`${proxy.url}/v2/${up.host}/${repo}/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT } })).arrayBuffer();
    up.setFault({ method: 'GET', pathRegex: new RegExp(`/blobs/${layerDigest}$`) }, { kind: 'wrong-bytes' });
    const r = await rawGet(`${proxy.url}/v2/${up.host}/${repo}/blobs/${layerDigest}`);
    expect(r.complete && r.status === 200).toBe(false);
    await downloadsSettled(proxy);
    expect(proxy.proxy.app.downloads.active).toBe(0);
    expect((await objects(prefix)).filter((o) => o.key === keyOf(prefix, layerDigest))).toEqual([]);
    expect(await uploads(prefix)).toEqual([]);
    expect(proxy.proxy.app.blobStore.has(layerDigest as Digest)).toBe(false);
  });
});

describe('S3BlobStore on SeaweedFS', () => {
  it('a writer that dies before commit leaves no visible object; the sweeper aborts its upload once abandoned', async () => {
    const prefix = 'crash/';
    let clock = Date.now();
    const { store: st, done } = await store(prefix, { now: () => clock });
    try {
      const bytes = randomBytes(6 * MiB);
      const w = await st.createWriter(sha(bytes), bytes.length);
      // One full part is uploaded as the bytes are written; then the "process dies": no commit, no abort.
      await w.write(bytes);
      expect(await objects(prefix)).toEqual([]);
      expect((await uploads(prefix)).length).toBe(1);
      // A fresh store (a restarted process) at the same time does not abort an upload that may still be running...
      const restarted = await store(prefix, { now: () => clock });
      expect((await uploads(prefix)).length).toBe(1);
      // ...but does once it is older than abandonedUploadAge (default 24 h).
      clock += 25 * 3_600_000;
      expect((await restarted.store.sweep()).aborted).toBe(1);
      expect(await uploads(prefix)).toEqual([]);
      expect(await objects(prefix)).toEqual([]);
      await restarted.done();
      // Only to close the dead writer's file descriptors (its upload is gone already).
      await w.abort();
    } finally {
      await done();
    }
  });

  it("abortUploadsOf: a lost writer's upload of that digest is aborted at once; this store's own, another digest's and a newer one stay", async () => {
    const prefix = 'lost-owner/';
    const dead = await store(prefix);
    const other = await store(prefix);
    const survivor = await store(prefix);
    const bytes = randomBytes(6 * MiB);
    const elsewhere = randomBytes(6 * MiB);
    // Each writer uploads one full part as the bytes are written, then stops: the "owner" never commits (killed).
    const wDead = await dead.store.createWriter(sha(bytes), bytes.length);
    await wDead.write(bytes);
    const wOther = await other.store.createWriter(sha(elsewhere), elsewhere.length);
    await wOther.write(elsewhere);
    const wMine = await survivor.store.createWriter(sha(bytes), bytes.length);
    await wMine.write(bytes);
    try {
      expect(await uploads(prefix)).toHaveLength(3);
      // Begun after the moment given (S3 dates have whole seconds): spared, it may be a live successor's.
      expect(await survivor.store.abortUploadsOf(sha(bytes), Date.now() - 60_000)).toBe(0);
      expect(await uploads(prefix)).toHaveLength(3);
      // The dead owner's goes; the survivor's own upload of the same key and the other digest's stay.
      expect(await survivor.store.abortUploadsOf(sha(bytes), Date.now())).toBe(1);
      expect(await uploads(prefix)).toHaveLength(2);
      // The survivor's own upload still completes into a verified object.
      await wMine.commit();
      expect(await objects(prefix)).toHaveLength(1);
      expect(await uploads(prefix)).toHaveLength(1);
    } finally {
      await wOther.abort();
      await wDead.abort();
      await Promise.all([dead.done(), other.done(), survivor.done()]);
    }
  });

  it('a second writer of the same digest is harmless: If-None-Match keeps the first object', async () => {
    const prefix = 'twice/';
    const a = await store(prefix, { partSize: '5MiB' });
    const b = await store(prefix, { partSize: '16MiB' });
    try {
      const bytes = randomBytes(7 * MiB);
      const digest = sha(bytes);
      // A writes a two-part multipart object; B would write a single PUT (another ETag) if it were let through.
      const wa = await a.store.createWriter(digest, bytes.length);
      const wb = await b.store.createWriter(digest, bytes.length);
      await Promise.all([wa.write(bytes), wb.write(bytes)]);
      await wa.commit();
      const first = await s3.send(new HeadObjectCommand({ Bucket: BUCKET, Key: keyOf(prefix, digest) }));
      await wb.commit();
      const after = await s3.send(new HeadObjectCommand({ Bucket: BUCKET, Key: keyOf(prefix, digest) }));
      expect(after.ETag).toBe(first.ETag);
      expect(after.ETag).toMatch(/-2"$/);
      expect(b.store.has(digest)).toBe(true);
      // And a multipart second writer (both multipart, completing one after the other) leaves no upload behind.
      const c = await store(prefix, { partSize: '5MiB' });
      const wc = await c.store.createWriter(digest, bytes.length);
      await wc.write(bytes);
      await wc.commit();
      expect(await uploads(prefix)).toEqual([]);
      await c.done();
      expect(sha(await objectBytes(keyOf(prefix, digest)))).toBe(digest);
    } finally {
      await a.done();
      await b.done();
    }
  });

  it('two writers completing at the same moment both succeed, and the object is the verified bytes', async () => {
    const prefix = 'race/';
    const a = await store(prefix, { partSize: '5MiB' });
    const b = await store(prefix, { partSize: '5MiB' });
    try {
      const bytes = randomBytes(6 * MiB);
      const digest = sha(bytes);
      const [wa, wb] = await Promise.all([a.store.createWriter(digest, bytes.length), b.store.createWriter(digest, bytes.length)]);
      await Promise.all([wa.write(bytes), wb.write(bytes)]);
      await Promise.all([wa.commit(), wb.commit()]);
      expect(a.store.has(digest) && b.store.has(digest)).toBe(true);
      expect(sha(await objectBytes(keyOf(prefix, digest)))).toBe(digest);
      expect(await uploads(prefix)).toEqual([]);
    } finally {
      await a.done();
      await b.done();
    }
  });

  it('a digest mismatch aborts the multipart upload and publishes nothing', async () => {
    const prefix = 'mismatch/';
    const { store: st, done } = await store(prefix);
    try {
      const bytes = randomBytes(6 * MiB);
      const claimed = sha(randomBytes(16));
      const w = await st.createWriter(claimed, bytes.length);
      await w.write(bytes);
      await expect(w.commit()).rejects.toThrow(/digest mismatch/);
      expect(await objects(prefix)).toEqual([]);
      expect(await uploads(prefix)).toEqual([]);
      expect(st.has(claimed)).toBe(false);
    } finally {
      await done();
    }
  });

  it('redirect URLs: a plain fetch reads the blob, an unsigned one is refused, and an expired one stops working', async () => {
    const prefix = 'presign/';
    let clock = Date.now();
    const { store: st, done } = await store(prefix, { now: () => clock, redirectExpiry: '60s' });
    try {
      const bytes = randomBytes(64 * 1024);
      const digest = await write(st, bytes);
      const lease = st.lease(digest)!;
      const url = (await lease.redirectUrl())!;
      lease.release();
      expect(url).toContain('X-Amz-Expires=60');
      const ok = await fetch(url);
      expect(ok.status).toBe(200);
      expect(Buffer.from(await ok.arrayBuffer()).equals(bytes)).toBe(true);
      const ranged = await fetch(url, { headers: { range: 'bytes=10-19' } });
      expect(ranged.status).toBe(206);
      expect(Buffer.from(await ranged.arrayBuffer()).equals(bytes.subarray(10, 20))).toBe(true);
      // The same object without a signature: authentication is on, so the URL is what grants access.
      const unsigned = await fetch(url.slice(0, url.indexOf('?')));
      expect(unsigned.status).toBe(403);
      await unsigned.arrayBuffer();
      // A URL signed 61 s ago (the clock injected into the presigner's signing date) has expired.
      clock = Date.now() - 61_000;
      const stale = await st.presign(digest);
      const refused = await fetch(stale);
      expect(refused.status).toBe(403);
      await refused.arrayBuffer();
      // Signed 59 s ago: still valid.
      clock = Date.now() - 59_000;
      const fresh = await fetch(await st.presign(digest));
      expect(fresh.status).toBe(200);
      await fresh.arrayBuffer();
    } finally {
      await done();
    }
  });

  it('eviction keeps to the size bound and never deletes a blob while it is being read', async () => {
    const prefix = 'evict/';
    const { store: st, done } = await store(prefix, { maxSize: 5 * MiB });
    try {
      const a = randomBytes(2 * MiB);
      const b = randomBytes(2 * MiB);
      const c = randomBytes(2 * MiB);
      const da = await write(st, a);
      const db = await write(st, b);
      // A reader holds A, then B is read last, so A is the least recently used when C arrives.
      const lease = st.lease(da)!;
      st.lease(db)!.release();
      const dc = await write(st, c);
      expect(st.totalBytes).toBeLessThanOrEqual(5 * MiB);
      expect(st.has(da)).toBe(false);
      expect(st.has(db) && st.has(dc)).toBe(true);
      // A's object is still there for its reader, which gets every byte.
      const read = lease.stream(0, a.length - 1);
      const chunks: Buffer[] = [];
      for await (const ch of read) chunks.push(ch as Buffer);
      expect(Buffer.concat(chunks).equals(a)).toBe(true);
      expect((await objects(prefix)).map((o) => o.key).sort()).toEqual([keyOf(prefix, da), keyOf(prefix, db), keyOf(prefix, dc)].sort());
      // Released: now it goes (the delete is asynchronous; wait for it, bounded).
      lease.release();
      let keys: string[] = [];
      for (let i = 0; i < 1200; i++) {
        keys = (await objects(prefix)).map((o) => o.key);
        if (!keys.includes(keyOf(prefix, da))) break;
        await new Promise((r) => setTimeout(r, 25));
      }
      expect(keys.sort()).toEqual([keyOf(prefix, db), keyOf(prefix, dc)].sort());
    } finally {
      await done();
    }
  });
});

describe('the local disk tier (storage.s3.localCache)', () => {
  it('keeps what this replica downloaded and serves it without S3; an S3 eviction drops the local copy too', async () => {
    const prefix = 'hot/';
    const hotDir = await mkdtemp(join(tmpdir(), 'pc-hot-'));
    const hot = new FileBlobStore(hotDir, 64 * MiB);
    const { store: st, done } = await store(prefix, { maxSize: 5 * MiB, hot });
    try {
      const a = randomBytes(2 * MiB);
      const da = await write(st, a);
      expect(hot.has(da)).toBe(true);
      expect(readFileSync(hot.pathFor(da)).equals(a)).toBe(true);
      // The object gone from the bucket behind our back: the local copy still serves every byte.
      await s3.send(new DeleteObjectCommand({ Bucket: BUCKET, Key: keyOf(prefix, da) }));
      const lease = st.lease(da)!;
      const chunks: Buffer[] = [];
      for await (const ch of lease.stream(0, a.length - 1)) chunks.push(ch as Buffer);
      lease.release();
      expect(Buffer.concat(chunks).equals(a)).toBe(true);
      // Two more blobs push A out of the bucket's 5 MiB bound: its local copy goes with it.
      const db = await write(st, randomBytes(2 * MiB));
      st.lease(db)!.release();
      await write(st, randomBytes(2 * MiB));
      expect(st.has(da)).toBe(false);
      expect(hot.has(da)).toBe(false);
      expect(hot.has(db)).toBe(true);
    } finally {
      await done();
      await rm(hotDir, { recursive: true, force: true });
    }
  });
});

describe('storage.redirect through the proxy', () => {
  let reg: RunningRegistry;
  let proxy: RunningProxy;
  let img: PushedImage;
  const prefix = 'redirect/';

  beforeAll(async () => {
    reg = await startRegistry();
    img = await pushImage(reg.url, 'team/redir', 'v1', { layers: 1, layerSizeMiB: 0.5 });
    proxy = await startProxy({
      upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
      extra: { storage: withLocalCache(storage(prefix, { redirect: true, redirectExpiry: '30s' })) },
    });
  }, 120_000);
  afterAll(async () => {
    await proxy?.stop();
    await reg?.stop();
  });

  it('a cold GET streams through; a warm GET answers 307 to a presigned URL that a plain fetch can read', async () => {
    const H = reg.host;
    await (await fetch(`${proxy.url}/v2/${H}/team/redir/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT } })).arrayBuffer();
    const layer = img.layers[0]!;
    const cold = await rawGet(`${proxy.url}/v2/${H}/team/redir/blobs/${layer.digest}`);
    expect(cold.status).toBe(200);
    expect(sha(cold.body)).toBe(layer.digest);
    await downloadsSettled(proxy);
    // The replica that downloaded it keeps a local copy (storage.s3.localCache); redirects still point at S3.
    const hex = layer.digest.slice(7);
    expect(readFileSync(join(proxy.dataDir, 's3-hot', 'blobs', 'sha256', hex.slice(0, 2), hex)).length).toBe(layer.size);
    const warm = await rawGet(`${proxy.url}/v2/${H}/team/redir/blobs/${layer.digest}`);
    expect(warm.status).toBe(307);
    expect(warm.headers['docker-content-digest']).toBe(layer.digest);
    const location = warm.headers.location!;
    expect(location.startsWith(`${weed.endpoint}/${BUCKET}/${prefix}v1/blobs/sha256/`)).toBe(true);
    expect(location).toContain('X-Amz-Expires=30');
    const got = await fetch(location);
    expect(got.status).toBe(200);
    expect(sha(Buffer.from(await got.arrayBuffer()))).toBe(layer.digest);
    // The redirect is only for admitted blobs: an unknown digest is still refused by the gate, not redirected.
    const other = await rawGet(`${proxy.url}/v2/${H}/team/redir/blobs/${sha(Buffer.from('not admitted'))}`);
    expect(other.status).toBe(403);
  });
});

describe('S3 behaviours this store relies on, as SeaweedFS implements them', () => {
  it('CompleteMultipartUpload and PutObject with If-None-Match: * on an existing key answer 412', async () => {
    const prefix = 'conditional/';
    const { store: st, done } = await store(prefix);
    try {
      const first = randomBytes(1024);
      await write(st, first);
      const digest = sha(first);
      const existing = keyOf(prefix, digest);
      const put = s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: existing, Body: randomBytes(10), IfNoneMatch: '*' }));
      await expect(put).rejects.toMatchObject({ $metadata: { httpStatusCode: 412 } });
      const created = await s3.send(new CreateMultipartUploadCommand({ Bucket: BUCKET, Key: existing }));
      const part = await s3.send(new UploadPartCommand({ Bucket: BUCKET, Key: existing, UploadId: created.UploadId, PartNumber: 1, Body: randomBytes(10) }));
      const complete = s3.send(
        new CompleteMultipartUploadCommand({
          Bucket: BUCKET,
          Key: existing,
          UploadId: created.UploadId,
          MultipartUpload: { Parts: [{ PartNumber: 1, ETag: part.ETag }] },
          IfNoneMatch: '*',
        }),
      );
      await expect(complete).rejects.toMatchObject({ $metadata: { httpStatusCode: 412 } });
      await s3.send(new AbortMultipartUploadCommand({ Bucket: BUCKET, Key: existing, UploadId: created.UploadId }));
      expect((await objectBytes(existing)).equals(first)).toBe(true);
    } finally {
      await done();
    }
  });

  it('names the server version (README: what was verified against what)', () => {
    expect(weed.version).toMatch(/version/i);
  });
});
