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
import { ensureFileLayout } from './layout.js';

/** Files the start-up scan stats between two yields to the event loop (about a millisecond of work). */
const SCAN_SLICE = 512;

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
  /**
   * Another writer of this digest is known dead (a cluster owner lost mid-transfer): drops what it left unfinished
   * in the shared store (an S3 multipart upload begun before `before`, ms since the epoch) now, not after the
   * sweeper's age bound; resolves to how many. Only shared stores have it.
   */
  abortUploadsOf?(digest: Digest, before: number): Promise<number>;
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
  /** Settles when the start-up scan has indexed every blob on disk (entries and totalBytes are complete then). */
  readonly indexed: Promise<void>;
  private scanning = true;
  /** Removed during the scan: the scan's listing may still name them. */
  private readonly gone = new Set<Digest>();
  /**
   * Files to remove, run one at a time. Removal is fire-and-forget for callers (idle() waits for it); serial because
   * one commit can evict thousands of small blobs, and as many parallel unlinks would fill libuv's four threads, so
   * that the open and read of every warm blob GET waited behind them (issue 16: first byte p99 1.6 s while evicting).
   */
  private readonly toUnlink = new Set<string>();
  private unlinking: { path: string; done: Promise<void> } | undefined;
  private unlinker: Promise<void> | undefined;

  constructor(
    dataDir: string,
    readonly maxSize: number,
    events: BlobStoreEvents & { scanSlice?: number } = {},
  ) {
    this.blobsDir = join(dataDir, 'blobs');
    this.tmpDir = join(dataDir, 'tmp');
    this.index = new BlobIndex({ maxSize, removeBytes: (digest) => this.unlinkNow(digest), events });
    mkdirSync(this.blobsDir, { recursive: true });
    // Before anything is read or written: a layout from a newer release stops the start (cache/layout.ts).
    ensureFileLayout(this.blobsDir);
    removeOrphanedSpools(this.tmpDir);
    this.indexed = this.scan(events.scanSlice ?? SCAN_SLICE);
  }

  /**
   * Indexes what is on disk in slices, yielding to the event loop between them, so that a store holding a million
   * blobs starts serving at once (issue 16: a synchronous scan took 83 s at 10^6 blobs). Until it finishes, a
   * digest the index lacks is looked up on disk (findOnDisk) and indexed then, so nothing is fetched again; what the
   * scan found goes below everything used meanwhile in recency, oldest first. Eviction counts only indexed bytes, so
   * the store can exceed maxSize by what it held at start until the scan ends (then it evicts down).
   */
  private async scan(sliceSize: number): Promise<void> {
    const digests: Digest[] = [];
    const sizes: number[] = [];
    const mtimes: number[] = [];
    let slice = 0;
    for (const alg of safeReaddir(this.blobsDir)) {
      for (const prefix of safeReaddir(join(this.blobsDir, alg))) {
        for (const hex of safeReaddir(join(this.blobsDir, alg, prefix))) {
          const digest = `${alg}:${hex}`;
          if (!isDigest(digest)) continue;
          const st = statSync(join(this.blobsDir, alg, prefix, hex), { throwIfNoEntry: false });
          if (st === undefined) continue; // removed since the listing
          digests.push(digest);
          sizes.push(st.size);
          mtimes.push(st.mtimeMs);
          if (++slice === sliceSize) {
            slice = 0;
            await new Promise((r) => setImmediate(r));
          }
        }
      }
    }
    // Below everything used meanwhile, the most recently written highest: added newest first, each below the last,
    // in slices so that serving goes on between them (a million entries in one go held the event loop for seconds).
    const order = Uint32Array.from(digests.keys()).sort((a, b) => mtimes[b]! - mtimes[a]!);
    for (let at = 0; at < order.length; at += sliceSize * 8) {
      const end = Math.min(order.length, at + sliceSize * 8);
      this.index.trackOlder(
        (function* (gone: ReadonlySet<Digest>) {
          for (let k = at; k < end; k++) {
            const i = order[k]!;
            if (!gone.has(digests[i]!)) yield { digest: digests[i]!, size: sizes[i]!, lastAccess: mtimes[i]! };
          }
        })(this.gone),
      );
      if (end < order.length) await new Promise((r) => setImmediate(r));
    }
    this.index.evictDown();
    this.scanning = false;
    this.gone.clear();
  }

  /** During the start-up scan: a blob on disk that the index has not reached yet is indexed now (as just used). */
  private findOnDisk(digest: Digest): void {
    if (!this.scanning || this.gone.has(digest) || this.index.has(digest)) return;
    const st = statSync(this.pathFor(digest), { throwIfNoEntry: false });
    if (st?.isFile()) this.index.track(digest, st.size);
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
    this.findOnDisk(digest);
    return this.index.has(digest);
  }

  size(digest: Digest): number | undefined {
    this.findOnDisk(digest);
    return this.index.size(digest);
  }

  lease(digest: Digest): FileBlobLease | undefined {
    this.findOnDisk(digest);
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
        await this.claimPath(dest);
        await rename(tmpPath, dest);
        this.gone.delete(digest);
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
    await this.claimPath(dest);
    await rename(path, dest);
    this.gone.delete(digest);
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
    if (this.scanning) this.gone.add(digest);
    this.toUnlink.add(this.pathFor(digest));
    this.unlinker ??= this.drainUnlinks();
  }

  private async drainUnlinks(): Promise<void> {
    for (let next = this.toUnlink.values().next(); !next.done; next = this.toUnlink.values().next()) {
      this.toUnlink.delete(next.value);
      const done = unlink(next.value).catch(() => {});
      this.unlinking = { path: next.value, done };
      await done;
    }
    this.unlinking = undefined;
    this.unlinker = undefined;
  }

  /**
   * Before a blob is published at `path`: a removal still queued for that path is cancelled, and one running is
   * waited for, so that it cannot take the new file with it.
   */
  private async claimPath(path: string): Promise<void> {
    this.toUnlink.delete(path);
    if (this.unlinking?.path === path) await this.unlinking.done;
  }

  /** Resolves once every file removal asked for so far has finished (so "the file is gone" is a settled fact). */
  async idle(): Promise<void> {
    while (this.unlinker) await this.unlinker;
  }

  remove(digest: Digest): Promise<void> {
    // A blob the scan has not reached is on disk all the same: index it so that remove() finds and unlinks it.
    this.findOnDisk(digest);
    this.index.remove(digest);
    return Promise.resolve();
  }

  // eslint-disable-next-line @typescript-eslint/require-await -- async in the interface for a paged bucket listing; this index is in memory
  async *list(): AsyncIterable<StoredBlob> {
    yield* this.index.list();
  }

  async close(): Promise<void> {}
}
