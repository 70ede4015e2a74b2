/**
 * The invalidation epoch's durable copy in S3 (storage.blobs: s3 with storage.meta: redis), against real SeaweedFS,
 * real redis-server and a real Distribution upstream: a bump survives a Redis flush (a replica started afterwards
 * reads it from the bucket, and Redis gets it back), and a replica cut off from Redis confirms the epoch from the
 * bucket, so it keeps its cached decisions and still hears another replica's bump.
 */
import { ListObjectsV2Command } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DecisionObserver } from '../../src/gate/gate.js';
import { MANIFEST_ACCEPT, pushImage, type PushedImage } from '../harness/images.js';
import { startProxy, type RunningProxy } from '../harness/proxy.js';
import { startRedis, type RunningRedis } from '../harness/redis.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';
import { startSeaweed, type RunningSeaweed } from '../harness/seaweedfs.js';
import { startTcpCut, type TcpCut } from '../harness/tcp-cut.js';
import { until } from '../harness/wait.js';

const BUCKET = 'portcullis-epoch';
const ENV_AK = 'PC_TEST_EPOCH_S3_AK';
const ENV_SK = 'PC_TEST_EPOCH_S3_SK';

let reg: RunningRegistry;
let redis: RunningRedis;
let weed: RunningSeaweed;

beforeAll(async () => {
  weed = await startSeaweed();
  [reg, redis] = await Promise.all([startRegistry(), startRedis()]);
  await weed.createBucket(BUCKET);
  process.env[ENV_AK] = weed.accessKeyId;
  process.env[ENV_SK] = weed.secretAccessKey;
}, 120_000);
afterAll(async () => {
  await Promise.all([reg?.stop(), redis?.stop(), weed?.stop()]);
});

interface Replica {
  p: RunningProxy;
  decisions: () => number;
  clock: { t: number };
}

async function replica(prefix: string, redisPort = redis.port): Promise<Replica> {
  let n = 0;
  const clock = { t: Date.now() };
  const observer: DecisionObserver = { onDecision: () => void n++ };
  const p = await startProxy({
    upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
    observers: [observer],
    now: () => clock.t,
    extra: {
      storage: {
        blobs: 's3',
        s3: {
          endpoint: weed.endpoint,
          bucket: BUCKET,
          prefix,
          forcePathStyle: true,
          allowInsecureHttp: true,
          credentials: { accessKeyId: { env: ENV_AK }, secretAccessKey: { env: ENV_SK } },
        },
        meta: 'redis',
        redis: { url: `redis://127.0.0.1:${redisPort}/0`, allowInsecure: true, keyPrefix: prefix.replace('/', ':'), pollInterval: '200ms', maxStaleness: '2s' },
      },
    },
  });
  return { p, decisions: () => n, clock };
}

const epochOf = (r: Replica): string => /;epoch=([^;]*)$/.exec(r.p.proxy.app.gate.basis())?.[1] ?? 'none';

async function epochObjects(prefix: string): Promise<string[]> {
  const s3 = weed.client();
  try {
    const r = await s3.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: `${prefix}meta/v1/epoch/` }));
    return (r.Contents ?? []).map((o) => o.Key!.slice(`${prefix}meta/v1/epoch/`.length));
  } finally {
    s3.destroy();
  }
}

async function pull(r: Replica, repo: string, img: PushedImage): Promise<number[]> {
  const m = await fetch(`${r.p.url}/v2/${reg.host}/${repo}/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT } });
  await m.arrayBuffer();
  const out = [m.status];
  for (const b of [img.config, ...img.layers]) {
    const res = await fetch(`${r.p.url}/v2/${reg.host}/${repo}/blobs/${b.digest}`);
    await res.arrayBuffer();
    out.push(res.status);
  }
  return out;
}

describe('the durable epoch in S3', () => {
  it('a bump survives a Redis flush: a replica started afterwards reads it from the bucket and writes it back', async () => {
    const a = await replica('durable/');
    let durableEpoch = '';
    try {
      for (let i = 0; i < 6; i++) a.p.proxy.app.gate.forgetDigest(`sha256:${String(i).repeat(64)}`);
      // Bumps that come together share increments; the first write to a fresh SeaweedFS bucket is slow (volume growth).
      const epoch = (): number => Number(epochOf(a));
      await until(async () => epoch() >= 1 && (await epochObjects('durable/')).at(-1) === String(epoch()).padStart(16, '0'), 'bumps in S3', 90_000);
      const last = epoch();
      a.p.proxy.app.gate.forgetDigest(`sha256:${'7'.repeat(64)}`);
      await until(async () => (await epochObjects('durable/')).at(-1) === String(last + 1).padStart(16, '0'), 'one more bump in S3', 30_000);
      // One object per epoch, the oldest deleted: a slow writer can never put a lower epoch back.
      expect((await epochObjects('durable/')).length).toBeLessThanOrEqual(4);
      durableEpoch = String(last + 1);
    } finally {
      await a.p.stop();
    }
    await redis.flush();
    const c = await replica('durable/');
    try {
      expect(epochOf(c)).toBe(durableEpoch);
      const k = redis.client();
      try {
        expect(await k.get('durable:v1:epoch')).toBe(durableEpoch);
      } finally {
        k.disconnect();
      }
    } finally {
      await c.p.stop();
    }
  });

  it('a replica cut off from Redis confirms the epoch from the bucket: it keeps its cache, and still hears a bump', async () => {
    const img = await pushImage(reg.url, 'team/s3epoch', 'v1');
    const link: TcpCut = await startTcpCut(redis.port);
    const a = await replica('cut/');
    const b = await replica('cut/', link.port);
    try {
      expect(await pull(b, 'team/s3epoch', img)).toEqual([200, 200, 200]);
      const decided = b.decisions();
      link.cut();
      b.clock.t += 3_000;
      const readyNote = async (): Promise<string> => {
        const body = (await (await fetch(`${b.p.url}/readyz`)).json()) as { degraded?: string[] };
        return body.degraded?.[0] ?? '';
      };
      await until(async () => (await readyNote()).includes('epoch confirmed from the durable copy'), 'B confirmed from S3', 20_000);
      // Past maxStaleness on B's clock, yet confirmed: its cached decision still holds.
      expect(await pull(b, 'team/s3epoch', img)).toEqual([200, 200, 200]);
      expect(b.decisions()).toBe(decided);
      const before = epochOf(b);
      a.p.proxy.app.gate.forgetDigest(img.digest as `sha256:${string}`);
      await until(() => epochOf(b) !== before, 'B hears the bump through S3', 20_000);
      expect(await pull(b, 'team/s3epoch', img)).toEqual([200, 200, 200]);
      expect(b.decisions()).toBe(decided + 1);
    } finally {
      await Promise.all([a.p.stop(), b.p.stop()]);
      await link.stop();
    }
  });
});
