import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { DigestLru } from '../../src/cache/digest-lru.js';
import type { Digest } from '../../src/routing/reference.js';
import { hexOf } from './arbitraries.js';

/**
 * A small pool of digests so that operations hit the same keys often: sha256 ones, sha512 ones, and sha512 ones that
 * share their first 32 bytes (the packed key) and differ only after it.
 */
const pool: Digest[] = fc.sample(hexOf(64), { numRuns: 40, seed: 7 }).map((h) => `sha256:${h}` as Digest);
const long = fc.sample(hexOf(128), { numRuns: 6, seed: 8 });
pool.push(...long.map((h) => `sha512:${h}` as Digest));
pool.push(...long.map((h) => `sha512:${h.slice(0, 64)}${h.slice(64).split('').reverse().join('')}` as Digest));

type Op =
  { op: 'add'; d: Digest; size: number; newest: boolean } | { op: 'touch'; d: Digest } | { op: 'delete'; d: Digest } | { op: 'popOldest' } | { op: 'clear' };

const digestArb = fc.constantFrom(...pool);
const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ op: fc.constant('add' as const), d: digestArb, size: fc.nat(1 << 20), newest: fc.boolean() }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('touch' as const), d: digestArb }) },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('delete' as const), d: digestArb }) },
  { weight: 1, arbitrary: fc.constant({ op: 'popOldest' as const }) },
  { weight: 1, arbitrary: fc.constant({ op: 'clear' as const }) },
);

describe('DigestLru (packed recency list of digests)', () => {
  it('behaves like an insertion-ordered map used as an LRU, under any sequence of operations', () => {
    fc.assert(
      fc.property(fc.array(opArb, { maxLength: 300 }), (ops) => {
        // Tiny start so that growth and table rebuilds happen within a run.
        const lru = new DigestLru(1);
        /** Oldest first. */
        let model: { d: Digest; size: number; time: number }[] = [];
        let clock = 0;
        for (const o of ops) {
          clock++;
          const at = model.findIndex((e) => e.d === (o as { d?: Digest }).d);
          if (o.op === 'add') {
            expect(lru.add(o.d, o.size, clock, o.newest)).toBe(at < 0);
            if (at < 0) {
              const e = { d: o.d, size: o.size, time: clock };
              model = o.newest ? [...model, e] : [e, ...model];
            }
          } else if (o.op === 'touch') {
            expect(lru.touch(o.d, clock)).toBe(at < 0 ? undefined : model[at]!.size);
            if (at >= 0) model = [...model.filter((_, i) => i !== at), { ...model[at]!, time: clock }];
          } else if (o.op === 'delete') {
            expect(lru.delete(o.d)).toBe(at < 0 ? undefined : model[at]!.size);
            if (at >= 0) model = model.filter((_, i) => i !== at);
          } else if (o.op === 'popOldest') {
            const e = lru.oldest();
            expect(e?.digest).toBe(model[0]?.d);
            if (e) lru.delete(e.digest);
            model = model.slice(1);
          } else {
            lru.clear();
            model = [];
          }
          expect(lru.length).toBe(model.length);
        }
        expect([...lru.entries()]).toEqual(model.map((e) => ({ digest: e.d, size: e.size, time: e.time })));
        for (const d of pool) {
          const m = model.find((e) => e.d === d);
          expect(lru.has(d)).toBe(m !== undefined);
          expect(lru.peek(d)).toBe(m?.size);
        }
      }),
      { numRuns: 300 },
    );
  });

  it('holds many entries through growth and deletions (the probe runs stay intact)', () => {
    const lru = new DigestLru(16);
    const d = (i: number) => `sha256:${i.toString(16).padStart(64, '0')}` as Digest;
    for (let i = 0; i < 5000; i++) lru.add(d(i), i, i);
    for (let i = 0; i < 5000; i += 3) lru.delete(d(i));
    for (let i = 0; i < 5000; i++) expect(lru.peek(d(i))).toBe(i % 3 === 0 ? undefined : i);
    expect(lru.length).toBe(5000 - Math.ceil(5000 / 3));
    expect(lru.oldest()?.digest).toBe(d(1));
  });

  it('refuses a string that is not a digest (uppercase hex would otherwise alias its lowercase twin)', () => {
    const lru = new DigestLru();
    const h = 'ab'.repeat(32);
    lru.add(`sha256:${h}`, 1, 1);
    expect(() => lru.has(`sha256:${h.toUpperCase()}` as Digest)).toThrow(TypeError);
    expect(() => lru.add('sha256:xyz', 1, 1)).toThrow(TypeError);
  });
});
