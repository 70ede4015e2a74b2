/**
 * Single-flight blob downloads. The first request for a missing digest starts one upstream GET whose bytes go to
 * the store's temp file; every concurrent request (late joiners and Range requests too) follows the download at
 * its own pace. So 20 clients cost the upstream one GET per blob, memory stays bounded whatever the blob size, and
 * a slow client never slows the download for the others.
 *
 * Performance (measured by `npm run bench`, see bench/README.md). Upstream bytes are copied once, out of the
 * socket's reused read buffer, into pooled 1 MiB slabs (cache/slabs.ts) and hashed as they arrive. The slabs form an
 * in-memory window that readers near the head are served from without a copy (a slab slice per socket write, the
 * slab held until the write callback), and the temp file is written from the same slabs behind them. So the
 * client path costs no file write or read per chunk and never waits for the disk: the last byte goes out once the
 * hash matches, even while the file is still being written (on this VM, writing new data into the page cache costs
 * more CPU than anything else in a cold pull). Readers that fall further behind than the window read the temp
 * file, which holds every byte older than the window. Received-but-unwritten bytes are capped per download and in
 * total, which is what pauses the upstream when the disk is slower than the network.
 *
 * When the download fails verification, every reader fails, which aborts its client connection: no client
 * receives a complete response for bytes that did not match the digest, and nothing is committed.
 */
import { EventEmitter } from 'node:events';
import { closeSync, openSync } from 'node:fs';
import type { ServerResponse } from 'node:http';
import { SizeMismatchError, type BlobLease, type BlobStore, type BlobWriter } from './blobstore.js';
import { writeRange } from './download-readers.js';
import { SLAB_SIZE, slabPool, type Slab } from './slabs.js';
import type { Digest } from '../routing/reference.js';
import { byteSourceOf, type ByteSource } from '../util/byte-source.js';

/** Slab k holds bytes [k·SLAB, (k+1)·SLAB) of the blob; also the most bytes in one socket or file write. */
const SLAB = SLAB_SIZE;
/** Already written bytes kept in memory, so that readers slightly behind the head need no file read. */
const WINDOW_KEEP = 4 * 1024 * 1024;
/**
 * Received but not yet written. Up to MIN_UNWRITTEN a download never waits for the disk; beyond it, it waits when
 * it holds MAX_UNWRITTEN itself or all downloads together hold TOTAL_UNWRITTEN. Large enough that the client side
 * never waits for a disk write in flight, small enough that what two downloads hold at once (TOTAL_UNWRITTEN plus a
 * WINDOW_KEEP each: a pull's next layer starts while the last one's tail is still being written) fits the slab
 * pool's 32 idle slabs (slabs.ts), so that back-to-back cold downloads recycle the same memory.
 *
 * Why not more: every slab beyond the pool is fresh memory, and on this VM (free page reporting, bench/README.md)
 * its first touch faults into the host; it is also external memory that makes V8 start major GCs. With 48/128 MiB a
 * cold 200 MiB pull (disk slower than the socket, so the backlog grew to a whole layer) peaked at 85 slabs in use
 * and allocated ~80 fresh ones per pull: V8's GC threads took about 1 s of CPU per GiB, the main thread another few
 * tenths in page faults, and VmHWM was 230 MiB. With 16/32 MiB the GC threads took 0.05–0.3 s/GiB and VmHWM 155–175 MiB,
 * at the same pull time: a client on a network cannot outrun the page cache for long anyway (bench/cold-profile.mjs).
 */
const MIN_UNWRITTEN = 8 * 1024 * 1024;
export const MAX_UNWRITTEN = 16 * 1024 * 1024;
export const TOTAL_UNWRITTEN = 24 * 1024 * 1024;
let totalUnwritten = 0;

/** Received but not yet written, over every running download (a metric). */
export function unwrittenDownloadBytes(): number {
  return totalUnwritten;
}
/**
 * Readers are told about new bytes once this many have arrived since the last notice (or FLUSH_MS after the first
 * of them, whichever comes first), not per upstream chunk. Passed on one by one, each chunk costs every reader a
 * wake-up and a socket write that wakes its client. Batching more than halved the proxy's CPU per GiB served to 20
 * concurrent cold clients (bench/README.md).
 */
const NOTIFY_BYTES = 512 * 1024;
const FLUSH_MS = 5;

