/**
 * The invalidation epoch's durable copy in S3 (storage.blobs: s3 with storage.meta: redis), against real SeaweedFS,
 * real redis-server and a real Distribution upstream: a bump survives a Redis flush (a replica started afterwards
 * reads it from the bucket, and Redis gets it back), and a replica cut off from Redis confirms the epoch from the
 * bucket, so it keeps its cached decisions and still hears another replica's bump.
 */
import { ListObjectsV2Command } from '@aws-sdk/client-s3';
import { readFileSync } from 'node:fs';
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
const REPORT_TOKEN = 's3-epoch-report-token-93be';
process.env.PC_S3_EPOCH_REPORT_TOKEN = REPORT_TOKEN;
const ADMIN_TOKEN = 's3-epoch-admin-token-5f21';
process.env.PC_S3_EPOCH_ADMIN_TOKEN = ADMIN_TOKEN;
process.env.PC_S3_EPOCH_SIGNING_KEY = 's3-epoch-signing-key-0123456789abcdef0123';
const ZERO = `sha256:${'0'.repeat(64)}`;
const critical = readFileSync('test/fixtures/scan/trivy-critical.json', 'utf8');
const clean = readFileSync('test/fixtures/scan/trivy-clean.json', 'utf8');
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

async function replica(prefix: string, redisPort = redis.port, scan = false, s3Endpoint = weed.endpoint): Promise<Replica> {
  let n = 0;
  const clock = { t: Date.now() };
  const observer: DecisionObserver = { onDecision: () => void n++ };
  const p = await startProxy({
    upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
    observers: [observer],
    now: () => clock.t,
    ...(scan ? { settings: { scopes: [{ name: 'scanned', images: ['**'], scan: {} }] } } : {}),
    extra: {
      ...(scan
        ? {
            scan: {
              order: ['reports'],
              reports: { token: { env: 'PC_S3_EPOCH_REPORT_TOKEN' }, maxSize: '64KiB' },
              admin: { token: { env: 'PC_S3_EPOCH_ADMIN_TOKEN' } },
            },
          }
        : {}),
      storage: {
        blobs: 's3',
        s3: {
          endpoint: s3Endpoint,
          bucket: BUCKET,
          prefix,
          forcePathStyle: true,
          allowInsecureHttp: true,
          credentials: { accessKeyId: { env: ENV_AK }, secretAccessKey: { env: ENV_SK } },
        },
        meta: 'redis',
        redis: {
          url: `redis://127.0.0.1:${redisPort}/0`,
          allowInsecure: true,
          signingKey: { env: 'PC_S3_EPOCH_SIGNING_KEY' },
          keyPrefix: prefix.replace('/', ':'),
          pollInterval: '200ms',
          maxStaleness: '2s',
        },
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
    let durableEpoch: string;
    try {
      for (let i = 0; i < 6; i++) a.p.proxy.app.gate.forgetDigest(`sha256:${String(i).repeat(64)}`);
      // Bumps that come together share increments; the first write to a fresh SeaweedFS bucket is slow (volume growth).
      const epoch = (): number => Number(epochOf(a));
      const settled = async (): Promise<boolean> =>
        ((await (await fetch(`${a.p.url}/readyz`)).json()) as { status: string }).status === 'ready' &&
        (await epochObjects('durable/')).at(-1) === String(epoch()).padStart(16, '0');
      await until(async () => epoch() >= 1 && (await settled()), 'bumps in S3', 90_000);
      const last = epoch();
      a.p.proxy.app.gate.forgetDigest(`sha256:${'7'.repeat(64)}`);
      await until(async () => epoch() === last + 1 && (await settled()), 'one more bump in S3', 30_000);
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

function pushReport(r: Replica, fixture: string, repo: string, digest: string): Promise<Response> {
  return fetch(`${r.p.url}/api/v1/reports/${reg.host}/${repo}@${digest}`, {
    method: 'PUT',
    headers: { authorization: `Bearer ${REPORT_TOKEN}`, 'content-type': 'application/json' },
    body: fixture
      .replaceAll(`registry.example/demo/app@${ZERO}`, `${reg.host}/${repo}@${digest}`)
      .replace(/"CreatedAt": "[^"]+"/, `"CreatedAt": "${new Date().toISOString()}"`),
  });
}

describe('pushed reports in the bucket', () => {
  let a: Replica;
  let b: Replica;
  let img: PushedImage;
  const repo = 'team/reported';
  beforeAll(async () => {
    img = await pushImage(reg.url, repo, 'v1');
    [a, b] = await Promise.all([replica('reports/', redis.port, true), replica('reports/', redis.port, true)]);
  }, 60_000);
  afterAll(async () => Promise.all([a?.p.stop(), b?.p.stop()]));

  it('a report pushed to one replica counts on the other; a CRITICAL one is denied there within the bound, whoever decides first', async () => {
    // Without a report the policy's scan rule denies (not scanned).
    expect((await pull(b, repo, img))[0]).toBe(403);
    const first = epochOf(b);
    expect((await pushReport(a, clean, repo, img.digest)).status).toBe(201);
    await until(() => epochOf(b) !== first, 'B hears the bump');
    expect(await pull(b, repo, img)).toEqual([200, 200, 200]);
    const before = epochOf(b);
    expect((await pushReport(a, critical, repo, img.digest)).status).toBe(201);
    await until(() => epochOf(b) !== before, 'B hears the bump');
    // B decides first under the new epoch, and reads the CRITICAL report A took from the bucket.
    const denied = await fetch(`${b.p.url}/v2/${reg.host}/${repo}/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT } });
    expect(denied.status).toBe(403);
    expect(denied.headers.get('portcullis-reason')).toMatch(/CRITICAL|critical/);
    expect((await fetch(`${b.p.url}/v2/${reg.host}/${repo}/blobs/${img.layers[0]!.digest}`)).status).toBe(403);
    expect((await pull(a, repo, img))[0]).toBe(403);
  });

  it("deleting the image's reports on one replica removes them from the bucket: neither replica counts them", async () => {
    const del = await fetch(`${b.p.url}/api/v1/reports/${reg.host}/${repo}@${img.digest}`, {
      method: 'DELETE',
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    expect(del.status).toBe(204);
    const s3 = weed.client();
    try {
      const left = await s3.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: `reports/meta/v1/reports/${img.digest}/` }));
      expect(left.Contents ?? []).toEqual([]);
    } finally {
      s3.destroy();
    }
  });
});

describe('readiness names the bucket', () => {
  it('a replica cut off from S3 stays ready (200) and says `s3: degraded`; back when the bucket answers', async () => {
    const link = await startTcpCut(Number(new URL(weed.endpoint).port));
    const r = await replica('ready/', redis.port, false, `http://127.0.0.1:${link.port}`);
    const ready = async (): Promise<{ status: number; body: { status: string; degraded?: string[] } }> => {
      const res = await fetch(`${r.p.url}/readyz`);
      return { status: res.status, body: (await res.json()) as { status: string; degraded?: string[] } };
    };
    try {
      await until(async () => (await ready()).body.status === 'ready', 'ready', 20_000);
      link.cut();
      await until(async () => ((await ready()).body.degraded ?? []).some((d) => d.startsWith('s3: degraded')), 's3 degraded', 20_000);
      expect((await ready()).status).toBe(200);
      link.restore();
      await until(async () => (await ready()).body.status === 'ready', 'ready again', 20_000);
    } finally {
      await r.p.stop();
      await link.stop();
    }
  });
});
