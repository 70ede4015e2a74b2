/**
 * Token buckets, keyed (per client address, per identity), with an injected clock. Used for failed logins (before
 * any hashing) and for the upstream quotas. The key space is bounded by an LRU: an attacker cycling addresses
 * evicts old buckets (which then start full) rather than growing memory.
 */
import { LRUCache } from 'lru-cache';

export interface RateLimiter {
  /** Takes one token; `ok: false` says how long until one is available. */
  take(key: string): { ok: true } | { ok: false; retryAfterSeconds: number };
  /** Gives a token back (a verification that succeeded should not count as a failed attempt). */
  refund(key: string): void;
}

export interface BucketSpec {
  /** Tokens a full bucket holds: how many requests may come at once. */
  burst: number;
  /** Tokens added per second. */
  perSecond: number;
}

interface Bucket {
  tokens: number;
  at: number;
}

export class KeyedBuckets implements RateLimiter {
  private readonly buckets: LRUCache<string, Bucket>;

  constructor(
    private readonly spec: BucketSpec,
    private readonly now: () => number = Date.now,
    maxKeys = 100_000,
  ) {
    this.buckets = new LRUCache({ max: maxKeys });
  }

  private refill(key: string): Bucket {
    const t = this.now();
    const b = this.buckets.get(key) ?? { tokens: this.spec.burst, at: t };
    const elapsed = Math.max(0, t - b.at) / 1000;
    b.tokens = Math.min(this.spec.burst, b.tokens + elapsed * this.spec.perSecond);
    b.at = t;
    this.buckets.set(key, b);
    return b;
  }

  take(key: string): { ok: true } | { ok: false; retryAfterSeconds: number } {
    const b = this.refill(key);
    if (b.tokens >= 1) {
      b.tokens -= 1;
      return { ok: true };
    }
    const wait = this.spec.perSecond > 0 ? (1 - b.tokens) / this.spec.perSecond : 3600;
    return { ok: false, retryAfterSeconds: Math.max(1, Math.ceil(wait)) };
  }

  refund(key: string): void {
    const b = this.refill(key);
    b.tokens = Math.min(this.spec.burst, b.tokens + 1);
  }
}
