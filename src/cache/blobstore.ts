/**
 * The blob store: content-addressed bytes under their digest, whatever holds them. Handlers, downloads, eviction
 * and garbage collection depend on the BlobStore interface below, never on a class; `storage.blobs` picks the
 * implementation (this file's FileBlobStore, or S3BlobStore in s3-blobstore.ts) in server/app.ts.
 *
 * Every store keeps the same promises: a blob becomes visible under its digest only after its bytes matched the
 * digest (a crash or a mismatch leaves nothing visible), a size-bounded LRU evicts the least recently read, and a
 * blob that a reader holds a lease on is never removed under it.
 */
import { mkdirSync, statSync } from 'node:fs';
import { open, rename, unlink } from 'node:fs/promises';
import type { ServerResponse } from 'node:http';
import { join } from 'node:path';
import { createReadStream } from 'node:fs';
import type { Readable } from 'node:stream';
import { digestAlgorithm, digestHex, isDigest, type Digest } from '../routing/reference.js';
import { BlobIndex, type BlobIndexEvents, type IndexedBlob } from './blob-index.js';
import { sendFileRange } from './sendfile.js';
import { createSpool, removeOrphanedSpools, safeReaddir } from './spool.js';
import { SLAB_SIZE } from './slabs.js';

export interface BlobStore {
  /** The bound on totalBytes; least recently used blobs that nobody reads go first. */
  readonly maxSize: number;
  readonly totalBytes: number;
  readonly entries: number;
  /** Settles once the store knows what it holds (the S3 store lists its bucket); a rejection means unusable. */
  readonly ready: Promise<void>;
  /** Present and not on its way out. From the store's index: no I/O. */
  has(digest: Digest): boolean;
  /** Size without touching recency, or undefined. */
  size(digest: Digest): number | undefined;
  /**
   * Asks the backing store whether the blob exists now (written by another replica since the last listing) and
   * tracks it if so. Only shared stores have it (S3); a replica of a cluster calls it before a cold download.
   */
  refresh?(digest: Digest): Promise<void>;
  /** Pins a blob for reading (eviction waits for release()) and makes it most recently used; undefined on a miss. */
  lease(digest: Digest): BlobLease | undefined;
  /** Starts a verified write; the blob becomes visible only through BlobWriter.commit(), after its digest matched. */
  createWriter(digest: Digest, expectedSize?: number, o?: WriterOptions): Promise<BlobWriter>;
  /** A small buffer (manifests) with the same verification as a streamed write. */
  putBuffer(digest: Digest, bytes: Buffer): Promise<void>;
  /** Removes a blob; a reader holding a lease keeps reading, and the bytes go when the last one releases. */
  remove(digest: Digest): Promise<void>;
  /** What the store holds, least recently used first (eviction and garbage collection walk this). */
  list(): AsyncIterable<StoredBlob>;
  /** Stops background work (the S3 store's sweeper). */
  close(): Promise<void>;
}

export type StoredBlob = IndexedBlob;

export interface WriterOptions {
  /**
   * Asked at commit: true while another replica is known to be writing the same blob to the shared store (a
   * cluster owner streaming it to us). A shared store then waits a bounded while for that copy instead of uploading
   * its own, and uploads only if none appears. Stores of their own (the filesystem) ignore it.
   */
  writtenElsewhere?: () => boolean;
}

/** A pinned blob. Reading does not release it: the caller calls release() once done (or when it never reads). */
export interface BlobLease {
  readonly size: number;
  /** Bytes [start, end], inclusive. */
  stream(start: number, end: number): Readable;
  /** Writes bytes [start, end] to the response and ends it; rejects on a read error or when the client goes away. */
  writeTo(res: ServerResponse, start: number, end: number, onBytes?: (n: number) => void): Promise<void>;
  /** A short-lived URL the client may fetch the bytes from itself (S3 presigned), or undefined where there is none. */
  redirectUrl(): Promise<string | undefined>;
  release(): void;
}

/**
 * One in-progress verified write. Every byte lands in a local temp file first (tmpPath), which readers of a running
 * download tail (cache/download.ts), and which the store publishes only on a verified commit().
 */
export interface BlobWriter {
  readonly digest: Digest;
  readonly expectedSize: number | undefined;
  readonly tmpPath: string;
  readonly bytesWritten: number;
  /**
   * Hashes bytes as they arrive, ahead of writing them: a download can then verify its bytes and release them to
   * clients without waiting for the store. Once used, write() only writes, and the same bytes must follow through
   * write() in the same order before commit().
   */
  hashAhead(chunk: Buffer): void;
  write(chunk: Buffer): Promise<void>;
  /** Checks size and digest of what was written (or hashed ahead) so far, persisting nothing; throws on a mismatch. */
  verify(): void;
  /** Verifies, then publishes under the digest. Throws (and leaves nothing visible) on a mismatch or failure. */
  commit(): Promise<void>;
  abort(): Promise<void>;
}

