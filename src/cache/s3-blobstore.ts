/**
 * Blobs in an S3-compatible bucket (`storage.blobs: s3`), so that the replicas of a central tier share one copy.
 *
 * Layout: `<prefix>v1/blobs/<algorithm>/<hex>`, one object per blob under its digest (the `v1` is the layout's
 * version). Writes: see s3-upload.ts (multipart while hashed, completed with If-None-Match only after the digest
 * matched). Reads: GetObject with Range, or with `storage.redirect` a presigned GET URL that expires after
 * `redirectExpiry`. A whole-blob read is hashed on the way out and its last chunk held back until the hash matches,
 * so a tampered or damaged object breaks the transfer instead of completing it.
 *
 * What the store holds is listed at start into the same size-bounded LRU the filesystem store uses (blob-index.ts),
 * oldest LastModified first; reads make a blob most recently used, and eviction deletes the least recently used
 * object that no reader of this process holds. The sweeper aborts incomplete uploads older than
 * `abandonedUploadAge` (a crashed writer's) and adds objects other replicas wrote.
 */
import {
  AbortMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  type S3Client,
} from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { createHash } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import { join } from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import { finished, pipeline } from 'node:stream/promises';
import type { S3Config } from '../config/storage.js';
import { digestAlgorithm, digestHex, isDigest, type Digest } from '../routing/reference.js';
import { drained, prematureClose } from '../util/drain.js';
import { BlobIndex, type BlobIndexEvents } from './blob-index.js';
import type { BlobLease, BlobStore, BlobWriter, FileBlobStore, StoredBlob, WriterOptions } from './blobstore.js';
import { ensureBucketLayout } from './s3-layout.js';
import { s3Status, s3UploadHooks } from './s3-upload.js';
import { createSpool, removeOrphanedSpools } from './spool.js';

/** The object layout's version: a future layout goes under v2/ next to it. */
export const S3_LAYOUT = 'v1';
/** How long a replica waits for a cluster owner's copy of a blob before uploading its own. */
const AWAIT_OTHER_MS = 10_000;
/** Bounds one listing (of objects or uploads) to this many pages of up to 1,000 each. */
const MAX_LIST_PAGES = 10_000;

export interface S3BlobStoreOptions {
  client: S3Client;
  config: S3Config;
  /** Local directory for the temp files of running downloads (readers tail them; see cache/download.ts). */
  tmpDir: string;
  maxSize: number;
  /** Lifetime of presigned URLs (storage.redirectExpiry). */
  redirectExpiry: number;
  events?: BlobIndexEvents & { onError?: (what: string, err: unknown) => void };
  /** The clock: upload ages, last access, and the presigner's signing date. */
  now?: () => number;
  /**
   * The local disk tier (storage.s3.localCache): keeps the blobs this process downloaded, under its own LRU bound,
   * and serves them without a round trip to S3. A copy there is only a copy: the S3 index decides what exists, and
   * a blob evicted from S3 leaves the local tier too.
   */
  hot?: FileBlobStore;
}

export class S3BlobStore implements BlobStore {
  readonly maxSize: number;
  readonly ready: Promise<void>;
  private readonly client: S3Client;
  private readonly bucket: string;
  /** `<prefix>v1/blobs/` */
  private readonly root: string;
  private readonly index: BlobIndex;
  private readonly now: () => number;
  /** Multipart uploads this process is running: the sweeper leaves them alone whatever their age. */
  private readonly active = new Set<string>();
  private readonly sweeper: NodeJS.Timeout;
  /** DeleteObject calls in flight, by digest (see UploadTarget.pendingDelete). */
  private readonly deleting = new Map<Digest, Promise<void>>();

  constructor(private readonly opts: S3BlobStoreOptions) {
    this.client = opts.client;
    this.bucket = opts.config.bucket;
    this.root = `${opts.config.prefix}${S3_LAYOUT}/blobs/`;
    this.maxSize = opts.maxSize;
    this.now = opts.now ?? Date.now;
    this.index = new BlobIndex({
      maxSize: opts.maxSize,
      removeBytes: (digest) => {
        void opts.hot?.remove(digest);
        this.deleteObject(digest);
      },
      ...(opts.events ? { events: opts.events } : {}),
      now: this.now,
    });
    removeOrphanedSpools(opts.tmpDir);
    // The bucket's layout marker first: a layout from a newer release stops the start before anything is listed.
    this.ready = ensureBucketLayout({ client: this.client, bucket: this.bucket, prefix: opts.config.prefix }).then(() => this.sweep().then(() => {}));
    this.ready.catch(() => {});
    this.sweeper = setInterval(() => {
      this.sweep().catch((e: unknown) => this.opts.events?.onError?.('sweep', e));
    }, opts.config.sweepInterval);
    this.sweeper.unref();
  }

