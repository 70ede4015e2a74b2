/**
 * One verified write, shared by every blob store: the bytes go to a local temp file that is hashed as it grows, and
 * the store's persist step (rename into the cache directory, or complete an S3 upload) runs only once size and
 * digest matched. The temp file is also what readers of a running download tail (cache/download.ts), whatever
 * store the blob ends up in.
 */
import { createHash, randomBytes, type Hash } from 'node:crypto';
import { mkdirSync, readdirSync, rmSync } from 'node:fs';
import { open, unlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { digestAlgorithm, digestHex, type Digest } from '../routing/reference.js';
import type { BlobWriter } from './blobstore.js';
import { DigestMismatchError, SizeMismatchError } from './errors.js';

/** What a store does around a verified write. */
export interface SpoolHooks {
  /** After each write, with the bytes in the file so far: the S3 store uploads each full part from the file here. */
  afterWrite?(written: number): Promise<void>;
  /**
   * Makes the verified bytes visible under the digest. The temp file is closed (and fsynced when `sync`) first;
   * persist owns it then (rename it, or upload and unlink it).
   */
  persist(tmpPath: string, size: number): Promise<void>;
  /** The write failed or was abandoned: undo what afterWrite or persist started (abort a multipart upload). */
  discard?(): Promise<void>;
  /** fsync before persist: a rename must not publish a file whose bytes a crash could still lose. */
  sync: boolean;
}

export class SpoolWriter implements BlobWriter {
  private readonly hash: Hash;
  private written = 0;
  /** Bytes fed to the hash by hashAhead(); undefined while write() does the hashing. */
  private hashedAhead: number | undefined;
  private closed = false;
  private actual: string | undefined;

  readonly digest: Digest;
  readonly tmpPath: string;
  readonly expectedSize: number | undefined;
  private readonly fh: FileHandle;
  private readonly hooks: SpoolHooks;

  constructor(o: { digest: Digest; tmpPath: string; fh: FileHandle; expectedSize: number | undefined; hooks: SpoolHooks }) {
    this.digest = o.digest;
    this.tmpPath = o.tmpPath;
    this.expectedSize = o.expectedSize;
    this.fh = o.fh;
    this.hooks = o.hooks;
    const digest = o.digest;
    this.hash = createHash(digestAlgorithm(digest));
  }

  get bytesWritten(): number {
    return this.written;
  }

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
    await this.hooks.afterWrite?.(this.written);
  }

  verify(): void {
    const got = this.hashedAhead ?? this.written;
    if (this.expectedSize !== undefined && got !== this.expectedSize) throw new SizeMismatchError(this.expectedSize, got);
    // Hash.digest() may be called only once; remember its result for commit().
    this.actual ??= `${digestAlgorithm(this.digest)}:${this.hash.digest('hex')}`;
    if (this.actual !== this.digest) throw new DigestMismatchError(this.digest, this.actual);
  }

  async commit(): Promise<void> {
    if (this.closed) throw new Error('commit after close');
    this.closed = true;
    try {
      this.verify();
      if (this.hashedAhead !== undefined && this.written !== this.hashedAhead)
        throw new Error(`${this.hashedAhead - this.written} verified bytes were never written`);
      if (this.hooks.sync) await this.fh.sync();
      await this.fh.close();
      await this.hooks.persist(this.tmpPath, this.written);
    } catch (e) {
      await this.fh.close().catch(() => {});
      await unlink(this.tmpPath).catch(() => {});
      await this.hooks.discard?.().catch(() => {});
      throw e;
    }
  }

  async abort(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.fh.close().catch(() => {});
    await unlink(this.tmpPath).catch(() => {});
    await this.hooks.discard?.().catch(() => {});
  }
}

/** Opens a new temp file in tmpDir for a verified write of digest; hooks are made for the file's path. */
export async function createSpool(
  tmpDir: string,
  digest: Digest,
  expectedSize: number | undefined,
  hooks: (tmpPath: string) => SpoolHooks,
): Promise<SpoolWriter> {
  // The writer's pid leads the name, so startup can tell orphans from another live process's downloads.
  const tmp = join(tmpDir, `${process.pid}.${digestHex(digest).slice(0, 16)}-${randomBytes(6).toString('hex')}`);
  const fh = await open(tmp, 'wx+', 0o644);
  return new SpoolWriter({ digest, tmpPath: tmp, fh, expectedSize, hooks: hooks(tmp) });
}

/**
 * A temp file whose writer process is gone is a download that never committed (crash, kill -9): it was never
 * visible, so drop it. Files of live processes stay, so `portcullis check` or a second instance on the same data
 * dir cannot break a running server's downloads.
 */
export function removeOrphanedSpools(tmpDir: string): void {
  mkdirSync(tmpDir, { recursive: true });
  for (const name of safeReaddir(tmpDir)) {
    const pid = Number(name.split('.', 1)[0]);
    if (Number.isSafeInteger(pid) && pid > 0 && pid !== process.pid && processAlive(pid)) continue;
    rmSync(join(tmpDir, name), { recursive: true, force: true });
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

export function safeReaddir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}
