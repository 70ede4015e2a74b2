/** Backpressure helpers for writing straight to an HTTP response (proxy/sendfile.ts, cache/download-readers.ts). */
import type { Writable } from 'node:stream';

export function prematureClose(): Error {
  return Object.assign(new Error('client closed the connection'), { code: 'ERR_STREAM_PREMATURE_CLOSE' });
}

/** Resolves on 'drain'; rejects if the stream closes first. */
export function drained(out: Writable): Promise<void> {
  if (out.destroyed) return Promise.reject(prematureClose());
  return new Promise((resolve, reject) => {
    const onDrain = (): void => {
      out.off('close', onClose);
      resolve();
    };
    const onClose = (): void => {
      out.off('drain', onDrain);
      reject(prematureClose());
    };
    out.once('drain', onDrain);
    out.once('close', onClose);
  });
}
