/**
 * storage.redis.sentinels (issue 13): two replicas find the master through three real sentinels (quorum 2) over a
 * real master and replica (test/harness/redis-ha.ts). The master is killed (SIGKILL) while both replicas serve pulls
 * and decide new images: every pull of an allowed image succeeds (decided locally while Redis is away), every
 * manifest served carries a decision, and after the failover both replicas use the promoted replica: decisions,
 * tags and the invalidation epoch are shared again. Every wait is bounded.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pushImage, type PushedImage } from '../harness/images.js';
import { epochOf, manifestOf, pullAll, readyz, redisReplica, type RedisReplica } from '../harness/redis-app.js';
import { ask, startSentinelSet, type SentinelSet } from '../harness/redis-ha.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';
import { until } from '../harness/wait.js';

let reg: RunningRegistry;
let set: SentinelSet;
let a: RedisReplica;
let b: RedisReplica;
let warm: PushedImage;
const during: PushedImage[] = [];
let after: PushedImage;

beforeAll(async () => {
  [reg, set] = await Promise.all([startRegistry(), startSentinelSet({ count: 3, quorum: 2 })]);
  warm = await pushImage(reg.url, 'team/ha', 'v1');
  for (let i = 0; i < 4; i++) during.push(await pushImage(reg.url, 'team/during', `d${i}`));
  after = await pushImage(reg.url, 'team/after', 'v1');
  const connection = { sentinels: set.sentinelPorts.map((port) => ({ host: '127.0.0.1', port })), name: set.name };
  [a, b] = await Promise.all([redisReplica({ reg, connection, prefix: 'ha:' }), redisReplica({ reg, connection, prefix: 'ha:' })]);
}, 120_000);
afterAll(async () => {
  await Promise.all([a?.p.stop(), b?.p.stop()]);
  await Promise.all([reg?.stop(), set?.stop()]);
});

describe('Redis through Sentinel', () => {
  it('the master killed during pulls: no pull of an allowed image fails, nothing served undecided, and sharing resumes on the promoted replica', async () => {
    expect(await pullAll(a, reg, 'team/ha', 'v1', warm)).toEqual([200, 200, 200]);
    expect(await pullAll(b, reg, 'team/ha', 'v1', warm)).toEqual([200, 200, 200]);
    expect(b.c.decisions).toBe(0); // A's decision, found in Redis through Sentinel
    const oldMaster = set.master.port;
    expect(await set.masterPort()).toBe(oldMaster);

    // Pulls on both replicas, warm and of images not decided yet, until the failover is over.
    let stop = false;
    const failures: string[] = [];
    let manifests = 0;
    const load = (async () => {
      for (let i = 0; i < 5_000 && !stop; i++) {
        const r = i % 2 ? a : b;
        const fresh = i % 5 === 4 ? during[Math.floor(i / 5) % during.length] : undefined;
        const [repo, tag, img] = fresh ? ['team/during', `d${during.indexOf(fresh)}`, fresh] : ['team/ha', 'v1', warm];
        const m = await manifestOf(r, reg, repo, tag);
        await m.arrayBuffer();
        manifests++;
        if (m.status !== 200) failures.push(`${repo}:${tag} manifest ${m.status}`);
        else if (!m.headers.get('portcullis-decision-id')) failures.push(`${repo}:${tag} served without a decision id`);
        for (const blob of [img.config, ...img.layers]) {
          const res = await fetch(`${r.p.url}/v2/${reg.host}/${repo}/blobs/${blob.digest}`);
          await res.arrayBuffer();
          if (res.status !== 200) failures.push(`${repo} blob ${res.status}`);
        }
      }
    })();

    await until(() => manifests >= 4, 'pulls going on');
    await set.master.kill();
    await until(async () => (await set.masterPort()) === set.replica.port, 'Sentinel promoted the replica', 60_000);
    // Both replicas back on Redis (the new master): ready, not degraded.
    for (const r of [a, b]) await until(async () => (await readyz(r)).body.status === 'ready', 'replica ready on the new master', 60_000);
    const atFailover = manifests;
    await until(() => manifests >= atFailover + 4, 'pulls going on after the failover');
    stop = true;
    await load;
    expect(failures).toEqual([]);

    // Shared decisions and tags in the promoted replica: B reuses what A decided after the failover.
    const bDecisions = b.c.decisions;
    expect(await pullAll(a, reg, 'team/after', 'v1', after)).toEqual([200, 200, 200]);
    expect(await pullAll(b, reg, 'team/after', 'v1', after)).toEqual([200, 200, 200]);
    expect(b.c.decisions).toBe(bDecisions);
    const newMaster = set.replica.port;
    expect(((await ask(newMaster, 'KEYS', 'ha:v1:decision:*')) as string[]).length).toBeGreaterThan(0);
    expect(((await ask(newMaster, 'KEYS', 'ha:v1:tag:*')) as string[]).length).toBeGreaterThan(0);
    // The epoch: a bump on A (a policy swap) reaches B through the new master.
    const e = Number(epochOf(a));
    a.p.proxy.app.gate.policyChanged();
    await until(() => epochOf(a) === String(e + 1) && epochOf(b) === String(e + 1), 'both replicas on the bumped epoch', 20_000);
    expect(await ask(newMaster, 'GET', 'ha:v1:epoch')).toBe(String(e + 1));
  }, 180_000);
});
