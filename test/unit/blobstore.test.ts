import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { FileBlobStore, DigestMismatchError, SizeMismatchError } from '../../src/cache/blobstore.js';
import type { Digest } from '../../src/routing/reference.js';
import { cleanupTempDirs, sha256, sha512, tempDir } from './helpers.js';

afterAll(cleanupTempDirs);

/** Set by a test to hold every file removal until it opens the gate (fault injection; otherwise a pass-through). */
const unlinkGate: { wait?: Promise<void>; calls: number } = { calls: 0 };
vi.mock('node:fs/promises', async (importOriginal) => {
  const real = await importOriginal<typeof import('node:fs/promises')>();
  return {
    ...real,
    unlink: async (p: string) => {
      unlinkGate.calls++;
      await unlinkGate.wait;
      return real.unlink(p);
    },
  };
});

function blob(n: number): { data: Buffer; digest: Digest } {
  const data = randomBytes(n);
  return { data, digest: sha256(data) };
}

const listTmp = (dir: string) => readdirSync(join(dir, 'tmp'));

describe('BlobStore', () => {
  it('stores, leases and reads back a blob (sha256 and sha512)', async () => {
    const dir = tempDir();
    const s = new FileBlobStore(dir, 1 << 20);
    const a = blob(1000);
    await s.putBuffer(a.digest, a.data);
    expect(s.has(a.digest)).toBe(true);
    expect(s.size(a.digest)).toBe(1000);
    expect(s.totalBytes).toBe(1000);
    expect(s.entries).toBe(1);
    const lease = s.lease(a.digest)!;
    expect(lease.size).toBe(1000);
    expect(readFileSync(lease.path)).toEqual(a.data);
    lease.release();
    const b = randomBytes(77);
    await s.putBuffer(sha512(b), b);
    expect(readFileSync(s.pathFor(sha512(b)))).toEqual(b);
    expect(listTmp(dir)).toEqual([]);
  });

  it('removes temp files left by a crash at construction, and keeps committed blobs', async () => {
    const dir = tempDir();
    const s1 = new FileBlobStore(dir, 1 << 20);
    const a = blob(100);
    await s1.putBuffer(a.digest, a.data);
    // Simulate a kill -9 mid-download: a writer that never committed, plus stray files.
    const w = await s1.createWriter(blob(50).digest, 50);
    await w.write(randomBytes(20));
    writeFileSync(join(dir, 'tmp', 'stray'), 'x');
    mkdirSync(join(dir, 'tmp', 'nested'));
    writeFileSync(join(dir, 'tmp', 'nested', 'f'), 'y');
    expect(listTmp(dir).length).toBe(3);

    const s2 = new FileBlobStore(dir, 1 << 20);
    expect(listTmp(dir)).toEqual([]);
    expect(s2.has(a.digest)).toBe(true);
    expect(s2.entries).toBe(1);
    await w.abort();
  });

  it("keeps another live process's downloads in tmp/ (a check CLI or second instance on the same dir)", () => {
    const dir = tempDir();
    new FileBlobStore(dir, 1 << 20);
    const live = `${process.ppid}.abcd-1234`; // the test runner's parent is alive
    const dead = '999999999.abcd-5678'; // no such pid
    writeFileSync(join(dir, 'tmp', live), 'partial');
    writeFileSync(join(dir, 'tmp', dead), 'partial');
    new FileBlobStore(dir, 1 << 20);
    expect(listTmp(dir)).toEqual([live]);
  });

  it('a commit with the wrong digest throws DigestMismatchError and leaves nothing', async () => {
    const dir = tempDir();
    const s = new FileBlobStore(dir, 1 << 20);
    const claimed = blob(64).digest;
    const w = await s.createWriter(claimed);
    await w.write(randomBytes(64));
    const err = await w.commit().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DigestMismatchError);
    expect((err as DigestMismatchError).expected).toBe(claimed);
    expect((err as DigestMismatchError).actual).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(s.has(claimed)).toBe(false);
    expect(s.lease(claimed)).toBeUndefined();
    expect(existsSync(s.pathFor(claimed))).toBe(false);
    expect(listTmp(dir)).toEqual([]);
    expect(s.totalBytes).toBe(0);
    await expect(s.putBuffer(claimed, randomBytes(10))).rejects.toBeInstanceOf(DigestMismatchError);
    expect(listTmp(dir)).toEqual([]);
  });

  it('refuses a size mismatch, too long while writing or too short at commit', async () => {
    const dir = tempDir();
    const s = new FileBlobStore(dir, 1 << 20);
    const a = blob(100);
    const long = await s.createWriter(a.digest, 50);
    await expect(long.write(a.data)).rejects.toBeInstanceOf(SizeMismatchError);
    await long.abort();
    const short = await s.createWriter(a.digest, 200);
    await short.write(a.data);
    const err = await short.commit().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SizeMismatchError);
    expect(err).toMatchObject({ expected: 200, actual: 100 });
    expect(s.has(a.digest)).toBe(false);
    expect(listTmp(dir)).toEqual([]);
    await expect(short.write(a.data)).rejects.toThrow(/after close/);
  });

  it('a partial write is never visible under its digest', async () => {
    const dir = tempDir();
    const s = new FileBlobStore(dir, 1 << 20);
    const a = blob(1000);
    const w = await s.createWriter(a.digest, 1000);
    await w.write(a.data.subarray(0, 500));
    expect(s.has(a.digest)).toBe(false);
    expect(s.lease(a.digest)).toBeUndefined();
    expect(existsSync(s.pathFor(a.digest))).toBe(false);
    await w.write(a.data.subarray(500));
    await w.commit();
    expect(s.has(a.digest)).toBe(true);
    expect(readFileSync(s.pathFor(a.digest))).toEqual(a.data);
  });

  it('evicts least recently used blobs beyond maxSize', async () => {
    const dir = tempDir();
    const evicted: Digest[] = [];
    const s = new FileBlobStore(dir, 3000, { onEvict: (d) => evicted.push(d) });
    const [a, b, c, d] = [blob(1000), blob(1000), blob(1000), blob(1000)];
    for (const x of [a, b, c]) await s.putBuffer(x.digest, x.data);
    expect(s.totalBytes).toBe(3000);
    // Touch a: b is now the least recently used.
    s.lease(a.digest)!.release();
    await s.putBuffer(d.digest, d.data);
    await s.idle();
    expect(evicted).toEqual([b.digest]);
    expect(s.has(b.digest)).toBe(false);
    expect(existsSync(s.pathFor(b.digest))).toBe(false);
    expect([a, c, d].every((x) => s.has(x.digest))).toBe(true);
    expect(s.totalBytes).toBe(3000);
    expect(s.entries).toBe(3);
  });

  it('size() and has() do not refresh recency', async () => {
    const dir = tempDir();
    const s = new FileBlobStore(dir, 2000);
    const [a, b, c] = [blob(1000), blob(1000), blob(1000)];
    await s.putBuffer(a.digest, a.data);
    await s.putBuffer(b.digest, b.data);
    s.size(a.digest);
    s.has(a.digest);
    await s.putBuffer(c.digest, c.data);
    expect(s.has(a.digest)).toBe(false);
    expect(s.has(b.digest)).toBe(true);
  });

  it('does not unlink a leased blob on eviction until the last release', async () => {
    const dir = tempDir();
    const s = new FileBlobStore(dir, 2000);
    const [a, b, c] = [blob(1000), blob(1000), blob(1000)];
    await s.putBuffer(a.digest, a.data);
    const l1 = s.lease(a.digest)!;
    const l2 = s.lease(a.digest)!;
    await s.putBuffer(b.digest, b.data);
    await s.putBuffer(c.digest, c.data); // evicts a, which two readers hold
    await s.idle();
    expect(s.has(a.digest)).toBe(false);
    expect(s.lease(a.digest)).toBeUndefined();
    expect(s.size(a.digest)).toBeUndefined();
    expect(readFileSync(l1.path)).toEqual(a.data);
    l1.release();
    l1.release(); // double release must not count twice
    await s.idle();
    expect(existsSync(l2.path)).toBe(true);
    expect(readFileSync(l2.path)).toEqual(a.data);
    l2.release();
    await s.idle();
    expect(existsSync(l2.path)).toBe(false);
    expect(s.totalBytes).toBe(2000);
  });

  it('a blob re-committed while doomed is kept', async () => {
    const dir = tempDir();
    const s = new FileBlobStore(dir, 2000);
    const [a, b, c] = [blob(1000), blob(1000), blob(1000)];
    await s.putBuffer(a.digest, a.data);
    const l = s.lease(a.digest)!;
    await s.putBuffer(b.digest, b.data);
    await s.putBuffer(c.digest, c.data); // a doomed
    await s.putBuffer(a.digest, a.data); // fetched again; evicts b
    l.release();
    await s.idle();
    expect(s.has(a.digest)).toBe(true);
    expect(readFileSync(s.pathFor(a.digest))).toEqual(a.data);
  });

  it('remove() drops a blob now, or after the last reader', async () => {
    const dir = tempDir();
    const s = new FileBlobStore(dir, 1 << 20);
    const [a, b] = [blob(10), blob(20)];
    await s.putBuffer(a.digest, a.data);
    await s.putBuffer(b.digest, b.data);
    await s.remove(a.digest);
    await s.idle();
    expect(existsSync(s.pathFor(a.digest))).toBe(false);
    const l = s.lease(b.digest)!;
    await s.remove(b.digest);
    await s.idle();
    expect(s.has(b.digest)).toBe(false);
    expect(existsSync(l.path)).toBe(true);
    l.release();
    await s.idle();
    expect(existsSync(l.path)).toBe(false);
    expect(s.totalBytes).toBe(0);
  });

  it('reindexes on restart, oldest first, and evicts down to a smaller maxSize', async () => {
    const dir = tempDir();
    const s1 = new FileBlobStore(dir, 1 << 20);
    const xs = [blob(1000), blob(1000), blob(1000)];
    for (const [i, x] of xs.entries()) {
      await s1.putBuffer(x.digest, x.data);
      const t = new Date(Date.UTC(2020, 0, 1 + i));
      utimesSync(s1.pathFor(x.digest), t, t);
    }
    // Junk in the blobs tree is ignored.
    mkdirSync(join(dir, 'blobs', 'sha256', 'zz'), { recursive: true });
    writeFileSync(join(dir, 'blobs', 'sha256', 'zz', 'not-a-digest'), 'x');
    writeFileSync(join(dir, 'blobs', 'README'), 'x');

    const s2 = new FileBlobStore(dir, 1 << 20);
    expect(s2.entries).toBe(3);
    expect(s2.totalBytes).toBe(3000);
    for (const x of xs) expect(readFileSync(s2.lease(x.digest)!.path)).toEqual(x.data);

    const s3 = new FileBlobStore(dir, 2000);
    await s3.idle();
    expect(s3.has(xs[0]!.digest)).toBe(false); // the oldest goes first
    expect(existsSync(s3.pathFor(xs[0]!.digest))).toBe(false);
    expect(s3.has(xs[1]!.digest) && s3.has(xs[2]!.digest)).toBe(true);
    expect(s3.totalBytes).toBe(2000);
  });

  it('reports size changes', async () => {
    const dir = tempDir();
    const seen: Array<[number, number]> = [];
    const s = new FileBlobStore(dir, 1500, { onSizeChange: (b, e) => seen.push([b, e]) });
    const [a, b] = [blob(1000), blob(1000)];
    await s.putBuffer(a.digest, a.data);
    await s.putBuffer(b.digest, b.data);
    expect(seen[0]).toEqual([1000, 1]);
    expect(seen.at(-1)).toEqual([1000, 1]);
  });

  it('putBuffer of a blob already present is a no-op', async () => {
    const dir = tempDir();
    const s = new FileBlobStore(dir, 1 << 20);
    const a = blob(10);
    await s.putBuffer(a.digest, a.data);
    await s.putBuffer(a.digest, a.data);
    expect(s.entries).toBe(1);
    expect(s.totalBytes).toBe(10);
  });

  it('stores an empty blob', async () => {
    const dir = tempDir();
    const s = new FileBlobStore(dir, 1 << 20);
    const empty = Buffer.alloc(0);
    await s.putBuffer(sha256(empty), empty);
    expect(s.has(sha256(empty))).toBe(true);
    expect(s.size(sha256(empty))).toBe(0);
  });

  it('removes files one at a time, and a blob committed again while its removal is queued keeps its new file', async () => {
    const dir = tempDir();
    const s = new FileBlobStore(dir, 1 << 20);
    const [x, a] = [blob(1000), blob(1000)];
    await s.putBuffer(x.digest, x.data);
    await s.putBuffer(a.digest, a.data);
    // Removals run one at a time: x's is running (held here), a's waits behind it.
    let open!: () => void;
    unlinkGate.calls = 0;
    unlinkGate.wait = new Promise((r) => (open = r));
    await s.remove(x.digest);
    await s.remove(a.digest);
    await s.putBuffer(a.digest, a.data);
    expect(unlinkGate.calls).toBe(1);
    open();
    unlinkGate.wait = undefined;
    await s.idle();
    expect(existsSync(s.pathFor(x.digest))).toBe(false);
    expect(s.has(a.digest)).toBe(true);
    expect(readFileSync(s.pathFor(a.digest))).toEqual(a.data);
  });

  describe('start-up scan (a store holding many blobs starts serving before it has indexed them all)', () => {
    /** Blobs written by one store, with mtimes one day apart (oldest first). */
    async function filled(n: number): Promise<{ dir: string; xs: Array<{ data: Buffer; digest: Digest }> }> {
      const dir = tempDir();
      const s1 = new FileBlobStore(dir, 1 << 20);
      const xs = Array.from({ length: n }, () => blob(1000));
      for (const [i, x] of xs.entries()) {
        await s1.putBuffer(x.digest, x.data);
        const t = new Date(Date.UTC(2020, 0, 1 + i));
        utimesSync(s1.pathFor(x.digest), t, t);
      }
      return { dir, xs };
    }

    it('serves every blob on disk before the scan reaches it, and counts each once when it ends', async () => {
      const { dir, xs } = await filled(6);
      const s = new FileBlobStore(dir, 1 << 20, { scanSlice: 1 });
      // The constructor returned after one file: the rest are found on disk when asked for.
      expect(s.entries).toBeLessThan(6);
      for (const x of xs) {
        const lease = s.lease(x.digest)!;
        expect(readFileSync(lease.path)).toEqual(x.data);
        lease.release();
      }
      await s.indexed;
      expect(s.entries).toBe(6);
      expect(s.totalBytes).toBe(6000);
    });

    it('keeps blobs used during the scan more recent than those it found, and evicts the oldest found first', async () => {
      const { dir, xs } = await filled(4);
      const evicted: Digest[] = [];
      const s = new FileBlobStore(dir, 3000, { scanSlice: 1, onEvict: (d) => evicted.push(d) });
      // The oldest blob on disk is read while the scan runs: it is now the most recently used.
      s.lease(xs[0]!.digest)!.release();
      await s.indexed;
      await s.idle();
      expect(s.totalBytes).toBe(3000);
      expect(evicted).toEqual([xs[1]!.digest]);
      expect(s.has(xs[0]!.digest)).toBe(true);
      expect(existsSync(s.pathFor(xs[1]!.digest))).toBe(false);
    });

    it('a blob removed during the scan stays gone, and one written during the scan counts once', async () => {
      const { dir } = await filled(5);
      // The first file the scan visits (directory order) is stat-ed before the constructor returns: removing it
      // afterwards must not let the scan's listing bring it back.
      const alg = readdirSync(join(dir, 'blobs')).find((n) => n !== 'layout.json')!;
      const prefix = readdirSync(join(dir, 'blobs', alg))[0]!;
      const first = `${alg}:${readdirSync(join(dir, 'blobs', alg, prefix))[0]!}` as Digest;
      const s = new FileBlobStore(dir, 1 << 20, { scanSlice: 1 });
      await s.remove(first);
      await s.idle();
      const fresh = blob(1000);
      await s.putBuffer(fresh.digest, fresh.data);
      await s.indexed;
      expect(existsSync(s.pathFor(first))).toBe(false);
      expect(s.has(first)).toBe(false);
      expect(s.entries).toBe(5);
      expect(s.totalBytes).toBe(5000);
    });
  });
});
