/**
 * The in-memory signature evidence cache (src/verify/cache.ts) is bounded by bytes, not only by entries: an entry
 * carries attestation predicates (up to maxPredicateSize each), and the keys are digests an upstream's owner can
 * mint at will.
 */
import { describe, expect, it } from 'vitest';
import { EvidenceCache, type CachedEvidence } from '../../src/verify/cache.js';

function evidence(bytes: number): CachedEvidence {
  return {
    signatures: { status: 'ok', verified: [], rejected: [] },
    attestations: [{ predicate_type: 'https://example.com/big', authority: 'a', predicate: { pad: 'x'.repeat(bytes) } }],
  };
}

describe('EvidenceCache', () => {
  it('keeps at most 64 MiB of evidence in memory, dropping the least recently used', () => {
    const cache = new EvidenceCache(undefined);
    const now = 1_000;
    for (let i = 0; i < 100; i++) cache.put(`up\nrepo\nsha256:${i}`, evidence(1024 * 1024), now + 60_000, now);
    expect(cache.memoryBytes).toBeLessThanOrEqual(64 * 1024 * 1024);
    expect(cache.memoryBytes).toBeGreaterThan(32 * 1024 * 1024);
    expect(cache.get('up\nrepo\nsha256:0', now)).toBeUndefined();
    expect(cache.get('up\nrepo\nsha256:99', now)?.attestations[0]?.authority).toBe('a');
    cache.close();
  });
});
