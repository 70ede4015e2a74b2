/**
 * e2e: a blob too big to hold (issue 13's and issue 16's 12 GiB layer), through real processes (`node dist/cli.js
 * serve`), the real Distribution registry and a real SeaweedFS. The size is `PORTCULLIS_BIG_BLOB_GIB` (default 0.5 GiB
 * so that CI stays short; the spec's 12 GiB is `PORTCULLIS_BIG_BLOB_GIB=12`, which SeaweedFS's ingest rate makes a
 * run of an hour or more on a busy 2-core machine), and every assertion holds
 * whatever the size: peak RSS under a fixed bound, no visible partial object, correct bytes.
 *
 * - Two replicas on S3: the owner of the cold blob is killed -9 when the other replica's client has half of it. That
 *   client gets every byte right (its replica resumes from the upstream), the dead owner's client retries on the
 *   survivor and gets the right bytes, nothing is visible under the digest key until the complete, verified object,
 *   and the dead owner's multipart upload is aborted by the survivor at takeover (the sweeper would wait a day).
 * - One process with a filesystem cache a quarter of the blob's size: the blob streams through with the right digest,
 *   a client that disconnects half way resumes with a Range and gets the right second half, nothing of the blob is
 *   left on disk (neither a temp file nor a blob over the bound), and RSS stays bounded.
 */
import { GetObjectCommand, HeadObjectCommand, ListMultipartUploadsCommand, type S3Client } from '@aws-sdk/client-s3';
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ownerOf } from '../../src/cluster/rendezvous.js';
import { bigBlobSize, GiB, hashedGet, MiB, pushBigImage, watchPeakRss, type BigImage } from '../harness/big-blob.js';
import { spawnReplica, startCluster, type Replica, type RunningCluster } from '../harness/cluster.js';
import { pushImage, MANIFEST_ACCEPT } from '../harness/images.js';
import { freePort, startRegistry, type RunningRegistry } from '../harness/registry.js';
import { startSeaweed, type RunningSeaweed } from '../harness/seaweedfs.js';

const SIZE = bigBlobSize(0.5);
/**
 * Peak RSS of any process, whatever the blob's size: memory must not grow with it. Below the default blob's 512 MiB
 * plus a process's base (~150 MiB), so a process that held the blob would fail it; replicas on S3 were seen at
 * 230-275 MiB under a load of 20-30, too close to the first bound tried (300).
 */
const RSS_BOUND_MIB = 400;
const BUCKET = 'portcullis-bigblob';
const PREFIX = 'big/';
/** Polling bounds that grow with the size (the transfers do); never an assertion on time. */
const BOUND_MS = 120_000 + (SIZE / GiB) * 120_000;
const GIB_LABEL = `${+(SIZE / GiB).toFixed(2)} GiB`;

let reg: RunningRegistry;
let tmp: string;
/** One image for both parts: the registry holds the big layer once. */
let img: BigImage;

beforeAll(
  async () => {
    tmp = await mkdtemp('/tmp/pcbigblob-');
    reg = await startRegistry();
    img = await pushBigImage(reg.url, 'big/blob', 'v1', { seed: 'portcullis-bigblob', size: SIZE });
  },
  120_000 + (SIZE / GiB) * 120_000,
);

afterAll(async () => {
  await reg?.stop();
  if (tmp) await rm(tmp, { recursive: true, force: true });
}, 120_000);

async function admit(base: string, image: BigImage): Promise<void> {
  const res = await fetch(`${base}/v2/${image.repo}/manifests/${image.tag}?ns=${encodeURIComponent(reg.host)}`, { headers: { accept: MANIFEST_ACCEPT } });
  if (res.status !== 200) throw new Error(`manifest via ${base}: HTTP ${res.status} ${await res.text()}`);
  await res.arrayBuffer();
}

const blobUrl = (base: string, image: BigImage): string => `${base}/v2/${image.repo}/blobs/${image.layer.digest}?ns=${encodeURIComponent(reg.host)}`;

