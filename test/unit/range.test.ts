import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parseRange, type RangeResult } from '../../src/server/respond.js';
import { wideString } from './arbitraries.js';

/**
 * Reference model of a single byte range (RFC 9110 §14.1.2, §14.2): first-last (last clamped to the end),
 * first- (to the end), -suffix (the last n bytes). A first past the end, or a zero suffix, or any range of an
 * empty representation is unsatisfiable; last < first is an invalid range, which is ignored (whole body).
 */
type Spec = { kind: 'closed'; a: number; b: number } | { kind: 'open'; a: number } | { kind: 'suffix'; n: number };

function model(spec: Spec, size: number): RangeResult {
  if (spec.kind === 'suffix') {
    if (spec.n === 0 || size === 0) return { kind: 'unsatisfiable' };
    return { kind: 'range', start: Math.max(0, size - spec.n), end: size - 1 };
  }
  if (spec.kind === 'closed' && spec.b < spec.a) return { kind: 'none' };
  if (spec.a >= size) return { kind: 'unsatisfiable' };
  return { kind: 'range', start: spec.a, end: spec.kind === 'closed' ? Math.min(spec.b, size - 1) : size - 1 };
}

function header(spec: Spec): string {
  return spec.kind === 'closed' ? `bytes=${spec.a}-${spec.b}` : spec.kind === 'open' ? `bytes=${spec.a}-` : `bytes=-${spec.n}`;
}

const num = fc.oneof(fc.nat(2000), fc.nat(Number.MAX_SAFE_INTEGER));
const spec: fc.Arbitrary<Spec> = fc.oneof(
  fc.record({ kind: fc.constant('closed' as const), a: num, b: num }),
  fc.record({ kind: fc.constant('open' as const), a: num }),
  fc.record({ kind: fc.constant('suffix' as const), n: num }),
);
const size = fc.oneof(fc.nat(2000), fc.constant(0), fc.constant(1), fc.nat(2 ** 40));

describe('parseRange', () => {
  it('agrees with the reference model for bytes=a-b, bytes=a- and bytes=-n', () => {
    fc.assert(
      fc.property(spec, size, (s, n) => {
        expect(parseRange(header(s), n)).toEqual(model(s, n));
      }),
      { numRuns: 2000 },
    );
  });

  it('tolerates surrounding whitespace', () => {
    expect(parseRange('  bytes=0-9 ', 100)).toEqual({ kind: 'range', start: 0, end: 9 });
  });

  it('examples', () => {
    expect(parseRange('bytes=0-0', 10)).toEqual({ kind: 'range', start: 0, end: 0 });
    expect(parseRange('bytes=0-999', 10)).toEqual({ kind: 'range', start: 0, end: 9 });
    expect(parseRange('bytes=9-', 10)).toEqual({ kind: 'range', start: 9, end: 9 });
    expect(parseRange('bytes=10-', 10)).toEqual({ kind: 'unsatisfiable' });
    expect(parseRange('bytes=10-20', 10)).toEqual({ kind: 'unsatisfiable' });
    expect(parseRange('bytes=-3', 10)).toEqual({ kind: 'range', start: 7, end: 9 });
    expect(parseRange('bytes=-30', 10)).toEqual({ kind: 'range', start: 0, end: 9 });
    expect(parseRange('bytes=-0', 10)).toEqual({ kind: 'unsatisfiable' });
    expect(parseRange('bytes=0-', 0)).toEqual({ kind: 'unsatisfiable' });
    expect(parseRange('bytes=-5', 0)).toEqual({ kind: 'unsatisfiable' });
    expect(parseRange('bytes=5-2', 10)).toEqual({ kind: 'none' });
    expect(parseRange(`bytes=${'9'.repeat(30)}-`, 10)).toEqual({ kind: 'unsatisfiable' });
    expect(parseRange(`bytes=0-${'9'.repeat(30)}`, 10)).toEqual({ kind: 'range', start: 0, end: 9 });
    expect(parseRange(`bytes=-${'9'.repeat(30)}`, 10)).toEqual({ kind: 'range', start: 0, end: 9 });
  });

  it('ignores what it does not understand: no header, other units, multiple ranges, junk', () => {
    for (const h of [
      undefined,
      '',
      'bytes=',
      'bytes=-',
      'items=0-1',
      'bytes=0-1,5-6',
      'bytes=a-b',
      'bytes 0-1',
      'bytes=0x1-2',
      'bytes=1.5-2',
      'bytes=+1-2',
      'bytes=--1',
    ]) {
      expect(parseRange(h, 100), String(h)).toEqual({ kind: 'none' });
    }
  });

  it('is total, and every range it returns lies inside the representation', () => {
    const anyHeader = fc.oneof(
      wideString(30),
      fc.tuple(fc.string({ unit: fc.constantFrom(...'0123456789-, '), maxLength: 25 })).map(([s]) => `bytes=${s}`),
    );
    fc.assert(
      fc.property(anyHeader, size, (h, n) => {
        const r = parseRange(h, n);
        if (r.kind === 'range') {
          expect(Number.isSafeInteger(r.start) && Number.isSafeInteger(r.end)).toBe(true);
          expect(r.start).toBeGreaterThanOrEqual(0);
          expect(r.start).toBeLessThanOrEqual(r.end);
          expect(r.end).toBeLessThan(n);
        }
      }),
      { numRuns: 1000 },
    );
  });
});