export { DigestMismatchError, SizeMismatchError } from './errors.js';
export type BlobStoreEvents = BlobIndexEvents;

/** A blob lease of the filesystem store: also names the file (tests, and the store's own reads). */
export interface FileBlobLease extends BlobLease {
  readonly path: string;
}

/**
 * Blobs on the local filesystem: a temp file hashed as it grows, fsynced, and renamed into place only when the hash
 * matches, so a crash (even kill -9) can leave at most an orphaned temp file, which startup deletes.
 */
export class FileBlobStore implements BlobStore {
  private readonly blobsDir: string;
  private readonly tmpDir: string;
  private readonly index: BlobIndex;
  readonly ready = Promise.resolve();
  /** Unlinks started and not finished: removal is fire-and-forget for callers, but idle() can wait for it. */
  private readonly unlinking = new Set<Promise<void>>();

  constructor(
    dataDir: string,
    readonly maxSize: number,
    events: BlobStoreEvents = {},
  ) {
    this.blobsDir = join(dataDir, 'blobs');
    this.tmpDir = join(dataDir, 'tmp');
    this.index = new BlobIndex({ maxSize, removeBytes: (digest) => this.unlinkNow(digest), events });
    mkdirSync(this.blobsDir, { recursive: true });
    removeOrphanedSpools(this.tmpDir);
    this.loadIndex();
  }

  private loadIndex(): void {
    const found: Array<{ digest: Digest; size: number; mtime: number }> = [];
    for (const alg of safeReaddir(this.blobsDir)) {
      for (const prefix of safeReaddir(join(this.blobsDir, alg))) {
        for (const hex of safeReaddir(join(this.blobsDir, alg, prefix))) {
          const digest = `${alg}:${hex}`;
          if (!isDigest(digest)) continue;
          const st = statSync(join(this.blobsDir, alg, prefix, hex));
          found.push({ digest, size: st.size, mtime: st.mtimeMs });
        }
      }
    }
    // Oldest first, so the most recently written end up most recently used.
    found.sort((a, b) => a.mtime - b.mtime);
    for (const f of found) this.index.track(f.digest, f.size, f.mtime);
  }

  pathFor(digest: Digest): string {
    const hex = digestHex(digest);
    return join(this.blobsDir, digestAlgorithm(digest), hex.slice(0, 2), hex);
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

  lease(digest: Digest): FileBlobLease | undefined {
    const pin = this.index.acquire(digest);
    if (!pin) return undefined;
    const path = this.pathFor(digest);
    return {
      path,
      size: pin.size,
      stream: (start, end) => createReadStream(path, { start, end, highWaterMark: SLAB_SIZE }),
      writeTo: (res, start, end, onBytes) => sendFileRange(res, path, start, end, onBytes),
      redirectUrl: () => Promise.resolve(undefined),
      release: pin.release,
    };
  }

  createWriter(digest: Digest, expectedSize?: number): Promise<BlobWriter> {
    return createSpool(this.tmpDir, digest, expectedSize, () => ({
      sync: true,
      persist: async (tmpPath, size) => {
        const dest = this.pathFor(digest);
        mkdirSync(join(dest, '..'), { recursive: true });
        await rename(tmpPath, dest);
        this.index.track(digest, size);
      },
    }));
  }

  /**
   * Takes over a file whose bytes were already verified against digest (the S3 store's spool, for its local tier):
   * fsynced, then renamed into place, so a crash cannot leave a short file under the digest.
   */
  async adopt(digest: Digest, path: string, size: number): Promise<void> {
    const fh = await open(path, 'r+');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
    const dest = this.pathFor(digest);
    mkdirSync(join(dest, '..'), { recursive: true });
    await rename(path, dest);
    this.index.track(digest, size);
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

  private unlinkNow(digest: Digest): void {
    const p = unlink(this.pathFor(digest)).catch(() => {});
    this.unlinking.add(p);
    void p.finally(() => this.unlinking.delete(p));
  }

  /** Resolves once every file removal started so far has finished (so "the file is gone" is a settled fact). */
  async idle(): Promise<void> {
    await Promise.all([...this.unlinking]);
  }

  remove(digest: Digest): Promise<void> {
    this.index.remove(digest);
    return Promise.resolve();
  }

  // eslint-disable-next-line @typescript-eslint/require-await -- async in the interface for a paged bucket listing; this index is in memory
  async *list(): AsyncIterable<StoredBlob> {
    yield* this.index.list();
  }

  async close(): Promise<void> {}
}
