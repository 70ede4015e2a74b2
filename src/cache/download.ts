/**
 * Single-flight blob downloads. The first request for a missing digest starts one upstream GET whose bytes go to
 * the store's temp file; every concurrent request (late joiners and Range requests too) follows the download at
 * its own pace. So 20 clients cost the upstream one GET per blob, memory stays bounded whatever the blob size, and
 * a slow client never slows the download for the others.
 *
 * Performance (measured by `npm run bench`, see bench/README.md): readers near the head of the download are served
 * from a small in-memory window of the most recent chunks, and the temp file is written in batches behind them, so
 * the client path costs no file write or read per chunk and never waits for the disk (dirty-page throttling on a
 * busy host stalled writes for whole seconds). Readers that fall further behind than the window read back from the
 * temp file, which holds every byte older than the window. Received-but-unwritten bytes are capped, which is what
 * pauses the upstream when the disk is slower than the network.
 *
 * When the download fails verification, every reader's stream errors, which aborts its client connection: no
 * client receives a complete response for bytes that did not match the digest, and nothing is committed.
 */
import { EventEmitter } from 'node:events';
import { createReadStream, openSync, closeSync, read } from 'node:fs';
import { Readable } from 'node:stream';
import { SizeMismatchError, type BlobLease, type BlobStore, type BlobWriter } from './blobstore.js';
import type { Digest } from '../routing/reference.js';

/** Read size for readers behind the in-memory window, and for the committed-blob fallback. */
const FILE_CHUNK = 1024 * 1024;
/** Already written bytes kept in memory, so that readers slightly behind the head need no file read. */
const WINDOW_KEEP = 4 * 1024 * 1024;
/** Received but not yet written: beyond this the upstream body is not read until the disk catches up. */
const MAX_UNWRITTEN = 8 * 1024 * 1024;
/** Most bytes handed to one file write (small upstream chunks are coalesced into one syscall). */
const WRITE_BATCH = 2 * 1024 * 1024;
/** Buffered per reader stream before it stops pulling (the HTTP response buffers on top of this). */
const READER_HWM = 1024 * 1024;

export type DownloadState = 'starting' | 'running' | 'done' | 'failed';

/** What the caller's fetch function hands over once upstream headers are in. */
export interface DownloadSource {
  size: number | undefined;
  body: AsyncIterable<Buffer>;
  /** Stops the upstream transfer (on shutdown or abort). */
  cancel(): void;
}

export class Download extends EventEmitter {
  state: DownloadState = 'starting';
  /** Every byte is in and matches the digest (set before the commit, which may still fail to persist). */
  verified = false;
  size: number | undefined;
  error: Error | undefined;
  private writer: BlobWriter | undefined;
  private fd: number | undefined;
  private readers = 0;
  private lease: BlobLease | undefined;
  private source: DownloadSource | undefined;
  /** The in-memory window: consecutive chunks covering [windowStart, received). */
  private window: Buffer[] = [];
  private windowOffsets: number[] = [];
  private windowStart = 0;
  /** Bytes received from the upstream (in the window, the file, or both). */
  private received = 0;
  /** Bytes written to the temp file. */
  private written = 0;
  private writing: Promise<void> | undefined;
  private writeError: Error | undefined;
  /** Resolves when headers are in (size known) or rejects when the download fails before that. */
  readonly ready: Promise<void>;
  /** Settles when the download is committed or failed. */
  readonly finished: Promise<void>;

  constructor(
    readonly digest: Digest,
    private readonly store: BlobStore,
    private readonly fetch: () => Promise<DownloadSource>,
  ) {
    super();
    this.setMaxListeners(0);
    this.ready = new Promise((resolve, reject) => {
      this.once('ready', resolve);
      this.once('failed', reject);
    });
    this.finished = new Promise((resolve) => {
      this.once('settled', resolve);
    });
    // A failed download with no reader would otherwise be an unhandled rejection.
    this.ready.catch(() => {});
  }

  /** Bytes that readers can be given now (not yet verified: see reader()). */
  get bytesAvailable(): number {
    return this.received;
  }

