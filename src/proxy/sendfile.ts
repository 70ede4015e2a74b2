/**
 * Serves a byte range of a cached blob file to an HTTP response with reused buffers.
 *
 * Why not createReadStream: it allocates a fresh buffer per read, and at several hundred MB/s that external-memory
 * churn set off a V8 major GC every few tens of MiB; on a warm pull V8's marking threads then used about half of the
 * proxy's CPU (perf, `npm run bench`). Here every buffer goes back to a small pool as soon as the socket has taken
 * its bytes (the write callback), so a steady transfer allocates nothing, and each read is large enough that the
 * client is woken once per 512 KiB rather than per 64 KiB.
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
  try {
    let pos = start;
    while (pos <= end) {
      if (res.destroyed) throw prematureClose();
      const buf = take();
      const want = Math.min(BUF_SIZE, end - pos + 1);
      let bytesRead: number;
      try {
        ({ bytesRead } = await fh.read(buf, 0, want, pos));
      } catch (e) {
        give(buf);
        throw e;
      }
      if (bytesRead === 0) {
        give(buf);
        throw new Error(`short read from ${path} at ${pos}`);
      }
      pos += bytesRead;
      onBytes?.(bytesRead);
      // Back to the pool only once the socket is done with the bytes; after an error the buffer is just dropped.
      const ok = res.write(bytesRead === buf.length ? buf : buf.subarray(0, bytesRead), (err) => {
        if (!err) give(buf);
      });
      if (!ok && pos <= end) await drained(res);
    }
    res.end();
    await finished(res);
  } finally {
    await fh.close();
  }
}