async function until<T>(what: string, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + BOUND_MS;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${BOUND_MS} ms`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** Every file under dir with its size, its path relative to dir. */
async function files(dir: string): Promise<Array<{ path: string; size: number }>> {
  const out: Array<{ path: string; size: number }> = [];
  for (const e of await readdir(dir, { recursive: true, withFileTypes: true }).catch(() => [])) {
    if (!e.isFile()) continue;
    const p = path.join(e.parentPath, e.name);
    const st = await stat(p).catch(() => undefined);
    if (st) out.push({ path: path.relative(dir, p), size: st.size });
  }
  return out;
}

describe(`a ${GIB_LABEL} blob into S3 with its owner killed at half way`, () => {
  let weed: RunningSeaweed;
  let s3: S3Client;
  let cluster: RunningCluster;

  beforeAll(async () => {
    // The dead owner's half (not reclaimed before a vacuum), the survivor's whole copy, and a margin.
    weed = await startSeaweed({ capacity: Math.ceil(SIZE * 1.6) + 512 * MiB });
    await weed.createBucket(BUCKET);
    s3 = weed.client();
    cluster = await startCluster({
      replicas: 2,
      dir: path.join(tmp, 'cluster'),
      upstream: { name: 'local', registry: reg.host, url: reg.url },
      weed,
      bucket: BUCKET,
      prefix: PREFIX,
      // The defaults, said out loud: only the takeover can abort the dead owner's upload within this test.
      // 16 MiB parts (the default) rather than the harness's 5 MiB: SeaweedFS ingests them twice as fast here.
      s3: { abandonedUploadAge: '24h', sweepInterval: '1h', partSize: '16MiB' },
    });
  }, 180_000);

  afterAll(async () => {
    await cluster?.stop();
    s3?.destroy();
    await weed?.stop();
    await rm(path.join(tmp, 'cluster'), { recursive: true, force: true });
  }, 120_000);

  it(
    'the waiting clients get the right bytes, no partial object is visible, the upload is aborted, RSS stays bounded',
    async () => {
      const key = `${PREFIX}v1/blobs/sha256/${img.layer.digest.slice('sha256:'.length)}`;
      const ownerUrl = ownerOf(img.layer.digest, cluster.replicas.map((r) => r.url).sort())!;
      const owner = cluster.replicas.find((r) => r.url === ownerUrl)!;
      const survivor = cluster.replicas.find((r) => r !== owner)!;
      await Promise.all(cluster.replicas.map((r) => admit(r.url, img)));
      const rss = watchPeakRss(cluster.replicas.map((r) => r.child.pid!));
      const t0 = Date.now();

      let atKill: Promise<number | undefined> | undefined;
      const killAtHalf = (n: number): void => {
        if (atKill || n < SIZE / 2) return;
        owner.kill('SIGKILL');
        // What a reader of the bucket sees at that moment: nothing under the key (HEAD status, 404 expected).
        atKill = s3.send(new HeadObjectCommand({ Bucket: BUCKET, Key: key })).then(
          () => 200,
          (e: unknown) => (e as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode,
        );
      };
      const [viaSurvivor, viaOwner] = await Promise.all([hashedGet(blobUrl(survivor.url, img), { onBytes: killAtHalf }), hashedGet(blobUrl(owner.url, img))]);
      await owner.exited;
      // The dead owner's temp file is garbage now (a restart would remove it): free the disk at once.
      await rm(path.join(tmp, 'cluster', `replica-${cluster.replicas.indexOf(owner)}`, 'tmp'), { recursive: true, force: true });
      expect(atKill, 'the owner was killed while the survivor was reading').toBeDefined();
      expect(await atKill, 'HEAD of the digest key at the kill').toBe(404);

      // The survivor's client: not a break, the right bytes (its replica resumed from the upstream with a Range).
      expect(viaSurvivor).toMatchObject({ status: 200, bytes: SIZE, digest: img.layer.digest });
      expect(viaSurvivor.error).toBeUndefined();
      // The owner's client: cut off (or, had it finished, the right bytes); its retry on the survivor is right.
      if (viaOwner.error === undefined) expect(viaOwner.digest).toBe(img.layer.digest);
      const tClients = Date.now();
      const retry = await hashedGet(blobUrl(survivor.url, img));
      const tRetry = Date.now();
      expect(retry).toMatchObject({ status: 200, bytes: SIZE, digest: img.layer.digest });

      // The survivor's own copy lands, complete and verified; nothing else is ever under the key.
      const head = await until('the survivor’s object', () =>
        s3.send(new HeadObjectCommand({ Bucket: BUCKET, Key: key })).then(
          (h) => h,
          () => undefined,
        ),
      );
      const tObject = Date.now();
      expect(head.ContentLength).toBe(SIZE);
      const body = (await s3.send(new GetObjectCommand({ Bucket: BUCKET, Key: key }))).Body as AsyncIterable<Buffer>;
      const h = createHash('sha256');
      for await (const c of body) h.update(c);
      expect(`sha256:${h.digest('hex')}`).toBe(img.layer.digest);

      // The dead owner's multipart upload is gone, aborted by the survivor when it took over (the sweeper is an
      // hour and a day away here), and the survivor's own completed.
      const left = await s3.send(new ListMultipartUploadsCommand({ Bucket: BUCKET, Prefix: key }));
      expect(left.Uploads ?? [], survivor.output().slice(-2000)).toEqual([]);

      const peaks = rss.stop();
      const seconds = (Date.now() - t0) / 1000;
      const phases = `clients ${(tClients - t0) / 1000} s, retry ${(tRetry - tClients) / 1000} s, object ${(tObject - tRetry) / 1000} s`;
      console.info(
        `bigblob S3 owner kill, ${GIB_LABEL}: ${seconds.toFixed(1)} s (${phases}); peak RSS owner ${peaks[cluster.replicas.indexOf(owner)]!.toFixed(0)} MiB, ` +
          `survivor ${peaks[cluster.replicas.indexOf(survivor)]!.toFixed(0)} MiB; owner's client ${viaOwner.bytes} bytes (${viaOwner.error ?? 'complete'})`,
      );
      for (const [i, p] of peaks.entries()) expect(p, `peak RSS of replica ${i} (MiB)`).toBeLessThan(RSS_BOUND_MIB);
      for (const p of peaks) expect(p).toBeGreaterThan(0);
    },
    600_000 + (SIZE / GiB) * 300_000,
  );
});

