/**
 * Closure hints (shared.ts ClosureHint) from every place replicas leave them: Redis first (fast, rebuildable), then
 * the bucket (durable: what a Redis flush must not lose, durable-state.ts). A hint names a root to decide; it admits
 * nothing by itself (gate/closures.ts), so a lost or stale hint costs a refusal or a decision, never a wrong allow.
 */
import { LRUCache } from 'lru-cache';
import { isDigest } from '../routing/reference.js';
import type { ClosureMember } from './metastore.js';
import type { ClosureHint, ClosureLink, HintStore } from './shared.js';

/** A layer shared by many images has many roots: each store keeps at most this many hints per member and repository. */
export const MAX_HINTS_PER_MEMBER = 32;

const ROLES = new Set(['child', 'config', 'layer']);

/** A hint from its stored JSON, or undefined when the shape is wrong. `trustTag`: the entry's tag may be used. */
export function hintFrom(p: Record<string, unknown>, trustTag: boolean, expiresAt: number): ClosureHint | undefined {
  const { v, role, root, voucher, tag } = p;
  if (v !== 1 || typeof role !== 'string' || !ROLES.has(role) || typeof root !== 'string' || typeof voucher !== 'string') return undefined;
  if (!isDigest(root) || !isDigest(voucher) || typeof tag !== 'string' || tag.length > 128 || !Number.isFinite(expiresAt)) return undefined;
  return { role: role as ClosureHint['role'], root, voucher, tag: trustTag ? tag : null, expiresAt };
}

/**
 * A digest the bucket named no root for is not asked again for this long: a client asking for blobs no image
 * admitted must not turn each refused GET into a bucket listing.
 */
const EMPTY_FOR_MS = 5_000;

/** Redis, then the bucket: the bucket is read only when Redis has no hint (flushed, down, or never told). */
export class TieredHints implements HintStore {
  private readonly empty = new LRUCache<string, true>({ max: 10_000, ttl: EMPTY_FOR_MS });

  constructor(private readonly tiers: readonly [HintStore, ...HintStore[]]) {}

  async getHints(upstream: string, repository: string, member: ClosureHint['root'], limit: number): Promise<ClosureHint[]> {
    const key = `${upstream}\n${repository}\n${member}`;
    for (const [i, t] of this.tiers.entries()) {
      if (i > 0 && this.empty.has(key)) break;
      const hints = await t.getHints(upstream, repository, member, limit).catch(() => []);
      if (hints.length) return hints;
      if (i > 0) this.empty.set(key, true);
    }
    return [];
  }

  /** Waits for the first tier (Redis: fast); the others (the bucket) are written behind. */
  putHints(upstream: string, repository: string, link: ClosureLink, members: readonly ClosureMember[], expiresAt: number): Promise<void> {
    const [first, ...rest] = this.tiers;
    for (const t of rest) void t.putHints(upstream, repository, link, members, expiresAt);
    for (const m of members) this.empty.delete(`${upstream}\n${repository}\n${m.digest}`);
    return first.putHints(upstream, repository, link, members, expiresAt);
  }
}
