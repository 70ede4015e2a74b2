/**
 * The cold-path serving machinery: pooled, reference-counted slabs (cache/slabs.ts), downloads written straight to
 * HTTP responses (Download.writeTo), sources whose memory is reused after every chunk (as the socket transport's is),
 * and write-behind: verified bytes reach clients while the temp file is still being written, with the unwritten
 * bytes bounded.
 */
import { randomBytes } from 'node:crypto';
import { request, type Server } from 'node:http';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { FileBlobStore } from '../../src/cache/blobstore.js';
import { DownloadManager } from '../../src/cache/download-manager.js';
import { MAX_UNWRITTEN, TOTAL_UNWRITTEN, unwrittenDownloadBytes, type Download, type DownloadSource } from '../../src/cache/download.js';
import { SLAB_SIZE, SlabPool, slabPool, smallSlabPool } from '../../src/cache/slabs.js';
import type { ByteSource } from '../../src/util/byte-source.js';
import { cleanupTempDirs, sha256, tempDir, until } from './helpers.js';

const MiB = 1024 * 1024;
afterAll(cleanupTempDirs);

describe('SlabPool', () => {
  it('recycles a slab only after its last holder lets go, and never one that saw an error', () => {
    const pool = new SlabPool(4);
    const a = pool.take();
    expect(a.buf.length).toBe(SLAB_SIZE);
    a.retain();
    a.release();
    expect(pool.idleCount).toBe(0);
    a.release();
    expect(pool.idleCount).toBe(1);
    expect(pool.take().buf).toBe(a.buf);

    const b = pool.take();
    b.retain();
    b.release(new Error('write failed'));
    b.release();
    expect(pool.idleCount).toBe(0);

    const small = pool.take(100);
    small.release();
    expect(pool.idleCount).toBe(0);
  });

  it('refuses to be released more often than retained, or retained after the end', () => {
    const pool = new SlabPool(4);
    const s = pool.take();
    s.release();
    expect(() => s.release()).toThrow(/released more often/);
    expect(() => s.retain()).toThrow(/after its last release/);
  });

  it('keeps at most maxIdle slabs', () => {
    const pool = new SlabPool(2);
    const slabs = [pool.take(), pool.take(), pool.take()];
    for (const s of slabs) s.release();
    expect(pool.idleCount).toBe(2);
  });

  it('after a burst, goes back to keepIdle idle slabs once no slab was taken for trimAfterMs', () => {
    let now = 1_000;
    const timers: { fn: () => void; at: number }[] = [];
    const pool = new SlabPool(8, SLAB_SIZE, { keepIdle: 2, trimAfterMs: 5_000, now: () => now, schedule: (fn, ms) => timers.push({ fn, at: now + ms }) });
    const runDue = (): void => {
      for (const t of timers.splice(0).sort((a, b) => a.at - b.at)) {
        if (t.at <= now) t.fn();
        else timers.push(t);
      }
    };
    // A burst: eight slabs at once, all given back.
    const burst = Array.from({ length: 8 }, () => pool.take());
    for (const s of burst) s.release();
    expect(pool.idleCount).toBe(8);
    expect(timers).toHaveLength(1);
    // Still busy: a steady transfer keeps taking slabs, so nothing is trimmed when the timer first fires.
    now += 3_000;
    pool.take().release();
    now += 2_500;
    runDue();
    expect(pool.idleCount).toBe(8);
    expect(pool.trim()).toBe(0);
    // Quiet for trimAfterMs since the last take: the timer fires again and the pool keeps keepIdle.
    now += 3_000;
    runDue();
    expect(pool.idleCount).toBe(2);
    expect(timers).toHaveLength(0);
    // The kept slabs are still recycled; a new burst refills the pool and arms the timer again.
    const again = Array.from({ length: 5 }, () => pool.take());
    expect(pool.idleCount).toBe(0);
    for (const s of again) s.release();
    expect(pool.idleCount).toBe(5);
    expect(timers).toHaveLength(1);
    now += 5_000;
    runDue();
    expect(pool.idleCount).toBe(2);
  });

  it('the process-wide pools let a burst go after a quiet period', () => {
    // What a 256 MiB cold download left behind (32 idle slabs) stayed in memory for good before.
    for (const pool of [slabPool, smallSlabPool]) {
      expect(pool.keepIdle).toBeLessThanOrEqual(4);
    }
  });
});

