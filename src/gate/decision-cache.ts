/**
 * The gate's in-memory decision cache: an LRU of decisions by key, plus an index from each digest a key names (the
 * manifest decided, and the root it was decided under) to the keys naming it. Forgetting what was decided about a
 * digest (a scan report pushed, re-evaluation's purge) then touches only that digest's decisions: walking every key
 * and splitting it was O(all decisions) per report, 10^5 and more on a busy cache (issue 16).
 */
import { LRUCache } from 'lru-cache';

export class DecisionCache<V extends object> {
  private readonly lru: LRUCache<string, V>;
  /** digest → keys that name it; kept in step with the LRU through its dispose hook (evictions included). */
  private readonly byDigest = new Map<string, Set<string>>();
  private readonly digestsOf = new Map<string, readonly string[]>();

  constructor(max: number) {
    this.lru = new LRUCache<string, V>({
      max,
      // 'set' replaces a value under the same key, which names the same digests: the index stays as it is.
      dispose: (_v, key, reason) => {
        if (reason !== 'set') this.unindex(key);
      },
    });
  }

  get size(): number {
    return this.lru.size;
  }

  get(key: string): V | undefined {
    return this.lru.get(key);
  }

  /** `digests`: what the key names (empty strings are ignored). */
  set(key: string, value: V, digests: readonly string[]): void {
    const named = digests.filter((d, i) => d !== '' && digests.indexOf(d) === i);
    this.lru.set(key, value);
    // An entry larger than the cache's bound is refused silently by lru-cache; only index what it holds.
    if (!this.lru.has(key) || this.digestsOf.has(key)) return;
    this.digestsOf.set(key, named);
    for (const d of named) {
      let keys = this.byDigest.get(d);
      if (!keys) this.byDigest.set(d, (keys = new Set()));
      keys.add(key);
    }
  }

  /** Drops every decision naming one of `digests`; returns how many. */
  forget(digests: Iterable<string>): number {
    const keys = new Set<string>();
    for (const d of digests) for (const k of this.byDigest.get(d) ?? []) keys.add(k);
    for (const k of keys) this.lru.delete(k);
    return keys.size;
  }

  clear(): void {
    this.lru.clear();
    this.byDigest.clear();
    this.digestsOf.clear();
  }

  private unindex(key: string): void {
    const named = this.digestsOf.get(key);
    if (!named) return;
    this.digestsOf.delete(key);
    for (const d of named) {
      const keys = this.byDigest.get(d);
      keys?.delete(key);
      if (keys?.size === 0) this.byDigest.delete(d);
    }
  }
}
