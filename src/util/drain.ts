/** Backpressure helpers for writing straight to an HTTP response (cache/sendfile.ts, cache/download-readers.ts). */
import type { EventEmitter } from 'node:events';
import type { Writable } from 'node:stream';

export function prematureClose(): Error {
  return Object.assign(new Error('client closed the connection'), { code: 'ERR_STREAM_PREMATURE_CLOSE' });
}

/** Resolves on `source`'s next `event`; rejects if `out` closes first (the client went away meanwhile). */
export function eventOrClose(source: EventEmitter, event: string, out: Writable): Promise<void> {
  if (out.destroyed) return Promise.reject(prematureClose());
  return new Promise((resolve, reject) => {
    const onEvent = (): void => {
      out.off('close', onClose);
      resolve();
    };
    const onClose = (): void => {
      source.off(event, onEvent);
      reject(prematureClose());
    };
    source.once(event, onEvent);
    out.once('close', onClose);
  });
}

/** Resolves on 'drain'; rejects if the stream closes first. */
export function drained(out: Writable): Promise<void> {
  return eventOrClose(out, 'drain', out);
}