export type DownloadState = 'starting' | 'running' | 'done' | 'failed';

/** See Download.step(). */
export type ReadStep =
  | { kind: 'memory'; slab: Slab; bytes: Buffer }
  | { kind: 'file'; fd: number; length: number }
  | { kind: 'wait' }
  | { kind: 'end' }
  | { kind: 'fail'; error: Error };

/** What the caller's fetch function hands over once upstream headers are in. */
export interface DownloadSource {
  size: number | undefined;
  /** A ByteSource lets the download copy straight out of the socket's read buffer (upstream/socket-request.ts). */
  body: ByteSource | AsyncIterable<Buffer>;
  /** Stops the upstream transfer (on shutdown or abort). */
  cancel(): void;
  /** The bytes come from a cluster peer that stores them too (see WriterOptions.writtenElsewhere). */
  writtenElsewhere?: () => boolean;
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
  private slabs: Slab[] = [];
  private firstSlab = 0;
  /** Bytes received from the upstream (in the window, the file, or both). */
  private received = 0;
  /** Bytes written to the temp file. */
  private written = 0;
  private writing: Promise<void> | undefined;
  /** Received minus written, as counted in totalUnwritten. */
  private unwritten = 0;
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

  /** Bytes that readers can be given now (not yet verified: see writeTo()). */
  get bytesAvailable(): number {
    return this.received;
  }

  async run(): Promise<void> {
    try {
      const src = await this.fetch();
      this.source = src;
      this.size = src.size;
      this.writer = await this.store.createWriter(this.digest, src.size, src.writtenElsewhere ? { writtenElsewhere: src.writtenElsewhere } : undefined);
      // One shared descriptor for readers behind the window; positional reads keep them independent, and it stays
      // valid across the rename (or, for S3, the unlink) at commit.
      this.fd = openSync(this.writer.tmpPath, 'r');
      this.state = 'running';
      this.emit('ready');
      await byteSourceOf(src.body).pipeTo(this.receive);
      this.receiving = false;
      // Every byte is in and hashed: readers may send their last byte now; writing and persisting can follow.
      this.writer.verify();
      this.verified = true;
      this.notify();
      await this.flush();
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
      this.countUnwritten(-this.unwritten);
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

  /**
   * Takes one upstream chunk (whose memory the source may reuse once this returns). Returns a promise, which holds
   * the source, while more than MAX_UNWRITTEN bytes wait for the disk.
   */
  private readonly receive = (chunk: Buffer): Promise<void> | undefined => {
    if (this.writeError) throw this.writeError;
    if (chunk.length === 0) return undefined;
    // Checked here as well as in the writer, so that no reader is ever handed bytes past the declared size.
    if (this.size !== undefined && this.received + chunk.length > this.size) throw new SizeMismatchError(this.size, this.received + chunk.length);
    (this.writer as BlobWriter).hashAhead(chunk);
    this.append(chunk);
    if (this.received - this.announced >= NOTIFY_BYTES) this.notify();
    else this.notifyTimer ??= setTimeout(this.notify, FLUSH_MS);
    this.startWriting();
    return this.diskBehind() ? this.catchUpWithDisk() : undefined;
  };

  private diskBehind(): boolean {
    return this.unwritten > MIN_UNWRITTEN && (this.unwritten > MAX_UNWRITTEN || totalUnwritten > TOTAL_UNWRITTEN);
  }

  private async catchUpWithDisk(): Promise<void> {
    while (this.diskBehind() && !this.writeError) {
      this.startWriting();
      await this.writing;
    }
    if (this.writeError) throw this.writeError;
  }

  private countUnwritten(n: number): void {
    this.unwritten += n;
    totalUnwritten += n;
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
        slab = slabPool.take(cap);
        this.slabs.push(slab);
      }
      const at = this.received - k * SLAB;
      const n = chunk.copy(slab.buf, at, off, Math.min(chunk.length, off + slab.buf.length - at));
      off += n;
      this.received += n;
      this.countUnwritten(n);
    }
  }

