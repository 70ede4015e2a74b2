/**
 * Quotas shared through Redis (storage.meta: redis; src/cache/redis-buckets.ts): two replicas on one real
 * redis-server, one client alternating between them, is limited at the configured rate in total, not twice it. The
 * clocks are injected and frozen (moved by hand), so refills are exact. Redis killed: each replica limits with its
 * own bucket (never unlimited), and /readyz says degraded.
 */
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RedisBuckets } from '../../src/cache/redis-buckets.js';
import { manifestOf, readyz, redisReplica, type RedisReplica } from '../harness/redis-app.js';
import { startRedis, type RunningRedis } from '../harness/redis.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';
import { until } from '../harness/wait.js';

let reg: RunningRegistry;
let redis: RunningRedis;
let a: RedisReplica;
let b: RedisReplica;
const T0 = 1_800_000_000_000;
// A cold manifest (a tag this replica has not checked) costs a token: 4 at once, then 1 a second.
const quotas = { perAddress: { coldManifests: { burst: 4, perMinute: 60 } } };

beforeAll(async () => {
  [reg, redis] = await Promise.all([startRegistry(), startRedis()]);
  const connection = { url: redis.url };
  [a, b] = await Promise.all([
    redisReplica({ reg, connection, prefix: 'rl:', quotas, t: T0 }),
    redisReplica({ reg, connection, prefix: 'rl:', quotas, t: T0 }),
  ]);
}, 60_000);
afterAll(async () => {
  await Promise.all([a?.p.stop(), b?.p.stop()]);
  await Promise.all([reg?.stop(), redis?.stop()]);
});

let n = 0;
/** `count` cold manifest requests (each a new tag), alternating between the replicas; the statuses in order. */
async function alternate(count: number, only?: RedisReplica): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < count; i++) {
    const r = only ?? (i % 2 === 0 ? a : b);
    const res = await manifestOf(r, reg, 'team/limited', `missing-${n++}`);
    await res.arrayBuffer();
    out.push(res.status);
  }
  return out;
}
const admitted = (s: number[]): number => s.filter((x) => x !== 429).length;

describe('the bucket script (src/cache/redis-buckets.ts) on a real Redis', () => {
  it('takes the replica clock; a replica whose clock lags refills nothing until it catches up (skew delays tokens, never adds any)', async () => {
    const client = new Redis({ host: '127.0.0.1', port: redis.port, maxRetriesPerRequest: 0 });
    try {
      const buckets = new RedisBuckets({ client, keyPrefix: 'skew:', attempt: (_what, f) => f(client) });
      const spec = { burst: 2, perSecond: 1 };
      const take = async (now: number, cost = 1): Promise<boolean | undefined> => (await buckets.take('client', spec, now, cost))?.ok;
      expect([await take(10_000), await take(10_000), await take(10_000)]).toEqual([true, true, false]);
      // A replica 5 s behind: its "now" is before the bucket's time, so nothing is added.
      expect(await take(5_000)).toBe(false);
      expect(await take(11_000)).toBe(true);
      expect(await take(10_500)).toBe(false);
      // A refund puts one back, never above the burst.
      await take(11_000, -1);
      await take(11_000, -1);
      await take(11_000, -1);
      expect([await take(11_000), await take(11_000), await take(11_000)]).toEqual([true, true, false]);
    } finally {
      client.disconnect();
    }
  });
});

describe('quotas shared by replicas through Redis', () => {
  it('a client alternating between two replicas gets the configured rate in total; Redis down: each replica limits locally', async () => {
    // The burst once across both replicas (404: the tag does not exist upstream, but the token was spent).
    const first = await alternate(10);
    expect(first.slice(0, 4)).toEqual([404, 404, 404, 404]);
    expect(first.slice(4)).toEqual([429, 429, 429, 429, 429, 429]);
    // Two seconds later, on both clocks: two tokens, whichever replica takes them.
    a.clock.t += 2_000;
    b.clock.t += 2_000;
    expect(admitted(await alternate(6))).toBe(2);
    // A 429 says when a token will be there, as without Redis.
    const limited = await manifestOf(b, reg, 'team/limited', 'missing-x');
    expect([limited.status, limited.headers.get('retry-after')]).toEqual([429, '1']);
    const k = redis.client();
    try {
      expect(await k.keys('rl:v1:bucket:*')).toHaveLength(1);
    } finally {
      k.disconnect();
    }

    // At once from both replicas (the take is one script in Redis: no two replicas get the same token).
    a.clock.t += 3_000;
    b.clock.t += 3_000;
    const herd = await Promise.all([0, 1, 2, 3, 4, 5, 6, 7, 8, 9].map((i) => manifestOf(i % 2 ? a : b, reg, 'team/limited', `herd-${i}`)));
    await Promise.all(herd.map((r) => r.arrayBuffer()));
    expect(admitted(herd.map((r) => r.status))).toBe(3);

    // Redis gone: no replica stops serving nor stops limiting; each has its own bucket again (full at first).
    await redis.kill();
    const onA = await alternate(6, a);
    const onB = await alternate(6, b);
    expect([admitted(onA), onA.slice(4)]).toEqual([4, [429, 429]]);
    expect([admitted(onB), onB.slice(4)]).toEqual([4, [429, 429]]);
    await until(async () => (await readyz(a)).body.status === 'degraded', 'replica a degraded', 20_000);
    expect((await readyz(a)).status).toBe(200);
  }, 60_000);
});