  async run(): Promise<void> {
    try {
      const src = await this.fetch();
      this.source = src;
      this.size = src.size;
      this.writer = await this.store.createWriter(this.digest, src.size);
      // One shared descriptor for readers behind the window; positional reads keep them independent, and it stays
      // valid across the rename at commit.
      this.fd = openSync(this.writer.tmpPath, 'r');
      this.state = 'running';
      this.emit('ready');
      for await (const chunk of src.body) {
        if (this.writeError) throw this.writeError;
        if (chunk.length === 0) continue;
        // Checked here as well as in the writer, so that no reader is ever handed bytes past the declared size.
        if (this.size !== undefined && this.received + chunk.length > this.size) throw new SizeMismatchError(this.size, this.received + chunk.length);
        this.window.push(chunk);
        this.windowOffsets.push(this.received);
        this.received += chunk.length;
        this.emit('progress');
        this.startWriting();
        while (this.received - this.written > MAX_UNWRITTEN && !this.writeError) {
          this.startWriting();
          await this.writing;
        }
      }
      await this.flush();
      // Readers may send their last byte once the bytes are known good; persisting (fsync, rename) can follow.
      this.writer.verify();
      this.verified = true;
      this.emit('progress');
      await this.writer.commit();
      this.size = this.writer.bytesWritten;
      this.lease = this.store.lease(this.digest);
      this.state = 'done';
      this.emit('progress');
    } catch (e) {
      this.error = e instanceof Error ? e : new Error(String(e));
      this.state = 'failed';
      // No write may be in flight when the temp file is closed and removed.
      await this.writing?.catch(() => {});
      await this.writer?.abort();
      this.source?.cancel();
      this.emit('failed', this.error);
      this.emit('progress');
    } finally {
      this.emit('settled');
      this.maybeClose();
    }
  }

  /** Writes everything received so far, then resolves; rejects with the first write error. */
  private async flush(): Promise<void> {
    while (this.written < this.received && !this.writeError) {
      this.startWriting();
      await this.writing;
    }
    if (this.writeError) throw this.writeError;
  }

  private startWriting(): void {
    if (this.writing || this.writeError) return;
    this.writing = this.writeLoop().finally(() => (this.writing = undefined));
  }

  /** Appends the unwritten part of the window to the temp file, a batch per write, and trims the window. */
  private async writeLoop(): Promise<void> {
    const writer = this.writer as BlobWriter;
    try {
      while (this.written < this.received) {
        let i = this.indexOf(this.written);
        const parts: Buffer[] = [];
        let n = 0;
        for (; i < this.window.length && n < WRITE_BATCH; i++) {
          const b = this.window[i] as Buffer;
          parts.push(b);
          n += b.length;
        }
        // The window holds whole upstream chunks and `written` always ends on a chunk boundary.
        await writer.write(parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts, n));
        this.written += n;
        this.trimWindow();
      }
    } catch (e) {
      this.writeError = e instanceof Error ? e : new Error(String(e));
    }
  }

  /** Drops written chunks that are more than WINDOW_KEEP behind the head; the file has them. */
  private trimWindow(): void {
    let drop = 0;
    while (drop < this.window.length) {
      const endOfChunk = (this.windowOffsets[drop] as number) + (this.window[drop] as Buffer).length;
      if (endOfChunk > this.written || this.received - endOfChunk < WINDOW_KEEP) break;
      drop++;
    }
    if (drop === 0) return;
    this.window.splice(0, drop);
    this.windowOffsets.splice(0, drop);
    this.windowStart = this.windowOffsets[0] ?? this.received;
  }

  /** Index of the window chunk holding byte `pos` (windowStart ≤ pos < received). */
  private indexOf(pos: number): number {
    let lo = 0;
    let hi = this.windowOffsets.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if ((this.windowOffsets[mid] as number) <= pos) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  /** Bytes [pos, limit) from the window, at most one chunk's worth; undefined if pos is behind the window. */
  windowSlice(pos: number, limit: number): Buffer | undefined {
    if (pos < this.windowStart || pos >= this.received || this.window.length === 0) return undefined;
    const i = this.indexOf(pos);
    const chunk = this.window[i] as Buffer;
    const from = pos - (this.windowOffsets[i] as number);
    const to = Math.min(chunk.length, limit - (this.windowOffsets[i] as number));
    return from === 0 && to === chunk.length ? chunk : chunk.subarray(from, to);
  }

  /** The shared temp-file descriptor, for readers behind the window. */
  get fileDescriptor(): number | undefined {
    return this.fd;
  }

  cancel(reason: Error): void {
    if (this.state === 'done' || this.state === 'failed') return;
    this.source?.cancel();
    this.error = reason;
  }

  /**
   * A stream of bytes [start, end] (inclusive) that follows the download as it grows. The last byte of the range
   * is held back until the whole blob has verified: responses are framed by Content-Length, so a client that has
   * every byte has a complete response, and the only way to fail it on a digest mismatch is to never send the
   * last byte. On failure the stream errors, which aborts the client connection.
   */
  reader(start: number, end: number): Readable {
    if (this.state === 'done' && this.fd === undefined) {
      // Every earlier reader is gone and the temp descriptor is closed, so read the committed blob instead. This is
      // the normal path when the upstream sent no Content-Length: then clients are only handed a stream once the
      // download has finished, and without this they would read from a closed descriptor and be cut off.
      const lease = this.store.lease(this.digest);
      if (!lease) return Readable.from(failing(new Error(`blob ${this.digest} left the cache before it could be served`)));
      const s = createReadStream(lease.path, { start, end, highWaterMark: FILE_CHUNK });
      s.once('close', lease.release);
      return s;
    }
    this.readers++;
    let released = false;
    const stream = new TailReader(this, start, end);
    stream.once('close', () => {
      if (released) return;
      released = true;
      this.readers--;
      this.maybeClose();
    });
    return stream;
  }

  private maybeClose(): void {
    const settled = this.state === 'done' || this.state === 'failed';
    if (settled && this.readers === 0) {
      if (this.fd !== undefined) {
        closeSync(this.fd);
        this.fd = undefined;
      }
      this.window = [];
      this.windowOffsets = [];
      this.windowStart = this.received;
      this.lease?.release();
      this.lease = undefined;
    }
  }
}

