/**
 * Serves a byte range of a cached blob file to an HTTP response with reused buffers.
 *
 * Why not createReadStream: it allocates a fresh buffer per read, and at several hundred MB/s that external-memory
 * churn set off a V8 major GC every few tens of MiB; on a warm pull V8's marking threads then used about half of the
 * proxy's CPU (perf, `npm run bench`). Here every buffer goes back to a small pool as soon as the socket has taken
 * its bytes (the write callback), so a steady transfer allocates nothing, and each read is large enough that the
 * client is woken once per 512 KiB rather than per 64 KiB. The next read runs while the previous chunk drains.
 */
import { open } from 'node:fs/promises';
import type { ServerResponse } from 'node:http';
import { finished } from 'node:stream/promises';

const BUF_SIZE = 512 * 1024;
/** Idle buffers kept for reuse (at most 16 MiB); more are left to the GC. */
const POOL_MAX = 32;
const pool: Buffer[] = [];

function take(): Buffer {
  return pool.pop() ?? Buffer.allocUnsafeSlow(BUF_SIZE);
}

function give(b: Buffer): void {
  if (pool.length < POOL_MAX) pool.push(b);
}

function prematureClose(): Error {
  return Object.assign(new Error('client closed the connection'), { code: 'ERR_STREAM_PREMATURE_CLOSE' });
}

/** Resolves on 'drain'; rejects if the response closes first. */
function drained(res: ServerResponse): Promise<void> {
  return new Promise((resolve, reject) => {
    const onDrain = (): void => {
      res.off('close', onClose);
      resolve();
    };
    const onClose = (): void => {
      res.off('drain', onDrain);
      reject(prematureClose());
    };
    res.once('drain', onDrain);
    res.once('close', onClose);
  });
}

/**
 * Writes bytes [start, end] (inclusive) of the file at `path` to `res`, ends it, and resolves once the response
 * has finished. Rejects (leaving `res` to the caller to destroy) on a read error or when the client goes away.
 */
export async function sendFileRange(res: ServerResponse, path: string, start: number, end: number, onBytes?: (n: number) => void): Promise<void> {
  const fh = await open(path, 'r');
  /** One read into a pooled buffer; the buffer goes back to the pool if the read fails or comes back empty. */
  const readAt = async (pos: number): Promise<{ buf: Buffer; n: number }> => {
    const buf = take();
    try {
      const { bytesRead } = await fh.read(buf, 0, Math.min(BUF_SIZE, end - pos + 1), pos);
      if (bytesRead === 0) throw new Error(`short read from ${path} at ${pos}`);
      return { buf, n: bytesRead };
    } catch (e) {
      give(buf);
      throw e;
    }
  };
  let next: Promise<{ buf: Buffer; n: number }> | undefined;
  const readAhead = (pos: number): Promise<{ buf: Buffer; n: number }> => {
    const p = readAt(pos);
    // Awaited later (possibly after a drain): keep a failure from counting as an unhandled rejection meanwhile.
    p.catch(() => {});
    return p;
  };
  try {
    let pos = start;
    next = readAhead(pos);
    while (next) {
      const { buf, n } = await next;
      next = undefined;
      if (res.destroyed) {
        give(buf);
        throw prematureClose();
      }
      pos += n;
      // Read ahead while this chunk drains, so the socket never waits for the disk (one more buffer per response).
      if (pos <= end) next = readAhead(pos);
      onBytes?.(n);
      // Back to the pool only once the socket is done with the bytes; after an error the buffer is just dropped.
      const ok = res.write(n === buf.length ? buf : buf.subarray(0, n), (err) => {
        if (!err) give(buf);
      });
      if (!ok && next) await drained(res);
    }
    res.end();
    await finished(res);
  } finally {
    // A read still in flight (the client went away) must finish before the descriptor closes.
    if (next) await next.then((r) => give(r.buf), () => {});
    await fh.close();
  }
}
