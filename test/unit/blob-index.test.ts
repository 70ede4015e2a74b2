import { createHash } from 'node:crypto';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { BlobIndex } from '../../src/cache/blob-index.js';
import type { Digest } from '../../src/routing/reference.js';
import { hexOf } from './arbitraries.js';

const pool: Digest[] = fc.sample(hexOf(64), { numRuns: 12, seed: 3 }).map((h) => `sha256:${h}` as Digest);
const digestArb = fc.constantFrom(...pool);

type Op =
  | { op: 'track'; d: Digest; size: number }
  | { op: 'acquire'; d: Digest }
  | { op: 'release'; n: number }
  | { op: 'remove'; d: Digest }
  | { op: 'forget'; d: Digest }
  | { op: 'older'; found: { d: Digest; size: number }[] };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 5, arbitrary: fc.record({ op: fc.constant('track' as const), d: digestArb, size: fc.nat(400) }) },
  { weight: 4, arbitrary: fc.record({ op: fc.constant('acquire' as const), d: digestArb }) },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('release' as const), n: fc.nat(20) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('remove' as const), d: digestArb }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('forget' as const), d: digestArb }) },
  {
    weight: 1,
    arbitrary: fc.record({ op: fc.constant('older' as const), found: fc.array(fc.record({ d: digestArb, size: fc.nat(400) }), { maxLength: 5 }) }),
  },
);

describe('BlobIndex (size-bounded LRU with read leases)', () => {
  it('never removes the bytes of a blob while a reader holds a lease on it, and keeps within its bound', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 1000 }), fc.array(opArb, { maxLength: 200 }), (maxSize, ops) => {
        const leases: { d: Digest; release: () => void }[] = [];
        const held = (d: Digest) => leases.filter((l) => l.d === d).length;
        const removed: Digest[] = [];
        const index = new BlobIndex({
          maxSize,
          removeBytes: (d) => {
            // The property: bytes go only once nobody reads them.
            expect(held(d)).toBe(0);
            removed.push(d);
          },
        });
        for (const o of ops) {
          if (o.op === 'track') index.track(o.d, o.size);
          else if (o.op === 'acquire') {
            const pin = index.acquire(o.d);
            if (pin) leases.push({ d: o.d, release: pin.release });
            else expect(index.has(o.d)).toBe(false);
          } else if (o.op === 'release') {
            const l = leases.splice(o.n % Math.max(1, leases.length), 1)[0];
            l?.release();
            l?.release(); // a double release must not count twice
          } else if (o.op === 'remove') index.remove(o.d);
          else if (o.op === 'forget') index.forget(o.d);
          else {
            index.trackOlder(o.found.map((f) => ({ digest: f.d, size: f.size, lastAccess: 0 })));
            index.evictDown();
          }
          const listed = index.list();
          expect(index.entries).toBe(listed.length);
          expect(index.totalBytes).toBe(listed.reduce((n, e) => n + e.size, 0));
          expect(listed.reduce((n, e) => n + Math.max(1, e.size), 0)).toBeLessThanOrEqual(maxSize);
          for (const e of listed) expect(index.readersOf(e.digest)).toBe(held(e.digest));
        }
        for (const l of leases.splice(0)) l.release();
      }),
      { numRuns: 300 },
    );
  });

  it('evicts the least recently acquired first; trackOlder puts found blobs below everything, newest found highest', () => {
    const removed: Digest[] = [];
    const index = new BlobIndex({ maxSize: 250, removeBytes: (d) => removed.push(d) });
    const [a, b, c, d, e] = pool as [Digest, Digest, Digest, Digest, Digest];
    index.track(a, 100);
    index.track(b, 100);
    index.acquire(a)!.release(); // a is now the most recent
    index.trackOlder([
      { digest: c, size: 50, lastAccess: 2 },
      { digest: d, size: 50, lastAccess: 1 },
    ]);
    expect(index.list().map((x) => x.digest)).toEqual([d, c, b, a]);
    index.evictDown(); // 300 bytes over a bound of 250: d goes
    expect(removed).toEqual([d]);
    index.track(e, 100); // c, then b
    expect(removed).toEqual([d, c, b]);
    expect(index.list().map((x) => x.digest)).toEqual([a, e]);
  });
});

describe('BlobIndex memory (issue 16: a million entries must not be a million heap objects for every major GC to mark)', () => {
  it('keeps its entries off the JavaScript heap: under 16 heap bytes per indexed blob', () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const n = 100_000;
    const used = () => {
      gc();
      gc();
      return process.memoryUsage().heapUsed;
    };
    const before = used();
    const index = new BlobIndex({ maxSize: Number.MAX_SAFE_INTEGER, removeBytes: () => {} });
    for (let i = 0; i < n; i++) index.track(`sha256:${createHash('sha256').update(String(i)).digest('hex')}`, 1 + (i % 4096));
    const perEntry = (used() - before) / n;
    expect(index.entries).toBe(n);
    expect(perEntry).toBeLessThan(16);
  });
});
