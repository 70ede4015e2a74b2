/**
 * Bytes per entry of the blob index (src/cache/blob-index.ts), and how long a full mark-compact GC takes with it
 * held (issue 16: the index of a million blobs is the largest thing in the heap; every major GC marks it).
 *
 *   npm run build && node --expose-gc bench/index-memory.mjs [N]
 */
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const n = Number(process.argv[2] ?? 1_000_000);
const dist = join(import.meta.dirname, '..', 'dist');
const { BlobIndex } = await import(pathToFileURL(join(dist, 'cache', 'blob-index.js')).href);
if (!globalThis.gc) throw new Error('run with node --expose-gc');

const digest = (i) => `sha256:${createHash('sha256').update(`b${i}`).digest('hex')}`;
const heap = () => {
  globalThis.gc();
  globalThis.gc();
  return process.memoryUsage();
};
const before = heap();
const index = new BlobIndex({ maxSize: Number.MAX_SAFE_INTEGER, removeBytes: () => {} });
// Fresh strings, as the start-up scan makes them: only what the index keeps stays in the heap.
for (let i = 0; i < n; i++) index.track(digest(i), 1024 * (1 + (i % 64)), 1_700_000_000_000 + i);
const after = heap();
const perEntry = (k) => round((after[k] - before[k]) / n);
const round = (x) => Math.round(x * 10) / 10;
const t = performance.now();
globalThis.gc();
const gcMs = performance.now() - t;
console.log(
  JSON.stringify({
    entries: index.entries,
    heap_bytes_per_entry: perEntry('heapUsed'),
    external_bytes_per_entry: perEntry('external'),
    rss_bytes_per_entry: perEntry('rss'),
    full_gc_ms: round(gcMs),
  }),
);
// The index stays reachable until both readings are taken.
if (index.entries !== n) throw new Error(`indexed ${index.entries} of ${n}`);
