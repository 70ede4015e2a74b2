/**
 * How a verified write reaches S3 (the hooks of cache/spool.ts). Each full part is uploaded from the local temp file
 * as the download writes it, into a multipart upload created under the blob's final key; nothing is visible under
 * that key until CompleteMultipartUpload, which runs only after the digest matched and carries `If-None-Match: *`,
 * so a second writer of the same digest cannot replace the object (its completion fails with 412, and both objects
 * would be the same bytes anyway). A mismatch or failure aborts the upload; a crash leaves an incomplete upload that
 * the store's sweeper aborts once it is older than `abandonedUploadAge`. No upload-then-copy: CopyObject stops at
 * 5 GiB. A blob that fits in one part skips the multipart upload: one conditional PutObject of the verified file.
 */
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  PutObjectCommand,
  UploadPartCommand,
  type CompletedPart,
  type S3Client,
} from '@aws-sdk/client-s3';
import { open, unlink, type FileHandle } from 'node:fs/promises';
import type { SpoolHooks } from './spool.js';

/** S3 allows at most 10,000 parts; stay under it with room for a size that was not announced. */
const MAX_PARTS = 9_000;

export interface UploadTarget {
  client: S3Client;
  bucket: string;
  key: string;
  /** Configured part size; grown when the announced size would need more than MAX_PARTS parts. */
  partSize: number;
  expectedSize: number | undefined;
  /** Upload ids in progress in this process, which the sweeper must leave alone. */
  active: Set<string>;
  /** Called once the object exists under the key (written by us, or already there: 412). */
  committed(size: number): void;
  /**
   * A delete of this key still in flight (eviction, a damaged object), to wait for before publishing: otherwise
   * our conditional write could meet the doomed object (412, "already there") and the delete land after it.
   */
  pendingDelete(): Promise<void> | undefined;
  /**
   * Another writer is storing the same blob (a cluster owner): no part is uploaded while the download runs, and at
   * persist this resolves true once that writer's object exists (then nothing is uploaded at all) or false, and the
   * verified file is uploaded from disk after all.
   */
  otherWriter?(): Promise<boolean>;
  /** The local tier takes the verified spool file (it must move it away before resolving); absent: it is unlinked. */
  keep?(path: string, size: number): Promise<void>;
}

/** Spool hooks that stream the temp file's parts into a multipart upload. */
export function s3UploadHooks(t: UploadTarget, tmpPath: string): SpoolHooks {
  const partSize = Math.max(t.partSize, Math.ceil((t.expectedSize ?? 0) / MAX_PARTS));
  let uploadId: string | undefined;
  let file: FileHandle | undefined;
  let uploaded = 0;
  const parts: CompletedPart[] = [];

  /**
   * One buffer for the whole upload, reused part after part: parts go one at a time (afterWrite and persist await
   * each send, and the SDK is done with a body once send resolves), and a fresh buffer of partSize for every part
   * was tens of MiB of garbage per cold blob for the collector to chase.
   */
  let scratch: Buffer | undefined;
  const readRange = async (pos: number, n: number): Promise<Buffer> => {
    file ??= await open(tmpPath, 'r');
    if (!scratch || scratch.length < n) scratch = Buffer.allocUnsafeSlow(n);
    const buf = scratch.subarray(0, n);
    let got = 0;
    while (got < n) {
      const { bytesRead } = await file.read(buf, got, n - got, pos + got);
      if (bytesRead === 0) throw new Error(`short read from ${tmpPath} at ${pos + got}`);
      got += bytesRead;
    }
    return buf;
  };

  const uploadPart = async (n: number): Promise<void> => {
    if (uploadId === undefined) {
      const created = await t.client.send(new CreateMultipartUploadCommand({ Bucket: t.bucket, Key: t.key, ContentType: 'application/octet-stream' }));
      if (!created.UploadId) throw new Error('S3 CreateMultipartUpload returned no UploadId');
      uploadId = created.UploadId;
      t.active.add(uploadId);
    }
    const PartNumber = parts.length + 1;
    const body = await readRange(uploaded, n);
    const r = await t.client.send(new UploadPartCommand({ Bucket: t.bucket, Key: t.key, UploadId: uploadId, PartNumber, Body: body, ContentLength: n }));
    if (!r.ETag) throw new Error(`S3 UploadPart ${PartNumber} returned no ETag`);
    parts.push({ PartNumber, ETag: r.ETag });
    uploaded += n;
  };

  const closeFile = async (): Promise<void> => {
    await file?.close().catch(() => {});
    file = undefined;
  };

  const abortUpload = async (): Promise<void> => {
    if (uploadId === undefined) return;
    const id = uploadId;
    uploadId = undefined;
    try {
      await t.client.send(new AbortMultipartUploadCommand({ Bucket: t.bucket, Key: t.key, UploadId: id }));
    } finally {
      t.active.delete(id);
    }
  };

  return {
    sync: false,
    afterWrite: async (written) => {
      if (t.otherWriter) return;
      // Only whole parts while the download runs: S3 wants every part but the last to be at least 5 MiB.
      while (written - uploaded >= partSize) await uploadPart(partSize);
    },
    persist: async (path, size) => {
      try {
        await t.pendingDelete();
        if (t.otherWriter && (await t.otherWriter())) {
          // The other writer's object is there: keep a local copy if asked, upload nothing.
          await closeFile();
          if (t.keep) await t.keep(path, size).catch(() => {});
          return;
        }
        // Parts deferred for another writer: upload them from the verified file now (memory stays one part).
        while (size - uploaded > partSize) await uploadPart(partSize);
        if (uploadId === undefined) {
          // Fits in one part: a single conditional PUT of the verified bytes.
          const body = size > 0 ? await readRange(0, size) : Buffer.alloc(0);
          await conditional(() =>
            t.client.send(
              new PutObjectCommand({
                Bucket: t.bucket,
                Key: t.key,
                Body: body,
                ContentLength: size,
                IfNoneMatch: '*',
                ContentType: 'application/octet-stream',
              }),
            ),
          );
        } else {
          if (size > uploaded) await uploadPart(size - uploaded);
          const id = uploadId;
          const won = await conditional(() =>
            t.client.send(
              new CompleteMultipartUploadCommand({ Bucket: t.bucket, Key: t.key, UploadId: id, MultipartUpload: { Parts: parts }, IfNoneMatch: '*' }),
            ),
          );
          if (won) {
            t.active.delete(id);
            uploadId = undefined;
          } else {
            // Another writer completed first; our parts are garbage.
            await abortUpload();
          }
        }
        await closeFile();
        // The object is in S3: a failure to keep a local copy costs only the local tier.
        if (t.keep) await t.keep(path, size).catch(() => {});
      } finally {
        await closeFile();
        await unlink(path).catch(() => {});
      }
      t.committed(size);
    },
    discard: async () => {
      await closeFile();
      await abortUpload();
    },
  };
}

/** Runs a write with If-None-Match: true when it created the object, false when one was already there (412). */
async function conditional(send: () => Promise<unknown>): Promise<boolean> {
  try {
    await send();
    return true;
  } catch (e) {
    if (s3Status(e) === 412) return false;
    throw e;
  }
}

/** The HTTP status of an S3 error, or undefined. */
export function s3Status(e: unknown): number | undefined {
  const meta = (e as { $metadata?: { httpStatusCode?: number } } | undefined)?.$metadata;
  return meta?.httpStatusCode;
}
