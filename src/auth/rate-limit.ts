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

/** What a shared bucket said: whether the tokens were taken, and what is left (to say when to retry). */
export interface SharedTake {
  ok: boolean;
  tokens: number;
}

/**
 * Token buckets every replica of a central tier shares (storage.meta: redis, src/cache/redis-buckets.ts), so that a
 * client spreading its requests over N replicas gets the configured rate, not N times it.
 */
export interface SharedBuckets {
  /**
   * Takes `cost` tokens from bucket `id` (a negative cost gives them back), refilled up to the time `now` (ms, the
   * replica's clock). Undefined when the shared store cannot answer now: the caller then limits with its own bucket.
   */
  take(id: string, spec: BucketSpec, now: number, cost: number): Promise<SharedTake | undefined>;
}

export type TakeResult = { ok: true } | { ok: false; retryAfterSeconds: number };

/**
 * A keyed bucket that lives in the shared store when there is one and it answers, and in this replica's memory
 * otherwise: a Redis outage makes the limit per replica again (at most N times the rate), never absent.
 */
export class SharedKeyedBuckets {
  private readonly local: KeyedBuckets;

  constructor(
    private readonly o: {
      /** Names the bucket family in the shared store (e.g. `quota:perAddress:coldBlobs`). */
      name: string;
      spec: BucketSpec;
      now: () => number;
      shared?: SharedBuckets | undefined;
    },
  ) {
    this.local = new KeyedBuckets(o.spec, o.now);
  }

  async take(key: string): Promise<TakeResult> {
    const r = await this.o.shared?.take(`${this.o.name}\n${key}`, this.o.spec, this.o.now(), 1);
    if (r === undefined) return this.local.take(key);
    if (r.ok) return { ok: true };
    const wait = this.o.spec.perSecond > 0 ? (1 - r.tokens) / this.o.spec.perSecond : 3600;
    return { ok: false, retryAfterSeconds: Math.max(1, Math.ceil(wait)) };
  }

  async refund(key: string): Promise<void> {
    const r = await this.o.shared?.take(`${this.o.name}\n${key}`, this.o.spec, this.o.now(), -1);
    if (r === undefined) this.local.refund(key);
  }
}