  keyFor(digest: Digest): string {
    return `${this.root}${digestAlgorithm(digest)}/${digestHex(digest)}`;
  }

  private digestOf(key: string): Digest | undefined {
    if (!key.startsWith(this.root)) return undefined;
    const [alg, hex, extra] = key.slice(this.root.length).split('/');
    const digest = `${alg}:${hex}`;
    return extra === undefined && isDigest(digest) ? digest : undefined;
  }

  get totalBytes(): number {
    return this.index.totalBytes;
  }

  get entries(): number {
    return this.index.entries;
  }

  has(digest: Digest): boolean {
    return this.index.has(digest);
  }

  size(digest: Digest): number | undefined {
    return this.index.size(digest);
  }

  lease(digest: Digest): BlobLease | undefined {
    const pin = this.index.acquire(digest);
    if (!pin) return undefined;
    const size = pin.size;
    const local = this.opts.hot?.lease(digest);
    if (local) {
      return {
        size,
        stream: (start, end) => local.stream(start, end),
        writeTo: (res, start, end, onBytes) => local.writeTo(res, start, end, onBytes),
        redirectUrl: () => this.presign(digest),
        release: () => {
          local.release();
          pin.release();
        },
      };
    }
    return {
      size,
      stream: (start, end) => this.stream(digest, start, end),
      writeTo: (res, start, end, onBytes) => this.writeTo(digest, size, res, start, end, onBytes),
      redirectUrl: () => this.presign(digest),
      release: pin.release,
    };
  }

