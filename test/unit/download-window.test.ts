/**
 * Download internals added for performance (bench/README.md): bytes go into 1 MiB slabs, readers near the head are
 * served from the in-memory window, readers further behind from the temp file, the file is written in whole slabs,
 * and readers are notified in batches. These tests drive blobs several times larger than the window, so every path
 * (window, file, the boundary between them, a partial last slab) carries bytes.
 */
import { randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { afterAll, describe, expect, it } from 'vitest';
import { FileBlobStore } from '../../src/cache/blobstore.js';
import { DownloadManager } from '../../src/cache/download-manager.js';
import type { DownloadSource } from '../../src/cache/download.js';
import { cleanupTempDirs, readThrough, sha256, sleep, tempDir } from './helpers.js';

afterAll(cleanupTempDirs);

const MiB = 1024 * 1024;

/** Chunks of `chunk` bytes, released `perTick` at a time with a macrotask between, like socket reads. */
function source(data: Buffer, chunk: number, opts: { perTick?: number; pauseAt?: number; gate?: Promise<void> } = {}): () => Promise<DownloadSource> {
  return () => {
    async function* body(): AsyncGenerator<Buffer> {
      let n = 0;
      for (let off = 0; off < data.length; off += chunk) {
        if (opts.pauseAt !== undefined && off >= opts.pauseAt && opts.gate) await opts.gate;
        // A copy, like a socket read: the download must not rely on the caller keeping the buffer intact.
        yield Buffer.from(data.subarray(off, off + chunk));
        if (++n % (opts.perTick ?? 4) === 0) await new Promise((r) => setImmediate(r));
      }
    }
    return Promise.resolve({ size: data.length, body: body(), cancel: () => {} });
  };
}

function collect(stream: Readable, delayMs = 0): Promise<{ data: Buffer; error: Error | undefined }> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => {
      chunks.push(Buffer.from(c));
      if (delayMs) {
        stream.pause();
        setTimeout(() => stream.resume(), delayMs);
      }
    });
    stream.on('end', () => resolve({ data: Buffer.concat(chunks), error: undefined }));
    stream.on('error', (e) => resolve({ data: Buffer.concat(chunks), error: e }));
  });
}

function setup() {
  const dir = tempDir();
  const store = new FileBlobStore(dir, 1 << 30);
  return { dir, store, mgr: new DownloadManager(store) };
}

describe('Download window and slabs', () => {
  it('a 24 MiB blob in 64 KiB chunks reaches fast, slow and late readers intact, and is committed', async () => {
    const { mgr, store, dir } = setup();
    const data = randomBytes(24 * MiB + 12_345); // a partial last slab
    const digest = sha256(data);
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const { download } = mgr.getOrStart(digest, source(data, 64 * 1024, { pauseAt: 16 * MiB, gate }));
    await download.ready;
    const fast = collect(readThrough(download, 0, data.length - 1));
    // A slow reader falls far behind the window and must be served from the temp file.
    const slow = collect(readThrough(download, 0, data.length - 1), 2);
    const until = Date.now() + 10_000;
    while (download.bytesAvailable < 16 * MiB && Date.now() < until) await sleep(5);
    // A late joiner starts at byte 0, long gone from the window.
    const late = collect(readThrough(download, 0, data.length - 1));
    // Ranges that straddle a slab boundary and the window's start.
    const mid = collect(readThrough(download, MiB - 10, 3 * MiB + 10));
    const tail = collect(readThrough(download, data.length - 100, data.length - 1));
    release();
    for (const r of await Promise.all([fast, slow, late])) {
      expect(r.error).toBeUndefined();
      expect(r.data.length).toBe(data.length);
      expect(r.data.equals(data)).toBe(true);
    }
    expect((await mid).data.equals(data.subarray(MiB - 10, 3 * MiB + 11))).toBe(true);
    expect((await tail).data.equals(data.subarray(data.length - 100))).toBe(true);
    await download.finished;
    expect(download.state).toBe('done');
    expect(store.has(digest)).toBe(true);
    expect(readdirSync(join(dir, 'tmp'))).toEqual([]);
  }, 30_000);

  it('twenty readers of one download all get identical bytes, in uneven chunk sizes', async () => {
    const { mgr } = setup();
    const data = randomBytes(6 * MiB + 1);
    const { download } = mgr.getOrStart(sha256(data), source(data, 100_003, { perTick: 1 }));
    await download.ready;
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => collect(readThrough(download, 0, data.length - 1), i % 3)));
    for (const r of results) expect(r.data.equals(data)).toBe(true);
    await download.finished;
    expect(download.state).toBe('done');
  }, 30_000);

  it('a digest mismatch on a large blob fails every reader, including one served from the file', async () => {
    const { mgr, store } = setup();
    const data = randomBytes(12 * MiB);
    const wrong = sha256(Buffer.from('not these bytes'));
    const { download } = mgr.getOrStart(wrong, source(data, 64 * 1024));
    await download.ready;
    const head = collect(readThrough(download, 0, data.length - 1));
    const slow = collect(readThrough(download, 0, data.length - 1), 3);
    const [a, b] = await Promise.all([head, slow]);
    expect(a.error?.name).toBe('DigestMismatchError');
    expect(b.error?.name).toBe('DigestMismatchError');
    expect(a.data.length).toBeLessThan(data.length);
    expect(b.data.length).toBeLessThan(data.length);
    await download.finished;
    expect(store.has(wrong)).toBe(false);
  }, 30_000);

  it('a one-byte blob and a blob of exactly one slab', async () => {
    const { mgr } = setup();
    for (const size of [1, MiB]) {
      const data = randomBytes(size);
      const { download } = mgr.getOrStart(sha256(data), source(data, 64 * 1024));
      await download.ready;
      const r = await collect(readThrough(download, 0, size - 1));
      expect(r.data.equals(data)).toBe(true);
      await download.finished;
      expect(download.state).toBe('done');
    }
  });
});
