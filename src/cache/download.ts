/**
 * Single-flight blob downloads. The first request for a missing digest starts one upstream GET whose bytes go to
 * the store's temp file; every concurrent request (late joiners and Range requests too) follows the download at
 * its own pace. So 20 clients cost the upstream one GET per blob, memory stays bounded whatever the blob size, and
 * a slow client never slows the download for the others.
 *
 * Performance (measured by `npm run bench`, see bench/README.md). Upstream bytes are copied once into 1 MiB slabs;
 * the slabs of the last few MiB form an in-memory window that readers near the head are served from without a copy
 * (one slab slice per socket write), and the temp file is written from the same slabs behind them. So the client
 * path costs no file write or read per chunk and never waits for the disk (dirty-page throttling on a busy host
 * stalled writes for whole seconds), and 20 readers cost no more memory than one. Readers that fall further behind
 * than the window read back from the temp file, which holds every byte older than the window. Received-but-unwritten
 * bytes are capped, which is what pauses the upstream when the disk is slower than the network.
 *
 * Why slabs: the upstream socket hands over 64 KiB buffers. Reading them back per reader (or concatenating them per
 * write) meant fresh buffers for every byte served, per reader, and that external-memory churn is what sets off
 * V8's major GCs, whose marking threads took a large share of the proxy's CPU on a cold pull (perf). With slabs it is
 * one copy per byte, whatever the number of readers.
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
/** Slab size: slab k holds bytes [k·SLAB, (k+1)·SLAB) of the blob. Also the most bytes in one push or write. */
const SLAB = 1024 * 1024;
/** Already written bytes kept in memory, so that readers slightly behind the head need no file read. */
const WINDOW_KEEP = 4 * 1024 * 1024;
/** Received but not yet written: beyond this the upstream body is not read until the disk catches up. */
const MAX_UNWRITTEN = 8 * 1024 * 1024;
/** Buffered per reader stream before it stops pulling (the HTTP response buffers on top of this). */
const READER_HWM = 1024 * 1024;
/**
 * Readers are told about new bytes once this many have arrived since the last notice (or FLUSH_MS after the first
 * of them, whichever comes first), not per upstream chunk. Upstream chunks are 64 KiB socket reads; passed on one by
 * one, each costs every reader a wake-up, a push and a socket write that wakes its client. Batching them more than
 * halved the proxy's CPU per GiB served to 20 concurrent cold clients (bench/README.md).
 */
