/**
 * A replica that streams a blob from its cluster owner does not upload a second copy to the shared bucket: its
 * writer (`writtenElsewhere`) defers every part, and at commit waits, bounded, for the owner's object. Against a real
 * SeaweedFS: the owner's copy appears → nothing uploaded; it never appears (the owner died after sending) → the
 * verified file is uploaded after all, part by part; the owner was lost mid-stream → uploaded at once.
 */
import { ListMultipartUploadsCommand, GetObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { S3BlobStore } from '../../src/cache/s3-blobstore.js';
import { storageSchema, type S3Config } from '../../src/config/storage.js';
import type { Digest } from '../../src/routing/reference.js';
import { startSeaweed, type RunningSeaweed } from '../harness/seaweedfs.js';

const MiB = 1024 * 1024;
const BUCKET = 'portcullis-peer-writer';
const sha = (b: Buffer): Digest => `sha256:${createHash('sha256').update(b).digest('hex')}`;

let weed: RunningSeaweed;
let s3: S3Client;
const stores: Array<() => Promise<void>> = [];

beforeAll(async () => {
  weed = await startSeaweed();
  await weed.createBucket(BUCKET);
  s3 = weed.client();
}, 120_000);

afterAll(async () => {
  for (const done of stores) await done();
  s3?.destroy();
  await weed?.stop();
});

async function store(prefix: string, now?: () => number): Promise<S3BlobStore> {
  const cfg = storageSchema.parse({
    blobs: 's3',
    s3: { endpoint: weed.endpoint, bucket: BUCKET, prefix, forcePathStyle: true, allowInsecureHttp: true, partSize: '5MiB' },
  });
  const tmp = await mkdtemp(join(tmpdir(), 'pc-peerw-'));
  const st = new S3BlobStore({
    client: weed.client(),
    config: cfg.s3 as S3Config,
    tmpDir: tmp,
    maxSize: 1 << 30,
    redirectExpiry: 60_000,
    ...(now ? { now } : {}),
  });
  await st.ready;
  stores.push(async () => {
    await st.close();
    await rm(tmp, { recursive: true, force: true });
  });
  return st;
}

async function uploads(prefix: string): Promise<number> {
  const r = await s3.send(new ListMultipartUploadsCommand({ Bucket: BUCKET, Prefix: prefix }));
  return (r.Uploads ?? []).length;
}

async function objectDigest(key: string): Promise<string> {
  const r = await s3.send(new GetObjectCommand({ Bucket: BUCKET, Key: key }));
  return sha(Buffer.from(await (r.Body as { transformToByteArray(): Promise<Uint8Array> }).transformToByteArray()));
}

/** Writes bytes in 1 MiB pieces, counting multipart uploads in flight after the writes (before the commit). */
async function writeAll(
  st: S3BlobStore,
  bytes: Buffer,
  elsewhere: () => boolean,
  prefix: string,
): Promise<{ uploadsBeforeCommit: number; commit: Promise<void> }> {
  const w = await st.createWriter(sha(bytes), bytes.length, { writtenElsewhere: elsewhere });
  for (let i = 0; i < bytes.length; i += MiB) await w.write(bytes.subarray(i, Math.min(bytes.length, i + MiB)));
  return { uploadsBeforeCommit: await uploads(prefix), commit: w.commit() };
}

describe('a writer whose blob another replica stores', () => {
  it("uploads nothing when the owner's object appears", async () => {
    const prefix = 'appears/';
    const owner = await store(prefix);
    const follower = await store(prefix);
    const bytes = randomBytes(12 * MiB + 3);
    const digest = sha(bytes);
    const { uploadsBeforeCommit, commit } = await writeAll(follower, bytes, () => true, prefix);
    expect(uploadsBeforeCommit).toBe(0);
    // The owner completes its own copy while the follower is waiting for it.
    const ow = await owner.createWriter(digest, bytes.length);
    await ow.write(bytes);
    await ow.commit();
    await commit;
    expect(follower.has(digest)).toBe(true);
    expect(await uploads(prefix)).toBe(0);
    expect(await objectDigest(owner.keyFor(digest))).toBe(digest);
  }, 60_000);

  it('uploads the verified file itself when no copy appears within the bound', async () => {
    const prefix = 'never/';
    // A clock that runs 4 s per reading: the 10 s wait ends after a few HEADs, without waiting 10 s.
    let t = Date.now();
    const follower = await store(prefix, () => (t += 4_000));
    const bytes = randomBytes(11 * MiB + 5);
    const digest = sha(bytes);
    const { uploadsBeforeCommit, commit } = await writeAll(follower, bytes, () => true, prefix);
    expect(uploadsBeforeCommit).toBe(0);
    await commit;
    expect(follower.has(digest)).toBe(true);
    expect(await objectDigest(follower.keyFor(digest))).toBe(digest);
    expect(await uploads(prefix)).toBe(0);
  }, 60_000);

  it('uploads at once when the owner was lost (writtenElsewhere turned false)', async () => {
    const prefix = 'lost/';
    // A clock that never moves: were it waiting for another copy, it would wait its full bound in real time.
    const follower = await store(prefix, () => 1_800_000_000_000);
    const bytes = randomBytes(6 * MiB);
    const digest = sha(bytes);
    const { commit } = await writeAll(follower, bytes, () => false, prefix);
    await commit;
    expect(await objectDigest(follower.keyFor(digest))).toBe(digest);
  }, 60_000);
});
