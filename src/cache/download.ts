/**
 * Single-flight blob downloads. The first request for a missing digest starts one upstream GET that writes to the
 * store's temp file; every concurrent request (late joiners and Range requests too) reads the bytes back from that
 * file as they land, at its own pace. So 20 clients cost the upstream one GET per blob, memory stays flat whatever
 * the blob size, and a slow client never slows the download for the others.
 *
 * When the download fails verification, every reader's stream errors, which aborts its client connection: no
 * client receives a complete response for bytes that did not match the digest, and nothing is committed.
 */
import { EventEmitter } from 'node:events';
import { createReadStream, openSync, closeSync, read } from 'node:fs';
import { promisify } from 'node:util';
import { Readable } from 'node:stream';
import type { BlobLease, BlobStore, BlobWriter } from './blobstore.js';
import type { Digest } from '../routing/reference.js';

const readAsync = promisify(read);
const CHUNK = 256 * 1024;

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

  get bytesAvailable(): number {
    return this.writer?.bytesWritten ?? 0;
  }

  async run(): Promise<void> {
    try {
      const src = await this.fetch();
      this.source = src;
      this.size = src.size;
      this.writer = await this.store.createWriter(this.digest, src.size);
      // One shared descriptor for every reader; positional reads keep them independent, and it stays valid across
      // the rename at commit.
      this.fd = openSync(this.writer.tmpPath, 'r');
      this.state = 'running';
      this.emit('ready');
      for await (const chunk of src.body) {
        await this.writer.write(chunk);
        this.emit('progress');
      }
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
      await this.writer?.abort();
      this.source?.cancel();
      this.emit('failed', this.error);
      this.emit('progress');
    } finally {
      this.emit('settled');
      this.maybeClose();
    }
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
      const s = createReadStream(lease.path, { start, end, highWaterMark: CHUNK });
      s.once('close', lease.release);
      return s;
    }
    this.readers++;
    const self = this;
    let released = false;
    const release = (): void => {
      if (released) return;
      released = true;
      self.readers--;
      self.maybeClose();
    };
    async function* gen(): AsyncGenerator<Buffer> {
      let pos = start;
      try {
        while (pos <= end) {
          // Once verified, a later failure (to persist the blob) does not make the bytes wrong: keep serving them
          // from the open descriptor, which outlives an unlinked temp file.
          const verified = self.verified;
          if (self.state === 'failed' && !verified) throw self.error ?? new Error('download failed');
          // Exclusive bound of what may go out now: everything once verified, else all but the range's last byte.
          const sendable = Math.min(self.bytesAvailable, verified ? end + 1 : end);
          if (pos >= sendable) {
            if (verified) break;
            await new Promise((r) => self.once('progress', r));
            continue;
          }
          const n = Math.min(CHUNK, sendable - pos);
          const buf = Buffer.allocUnsafe(n);
          const { bytesRead } = await readAsync(self.fd as number, buf, 0, n, pos);
          if (bytesRead === 0) throw new Error('short read from download file');
          pos += bytesRead;
          yield bytesRead === n ? buf : buf.subarray(0, bytesRead);
        }
        // Belt and braces: the client must not see a clean end unless the digest verified.
        while (!self.verified && (self.state === 'running' || self.state === 'starting')) await new Promise((r) => self.once('progress', r));
        if (!self.verified) throw self.error ?? new Error('download failed');
      } finally {
        release();
      }
    }
    const stream = Readable.from(gen(), { objectMode: false, highWaterMark: CHUNK });
    stream.once('close', release);
    return stream;
  }

  private maybeClose(): void {
    const settled = this.state === 'done' || this.state === 'failed';
    if (settled && this.readers === 0) {
      if (this.fd !== undefined) {
        closeSync(this.fd);
        this.fd = undefined;
      }
      this.lease?.release();
      this.lease = undefined;
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
