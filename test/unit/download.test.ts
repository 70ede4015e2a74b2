import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { afterAll, describe, expect, it } from 'vitest';
import { FileBlobStore, DigestMismatchError, SizeMismatchError } from '../../src/cache/blobstore.js';
import { DownloadManager } from '../../src/cache/download-manager.js';
import type { DownloadSource } from '../../src/cache/download.js';
import type { Digest } from '../../src/routing/reference.js';
import { cleanupTempDirs, readThrough, sha256, tempDir, until } from './helpers.js';

afterAll(cleanupTempDirs);

/** A source whose chunks the test releases one at a time. */
class ControlledSource {
  private waiting: Array<() => void> = [];
  private released = 0;
  cancelled = false;
  fetches = 0;
  holdEnd = false;
  /** Behave like an upstream that sends no Content-Length. */
  unknownSize = false;
  constructor(
    readonly chunks: Buffer[],
    readonly declaredSize: number | undefined = chunks.reduce((n, c) => n + c.length, 0),
    private readonly failAt?: number,
  ) {}

  /** Lets n more chunks through. */
  release(n = 1): void {
    this.released += n;
    for (const w of this.waiting.splice(0)) w();
  }

  releaseAll(): void {
    this.release(this.chunks.length);
  }

  fetch = async (): Promise<DownloadSource> => {
    this.fetches++;
    // Answer asynchronously, as a real upstream does (a turn of the event loop, not a span of time).
    await new Promise<void>((r) => setImmediate(r));
    async function* body(src: ControlledSource): AsyncGenerator<Buffer> {
      for (let i = 0; i < src.chunks.length; i++) {
        while (src.released <= i) await new Promise<void>((r) => src.waiting.push(r));
        if (src.failAt === i) throw new Error('upstream connection reset');
        if (src.cancelled) throw new Error('cancelled');
        yield src.chunks[i]!;
      }
      // With holdEnd, the body stays open after its last chunk until one more release().
      while (src.holdEnd && src.released <= src.chunks.length) await new Promise<void>((r) => src.waiting.push(r));
    }
    return { size: this.unknownSize ? undefined : this.declaredSize, body: body(this), cancel: () => (this.cancelled = true) };
  };
}

function collect(stream: Readable): Promise<{ data: Buffer; error: Error | undefined }> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.on('end', () => resolve({ data: Buffer.concat(chunks), error: undefined }));
    stream.on('error', (e) => resolve({ data: Buffer.concat(chunks), error: e }));
  });
}

function setup(maxSize = 64 << 20) {
  const dir = tempDir();
  const store = new FileBlobStore(dir, maxSize);
  return { dir, store, mgr: new DownloadManager(store) };
}

function split(data: Buffer, n: number): Buffer[] {
  const out: Buffer[] = [];
  const step = Math.ceil(data.length / n);
  for (let i = 0; i < data.length; i += step) out.push(data.subarray(i, i + step));
  return out;
}

