/**
 * Token buckets in Redis (storage.meta: redis), shared by every replica: the quotas of src/auth/quota.ts hold for the
 * whole central tier. Key layout: shared.ts (`<keyPrefix>v1:bucket:<sha256>`, one hash per bucket).
 *
 * A take is one Lua script on one key (atomic: two replicas taking the last token at once cannot both get it; and
 * on Redis Cluster one key is one hash slot). The time is the replica's clock, passed in, not Redis's TIME: the
 * clock is injected everywhere else (tests drive it), and the script keeps `at` from going backwards, so a replica
 * whose clock lags the others refills nothing until it catches up: skew can delay tokens, never add any.
 *
 * Redis known down, slow past the command timeout, or failing: undefined, and the caller limits with its own bucket.
 */
import { createHash } from 'node:crypto';
import type { Cluster, Redis } from 'ioredis';
import type { BucketSpec, SharedBuckets, SharedTake } from '../auth/rate-limit.js';

/**
 * ARGV: burst, tokens per ms, now (ms), cost (negative: a refund). Returns {1|0, tokens left as text}. A stored
 * count above the burst (a changed setting, a forged entry) is cut to the burst; a bucket left alone is full again
 * after burst / rate, so it expires then.
 */
const TAKE = `local burst = tonumber(ARGV[1])
local perMs = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local s = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(s[1])
local at = tonumber(s[2])
if tokens == nil or at == nil then
  tokens = burst
  at = now
end
if tokens > burst then tokens = burst end
if now > at then
  tokens = math.min(burst, tokens + (now - at) * perMs)
  at = now
end
local ok = 0
if cost <= 0 then
  tokens = math.min(burst, tokens - cost)
  ok = 1
elseif tokens >= cost then
  tokens = tokens - cost
  ok = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(at))
local ttl = 3600000
if perMs > 0 then ttl = math.ceil(burst / perMs) + 1000 end
redis.call('PEXPIRE', KEYS[1], ttl)
return {ok, tostring(tokens)}`;

type WithTake = { portcullisTakeTokens(key: string, ...argv: string[]): Promise<[number, string]> };

export interface RedisBucketsOptions {
  client: Redis | Cluster;
  keyPrefix: string;
  /** Runs a command unless Redis is known down (RedisShared.attempt): undefined when skipped or failed. */
  attempt: <T>(what: string, f: (c: Redis | Cluster) => Promise<T>) => Promise<T | undefined>;
}

export class RedisBuckets implements SharedBuckets {
  private readonly prefix: string;

  constructor(private readonly o: RedisBucketsOptions) {
    this.prefix = `${o.keyPrefix}v1:bucket:`;
    // EVALSHA, and EVAL once when a server (a restarted one, a new master) does not know the script yet.
    o.client.defineCommand('portcullisTakeTokens', { numberOfKeys: 1, lua: TAKE });
  }

  async take(id: string, spec: BucketSpec, now: number, cost: number): Promise<SharedTake | undefined> {
    const key = this.prefix + createHash('sha256').update(id).digest('hex');
    const argv = [String(spec.burst), String(spec.perSecond / 1000), String(Math.floor(now)), String(cost)];
    const r = await this.o.attempt('take a rate-limit token', (c) => (c as unknown as WithTake).portcullisTakeTokens(key, ...argv));
    if (!Array.isArray(r)) return undefined;
    const tokens = Number(r[1]);
    return { ok: r[0] === 1, tokens: Number.isFinite(tokens) ? tokens : 0 };
  }
}