describe(`a ${GIB_LABEL} blob through a filesystem cache a quarter of its size`, () => {
  let proc: Replica;
  let dataDir: string;
  const maxSize = Math.floor(SIZE / 4);

  beforeAll(async () => {
    dataDir = path.join(tmp, 'fs-data');
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    const config = path.join(tmp, 'fs.json');
    await writeFile(
      config,
      JSON.stringify({
        listen: `127.0.0.1:${port}`,
        dataDir,
        upstreams: [{ name: 'local', registry: reg.host, url: reg.url, retries: 2 }],
        log: { level: 'warn' },
        decisionLog: { sink: 'none' },
        policy: {
          bundleFile: path.resolve(import.meta.dirname, '../../policies/bundle.tar.gz'),
          settings: { no_match: 'deny', scopes: [{ name: 'all', images: ['**'] }] },
        },
        cache: { maxSize },
      }),
    );
    proc = await spawnReplica(url, config, {});
  }, 120_000);

  afterAll(async () => {
    proc?.kill('SIGKILL');
    await proc?.exited;
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  }, 60_000);

  it(
    'streams with the right digest, resumes with a Range after a disconnect half way, leaves nothing on disk, RSS bounded',
    async () => {
      // Something cached already: the big blob must not make it exceed its bound.
      const small = await pushImage(reg.url, 'big/small', 'v1', { layers: 2, layerSizeMiB: 4 });
      const smallImg = { repo: 'big/small', tag: 'v1', layer: { digest: small.layers[0]!.digest } } as BigImage;
      await admit(proc.url, smallImg);
      expect(await hashedGet(blobUrl(proc.url, smallImg))).toMatchObject({ status: 200, digest: small.layers[0]!.digest });

      await admit(proc.url, img);
      const rss = watchPeakRss([proc.child.pid!]);
      const { split, headDigest, tailDigest } = img.layer;

      // A client goes away at half way, then resumes where it stopped.
      const first = await hashedGet(blobUrl(proc.url, img), { stopAfter: split });
      expect(first).toMatchObject({ status: 200, bytes: split, digest: headDigest });
      const rest = await hashedGet(blobUrl(proc.url, img), { range: `bytes=${split}-` });
      expect(rest).toMatchObject({ status: 206, bytes: SIZE - split, digest: tailDigest });
      expect(rest.error).toBeUndefined();
      expect(rest.headers['content-range']).toBe(`bytes ${split}-${SIZE - 1}/${SIZE}`);

      // A whole pull streams through with the right digest.
      const whole = await hashedGet(blobUrl(proc.url, img));
      expect(whole).toMatchObject({ status: 200, bytes: SIZE, digest: img.layer.digest });
      expect(whole.error).toBeUndefined();

      // Nothing half-written is left, and the cache holds no more than its bound (the blob did not stay).
      const left = await until('the temp files removed', async () => {
        const all = await files(dataDir);
        return all.some((f) => f.path.startsWith(`tmp${path.sep}`)) ? undefined : all;
      });
      const cached = left.filter((f) => f.path.startsWith(`blobs${path.sep}`));
      expect(cached.reduce((n, f) => n + f.size, 0)).toBeLessThanOrEqual(maxSize);
      expect(cached.map((f) => path.basename(f.path))).not.toContain(img.layer.digest.slice('sha256:'.length));
      // The small blob was served and cached before; it may stay (it fits) or not, but is never damaged.
      expect(await hashedGet(blobUrl(proc.url, smallImg))).toMatchObject({ status: 200, digest: small.layers[0]!.digest });

      const [peak] = rss.stop();
      console.info(`bigblob filesystem cache of ${(maxSize / MiB).toFixed(0)} MiB, ${GIB_LABEL}: peak RSS ${peak!.toFixed(0)} MiB`);
      expect(peak).toBeLessThan(RSS_BOUND_MIB);
      expect(peak).toBeGreaterThan(0);
    },
    600_000 + (SIZE / GiB) * 300_000,
  );
});
