/**
 * Content-addressed blob cache on the local filesystem.
 *
 * Writes go to a temp file that is hashed as it grows, fsynced, and renamed into place only when the hash matches,
 * so a crash (even kill -9) can leave at most an orphaned temp file, which startup deletes: a partial or corrupt
 * blob is never visible under its digest. A size-bounded LRU decides what to evict, and an entry that a client is
 * reading is only unlinked once the last reader lets go.
 */
import { createHash, randomBytes, type Hash } from 'node:crypto';
import { mkdirSync, readdirSync, rmSync, statSync } from 'node:fs';
import { open, rename, unlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { LRUCache } from 'lru-cache';
import { digestAlgorithm, digestHex, isDigest, type Digest } from '../routing/reference.js';

export interface BlobStoreEvents {
  onEvict?: (digest: Digest, size: number) => void;
  onSizeChange?: (bytes: number, entries: number) => void;
}

export class DigestMismatchError extends Error {
  constructor(
    readonly expected: string,
    readonly actual: string,
  ) {
    super(`digest mismatch: expected ${expected}, got ${actual}`);
    this.name = 'DigestMismatchError';
  }
}

export class SizeMismatchError extends Error {
  constructor(
    readonly expected: number,
    readonly actual: number,
  ) {
    super(`size mismatch: expected ${expected} bytes, got ${actual}`);
    this.name = 'SizeMismatchError';
  }
}

/** A lease on a cached blob: the file stays on disk until release() even if the LRU evicts it meanwhile. */
export interface BlobLease {
  path: string;
  size: number;
  release(): void;
}

export class BlobStore {
  private readonly blobsDir: string;
  private readonly tmpDir: string;
  private readonly index: LRUCache<Digest, number>;
  private readonly readers = new Map<Digest, number>();
  /** Evicted while being read: unlinked when the last reader releases. */
  private readonly doomed = new Set<Digest>();
  /** Unlinks started and not finished: removal is fire-and-forget for callers, but idle() can wait for it. */
  private readonly unlinking = new Set<Promise<void>>();
  private bytes = 0;

  constructor(
    dataDir: string,
    readonly maxSize: number,
    private readonly events: BlobStoreEvents = {},
  ) {
    this.blobsDir = join(dataDir, 'blobs');
    this.tmpDir = join(dataDir, 'tmp');
    this.index = new LRUCache<Digest, number>({
      maxSize,
      sizeCalculation: (size) => Math.max(1, size),
      dispose: (size, digest, reason) => {
        this.bytes -= size;
        if (reason === 'evict') {
          this.events.onEvict?.(digest, size);
          this.removeWhenUnused(digest);
        }
        this.events.onSizeChange?.(this.bytes, this.index.size);
      },
    });
    mkdirSync(this.blobsDir, { recursive: true });
    mkdirSync(this.tmpDir, { recursive: true });
    this.removeOrphanedTemps();
    this.loadIndex();
  }

  /**
   * A temp file whose writer process is gone is a download that never committed (crash, kill -9): it was never
   * visible, so drop it. Files of live processes stay, so `portcullis check` or a second instance on the same
   * data dir cannot break a running server's downloads.
   */
  private removeOrphanedTemps(): void {
    for (const name of safeReaddir(this.tmpDir)) {
      const pid = Number(name.split('.', 1)[0]);
      if (Number.isSafeInteger(pid) && pid > 0 && pid !== process.pid && processAlive(pid)) continue;
      rmSync(join(this.tmpDir, name), { recursive: true, force: true });
    }
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
    for (const f of found) this.track(f.digest, f.size);
  }

  private track(digest: Digest, size: number): void {
    this.doomed.delete(digest);
    if (this.index.has(digest)) return;
    if (Math.max(1, size) > this.maxSize) {
      // lru-cache silently refuses an entry larger than maxSize: never count it, and leave no untracked file behind.
      this.events.onEvict?.(digest, size);
      this.removeWhenUnused(digest);
      return;
    }
    this.bytes += size;
    this.index.set(digest, size);
    this.events.onSizeChange?.(this.bytes, this.index.size);
  }

  pathFor(digest: Digest): string {
    const hex = digestHex(digest);
    return join(this.blobsDir, digestAlgorithm(digest), hex.slice(0, 2), hex);
  }

  get totalBytes(): number {
    return this.bytes;
  }

  get entries(): number {
    return this.index.size;
  }

  has(digest: Digest): boolean {
    return this.index.has(digest) && !this.doomed.has(digest);
  }

  /** Size of a cached blob without touching its recency, or undefined. */
  size(digest: Digest): number | undefined {
    return this.doomed.has(digest) ? undefined : this.index.peek(digest);
  }

  /** Leases a cached blob for reading; undefined on a miss. */
  lease(digest: Digest): BlobLease | undefined {
    const size = this.index.get(digest);
    if (size === undefined || this.doomed.has(digest)) return undefined;
    this.readers.set(digest, (this.readers.get(digest) ?? 0) + 1);
    let released = false;
    return {
      path: this.pathFor(digest),
      size,
      release: () => {
        if (released) return;
        released = true;
        const n = (this.readers.get(digest) ?? 1) - 1;
        if (n > 0) this.readers.set(digest, n);
        else {
          this.readers.delete(digest);
          if (this.doomed.has(digest)) this.unlinkNow(digest);
        }
      },
    };
  }

  private removeWhenUnused(digest: Digest): void {
    if ((this.readers.get(digest) ?? 0) > 0) this.doomed.add(digest);
    else this.unlinkNow(digest);
  }

  private unlinkNow(digest: Digest): void {
    this.doomed.delete(digest);
    const p = unlink(this.pathFor(digest)).catch(() => {});
    this.unlinking.add(p);
    void p.finally(() => this.unlinking.delete(p));
  }

  /** Resolves once every file removal started so far has finished (so "the file is gone" is a settled fact). */
  async idle(): Promise<void> {
    await Promise.all([...this.unlinking]);
  }

  /** Starts a verified write. The blob becomes visible only through commit(). */
  async createWriter(digest: Digest, expectedSize?: number): Promise<BlobWriter> {
    // The writer's pid leads the name, so startup can tell orphans from another live process's downloads.
    const tmp = join(this.tmpDir, `${process.pid}.${digestHex(digest).slice(0, 16)}-${randomBytes(6).toString('hex')}`);
    const fh = await open(tmp, 'wx+', 0o644);
    return new BlobWriter(this, digest, tmp, fh, expectedSize);
  }

  /** Writes a small buffer (manifests) with the same verification as a streamed write. */
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

  /** Called by BlobWriter after a verified rename. */
  committed(digest: Digest, size: number): void {
    this.track(digest, size);
  }

  remove(digest: Digest): Promise<void> {
    this.index.delete(digest);
    this.removeWhenUnused(digest);
    return Promise.resolve();
  }
}

/**
 * One in-progress write. Tracks how many bytes are durable in the temp file so that concurrent readers can tail it
 * (see cache/download.ts) while the download is still running.
 */
export class BlobWriter {
  private readonly hash: Hash;
  private written = 0;
  /** Bytes fed to the hash by hashAhead(); undefined while write() does the hashing. */
  private hashedAhead: number | undefined;
  private closed = false;
  private actual: string | undefined;

  constructor(
    private readonly store: BlobStore,
    readonly digest: Digest,
    readonly tmpPath: string,
    private readonly fh: FileHandle,
    readonly expectedSize: number | undefined,
  ) {
    this.hash = createHash(digestAlgorithm(digest));
  }

  get bytesWritten(): number {
    return this.written;
  }

  /**
   * Hashes bytes as they arrive, ahead of writing them: a download can then verify its bytes and release them to
   * clients without waiting for the disk (cache/download.ts). Once used, write() only writes, and the same bytes
   * must follow through write() in the same order before commit().
   */
  hashAhead(chunk: Buffer): void {
    if (this.closed) throw new Error('hash after close');
    if (this.written > 0 && this.hashedAhead === undefined) throw new Error('hashAhead after write');
    const total = (this.hashedAhead ?? 0) + chunk.length;
    if (this.expectedSize !== undefined && total > this.expectedSize) throw new SizeMismatchError(this.expectedSize, total);
    this.hash.update(chunk);
    this.hashedAhead = total;
  }

  async write(chunk: Buffer): Promise<void> {
    if (this.closed) throw new Error('write after close');
    if (this.expectedSize !== undefined && this.written + chunk.length > this.expectedSize) {
      throw new SizeMismatchError(this.expectedSize, this.written + chunk.length);
    }
    if (this.hashedAhead === undefined) this.hash.update(chunk);
    else if (this.written + chunk.length > this.hashedAhead) throw new Error('write of bytes that were not hashed');
    let off = 0;
    while (off < chunk.length) {
      const { bytesWritten } = await this.fh.write(chunk, off, chunk.length - off, this.written + off);
      off += bytesWritten;
    }
    this.written += chunk.length;
  }

  /**
   * Checks size and digest of what was written (or hashed ahead) so far, without persisting anything; throws on a
   * mismatch. Lets a download release its verified bytes to clients before the writes, fsync and rename of
   * commit(). Call once the last chunk is in; commit() calls it too.
   */
  verify(): void {
    const got = this.hashedAhead ?? this.written;
    if (this.expectedSize !== undefined && got !== this.expectedSize) throw new SizeMismatchError(this.expectedSize, got);
    // Hash.digest() may be called only once; remember its result for commit().
    this.actual ??= `${digestAlgorithm(this.digest)}:${this.hash.digest('hex')}`;
    if (this.actual !== this.digest) throw new DigestMismatchError(this.digest, this.actual);
  }

  /** Verifies size and digest, fsyncs, and atomically renames into the store. Throws (and discards) on mismatch. */
  async commit(): Promise<void> {
    if (this.closed) throw new Error('commit after close');
    this.closed = true;
    try {
      this.verify();
      if (this.hashedAhead !== undefined && this.written !== this.hashedAhead) throw new Error(`${this.hashedAhead - this.written} verified bytes were never written`);
      await this.fh.sync();
      await this.fh.close();
      const dest = this.store.pathFor(this.digest);
      mkdirSync(join(dest, '..'), { recursive: true });
      await rename(this.tmpPath, dest);
      this.store.committed(this.digest, this.written);
    } catch (e) {
      await this.fh.close().catch(() => {});
      await unlink(this.tmpPath).catch(() => {});
      throw e;
    }
  }

  async abort(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.fh.close().catch(() => {});
    await unlink(this.tmpPath).catch(() => {});
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function safeReaddir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}