/**
 * One reader of a running download: pushes window chunks as they arrive (no copy), reads from the temp file when
 * it has fallen behind the window, and waits for 'progress' when it has caught up.
 */
class TailReader extends Readable {
  private pos: number;
  private busy = false;
  private waiting = false;
  private readonly onProgress = (): void => {
    this.waiting = false;
    this.pump();
  };

  constructor(
    private readonly d: Download,
    start: number,
    private readonly end: number,
  ) {
    super({ highWaterMark: READER_HWM });
    this.pos = start;
  }

  override _read(): void {
    this.pump();
  }

  override _destroy(err: Error | null, cb: (error?: Error | null) => void): void {
    if (this.waiting) this.d.off('progress', this.onProgress);
    this.waiting = false;
    cb(err);
  }

  private wait(): void {
    if (this.waiting) return;
    this.waiting = true;
    this.d.once('progress', this.onProgress);
  }

  private pump(): void {
    const d = this.d;
    while (!this.busy && !this.waiting && !this.destroyed) {
      // Once verified, a later failure (to persist the blob) does not make the bytes wrong: keep serving them.
      const verified = d.verified;
      if (d.state === 'failed' && !verified) {
        this.destroy(d.error ?? new Error('download failed'));
        return;
      }
      if (this.pos > this.end) {
        // Only reachable once verified (the last byte is held back until then).
        this.push(null);
        return;
      }
      // Exclusive bound of what may go out now: everything once verified, else all but the range's last byte.
      const sendable = Math.min(d.bytesAvailable, verified ? this.end + 1 : this.end);
      if (this.pos >= sendable) {
        this.wait();
        return;
      }
      const fromWindow = d.windowSlice(this.pos, sendable);
      if (fromWindow) {
        this.pos += fromWindow.length;
        if (!this.push(fromWindow)) return;
        continue;
      }
      // Behind the window: those bytes are in the temp file.
      const fd = d.fileDescriptor;
      if (fd === undefined) {
        this.destroy(d.error ?? new Error('download file closed'));
        return;
      }
      const n = Math.min(FILE_CHUNK, sendable - this.pos);
      this.busy = true;
      read(fd, Buffer.allocUnsafe(n), 0, n, this.pos, (err, bytesRead, buf) => {
        this.busy = false;
        if (this.destroyed) return;
        if (err || bytesRead === 0) {
          this.destroy(err ?? new Error('short read from download file'));
          return;
        }
        this.pos += bytesRead;
        if (this.push(bytesRead === n ? buf : buf.subarray(0, bytesRead))) this.pump();
      });
      return;
    }
  }
}

/** A stream that errors at once (Readable.from wants an iterable). */
async function* failing(e: Error): AsyncGenerator<Buffer> {
  throw e;
}

export class DownloadManager {
  private readonly inflight = new Map<Digest, Download>();

  constructor(private readonly store: BlobStore) {}

  get active(): number {
    return this.inflight.size;
  }

  /** The download in progress for this digest, if any. */
  get(digest: Digest): Download | undefined {
    return this.inflight.get(digest);
  }

  /** Joins the running download for digest, or starts one with fetch. */
  getOrStart(digest: Digest, fetch: () => Promise<DownloadSource>): { download: Download; joined: boolean } {
    const existing = this.inflight.get(digest);
    if (existing) return { download: existing, joined: true };
    const d = new Download(digest, this.store, fetch);
    this.inflight.set(digest, d);
    void d.run().finally(() => {
      if (this.inflight.get(digest) === d) this.inflight.delete(digest);
    });
    return { download: d, joined: false };
  }

  /** For graceful shutdown: wait for running downloads, then cancel what is left. */
  async drain(graceMs: number): Promise<void> {
    const all = [...this.inflight.values()];
    if (all.length === 0) return;
    const timer = new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), graceMs).unref());
    const outcome = await Promise.race([Promise.allSettled(all.map((d) => d.finished)).then(() => 'done' as const), timer]);
    if (outcome === 'timeout') {
      for (const d of this.inflight.values()) d.cancel(new Error('shutting down'));
      await Promise.allSettled([...this.inflight.values()].map((d) => d.finished));
    }
  }
}
