/**
 * Serves a byte range of a cached blob file to an HTTP response with reused buffers.
 *
 * Why not createReadStream: it allocates a fresh buffer per read, and at several hundred MB/s that external-memory
 * churn set off a V8 major GC every few tens of MiB; on a warm pull V8's marking threads then used about half of the
 * proxy's CPU (perf, `npm run bench`). Here every read goes into a pooled slab (cache/slabs.ts, shared with
 * downloads) that returns to the pool as soon as the socket has taken its bytes (the write callback), so a steady
 * transfer allocates nothing, and each read is large enough that the client is woken once per MiB rather than per
 * 64 KiB. The next read runs while the previous chunk drains.
 */
import { open } from 'node:fs/promises';
import type { ServerResponse } from 'node:http';
import { finished } from 'node:stream/promises';
import { drained, prematureClose } from '../util/drain.js';
import { slabPool, smallSlabPool, type Slab } from './slabs.js';

/**
 * Until a response has sent this much, it reads (and writes) in small slabs. More than loopback or LAN socket
 * buffers take from a client that never reads, so such a client only ever pins two small slabs; a client that
 * reads gets past it within milliseconds and then has 1 MiB reads and writes.
 */
const PROVEN_BYTES = 16 * 1024 * 1024;

/**
 * Writes bytes [start, end] (inclusive) of the file at `path` to `res`, ends it, and resolves once the response
 * has finished. Rejects (leaving `res` to the caller to destroy) on a read error or when the client goes away.
 */
export async function sendFileRange(res: ServerResponse, path: string, start: number, end: number, onBytes?: (n: number) => void): Promise<void> {
  const fh = await open(path, 'r');
  /** One read into a pooled slab; the slab goes back if the read fails or comes back empty. */
  const readAt = async (pos: number): Promise<{ slab: Slab; n: number }> => {
    const pool = pos - start < PROVEN_BYTES ? smallSlabPool : slabPool;
    const slab = pool.take();
    try {
      const { bytesRead } = await fh.read(slab.buf, 0, Math.min(pool.slabSize, end - pos + 1), pos);
      if (bytesRead === 0) throw new Error(`short read from ${path} at ${pos}`);
      return { slab, n: bytesRead };
    } catch (e) {
      slab.release();
      throw e;
    }
  };
  let next: Promise<{ slab: Slab; n: number }> | undefined;
  const readAhead = (pos: number): Promise<{ slab: Slab; n: number }> => {
    const p = readAt(pos);
    // Awaited later (possibly after a drain): keep a failure from counting as an unhandled rejection meanwhile.
    p.catch(() => {});
    return p;
  };
  try {
    let pos = start;
    next = readAhead(pos);
    while (next) {
      const { slab, n } = await next;
      next = undefined;
      if (res.destroyed) {
        slab.release();
        throw prematureClose();
      }
      pos += n;
      // Read ahead while this chunk drains, so the socket never waits for the disk (one more slab per response);
      // only once the client has proven it reads: until then a client that never reads pins one small slab, not two.
      const proven = pos - start >= PROVEN_BYTES;
      if (proven && pos <= end) next = readAhead(pos);
      onBytes?.(n);
      // Back to the pool only once the socket is done with the bytes.
      const ok = res.write(n === slab.buf.length ? slab.buf : slab.buf.subarray(0, n), (err) => slab.release(err));
      if (!ok && pos <= end) await drained(res);
      if (!proven && pos <= end) next = readAhead(pos);
    }
    res.end();
    await finished(res);
  } finally {
    // A read still in flight (the client went away) must finish before the descriptor closes.
    if (next)
      await next.then(
        (r) => r.slab.release(),
        () => {},
      );
    await fh.close();
  }
}