  /** Appends the unwritten bytes to the temp file, at most one slab per write, and trims the window. */
  private async writeLoop(): Promise<void> {
    const writer = this.writer as BlobWriter;
    try {
      for (;;) {
        const limit = this.receiving ? Math.floor(this.received / SLAB) * SLAB : this.received;
        if (this.written >= limit) break;
        const piece = this.windowPiece(this.written, limit);
        if (!piece) throw new Error('download window lost unwritten bytes');
        try {
          await writer.write(piece.bytes);
        } finally {
          piece.slab.release();
        }
        this.written += piece.bytes.length;
        this.countUnwritten(-piece.bytes.length);
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
    for (const slab of this.slabs.splice(0, drop)) slab.release();
    this.firstSlab += drop;
  }

  /**
   * Bytes [pos, min(limit, end of pos's slab)) from the window, without a copy, and their slab with a reference
   * taken for the caller (release it when done with the bytes); undefined if pos is behind the window or not
   * received yet.
   */
  windowPiece(pos: number, limit: number): { slab: Slab; bytes: Buffer } | undefined {
    if (pos < this.windowBegin || pos >= this.received) return undefined;
    const k = Math.floor(pos / SLAB);
    const slab = this.slabs[k - this.firstSlab];
    if (!slab) return undefined;
    const base = k * SLAB;
    return { slab: slab.retain(), bytes: slab.buf.subarray(pos - base, Math.min(slab.buf.length, limit - base, this.received - base)) };
  }

  /** First byte still held in memory; readers behind it read the temp file. */
  get windowBegin(): number {
    return this.firstSlab * SLAB;
  }

  /**
   * What a reader at `pos` of a range ending at `end` (inclusive) can do now: send bytes from the window (with a
   * slab reference taken for it), read a span of the temp file, wait for 'progress', end, or fail. The range's last
   * byte only becomes sendable once the blob has verified.
   */
  step(pos: number, end: number): ReadStep {
    const verified = this.verified;
    // Once verified, a later failure (to persist the blob) does not make the bytes wrong: keep serving them.
    if (this.state === 'failed' && !verified) return { kind: 'fail', error: this.error ?? new Error('download failed') };
    if (pos > end) return { kind: 'end' };
    const sendable = Math.min(this.received, verified ? end + 1 : end);
    if (pos >= sendable) return { kind: 'wait' };
    if (pos >= this.windowBegin) {
      const piece = this.windowPiece(pos, sendable);
      return piece ? { kind: 'memory', ...piece } : { kind: 'fail', error: new Error('download window lost bytes') };
    }
    // Behind the window: those bytes are in the temp file (only written slabs leave the window).
    if (this.fd === undefined) return { kind: 'fail', error: this.error ?? new Error('download file closed') };
    return { kind: 'file', fd: this.fd, length: Math.min(SLAB, sendable - pos) };
  }

  cancel(reason: Error): void {
    if (this.state === 'done' || this.state === 'failed') return;
    this.source?.cancel();
    this.error = reason;
  }

  /**
   * Bytes [start, end] (inclusive) as they arrive, written straight to an HTTP response (slab slices, no copies),
   * which is then ended. The last byte of the range is held back until the whole blob has verified: responses are
   * framed by Content-Length, so a client that has every byte has a complete response, and the only way to fail it
   * on a digest mismatch is to never send the last byte. Rejects when the download fails unverified or the client
   * goes away; the caller destroys the response then, which aborts the client connection.
   */
  async writeTo(res: ServerResponse, start: number, end: number, onBytes: (n: number) => void): Promise<void> {
    if (this.state === 'done' && this.fd === undefined) {
      const lease = this.store.lease(this.digest);
      if (!lease) throw new Error(`blob ${this.digest} left the cache before it could be served`);
      try {
        await lease.writeTo(res, start, end, onBytes);
      } finally {
        lease.release();
      }
      return;
    }
    const done = this.addReader();
    try {
      await writeRange(this, res, start, end, onBytes);
    } finally {
      done();
    }
  }

  /** Counts a reader until the returned function is called (once or more), so that the window outlives it. */
  private addReader(): () => void {
    this.readers++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.readers--;
      this.maybeClose();
    };
  }

  private maybeClose(): void {
    // Not on state alone: after a failure, run() still waits for the write in flight before it aborts the file.
    if (this.settled && this.readers === 0) {
      if (this.fd !== undefined) {
        closeSync(this.fd);
        this.fd = undefined;
      }
      for (const slab of this.slabs.splice(0)) slab.release();
      this.firstSlab = Math.ceil(this.received / SLAB);
      this.lease?.release();
      this.lease = undefined;
    }
  }
}
