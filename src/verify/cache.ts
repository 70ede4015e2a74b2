/**
 * Verification results per (upstream, repository, digest, trust revision), in memory and in an embedded SQLite
 * file beside the metadata store, so that a restart does not re-verify every image. A new trust revision (a
 * changed key, trusted root or authority) simply misses: old entries expire on their own.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { DatabaseSync, type StatementSync } from 'node:sqlite';
import { LRUCache } from 'lru-cache';
import type { AttestedEvidence } from '../policy/contract.js';

export type CachedEvidence = AttestedEvidence;

/**
 * Verified evidence kept in the bucket (storage.blobs: s3; cache/durable-state.ts), signed with
 * storage.redis.signingKey: another replica deciding the image while the upstream is down reads it there.
 */
export interface DurableEvidence {
  getEvidence(id: string, now: number): Promise<{ value: unknown; expiresAt: number } | undefined>;
  putEvidence(id: string, value: unknown, expiresAt: number): void;
}

/**
 * The in-memory copy is bounded by bytes as well as entries: an entry holds attestation predicates (up to
 * maxPredicateSize each), so 10,000 entries alone could hold gigabytes for digests an upstream's owner made up.
 */
const MEMORY_ENTRIES = 10_000;
/**
 * The shape of a stored entry, in every key: entries from a build whose evidence lacked a field (the rejection
 * codes; v2: the attestation rejections and provenance facts) are never read back as current ones, even under the
 * same trust revision; they expire on their own.
 */
const FORMAT = 'v3';
const MEMORY_BYTES = 64 * 1024 * 1024;

export class EvidenceCache {
  private readonly memory = new LRUCache<string, { value: CachedEvidence; expiresAt: number; size: number }>({
    max: MEMORY_ENTRIES,
    maxSize: MEMORY_BYTES,
    sizeCalculation: (v, key) => v.size + key.length,
  });
  private readonly db: DatabaseSync | undefined;
  private readonly st: { get: StatementSync; put: StatementSync; prune: StatementSync } | undefined;
  private puts = 0;

  constructor(
    dataDir: string | undefined,
    private readonly durable?: DurableEvidence,
  ) {
    if (!dataDir) return;
    mkdirSync(dataDir, { recursive: true });
    this.db = new DatabaseSync(join(dataDir, 'signatures.sqlite'));
    this.db.exec('PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;');
    this.db.exec('CREATE TABLE IF NOT EXISTS evidence (key TEXT PRIMARY KEY, body TEXT NOT NULL, expires_at INTEGER NOT NULL) WITHOUT ROWID');
    this.st = {
      get: this.db.prepare('SELECT body, expires_at FROM evidence WHERE key = ? AND expires_at > ?'),
      put: this.db.prepare(
        'INSERT INTO evidence (key, body, expires_at) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET body = excluded.body, expires_at = excluded.expires_at',
      ),
      prune: this.db.prepare('DELETE FROM evidence WHERE expires_at <= ?'),
    };
  }

  get(id: string, now: number): CachedEvidence | undefined {
    const key = `${FORMAT}\n${id}`;
    const m = this.memory.get(key);
    if (m) {
      if (m.expiresAt > now) return m.value;
      this.memory.delete(key);
    }
    const row = this.st?.get.get(key, now) as { body: string; expires_at: number } | undefined;
    if (!row) return undefined;
    try {
      const value = JSON.parse(row.body) as CachedEvidence;
      this.memory.set(key, { value, expiresAt: row.expires_at, size: row.body.length });
      return value;
    } catch {
      return undefined;
    }
  }

  /** Evidence another replica verified for this key (trust revision included), signed and unexpired; kept here then. */
  async kept(id: string, now: number): Promise<CachedEvidence | undefined> {
    const d = await this.durable?.getEvidence(`${FORMAT}\n${id}`, now).catch(() => undefined);
    const v = d?.value as CachedEvidence | undefined;
    if (!d || !v || typeof v.signatures !== 'object' || v.signatures === null || !Array.isArray(v.signatures.verified) || !Array.isArray(v.attestations)) {
      return undefined;
    }
    this.put(id, v, d.expiresAt, now);
    return v;
  }

  /** `durable`: into the bucket as well (verified evidence only: what the upstream is needed to rebuild). */
  put(id: string, value: CachedEvidence, expiresAt: number, now: number, durable = false): void {
    const key = `${FORMAT}\n${id}`;
    if (durable) this.durable?.putEvidence(key, value, expiresAt);
    const body = JSON.stringify(value);
    this.memory.set(key, { value, expiresAt, size: body.length });
    try {
      this.st?.put.run(key, body, expiresAt);
      if (++this.puts % 500 === 0) this.st?.prune.run(now);
    } catch {
      // The disk copy is an optimisation; the in-memory entry still serves.
    }
  }

  /** Bytes held in memory (for tests and diagnostics). */
  get memoryBytes(): number {
    return this.memory.calculatedSize;
  }

  close(): void {
    try {
      this.db?.close();
    } catch {
      // already closed
    }
  }
}
