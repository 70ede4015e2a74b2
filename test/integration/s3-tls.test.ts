/**
 * storage.blobs: s3 over https against a real SeaweedFS serving TLS: the blob bytes of UploadPart and PutObject go
 * with an unsigned payload (TLS protects them in transit; hashing them for SigV4 was a second SHA-256 of every cold
 * byte), while over plain http they stay signed. Either way the store accepts them and a read-back verifies.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { S3BlobStore } from '../../src/cache/s3-blobstore.js';
import { s3Client } from '../../src/cache/s3-client.js';
import { storageSchema, type S3Config } from '../../src/config/storage.js';
import type { Digest } from '../../src/routing/reference.js';
import { startSeaweed, type RunningSeaweed } from '../harness/seaweedfs.js';

const MiB = 1024 * 1024;
const BUCKET = 'portcullis-tls';
const sha = (b: Buffer): Digest => `sha256:${createHash('sha256').update(b).digest('hex')}`;

let weed: RunningSeaweed;

beforeAll(async () => {
  weed = await startSeaweed({ tls: true });
  await weed.createBucket(BUCKET);
}, 120_000);

afterAll(async () => {
  await weed?.stop();
});

/** The x-amz-content-sha256 header of each command as signed and sent. */
function spy(client: S3Client): Array<{ command: string; payload: string }> {
  const seen: Array<{ command: string; payload: string }> = [];
  // The store's layout marker (cache/s3-layout.ts) is a PutObject too; the test counts blob writes.
  client.middlewareStack.add(
    (next, context) => (args) => {
      const headers = (args.request as { headers?: Record<string, string> }).headers ?? {};
      if (String((args.input as { Key?: string }).Key ?? '').endsWith('layout.json')) return next(args);
      seen.push({ command: context.commandName ?? '', payload: headers['x-amz-content-sha256'] ?? '' });
      return next(args);
    },
    // After the signer (finalizeRequest, low priority): what goes on the wire.
    { step: 'finalizeRequest', priority: 'low', name: 'testPayloadSpy' },
  );
  return seen;
}

async function roundTrip(tls: boolean): Promise<Array<{ command: string; payload: string }>> {
  const https = weed.https;
  if (!https) throw new Error('weed was started without TLS');
  const cfg = storageSchema.parse({
    blobs: 's3',
    s3: {
      endpoint: tls ? https.endpoint : weed.endpoint,
      ...(tls ? { caFile: https.caFile } : { allowInsecureHttp: true }),
      bucket: BUCKET,
      prefix: tls ? 'tls/' : 'plain/',
      forcePathStyle: true,
      credentials: { accessKeyId: { env: 'PC_TLS_AK' }, secretAccessKey: { env: 'PC_TLS_SK' } },
      partSize: '5MiB',
    },
  });
  const env: Record<string, string> = { PC_TLS_AK: weed.accessKeyId, PC_TLS_SK: weed.secretAccessKey };
  const client = s3Client(cfg.s3 as S3Config, (ref) => env[ref.env ?? ''] ?? '');
  const seen = spy(client);
  const tmp = await mkdtemp(join(tmpdir(), 'pc-s3tls-'));
  const store = new S3BlobStore({ client, config: cfg.s3 as S3Config, tmpDir: tmp, maxSize: 1 << 30, redirectExpiry: 60_000 });
  try {
    await store.ready;
    // 12 MiB: two whole parts while writing and a last one (multipart); 1 MiB: one conditional PutObject.
    for (const bytes of [randomBytes(12 * MiB), randomBytes(MiB)]) {
      const digest = sha(bytes);
      const w = await store.createWriter(digest, bytes.length);
      await w.write(bytes);
      await w.commit();
      expect(store.has(digest)).toBe(true);
      const lease = store.lease(digest);
      if (!lease) throw new Error('no lease after commit');
      const h = createHash('sha256');
      for await (const chunk of lease.stream(0, bytes.length - 1)) h.update(chunk as Buffer);
      lease.release();
      expect(`sha256:${h.digest('hex')}`).toBe(digest);
    }
  } finally {
    await store.close();
    client.destroy();
    await rm(tmp, { recursive: true, force: true });
  }
  return seen;
}

const HEX = /^[0-9a-f]{64}$/;

describe('S3 over https: blob payloads unsigned, the rest signed', () => {
  it('over https, UploadPart and PutObject send UNSIGNED-PAYLOAD and SeaweedFS stores the verified bytes', async () => {
    const seen = await roundTrip(true);
    const blobCalls = seen.filter((s) => s.command === 'UploadPartCommand' || s.command === 'PutObjectCommand');
    expect(blobCalls.map((s) => s.command).sort()).toEqual(['PutObjectCommand', 'UploadPartCommand', 'UploadPartCommand', 'UploadPartCommand']);
    for (const c of blobCalls) expect(c.payload).toBe('UNSIGNED-PAYLOAD');
    // Commands that are not blob bytes keep a signed payload (CompleteMultipartUpload's XML body among them).
    const complete = seen.find((s) => s.command === 'CompleteMultipartUploadCommand');
    expect(complete?.payload).toMatch(HEX);
  }, 120_000);

  it('over plain http (allowInsecureHttp), blob payloads stay signed', async () => {
    const seen = await roundTrip(false);
    const blobCalls = seen.filter((s) => s.command === 'UploadPartCommand' || s.command === 'PutObjectCommand');
    expect(blobCalls).toHaveLength(4);
    for (const c of blobCalls) expect(c.payload).toMatch(HEX);
  }, 120_000);
});