const NOTIFY_BYTES = 512 * 1024;
const FLUSH_MS = 5;

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
  /** The in-memory window: slabs firstSlab, firstSlab+1, … covering [firstSlab·SLAB, received). */
  private slabs: Buffer[] = [];
  private firstSlab = 0;
  /** Bytes received from the upstream (in the window, the file, or both). */
  private received = 0;
  /** Bytes written to the temp file. */
  private written = 0;
  private writing: Promise<void> | undefined;
  /** While the body is still coming, only whole slabs are written (one 1 MiB write each, not one per 64 KiB). */
  private receiving = true;
  private writeError: Error | undefined;
  /** Bytes announced to readers with 'progress' (see NOTIFY_BYTES). */
  private announced = 0;
  private notifyTimer: NodeJS.Timeout | undefined;
  /** run() has returned: nothing touches the window or the descriptor any more but readers. */
  private settled = false;
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
        this.append(chunk);
        if (this.received - this.announced >= NOTIFY_BYTES) this.notify();
        else this.notifyTimer ??= setTimeout(this.notify, FLUSH_MS);
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
      this.notify();
      await this.writer.commit();
      this.size = this.writer.bytesWritten;
      this.lease = this.store.lease(this.digest);
      this.state = 'done';
      this.notify();
    } catch (e) {
      this.error = e instanceof Error ? e : new Error(String(e));
      this.state = 'failed';
      // No write may be in flight when the temp file is closed and removed.
      await this.writing?.catch(() => {});
      await this.writer?.abort();
      this.source?.cancel();
      this.emit('failed', this.error);
      this.notify();
    } finally {
      this.settled = true;
      this.emit('settled');
      this.maybeClose();
    }
  }

  /** Tells readers about every byte received so far. */
  private readonly notify = (): void => {
    if (this.notifyTimer) clearTimeout(this.notifyTimer);
    this.notifyTimer = undefined;
    this.announced = this.received;
    this.emit('progress');
  };

  /** Writes everything received so far, then resolves; rejects with the first write error. */
  private async flush(): Promise<void> {
    this.receiving = false;
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

  /** Copies an upstream chunk into the slabs (allocating them as needed) and advances `received`. */
  private append(chunk: Buffer): void {
    let off = 0;
    while (off < chunk.length) {
      const k = Math.floor(this.received / SLAB);
      let slab = this.slabs[k - this.firstSlab];
      if (!slab) {
        // The last slab of a blob of known size is only as large as it needs to be (small blobs stay small).
        const cap = this.size !== undefined ? Math.min(SLAB, this.size - k * SLAB) : SLAB;
        slab = Buffer.allocUnsafeSlow(cap);
        this.slabs.push(slab);
      }
      const at = this.received - k * SLAB;
      const n = chunk.copy(slab, at, off, Math.min(chunk.length, off + slab.length - at));
      off += n;
      this.received += n;
    }
  }

  /** Appends the unwritten bytes to the temp file, at most one slab per write, and trims the window. */
  private async writeLoop(): Promise<void> {
    const writer = this.writer as BlobWriter;
    try {
      for (;;) {
        const limit = this.receiving ? Math.floor(this.received / SLAB) * SLAB : this.received;
        if (this.written >= limit) break;
        const piece = this.windowSlice(this.written, limit);
        if (!piece) throw new Error('download window lost unwritten bytes');
        await writer.write(piece);
        this.written += piece.length;
        this.trimWindow();
      }
    } catch (e) {
      this.writeError = e instanceof Error ? e : new Error(String(e));
    }
  }

  /** Drops written slabs that are more than WINDOW_KEEP behind the head; the file has them. */
  private trimWindow(): void {
    let drop = 0;
    while (drop < this.slabs.length - 1) {
      const endOfSlab = (this.firstSlab + drop + 1) * SLAB;
      if (endOfSlab > this.written || this.received - endOfSlab < WINDOW_KEEP) break;
      drop++;
    }
    if (drop === 0) return;
    this.slabs.splice(0, drop);
    this.firstSlab += drop;
  }

  /**
   * Bytes [pos, min(limit, end of pos's slab)) from the window, without a copy; undefined if pos is behind the
   * window or not received yet.
   */
  windowSlice(pos: number, limit: number): Buffer | undefined {
    if (pos < this.windowBegin || pos >= this.received) return undefined;
    const k = Math.floor(pos / SLAB);
    const slab = this.slabs[k - this.firstSlab];
    if (!slab) return undefined;
    const base = k * SLAB;
    return slab.subarray(pos - base, Math.min(slab.length, limit - base, this.received - base));
  }

  /** First byte still held in memory; readers behind it read the temp file. */
  get windowBegin(): number {
    return this.firstSlab * SLAB;
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
    // Not on state alone: after a failure, run() still waits for the write in flight before it aborts the file.
    if (this.settled && this.readers === 0) {
      if (this.fd !== undefined) {
        closeSync(this.fd);
        this.fd = undefined;
      }
      this.slabs = [];
      this.firstSlab = Math.ceil(this.received / SLAB);
      this.lease?.release();
      this.lease = undefined;
    }
  }
}

/**
 * One reader of a running download: pushes window slices as bytes arrive (no copy), reads from the temp file when
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
      if (this.pos >= d.windowBegin) {
        // One slab slice per push: the response's socket takes one write per buffer it is given.
        const piece = d.windowSlice(this.pos, sendable);
        if (!piece) {
          this.destroy(new Error('download window lost bytes'));
          return;
        }
        this.pos += piece.length;
        if (!this.push(piece)) return;
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