describe('DownloadManager / Download', () => {
  it('fetches once for concurrent requests, and every reader gets identical bytes', async () => {
    const { store, mgr, dir } = setup();
    const data = randomBytes(1_200_000);
    const digest = sha256(data);
    const src = new ControlledSource(split(data, 12));
    const starts = Array.from({ length: 6 }, () => mgr.getOrStart(digest, src.fetch));
    expect(starts.map((s) => s.joined)).toEqual([false, true, true, true, true, true]);
    const d = starts[0]!.download;
    expect(starts.every((s) => s.download === d)).toBe(true);
    expect(mgr.active).toBe(1);
    expect(mgr.get(digest)).toBe(d);
    await d.ready;
    expect(d.size).toBe(data.length);
    const readers = starts.map(() => collect(readThrough(d, 0, data.length - 1)));
    src.releaseAll();
    const results = await Promise.all(readers);
    for (const r of results) {
      expect(r.error).toBeUndefined();
      expect(r.data.equals(data)).toBe(true);
    }
    await d.finished;
    expect(d.state).toBe('done');
    expect(src.fetches).toBe(1);
    expect(store.has(digest)).toBe(true);
    expect(readdirSync(join(dir, 'tmp'))).toEqual([]);
    await until(() => mgr.active === 0);
    expect(mgr.get(digest)).toBeUndefined();
  });

  it('a late joiner still gets every byte from the start', async () => {
    const { mgr } = setup();
    const data = randomBytes(600_000);
    const digest = sha256(data);
    const src = new ControlledSource(split(data, 6));
    const { download } = mgr.getOrStart(digest, src.fetch);
    await download.ready;
    const early = collect(readThrough(download, 0, data.length - 1));
    src.release(4);
    await until(() => download.bytesAvailable >= 400_000);
    const late = mgr.getOrStart(digest, src.fetch);
    expect(late.joined).toBe(true);
    const lateRead = collect(readThrough(late.download, 0, data.length - 1));
    src.releaseAll();
    expect((await early).data.equals(data)).toBe(true);
    expect((await lateRead).data.equals(data)).toBe(true);
    expect(src.fetches).toBe(1);
  });

  it('serves a range mid-download, including bytes that have not arrived yet', async () => {
    const { mgr } = setup();
    const data = randomBytes(500_000);
    const digest = sha256(data);
    const src = new ControlledSource(split(data, 10));
    const { download } = mgr.getOrStart(digest, src.fetch);
    await download.ready;
    src.release(3);
    await until(() => download.bytesAvailable >= 150_000);
    const mid = collect(readThrough(download, 100_000, 399_999));
    const tail = collect(readThrough(download, 499_990, 499_999));
    const one = collect(readThrough(download, 0, 0));
    src.releaseAll();
    expect((await mid).data.equals(data.subarray(100_000, 400_000))).toBe(true);
    expect((await tail).data.equals(data.subarray(499_990))).toBe(true);
    expect((await one).data.equals(data.subarray(0, 1))).toBe(true);
  });

  it('on a digest mismatch every reader errors, even one that has everything it can get, and nothing is committed', async () => {
    const { store, mgr, dir } = setup();
    const data = randomBytes(300_000);
    const claimed: Digest = sha256(Buffer.from('something else'));
    const src = new ControlledSource(split(data, 3));
    src.holdEnd = true;
    const { download } = mgr.getOrStart(claimed, src.fetch);
    await download.ready;
    const watch = (r: Readable) => {
      const seen = { bytes: 0, ended: false };
      r.on('data', (c: Buffer) => (seen.bytes += c.length));
      r.on('end', () => (seen.ended = true));
      return { seen, result: collect(r) };
    };
    const full = watch(readThrough(download, 0, data.length - 1));
    const head = watch(readThrough(download, 0, 99));
    const mid = watch(readThrough(download, 10, 20));
    // Every byte lands, and the readers drain all they may, before the upstream body ends and the digest is checked.
    src.release(3);
    await until(() => full.seen.bytes >= data.length - 1 && head.seen.bytes >= 99 && mid.seen.bytes >= 10);
    expect(download.state).toBe('running');
    // Responses are framed by Content-Length: the last byte of each range is held back until the blob verified.
    expect(full.seen.bytes).toBe(data.length - 1);
    expect(head.seen.bytes).toBe(99);
    expect(mid.seen.bytes).toBe(10);
    src.release(1);
    for (const r of [full, head, mid]) {
      const res = await r.result;
      expect(res.error).toBeInstanceOf(DigestMismatchError);
      expect(r.seen.ended).toBe(false);
    }
    // Never, not merely not yet: the last byte of each range was still held back when the readers failed.
    expect([full.seen.bytes, head.seen.bytes, mid.seen.bytes]).toEqual([data.length - 1, 99, 10]);
    expect((await full.result).data.equals(data.subarray(0, data.length - 1))).toBe(true);
    await download.finished;
    expect(download.state).toBe('failed');
    expect(download.error).toBeInstanceOf(DigestMismatchError);
    expect(store.has(claimed)).toBe(false);
    expect(existsSync(store.pathFor(claimed))).toBe(false);
    expect(readdirSync(join(dir, 'tmp'))).toEqual([]);
    // A reader that arrives after the failure errors too.
    expect((await collect(readThrough(download, 0, 10))).error).toBeInstanceOf(DigestMismatchError);
    // And the next request starts a fresh download.
    await until(() => mgr.get(claimed) === undefined);
    expect(mgr.getOrStart(claimed, new ControlledSource([Buffer.from('something else')]).fetch).joined).toBe(false);
  });

  it('a verified download releases the held-back last byte and ends cleanly', async () => {
    const { mgr } = setup();
    const data = randomBytes(1000);
    const src = new ControlledSource([data]);
    src.holdEnd = true;
    const { download } = mgr.getOrStart(sha256(data), src.fetch);
    await download.ready;
    const r = readThrough(download, 0, 999);
    let bytes = 0;
    r.on('data', (c: Buffer) => (bytes += c.length));
    const res = collect(r);
    src.release(1);
    await until(() => bytes === 999);
    src.release(1);
    const out = await res;
    expect(out.error).toBeUndefined();
    expect(out.data.equals(data)).toBe(true);
  });

  it('an upstream that sends more than Content-Length fails every reader', async () => {
    const { store, mgr } = setup();
    const data = randomBytes(2000);
    const digest = sha256(data);
    const src = new ControlledSource([data, Buffer.from('extra')], 2000);
    const { download } = mgr.getOrStart(digest, src.fetch);
    await download.ready;
    const r = collect(readThrough(download, 0, 1999));
    src.releaseAll();
    const res = await r;
    expect(res.error).toBeInstanceOf(SizeMismatchError);
    await download.finished;
    expect(store.has(digest)).toBe(false);
    expect(src.cancelled).toBe(true);
  });

  it('an upstream error mid-body fails every reader and cancels the source', async () => {
    const { store, mgr, dir } = setup();
    const data = randomBytes(300_000);
    const digest = sha256(data);
    const src = new ControlledSource(split(data, 3), undefined, 2);
    const { download } = mgr.getOrStart(digest, src.fetch);
    await download.ready;
    const r = collect(readThrough(download, 0, data.length - 1));
    src.releaseAll();
    expect((await r).error?.message).toMatch(/connection reset/);
    await download.finished;
    expect(src.cancelled).toBe(true);
    expect(store.has(digest)).toBe(false);
    expect(readdirSync(join(dir, 'tmp'))).toEqual([]);
  });

  it('a failure before headers rejects ready and fails waiting readers', async () => {
    const { mgr } = setup();
    const digest = sha256('x');
    const { download } = mgr.getOrStart(digest, () => Promise.reject(new Error('401 from upstream')));
    const reader = collect(readThrough(download, 0, 10));
    await expect(download.ready).rejects.toThrow(/401/);
    expect((await reader).error?.message).toMatch(/401/);
    await download.finished;
    expect(download.state).toBe('failed');
  });

  it('a reader that stops early does not disturb the download or other readers', async () => {
    const { store, mgr } = setup();
    const data = randomBytes(800_000);
    const digest = sha256(data);
    const src = new ControlledSource(split(data, 8));
    const { download } = mgr.getOrStart(digest, src.fetch);
    await download.ready;
    const quitter = readThrough(download, 0, data.length - 1);
    quitter.once('data', () => quitter.destroy());
    const stayer = collect(readThrough(download, 0, data.length - 1));
    src.releaseAll();
    expect((await stayer).data.equals(data)).toBe(true);
    await download.finished;
    expect(store.has(digest)).toBe(true);
  });

  it('a reader created after the download finished still gets the bytes (upstream without Content-Length)', async () => {
    // BlobService.open() awaits `finished` when the size is unknown, so by the time the handler asks for a stream
    // every earlier reader may be gone and the shared temp descriptor closed.
    const { mgr } = setup();
    const data = randomBytes(5000);
    const src = new ControlledSource([data]);
    src.unknownSize = true;
    const { download } = mgr.getOrStart(sha256(data), src.fetch);
    await download.ready;
    expect(download.size).toBeUndefined();
    src.releaseAll();
    await download.finished;
    expect(download.state).toBe('done');
    expect(download.size).toBe(5000);
    const whole = await collect(readThrough(download, 0, data.length - 1));
    expect(whole.error).toBeUndefined();
    expect(whole.data.equals(data)).toBe(true);
    const part = await collect(readThrough(download, 100, 199));
    expect(part.data.equals(data.subarray(100, 200))).toBe(true);
  });

  it('drain() waits for running downloads, then cancels what is left after the grace period', async () => {
    const { mgr } = setup();
    const data = randomBytes(1000);
    const quick = new ControlledSource([data]);
    mgr.getOrStart(sha256(data), quick.fetch);
    quick.releaseAll();
    await mgr.drain(1000);
    expect(mgr.active).toBe(0);

    const stuck = new ControlledSource([randomBytes(10), randomBytes(10)]);
    const { download } = mgr.getOrStart(sha256('never'), stuck.fetch);
    await download.ready;
    const draining = mgr.drain(30);
    await until(() => stuck.cancelled, 'drain to cancel the stuck download');
    stuck.releaseAll(); // the body notices the cancel on its next chunk
    await draining;
    expect(stuck.cancelled).toBe(true);
    expect(download.state).toBe('failed');
  });
});
