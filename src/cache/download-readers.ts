/**
 * Following a running download (cache/download.ts) straight into an HTTP response: writeRange asks Download.step()
 * what to do next (window bytes, the temp file, wait, end or fail), so every reader holds back the same last byte
 * and fails the same way.
 */
import { read } from 'node:fs';
import type { ServerResponse } from 'node:http';
import { finished } from 'node:stream/promises';
import { drained, eventOrClose, prematureClose } from '../util/drain.js';
import type { Download } from './download.js';
import { slabPool } from './slabs.js';

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
