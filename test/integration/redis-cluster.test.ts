/**
 * storage.redis.cluster (issue 13): two replicas on a real 3-master Redis Cluster (test/harness/redis-ha.ts). Shared
 * decisions, tags, the invalidation epoch (a script and pub/sub) and the quota buckets all work across the replicas:
 * every script touches one key, so no step spans hash slots (CROSSSLOT is what a two-key script would get).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pushImage, type PushedImage } from '../harness/images.js';
import { epochOf, manifestOf, pullAll, readyz, redisReplica, type RedisReplica } from '../harness/redis-app.js';
import { ask, startRedisCluster, type RedisClusterSet } from '../harness/redis-ha.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';
import { until } from '../harness/wait.js';

let reg: RunningRegistry;
let cluster: RedisClusterSet;
let a: RedisReplica;
let b: RedisReplica;
let img: PushedImage;
const T0 = 1_800_000_000_000;
const quotas = { perAddress: { coldManifests: { burst: 4, perMinute: 60 } } };

beforeAll(async () => {
  [reg, cluster] = await Promise.all([startRegistry(), startRedisCluster(3)]);
  img = await pushImage(reg.url, 'team/clustered', 'v1');
  const connection = { cluster: cluster.ports.map((port) => ({ host: '127.0.0.1', port })) };
  [a, b] = await Promise.all([
    redisReplica({ reg, connection, prefix: 'cl:', quotas, t: T0 }),
    redisReplica({ reg, connection, prefix: 'cl:', quotas, t: T0 }),
  ]);
}, 120_000);
afterAll(async () => {
  await Promise.all([a?.p.stop(), b?.p.stop()]);
  await Promise.all([reg?.stop(), cluster?.stop()]);
});

/** Every key matching `pattern` on every master. */
async function keys(pattern: string): Promise<string[]> {
  const all = await Promise.all(cluster.ports.map((p) => ask(p, 'KEYS', pattern)));
  return all.flatMap((k) => (Array.isArray(k) ? (k as string[]) : []));
}

describe('Redis Cluster', () => {
  it('decisions, tags, the epoch and quotas are shared by two replicas on a 3-master cluster', async () => {
    for (const r of [a, b]) expect((await readyz(r)).body.status).toBe('ready');
    // The tag check is cold (a token) on A; B finds A's tag mapping and decision in the cluster.
    expect(await pullAll(a, reg, 'team/clustered', 'v1', img)).toEqual([200, 200, 200]);
    expect(await pullAll(b, reg, 'team/clustered', 'v1', img)).toEqual([200, 200, 200]);
    expect([a.c.decisions, b.c.decisions]).toEqual([1, 0]);
    expect(await keys('cl:v1:decision:*')).toHaveLength(1);
    expect(await keys('cl:v1:tag:*')).toHaveLength(1);

    // The epoch: a bump (a script) on A, heard by B (pub/sub across the cluster) and stored.
    const e = Number(epochOf(a));
    a.p.proxy.app.gate.policyChanged();
    await until(() => epochOf(a) === String(e + 1) && epochOf(b) === String(e + 1), 'both replicas on the bumped epoch', 20_000);
    expect(await keys('cl:v1:epoch')).toHaveLength(1);
    for (const r of [a, b]) expect((await readyz(r)).body.status).toBe('ready');

    // Quotas: one bucket for the client across both replicas. The pulls above took 2 (a tag not checked by a replica yet is cold to it).
    const statuses: number[] = [];
    for (let i = 0; i < 8; i++) {
      const res = await manifestOf(i % 2 ? b : a, reg, 'team/clustered', `missing-${i}`);
      await res.arrayBuffer();
      statuses.push(res.status);
    }
    expect(statuses).toEqual([404, 404, 429, 429, 429, 429, 429, 429]);
    expect(await keys('cl:v1:bucket:*')).toHaveLength(1);
  }, 120_000);
});
