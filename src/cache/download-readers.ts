/**
 * The two ways to follow a running download (cache/download.ts): straight into an HTTP response (writeRange, what
 * the blob handler uses) and as a Readable (TailReader, for callers that need a stream). Both ask Download.step()
 * what to do next, so they hold back the same last byte and fail the same way.
 */
import { createReadStream, read } from 'node:fs';
import type { ServerResponse } from 'node:http';
import { Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import type { Digest } from '../routing/reference.js';
import { drained, eventOrClose, prematureClose } from '../util/drain.js';
import type { BlobStore } from './blobstore.js';
import type { Download } from './download.js';
import { SLAB_SIZE, slabPool } from './slabs.js';

/**
 * Writes bytes [start, end] of the download to `res` as they arrive, then ends it. Window bytes go out as slab
 * slices, each slab held until its write callback, so that nothing is copied and nothing is allocated per chunk.
 */
export async function writeRange(d: Download, res: ServerResponse, start: number, end: number, onBytes: (n: number) => void): Promise<void> {
  let pos = start;
  for (;;) {
    if (res.destroyed) throw prematureClose();
    const step = d.step(pos, end);
    if (step.kind === 'fail') throw step.error;
    if (step.kind === 'end') break;
    if (step.kind === 'wait') {
      await eventOrClose(d, 'progress', res);
      continue;
    }
    let slab, bytes;
    if (step.kind === 'memory') {
      ({ slab, bytes } = step);
    } else {
      // A reader that fell behind the window (a slow client, or a late joiner of a large blob).
      slab = slabPool.take();
      try {
        bytes = slab.buf.subarray(0, await readAt(step.fd, slab.buf, step.length, pos));
      } catch (e) {
        slab.release(e);
        throw e;
      }
    }
    pos += bytes.length;
    onBytes(bytes.length);
    const held = slab;
    if (!res.write(bytes, (err) => held.release(err))) await drained(res);
  }
  res.end();
  await finished(res);
}

function readAt(fd: number, buf: Buffer, length: number, pos: number): Promise<number> {
  return new Promise((resolve, reject) => {
    read(fd, buf, 0, length, pos, (err, n) => {
      if (err) reject(err);
      else if (n === 0) reject(new Error('short read from download file'));
      else resolve(n);
    });
  });
}

/** Buffered per reader stream before it stops pulling (the HTTP response buffers on top of this). */
const READER_HWM = 1024 * 1024;

/**
 * One reader of a running download as a Readable. Window bytes are pushed as copies, because a pushed buffer's
 * consumer is unknown and the slab must go back to the pool.
 */
export class TailReader extends Readable {
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

  private pump(): void {
    while (!this.busy && !this.waiting && !this.destroyed) {
      const step = this.d.step(this.pos, this.end);
      switch (step.kind) {
        case 'fail':
          this.destroy(step.error);
          return;
        case 'end':
          this.push(null);
          return;
        case 'wait':
          this.waiting = true;
          this.d.once('progress', this.onProgress);
          return;
        case 'memory': {
          const copy = Buffer.from(step.bytes);
          step.slab.release();
          this.pos += copy.length;
          if (!this.push(copy)) return;
          continue;
        }
        case 'file': {
          this.busy = true;
          const buf = Buffer.allocUnsafe(step.length);
          readAt(step.fd, buf, step.length, this.pos).then(
            (n) => {
              this.busy = false;
              if (this.destroyed) return;
              this.pos += n;
              if (this.push(n === buf.length ? buf : buf.subarray(0, n))) this.pump();
            },
            (e: unknown) => {
              this.busy = false;
              this.destroy(e instanceof Error ? e : new Error(String(e)));
            },
          );
          return;
        }
      }
    }
  }
}

/**
 * A finished download whose readers are all gone has closed its temp descriptor: read the committed blob. This is
 * the normal path when the upstream sent no Content-Length, since clients are then only handed a stream once the
 * download has finished.
 */
export function committedReader(store: BlobStore, digest: Digest, start: number, end: number): Readable {
  const lease = store.lease(digest);
  if (!lease) return failing(new Error(`blob ${digest} left the cache before it could be served`));
  const s = createReadStream(lease.path, { start, end, highWaterMark: SLAB_SIZE });
  s.once('close', () => lease.release());
  return s;
}

/** A stream that errors on its first read, as a stream whose source fails at once would. */
function failing(e: Error): Readable {
  return Readable.from({ [Symbol.asyncIterator]: () => ({ next: (): Promise<IteratorResult<Buffer>> => Promise.reject(e) }) });
}
