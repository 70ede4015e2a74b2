/**
 * What a client that stops reading a cached blob pins (src/cache/sendfile.ts): until a response has shown that its
 * client reads (more than socket buffers take), it goes out in small slabs, so a stalled client holds two small
 * slabs, not two 1 MiB ones; a client that reads moves on to 1 MiB writes. Issue 10 (100 stalled readers: +155 MiB).
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import type { ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sendFileRange } from '../../src/cache/sendfile.js';
import { SLAB_SIZE, slabPool, SMALL_SLAB_SIZE, smallSlabPool } from '../../src/cache/slabs.js';

const SIZE = 40 * 1024 * 1024;
let dir: string;
let file: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'pc-sendfile-'));
  file = join(dir, 'blob');
  await writeFile(file, randomBytes(SIZE));
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A response whose client takes `accept` bytes and then stops reading (its write callbacks stop coming). */
class Client extends Writable {
  readonly sizes: number[] = [];
  received = 0;
  held: Array<(e?: Error | null) => void> = [];

  constructor(private readonly accept: number) {
    super({ highWaterMark: 16 * 1024 });
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    this.sizes.push(chunk.length);
    if (this.received >= this.accept) {
      this.held.push(cb);
      return;
    }
    this.received += chunk.length;
    setImmediate(cb);
  }
}

async function until(f: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 5_000 && !f(); i++) await new Promise((r) => setImmediate(r));
  if (!f()) throw new Error(`still waiting for: ${what}`);
}

describe('sendFileRange and stalled clients', () => {
  it('pins one small slab for a client that stops reading (no read-ahead until it proves it reads), and releases it when the response is destroyed', async () => {
    const big0 = slabPool.inUse;
    const small0 = smallSlabPool.inUse;
    const res = new Client(2 * 1024 * 1024);
    const sent = sendFileRange(res as unknown as ServerResponse, file, 0, SIZE - 1);
    sent.catch(() => {});
    // Stalled: one write pending, and nothing read ahead of it.
    await until(() => res.held.length === 1, 'the response to stall');
    await new Promise((r) => setImmediate(r));
    expect(smallSlabPool.inUse - small0).toBe(1);
    expect(Math.max(...res.sizes)).toBeLessThanOrEqual(SMALL_SLAB_SIZE);
    expect(slabPool.inUse - big0).toBe(0);
    // The write-stall watchdog destroys the socket: everything goes back.
    res.destroy();
    for (const cb of res.held) cb(new Error('destroyed'));
    await expect(sent).rejects.toThrow();
    expect(smallSlabPool.inUse - small0).toBe(0);
    expect(slabPool.inUse - big0).toBe(0);
  });

  it('gives a client that reads 1 MiB writes once it has taken more than socket buffers hold, and every byte', async () => {
    const res = new Client(Infinity);
    await sendFileRange(res as unknown as ServerResponse, file, 0, SIZE - 1);
    expect(res.received).toBe(SIZE);
    expect(res.sizes[0]).toBe(SMALL_SLAB_SIZE);
    expect(res.sizes.at(-2)).toBe(SLAB_SIZE);
    expect(res.sizes.filter((n) => n === SLAB_SIZE).length).toBeGreaterThanOrEqual(20);
  });
});