/** A source that hands over views of ONE buffer, overwritten with garbage right after each chunk is taken. */
function reusingSource(
  data: Buffer,
  chunk: number,
  opts: {
    onOffset?: (off: number) => Promise<void> | void;
    /** The download held the source (after the chunk at `off`). */ onHeld?: (off: number) => void;
  } = {},
): () => Promise<DownloadSource> {
  return () => {
    const buf = Buffer.alloc(chunk);
    const body: ByteSource = {
      async pipeTo(onChunk) {
        for (let off = 0; off < data.length; off += chunk) {
          await opts.onOffset?.(off);
          const n = data.copy(buf, 0, off, Math.min(data.length, off + chunk));
          const wait = onChunk(buf.subarray(0, n));
          buf.fill(0xee);
          if (wait) {
            opts.onHeld?.(off);
            await wait;
          }
          if ((off / chunk) % 8 === 0) await new Promise((r) => setImmediate(r));
        }
      },
    };
    return Promise.resolve({ size: data.length, body, cancel: () => {} });
  };
}

interface Served {
  url: string;
  server: Server;
}

/** An HTTP server that answers GET /?start&end with download.writeTo, the way the blob handler does. */
async function serve(download: Download): Promise<Served> {
  const server = createServer((req, res) => {
    const u = new URL(req.url ?? '/', 'http://x');
    const start = Number(u.searchParams.get('start') ?? 0);
    const end = Number(u.searchParams.get('end'));
    res.setHeader('content-length', end - start + 1);
    download.writeTo(res, start, end, () => {}).catch(() => res.destroy());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server };
}

/** GETs a range; `delayMs` pauses after each chunk (a slow client); resolves with what arrived and whether it completed. */
function fetchRange(url: string, start: number, end: number, delayMs = 0): Promise<{ data: Buffer; complete: boolean }> {
  return new Promise((resolve) => {
    const req = request(`${url}/?start=${start}&end=${end}`, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => {
        chunks.push(c);
        if (delayMs) {
          res.pause();
          setTimeout(() => res.resume(), delayMs);
        }
      });
      res.on('end', () => resolve({ data: Buffer.concat(chunks), complete: res.complete }));
      res.on('error', () => resolve({ data: Buffer.concat(chunks), complete: false }));
      res.on('aborted', () => resolve({ data: Buffer.concat(chunks), complete: false }));
    });
    req.on('error', () => resolve({ data: Buffer.alloc(0), complete: false }));
    req.end();
  });
}

function setup(): { store: FileBlobStore; mgr: DownloadManager } {
  const store = new FileBlobStore(tempDir(), 1 << 30);
  return { store, mgr: new DownloadManager(store) };
}