  /**
   * One HeadObject: an object under the digest key that the index does not know yet (another replica completed it)
   * is tracked. Only verified bytes are ever completed under a digest key (s3-upload.ts), and a whole-blob read
   * verifies them again on the way out. A failure means "not known", so the caller downloads as usual.
   */
  async refresh(digest: Digest): Promise<void> {
    if (this.index.has(digest)) return;
    try {
      const head = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: this.keyFor(digest) }));
      const size = head.ContentLength;
      if (size !== undefined && size >= 0 && !this.index.has(digest)) this.index.track(digest, size, this.now());
    } catch (e) {
      if (s3Status(e) !== 404) this.opts.events?.onError?.('refresh', e);
    }
  }

  /**
   * Waits, bounded (AWAIT_OTHER_MS), for another writer's object under the digest key: true once it is there (and
   * tracked). A cluster owner completes its upload about when its last byte reaches us, so this usually takes one
   * or two HEADs; false means it never came (the owner died after sending) and the caller uploads its own copy.
   */
  private async awaitObject(digest: Digest): Promise<boolean> {
    const deadline = this.now() + AWAIT_OTHER_MS;
    for (let delay = 50; ; delay = Math.min(1_000, delay * 2)) {
      await this.refresh(digest);
      if (this.index.has(digest)) return true;
      if (this.now() + delay > deadline) return false;
      await new Promise((r) => setTimeout(r, delay));
    }
  }

  /** A GET URL for the object, signed as of now() and valid for redirectExpiry. */
  presign(digest: Digest): Promise<string> {
    return getSignedUrl(this.client, new GetObjectCommand({ Bucket: this.bucket, Key: this.keyFor(digest) }), {
      expiresIn: Math.max(1, Math.round(this.opts.redirectExpiry / 1000)),
      signingDate: new Date(this.now()),
    });
  }

  private async get(digest: Digest, start: number, end: number, signal: AbortSignal): Promise<Readable> {
    try {
      const out = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: this.keyFor(digest), Range: `bytes=${start}-${end}` }), {
        abortSignal: signal,
      });
      return out.Body as Readable;
    } catch (e) {
      // Deleted behind our back (another replica's eviction, an operator): stop offering it.
      if (s3Status(e) === 404) this.index.forget(digest);
      throw e;
    }
  }

  private stream(digest: Digest, start: number, end: number): Readable {
    const out = new PassThrough({ highWaterMark: 1024 * 1024 });
    const ac = new AbortController();
    out.once('close', () => ac.abort());
    this.get(digest, start, end, ac.signal)
      .then((body) => pipeline(body, out))
      .catch((e: unknown) => out.destroy(e instanceof Error ? e : new Error(String(e))));
    return out;
  }

  private async writeTo(digest: Digest, size: number, res: ServerResponse, start: number, end: number, onBytes?: (n: number) => void): Promise<void> {
    const ac = new AbortController();
    const onClose = (): void => ac.abort();
    res.once('close', onClose);
    // A whole blob is verified on the way out: its last chunk waits for the hash (partial ranges cannot be).
    const hash = start === 0 && end === size - 1 ? createHash(digestAlgorithm(digest)) : undefined;
    let held: Buffer | undefined;
    let sent = 0;
    const send = async (chunk: Buffer): Promise<void> => {
      if (res.destroyed) throw prematureClose();
      sent += chunk.length;
      onBytes?.(chunk.length);
      if (!res.write(chunk)) await drained(res);
    };
    let body: Readable | undefined;
    try {
      body = await this.get(digest, start, end, ac.signal);
      for await (const chunk of body as AsyncIterable<Buffer>) {
        if (!hash) {
          await send(chunk);
          continue;
        }
        hash.update(chunk);
        if (held) await send(held);
        held = chunk;
      }
      const got = sent + (held?.length ?? 0);
      if (got !== end - start + 1) throw new Error(`S3 object ${this.keyFor(digest)} sent ${got} bytes for a range of ${end - start + 1}`);
      if (hash) {
        const actual = `${digestAlgorithm(digest)}:${hash.digest('hex')}`;
        if (actual !== digest) {
          this.opts.events?.onError?.('verify', new Error(`S3 object ${this.keyFor(digest)} does not match its digest (got ${actual}): removed`));
          this.index.remove(digest);
          throw new Error(`S3 object for ${digest} does not match its digest`);
        }
        if (held) await send(held);
      }
      res.end();
      await finished(res);
    } finally {
      res.off('close', onClose);
      body?.destroy();
    }
  }

  createWriter(digest: Digest, expectedSize?: number, o: WriterOptions = {}): Promise<BlobWriter> {
    const elsewhere = o.writtenElsewhere;
    return createSpool(this.opts.tmpDir, digest, expectedSize, (tmpPath) =>
      s3UploadHooks(
        {
          client: this.client,
          bucket: this.bucket,
          key: this.keyFor(digest),
          partSize: this.opts.config.partSize,
          expectedSize,
          active: this.active,
          committed: (size) => this.index.track(digest, size),
          pendingDelete: () => this.deleting.get(digest),
          ...(elsewhere ? { otherWriter: () => (elsewhere() ? this.awaitObject(digest) : Promise.resolve(false)) } : {}),
          ...(this.opts.hot ? { keep: (path: string, size: number) => (this.opts.hot as FileBlobStore).adopt(digest, path, size) } : {}),
        },
        tmpPath,
      ),
    );
  }

  async putBuffer(digest: Digest, bytes: Buffer): Promise<void> {
    if (this.has(digest)) return;
    const w = await this.createWriter(digest, bytes.length);
    try {
      await w.write(bytes);
      await w.commit();
    } catch (e) {
      await w.abort();
      throw e;
    }
  }

  remove(digest: Digest): Promise<void> {
    this.index.remove(digest);
    return Promise.resolve();
  }

  // eslint-disable-next-line @typescript-eslint/require-await -- async in the interface for a paged bucket listing; this index is in memory
  async *list(): AsyncIterable<StoredBlob> {
    yield* this.index.list();
  }

  private deleteObject(digest: Digest): void {
    const before = this.deleting.get(digest) ?? Promise.resolve();
    const p = before
      .then(() => this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.keyFor(digest) })))
      .then(
        () => {},
        (e: unknown) => this.opts.events?.onError?.('delete', e),
      )
      .finally(() => {
        if (this.deleting.get(digest) === p) this.deleting.delete(digest);
      });
    this.deleting.set(digest, p);
  }

  /**
   * Aborts incomplete uploads under the prefix older than abandonedUploadAge (a crashed writer's: the parts cost
   * storage and are never visible), then lists the objects and tracks the ones not yet known, oldest first.
   */
  async sweep(): Promise<{ aborted: number; found: number }> {
    const aborted = await this.abortAbandonedUploads();
    const found: StoredBlob[] = [];
    let token: string | undefined;
    for (let page = 0; page < MAX_LIST_PAGES; page++) {
      const r = await this.client.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: this.root, ContinuationToken: token }));
      for (const o of r.Contents ?? []) {
        const digest = o.Key ? this.digestOf(o.Key) : undefined;
        if (digest && !this.index.has(digest)) found.push({ digest, size: o.Size ?? 0, lastAccess: o.LastModified?.getTime() ?? 0 });
      }
      if (!r.IsTruncated || !r.NextContinuationToken) break;
      token = r.NextContinuationToken;
    }
    found.sort((a, b) => a.lastAccess - b.lastAccess);
    for (const f of found) this.index.track(f.digest, f.size, f.lastAccess);
    return { aborted, found: found.length };
  }

  /**
   * A writer of this digest is known to be dead (a cluster owner whose stream broke: killed, partitioned): aborts the
   * incomplete uploads under its key that this process is not running and that began before `before` (ms since the
   * epoch, this clock), at once rather than after abandonedUploadAge, so that a 12 GiB blob's parts do not sit in the
   * bucket for a day. The time bound spares an upload a live replica began after the loss (the owner's successor);
   * the replicas that lost the same owner upload their copy only at commit, long after this. Bounded like the sweep.
   */
  async abortUploadsOf(digest: Digest, before: number): Promise<number> {
    const key = this.keyFor(digest);
    let aborted = 0;
    let keyMarker: string | undefined;
    let uploadIdMarker: string | undefined;
    for (let page = 0; page < MAX_LIST_PAGES; page++) {
      const r = await this.client.send(
        new ListMultipartUploadsCommand({ Bucket: this.bucket, Prefix: key, KeyMarker: keyMarker, UploadIdMarker: uploadIdMarker }),
      );
      for (const u of r.Uploads ?? []) {
        if (u.Key !== key || !u.UploadId || this.active.has(u.UploadId)) continue;
        if ((u.Initiated?.getTime() ?? 0) > before) continue;
        if (await this.abortUpload(u.Key, u.UploadId)) aborted++;
      }
      if (!r.IsTruncated) break;
      keyMarker = r.NextKeyMarker;
      uploadIdMarker = r.NextUploadIdMarker;
    }
    return aborted;
  }

  /** True when aborted; false when it was already gone (completed or aborted meanwhile by its writer). */
  private async abortUpload(key: string, uploadId: string): Promise<boolean> {
    try {
      await this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: key, UploadId: uploadId }));
      return true;
    } catch (e) {
      if (s3Status(e) !== 404) throw e;
      return false;
    }
  }

  private async abortAbandonedUploads(): Promise<number> {
    const cutoff = this.now() - this.opts.config.abandonedUploadAge;
    let aborted = 0;
    let keyMarker: string | undefined;
    let uploadIdMarker: string | undefined;
    for (let page = 0; page < MAX_LIST_PAGES; page++) {
      const r = await this.client.send(
        new ListMultipartUploadsCommand({ Bucket: this.bucket, Prefix: this.root, KeyMarker: keyMarker, UploadIdMarker: uploadIdMarker }),
      );
      for (const u of r.Uploads ?? []) {
        if (!u.Key || !u.UploadId || this.active.has(u.UploadId)) continue;
        if ((u.Initiated?.getTime() ?? 0) > cutoff) continue;
        if (await this.abortUpload(u.Key, u.UploadId)) aborted++;
      }
      if (!r.IsTruncated) break;
      keyMarker = r.NextKeyMarker;
      uploadIdMarker = r.NextUploadIdMarker;
    }
    return aborted;
  }

  async close(): Promise<void> {
    clearInterval(this.sweeper);
    await this.ready.catch(() => {});
    await Promise.all(this.deleting.values());
    await this.opts.hot?.close();
    this.client.destroy();
  }
}

/** The local directory for an S3 store's temp files. */
export function s3TmpDir(dataDir: string): string {
  return join(dataDir, 'tmp');
}
