/**
 * The in-memory signature evidence cache (src/verify/cache.ts) is bounded by bytes, not only by entries: an entry
 * carries attestation predicates (up to maxPredicateSize each), and the keys are digests an upstream's owner can
 * mint at will.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
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

  it('does not read back entries an earlier build stored without the rejection codes', () => {
    const dir = mkdtempSync(join(tmpdir(), 'pc-evcache-'));
    try {
      const key = 'up\nrepo\nsha256:1\nrev';
      const now = 1_000;
      // As the build before the codes stored it: same key (same trust revision), rejected entries without `code`.
      new EvidenceCache(dir).close();
      const db = new DatabaseSync(join(dir, 'signatures.sqlite'));
      const old = { signatures: { status: 'ok', verified: [], rejected: [{ authority: 'a', reason: 'key mismatch' }] }, attestations: [] };
      db.prepare('INSERT INTO evidence (key, body, expires_at) VALUES (?, ?, ?)').run(key, JSON.stringify(old), now + 60_000);
      db.close();
      const cache = new EvidenceCache(dir);
      expect(cache.get(key, now)).toBeUndefined();
      const fresh: CachedEvidence = {
        signatures: { status: 'ok', verified: [], rejected: [{ authority: 'a', reason: 'key mismatch', code: 'KEY_MISMATCH' }] },
        attestations: [],
      };
      cache.put(key, fresh, now + 60_000, now);
      cache.close();
      // And what this build stores, it reads back after a restart.
      const again = new EvidenceCache(dir);
      expect(again.get(key, now)).toEqual(fresh);
      again.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