describe('Download.writeTo and write-behind', () => {
  const servers: Server[] = [];
  afterEach(async () => {
    for (const s of servers.splice(0)) {
      s.closeAllConnections();
      await new Promise((r) => s.close(r));
    }
  });

  it('serves fast, slow (from the file) and ranged clients intact from a source that reuses its memory', async () => {
    const { mgr, store } = setup();
    const data = randomBytes(20 * MiB + 777);
    const digest = sha256(data);
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const { download } = mgr.getOrStart(digest, reusingSource(data, 200_000, { onOffset: (off) => (off >= 12 * MiB ? gate : undefined) }));
    await download.ready;
    const { url, server } = await serve(download);
    servers.push(server);
    const fast = fetchRange(url, 0, data.length - 1);
    const slow = fetchRange(url, 0, data.length - 1, 3);
    await until(() => download.bytesAvailable >= 12 * MiB, '12 MiB to arrive');
    // Joins at byte 0, long gone from the in-memory window: served from the temp file.
    const late = fetchRange(url, 0, data.length - 1);
    const range = fetchRange(url, MiB - 5, 5 * MiB + 5);
    release();
    for (const r of await Promise.all([fast, slow, late])) {
      expect(r.complete).toBe(true);
      expect(r.data.equals(data)).toBe(true);
    }
    expect((await range).data.equals(data.subarray(MiB - 5, 5 * MiB + 6))).toBe(true);
    await download.finished;
    expect(download.state).toBe('done');
    expect(store.has(digest)).toBe(true);
  }, 60_000);

  it('recycled slabs carry the next download intact, back to back and side by side', async () => {
    const { mgr } = setup();
    const blobs = [randomBytes(9 * MiB + 3), randomBytes(7 * MiB), randomBytes(11 * MiB + 1)];
    // Back to back: the second and third downloads take slabs the first gave back.
    for (const data of blobs) {
      const { download } = mgr.getOrStart(sha256(data), reusingSource(data, 65_536));
      await download.ready;
      const { url, server } = await serve(download);
      servers.push(server);
      const r = await fetchRange(url, 0, data.length - 1);
      expect(r.data.equals(data)).toBe(true);
      await download.finished;
    }
    expect(slabPool.idleCount).toBeGreaterThan(0);
    // Side by side, with a slow client holding slabs in socket writes while the others recycle theirs.
    const fresh = blobs.map((b) => Buffer.concat([b, Buffer.from('x')]));
    const results = await Promise.all(
      fresh.map(async (data, i) => {
        const { download } = mgr.getOrStart(sha256(data), reusingSource(data, 100_000));
        await download.ready;
        const { url, server } = await serve(download);
        servers.push(server);
        const [a, b] = await Promise.all([fetchRange(url, 0, data.length - 1, i === 0 ? 2 : 0), fetchRange(url, 0, data.length - 1)]);
        return a.data.equals(data) && b.data.equals(data);
      }),
    );
    expect(results).toEqual([true, true, true]);
  }, 60_000);

  it('a digest mismatch breaks every client transfer and commits nothing', async () => {
    const { mgr, store } = setup();
    const data = randomBytes(6 * MiB);
    const wrong = sha256(Buffer.from('other bytes'));
    const { download } = mgr.getOrStart(wrong, reusingSource(data, 64 * 1024));
    await download.ready;
    const { url, server } = await serve(download);
    servers.push(server);
    const [a, b] = await Promise.all([fetchRange(url, 0, data.length - 1), fetchRange(url, 0, data.length - 1, 2)]);
    for (const r of [a, b]) {
      expect(r.complete).toBe(false);
      expect(r.data.length).toBeLessThan(data.length);
    }
    await download.finished;
    expect(download.state).toBe('failed');
    expect(store.has(wrong)).toBe(false);
  }, 30_000);

  it('a mismatch found before a range has sent anything rejects writeTo with the response untouched', async () => {
    const { mgr } = setup();
    const data = randomBytes(3 * MiB);
    const { download } = mgr.getOrStart(sha256(Buffer.from('not these')), reusingSource(data, 64 * 1024));
    await download.ready;
    let outcome: unknown;
    let headersSent: boolean | undefined;
    const server = createServer((_req, res) => {
      res.setHeader('content-length', 1);
      // The last byte alone: it is only ever sent once the whole blob has verified.
      download
        .writeTo(res, data.length - 1, data.length - 1, () => {})
        .then(
          () => (outcome = 'resolved'),
          (e: unknown) => {
            outcome = e;
            headersSent = res.headersSent;
            res.statusCode = 502;
            res.setHeader('content-length', 0);
            res.end();
          },
        );
    });
    servers.push(server);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const r = await fetchRange(`http://127.0.0.1:${(server.address() as AddressInfo).port}`, 0, 0);
    expect((outcome as Error).name).toBe('DigestMismatchError');
    expect(headersSent).toBe(false);
    expect(r.data.length).toBe(0);
  }, 30_000);

  it('verified bytes reach the client while the disk is still writing; the upstream waits once MAX_UNWRITTEN bytes are unwritten', async () => {
    const { mgr, store } = setup();
    // A disk that takes no writes until the test opens it.
    let openDisk!: () => void;
    const disk = new Promise<void>((r) => (openDisk = r));
    const createWriter = store.createWriter.bind(store);
    store.createWriter = async (digest, size) => {
      const w = await createWriter(digest, size);
      const write = w.write.bind(w);
      w.write = async (chunk: Buffer) => {
        await disk;
        return write(chunk);
      };
      return w;
    };
    // Small enough to sit entirely in memory: the client gets all of it, verified, before any byte is on disk.
    const small = randomBytes(5 * MiB);
    const d1 = mgr.getOrStart(sha256(small), reusingSource(small, 256 * 1024)).download;
    await d1.ready;
    const s1 = await serve(d1);
    servers.push(s1.server);
    const r1 = await fetchRange(s1.url, 0, small.length - 1);
    expect(r1.complete).toBe(true);
    expect(r1.data.equals(small)).toBe(true);
    expect(d1.verified).toBe(true);
    expect(d1.state).toBe('running');

    // Larger than the per-download cap: the source is held once MAX_UNWRITTEN bytes wait for the disk.
    const big = randomBytes(64 * MiB);
    let offered = 0;
    let heldAfter: number | undefined;
    const d2 = mgr.getOrStart(
      sha256(big),
      reusingSource(big, 256 * 1024, { onOffset: (off) => void (offered = off), onHeld: (off) => void (heldAfter ??= off) }),
    ).download;
    await d2.ready;
    // The download holds the source (its chunk promise stays pending while the disk is shut): nothing more can come.
    await until(() => heldAfter !== undefined, 'the download to hold the source');
    expect(offered).toBe(heldAfter);
    expect(d2.bytesAvailable).toBeGreaterThanOrEqual(MAX_UNWRITTEN);
    expect(d2.bytesAvailable).toBeLessThanOrEqual(MAX_UNWRITTEN + 256 * 1024);
    expect(offered).toBeLessThan(big.length - 256 * 1024);
    // The backlog metric sees both downloads' unwritten bytes.
    expect(unwrittenDownloadBytes()).toBeGreaterThanOrEqual(MAX_UNWRITTEN + small.length);

    openDisk();
    await Promise.all([d1.finished, d2.finished]);
    expect(unwrittenDownloadBytes()).toBe(0);
    expect(d1.state).toBe('done');
    expect(d2.state).toBe('done');
    expect(store.has(sha256(small))).toBe(true);
    expect(store.has(sha256(big))).toBe(true);
  }, 60_000);

  /** A store whose temp-file writes wait until the returned function opens the disk (a disk slower than the network). */
  function shutDisk(store: FileBlobStore): () => void {
    let openDisk!: () => void;
    const disk = new Promise<void>((r) => (openDisk = r));
    const createWriter = store.createWriter.bind(store);
    store.createWriter = async (digest, size) => {
      const w = await createWriter(digest, size);
      const write = w.write.bind(w);
      w.write = async (chunk: Buffer) => {
        await disk;
        return write(chunk);
      };
      return w;
    };
    return openDisk;
  }

  it('two downloads whose disk lags hold no more slabs than the pool keeps idle', async () => {
    const { mgr, store } = setup();
    const openDisk = shutDisk(store);
    const before = slabPool.inUse;
    const blobs = [randomBytes(40 * MiB), randomBytes(40 * MiB)];
    const held: Array<number | undefined> = [undefined, undefined];
    const ds = blobs.map((b, i) => mgr.getOrStart(sha256(b), reusingSource(b, 256 * 1024, { onHeld: (off) => void (held[i] ??= off) })).download);
    await until(() => held.every((h) => h !== undefined), 'both downloads to hold their sources');
    // Each is held well before its end (the disk takes nothing), and what both hold fits the idle pool, so a pull's
    // overlapping layers recycle memory instead of allocating it (a fresh slab is a page fault and GC pressure).
    for (const h of held) expect(h).toBeLessThan(40 * MiB - 256 * 1024);
    const inUse = slabPool.inUse - before;
    expect(inUse).toBeGreaterThanOrEqual(Math.floor(TOTAL_UNWRITTEN / SLAB_SIZE));
    expect(inUse).toBeLessThanOrEqual(slabPool.maxIdle);
    openDisk();
    await Promise.all(ds.map((d) => d.finished));
    expect(ds.map((d) => d.state)).toEqual(['done', 'done']);
    expect(slabPool.inUse).toBe(before);
  }, 60_000);

  it('back-to-back cold downloads whose disk lags recycle their slabs: the second allocates none', async () => {
    const { mgr, store } = setup();
    // Made up front, so that nothing slow runs between the two (the pool trims itself after 5 s without a take).
    const blobs = [randomBytes(40 * MiB), randomBytes(40 * MiB)];
    for (const [i, blob] of blobs.entries()) {
      const openDisk = shutDisk(store);
      const allocated = slabPool.allocations;
      let held = false;
      const d = mgr.getOrStart(sha256(blob), reusingSource(blob, 256 * 1024, { onHeld: () => void (held = true) })).download;
      await until(() => held, 'the download to hold its source');
      openDisk();
      await d.finished;
      expect(d.state).toBe('done');
      expect(store.has(sha256(blob))).toBe(true);
      // The first may find the pool trimmed; the second finds every slab the first used idle (40 MiB is 40 whole slabs).
      if (i === 1) expect(slabPool.allocations - allocated).toBe(0);
    }
  }, 60_000);
});
