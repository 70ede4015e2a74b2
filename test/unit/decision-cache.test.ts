import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { DecisionCache } from '../../src/gate/decision-cache.js';

const digestArb = fc.constantFrom('', 'sha256:a', 'sha256:b', 'sha256:c', 'sha256:d');
const keyArb = fc.constantFrom(...Array.from({ length: 12 }, (_, i) => `k${i}`));

type Op = { op: 'set'; key: string; digests: string[] } | { op: 'get'; key: string } | { op: 'forget'; digests: string[] } | { op: 'clear' };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ op: fc.constant('set' as const), key: keyArb, digests: fc.array(digestArb, { maxLength: 3 }) }) },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('get' as const), key: keyArb }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('forget' as const), digests: fc.array(digestArb, { maxLength: 3 }) }) },
  { weight: 1, arbitrary: fc.constant({ op: 'clear' as const }) },
);

describe('DecisionCache (decisions by key, indexed by the digests each key names)', () => {
  it('forget drops exactly the live decisions naming a digest, through evictions, replacements and clears', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 8 }), fc.array(opArb, { maxLength: 120 }), (max, ops) => {
        const cache = new DecisionCache<{ v: number }>(max);
        /** Least recently used first: key → digests. */
        let model: [string, string[]][] = [];
        let n = 0;
        for (const o of ops) {
          if (o.op === 'set') {
            // A key names the same digests every time (in the gate they are parts of it).
            const digests = model.find(([k]) => k === o.key)?.[1] ?? o.digests;
            cache.set(o.key, { v: n++ }, digests);
            model = [...model.filter(([k]) => k !== o.key), [o.key, digests]];
            if (model.length > max) model = model.slice(model.length - max);
          } else if (o.op === 'get') {
            const at = model.findIndex(([k]) => k === o.key);
            expect(cache.get(o.key) !== undefined).toBe(at >= 0);
            if (at >= 0) model = [...model.filter((_, i) => i !== at), model[at]!];
          } else if (o.op === 'forget') {
            const named = (ds: string[]) => ds.some((x) => x !== '' && o.digests.includes(x));
            expect(cache.forget(o.digests)).toBe(model.filter(([, ds]) => named(ds)).length);
            model = model.filter(([, ds]) => !named(ds));
          } else {
            cache.clear();
            model = [];
          }
          expect(cache.size).toBe(model.length);
        }
      }),
      { numRuns: 300 },
    );
  });
});
