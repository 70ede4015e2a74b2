/**
 * `storage.meta: redis` (issue 13) with Debian's real redis-server (test/harness/redis.ts), a real Distribution
 * upstream and two or three Portcullis replicas in-process sharing one Redis. What is shown: a decision one replica
 * made is reused by the others (no second evaluation) and a tag checked by one is not checked again upstream by
 * another; a scan report pushed to one replica bumps the invalidation epoch and every replica stops serving on its
 * old decisions; a replica cut off from Redis trusts its cached decisions for at most `maxStaleness` (clock injected);
 * Redis killed or stalled: pulls go on, /readyz answers 200 `degraded`; Redis flushed during a herd (0 failed pulls)
 * and while the upstream is down (cached admitted images still served).
 */
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DecisionObserver } from '../../src/gate/gate.js';
import { MANIFEST_ACCEPT, pushImage, type PushedImage } from '../harness/images.js';
import { startProxy, type RunningProxy } from '../harness/proxy.js';
import { startRedis, startSentinel, type RunningRedis } from '../harness/redis.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';
import { startTcpCut, type TcpCut } from '../harness/tcp-cut.js';
import { until } from '../harness/wait.js';

const REPORT_TOKEN = 'redis-meta-report-token-41c9';
process.env.PC_REDIS_META_REPORT_TOKEN = REPORT_TOKEN;
process.env.PC_REDIS_META_SIGNING_KEY = 'redis-meta-signing-key-0123456789abcdef';
const ZERO = `sha256:${'0'.repeat(64)}`;
const critical = readFileSync('test/fixtures/scan/trivy-critical.json', 'utf8');
const clean = readFileSync('test/fixtures/scan/trivy-clean.json', 'utf8');

let reg: RunningRegistry;
let redis: RunningRedis;

beforeAll(async () => {
  [reg, redis] = await Promise.all([startRegistry(), startRedis()]);
}, 60_000);
afterAll(async () => {
  await Promise.all([reg?.stop(), redis?.stop()]);
});

/** Counts what the gate did: decisions evaluated here, and answers from a cache (local or shared). */
function counter(): { decisions: number; hits: number; observer: DecisionObserver } {
  const c = {
    decisions: 0,
    hits: 0,
    observer: {
      onDecision: () => {
        c.decisions++;
      },
      onCacheHit: () => {
        c.hits++;
      },
    } as DecisionObserver,
  };
  return c;
}

function redisStorage(prefix: string, port = redis.port, more: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    meta: 'redis',
    redis: {
      url: `redis://127.0.0.1:${port}/0`,
      allowInsecure: true,
      signingKey: { env: 'PC_REDIS_META_SIGNING_KEY' },
      keyPrefix: prefix,
      pollInterval: '200ms',
      maxStaleness: '2s',
      ...more,
    },
  };
}

interface Replica {
  p: RunningProxy;
  c: ReturnType<typeof counter>;
  /** The replica's policy clock (ms); tests move it. */
  clock: { t: number };
}

async function replica(o: {
  prefix: string;
  port?: number;
  upstreamUrl?: string;
  scan?: boolean;
  settings?: Record<string, unknown>;
  redis?: Record<string, unknown>;
}): Promise<Replica> {
  const c = counter();
  const clock = { t: Date.now() };
  const p = await startProxy({
    upstreams: [{ name: 'local', registry: reg.host, url: o.upstreamUrl ?? reg.url }],
    observers: [c.observer],
    now: () => clock.t,
    ...(o.scan
      ? {
          settings: { scopes: [{ name: 'scanned', images: ['**'], scan: {} }] },
          extra: {
            storage: redisStorage(o.prefix, o.port),
            scan: { order: ['reports'], reports: { token: { env: 'PC_REDIS_META_REPORT_TOKEN' }, maxSize: '64KiB' } },
          },
        }
      : { extra: { storage: redisStorage(o.prefix, o.port, o.redis) }, ...(o.settings ? { settings: o.settings } : {}) }),
  });
  return { p, c, clock };
}

const manifest = (r: Replica, repo: string, ref: string): Promise<Response> =>
  fetch(`${r.p.url}/v2/${reg.host}/${repo}/manifests/${ref}`, { headers: { accept: MANIFEST_ACCEPT } });

/** A whole pull: the manifest by tag, then the config and every layer. Returns every status. */
async function pull(r: Replica, repo: string, tag: string, img: PushedImage): Promise<number[]> {
  const m = await manifest(r, repo, tag);
  await m.arrayBuffer();
  const statuses = [m.status];
  for (const b of [img.config, ...img.layers]) {
    const res = await fetch(`${r.p.url}/v2/${reg.host}/${repo}/blobs/${b.digest}`);
    await res.arrayBuffer();
    statuses.push(res.status);
  }
  return statuses;
}

async function readyz(r: Replica): Promise<{ status: number; body: { status: string; problems: string[]; degraded?: string[] } }> {
  const res = await fetch(`${r.p.url}/readyz`);
  return { status: res.status, body: (await res.json()) as { status: string; problems: string[]; degraded?: string[] } };
}

const epochOf = (r: Replica): string => /;epoch=([^;]*)$/.exec(r.p.proxy.app.gate.basis())?.[1] ?? 'none';

function pushReport(r: Replica, fixture: string, repo: string, digest: string): Promise<Response> {
  return fetch(`${r.p.url}/api/v1/reports/${reg.host}/${repo}@${digest}`, {
    method: 'PUT',
    headers: { authorization: `Bearer ${REPORT_TOKEN}`, 'content-type': 'application/json' },
    body: fixture
      .replaceAll(`registry.example/demo/app@${ZERO}`, `${reg.host}/${repo}@${digest}`)
      .replace(/"CreatedAt": "[^"]+"/, `"CreatedAt": "${new Date().toISOString()}"`),
  });
}

describe('decisions and tags shared across replicas', () => {
  let a: Replica;
  let b: Replica;
  let img: PushedImage;
  beforeAll(async () => {
    img = await pushImage(reg.url, 'team/shared', 'v1', { layers: 2 });
    [a, b] = await Promise.all([replica({ prefix: 'share:' }), replica({ prefix: 'share:' })]);
  });
  afterAll(async () => Promise.all([a?.p.stop(), b?.p.stop()]));

  it('a decision made by one replica is reused by another, which does not evaluate again nor HEAD the tag upstream', async () => {
    expect(await pull(a, 'team/shared', 'v1', img)).toEqual([200, 200, 200, 200]);
    expect(a.c.decisions).toBe(1);
    await reg.settleLog();
    reg.clearLog();
    expect(await pull(b, 'team/shared', 'v1', img)).toEqual([200, 200, 200, 200]);
    expect(b.c.decisions).toBe(0);
    expect(b.c.hits).toBeGreaterThanOrEqual(1);
    await reg.settleLog();
    // B read the manifest by digest (its own store had none), but never asked the upstream what the tag points to.
    expect(reg.requests().filter((q) => q.path.endsWith('/manifests/v1'))).toEqual([]);
  });

  it('blobs on a replica that never served the manifest: found through the shared closure hints; the warm path then asks Redis nothing', async () => {
    const img3 = await pushImage(reg.url, 'team/shared', 'v3', { layers: 2 });
    expect((await manifest(a, 'team/shared', 'v3')).status).toBe(200);
    // B never served the manifest: its blob GETs find the root in Redis, decide it (reusing A's decision), and serve.
    for (const blob of [img3.config, ...img3.layers]) expect((await fetch(`${b.p.url}/v2/${reg.host}/team/shared/blobs/${blob.digest}`)).status).toBe(200);
    const c = redis.client();
    const lookups = async (): Promise<number> => Number(/cmdstat_zrevrangebyscore:calls=(\d+)/.exec(await c.info('commandstats'))?.[1] ?? 0);
    try {
      const before = await lookups();
      // Warm, on both replicas: the root by digest (containerd's GET after its tag HEAD) and every blob.
      for (const r of [a, b]) {
        expect((await manifest(r, 'team/shared', img3.digest)).status).toBe(200);
        for (const blob of [img3.config, ...img3.layers]) expect((await fetch(`${r.p.url}/v2/${reg.host}/team/shared/blobs/${blob.digest}`)).status).toBe(200);
      }
      expect(await lookups()).toBe(before);
    } finally {
      c.disconnect();
    }
  });

  it('the keys carry the layout version under the configured prefix', async () => {
    const c = redis.client();
    try {
      const keys = (await c.keys('share:*')).map((k) => k.replace(/[0-9a-f]{64}$/, '<sha256>')).sort();
      expect([...new Set(keys)]).toEqual(['share:v1:decision:<sha256>', 'share:v1:epoch', 'share:v1:links:<sha256>', 'share:v1:tag:<sha256>']);
    } finally {
      c.disconnect();
    }
  });

  it('a malformed or forged-shape entry in Redis is a miss, never an admission', async () => {
    const img2 = await pushImage(reg.url, 'team/shared', 'v2');
    const c = redis.client();
    try {
      // Overwrite every shared decision with one whose shape is wrong (serve: true on a deny).
      for (const k of await c.keys('share:v1:decision:*')) {
        await c.set(k, JSON.stringify({ v: 1, expiresAt: Date.now() + 600_000, admission: { serve: true, outcome: 'deny' } }), 'PX', 600_000);
      }
    } finally {
      c.disconnect();
    }
    const before = b.c.decisions;
    expect((await manifest(b, 'team/shared', 'v2')).status).toBe(200);
    expect(b.c.decisions).toBe(before + 1);
    expect(img2.digest).toMatch(/^sha256:/);
  });
});

describe('the invalidation epoch', () => {
  let a: Replica;
  let b: Replica;
  let img: PushedImage;
  const repo = 'team/scanned';
  beforeAll(async () => {
    img = await pushImage(reg.url, repo, 'v1');
    [a, b] = await Promise.all([replica({ prefix: 'epoch:', scan: true }), replica({ prefix: 'epoch:', scan: true })]);
    // Each replica keeps its own reports (storage.blobs: filesystem): both get the clean one.
    for (const r of [a, b]) expect((await pushReport(r, clean, repo, img.digest)).status).toBe(201);
  });
  afterAll(async () => Promise.all([a?.p.stop(), b?.p.stop()]));

  it('a CRITICAL report pushed to one replica: the other hears the bump and decides again; no allow made without the report is reused', async () => {
    expect(await pull(a, repo, 'v1', img)).toEqual([200, 200, 200]);
    expect(await pull(b, repo, 'v1', img)).toEqual([200, 200, 200]);
    const epoch = Number(epochOf(a));
    await until(() => epochOf(b) === String(epoch), 'replica B on the same epoch');
    const bDecisions = b.c.decisions;
    expect((await pushReport(a, critical, repo, img.digest)).status).toBe(201);
    await until(() => epochOf(a) === String(epoch + 1) && epochOf(b) === String(epoch + 1), 'both replicas on the bumped epoch');
    // B decides first under the new epoch, on its own evidence: its store has only the clean report (reports are
    // per replica without storage.blobs: s3), so it still allows ...
    expect(await pull(b, repo, 'v1', img)).toEqual([200, 200, 200]);
    expect(b.c.decisions).toBe(bDecisions + 1);
    // ... and A, which holds the CRITICAL report, never reuses that allow.
    const denied = await manifest(a, repo, 'v1');
    expect(denied.status).toBe(403);
    expect(denied.headers.get('portcullis-reason')).toMatch(/CRITICAL|critical/);
    expect((await fetch(`${a.p.url}/v2/${reg.host}/${repo}/blobs/${img.layers[0]!.digest}`)).status).toBe(403);
  });
});

describe('a replica cut off from Redis', () => {
  let a: Replica;
  let b: Replica;
  let link: TcpCut;
  let img: PushedImage;
  const repo = 'team/cutoff';
  beforeAll(async () => {
    img = await pushImage(reg.url, repo, 'v1');
    link = await startTcpCut(redis.port);
    [a, b] = await Promise.all([replica({ prefix: 'cut:' }), replica({ prefix: 'cut:', port: link.port })]);
  });
  afterAll(async () => {
    await Promise.all([a?.p.stop(), b?.p.stop()]);
    await link?.stop();
  });

  it('serves from its cached decisions within maxStaleness, then decides again; /readyz stays 200 and says degraded', async () => {
    expect(await pull(b, repo, 'v1', img)).toEqual([200, 200, 200]);
    expect((await readyz(b)).body.status).toBe('ready');
    const decided = b.c.decisions;
    link.cut();
    await until(async () => (await readyz(b)).body.status === 'degraded', 'B degraded');
    const r = await readyz(b);
    expect(r.status).toBe(200);
    expect(r.body.degraded?.[0]).toMatch(/^redis: degraded/);
    // Another replica invalidates meanwhile: B cannot hear it.
    a.p.proxy.app.gate.forgetDigest(img.digest as `sha256:${string}`);
    await until(() => a.p.proxy.app.gate.basis() !== b.p.proxy.app.gate.basis(), 'A bumped');
    // Within the bound: B still serves on what it decided (the documented window) ...
    b.clock.t += 1_000;
    expect(await pull(b, repo, 'v1', img)).toEqual([200, 200, 200]);
    expect(b.c.decisions).toBe(decided);
    // ... past it, B no longer trusts its cache: the next request is decided again, and once more per maxStaleness.
    b.clock.t += 1_500;
    expect(await pull(b, repo, 'v1', img)).toEqual([200, 200, 200]);
    expect(b.c.decisions).toBe(decided + 1);
    expect(await pull(b, repo, 'v1', img)).toEqual([200, 200, 200]);
    expect(b.c.decisions).toBe(decided + 1);
    b.clock.t += 2_001;
    expect(await pull(b, repo, 'v1', img)).toEqual([200, 200, 200]);
    expect(b.c.decisions).toBe(decided + 2);
    // Back on Redis: B adopts A's epoch and is ready again.
    link.restore();
    await until(async () => (await readyz(b)).body.status === 'ready' && a.p.proxy.app.gate.basis() === b.p.proxy.app.gate.basis(), 'B back', 20_000);
  });
});

describe('Redis flushed', () => {
  let rs: Replica[];
  let upstream: TcpCut;
  const repo = 'team/herd';
  let img: PushedImage;
  beforeAll(async () => {
    img = await pushImage(reg.url, repo, 'v1', { layers: 3, layerSizeMiB: 1 });
    upstream = await startTcpCut(Number(new URL(reg.url).port));
    rs = await Promise.all([0, 1, 2].map(() => replica({ prefix: 'flush:', upstreamUrl: `http://127.0.0.1:${upstream.port}` })));
  });
  afterAll(async () => {
    await Promise.all(rs.map((r) => r.p.stop()));
    await upstream?.stop();
  });

  it('during a herd over three replicas: 0 failed pulls, and the epoch is written back', async () => {
    const c = redis.client();
    try {
      await c.set('flush:v1:epoch', '7');
    } finally {
      c.disconnect();
    }
    await until(() => rs.every((r) => epochOf(r) === '7'), 'every replica on epoch 7');
    // Twelve clients round-robin over the replicas, the flush issued while they are in flight.
    const herd = Array.from({ length: 12 }, (_, i) => pull(rs[i % 3]!, repo, 'v1', img));
    await redis.flush();
    const results = await Promise.all(herd);
    expect(results.flat().filter((s) => s !== 200)).toEqual([]);
    // The replicas put the epoch back (never lower than what they have seen) rather than starting again at 0.
    await until(async () => {
      const k = redis.client();
      try {
        return (await k.get('flush:v1:epoch')) === '7';
      } finally {
        k.disconnect();
      }
    }, 'the epoch written back');
    expect(rs.map(epochOf)).toEqual(['7', '7', '7']);
  });

  it('while the upstream is down: every replica still serves the cached, admitted image', async () => {
    upstream.cut();
    await redis.flush();
    // Past the tag TTL too: the tag check fails upstream and the cached mapping is served within staleIfError.
    for (const r of rs) r.clock.t += 120_000;
    const decided = rs.map((r) => r.c.decisions);
    for (const r of rs) expect(await pull(r, repo, 'v1', img)).toEqual([200, 200, 200, 200, 200]);
    // A flush is no invalidation: nobody decided again (which would need the upstream for evidence).
    expect(rs.map((r) => r.c.decisions)).toEqual(decided);
    upstream.restore();
  });
});

describe('Redis down or stalled', () => {
  let a: Replica;
  let b: Replica;
  const repo = 'team/outage';
  let warm: PushedImage;
  let cold: PushedImage;
  let stalled: PushedImage;
  beforeAll(async () => {
    [warm, cold, stalled] = await Promise.all([pushImage(reg.url, repo, 'warm'), pushImage(reg.url, repo, 'cold'), pushImage(reg.url, repo, 'stalled')]);
    [a, b] = await Promise.all([replica({ prefix: 'down:' }), replica({ prefix: 'down:' })]);
    expect(await pull(a, repo, 'warm', warm)).toEqual([200, 200, 200]);
  });
  afterAll(async () => Promise.all([a?.p.stop(), b?.p.stop()]));

  it('killed: warm and cold pulls go on, decided locally; /readyz 200 degraded; back when Redis is', async () => {
    await redis.kill();
    await until(async () => (await readyz(a)).body.status === 'degraded' && (await readyz(b)).body.status === 'degraded', 'both degraded');
    const r = await readyz(b);
    expect(r.status).toBe(200);
    expect(r.body.problems).toEqual([]);
    expect(r.body.degraded?.[0]).toMatch(/^redis: degraded/);
    expect(await pull(a, repo, 'warm', warm)).toEqual([200, 200, 200]);
    // Nothing admitted without a decision: B has none for the cold image and cannot ask Redis, so it decides itself.
    const before = b.c.decisions;
    expect(await pull(b, repo, 'cold', cold)).toEqual([200, 200, 200]);
    expect(b.c.decisions).toBe(before + 1);
    await redis.restart();
    await until(async () => (await readyz(a)).body.status === 'ready' && (await readyz(b)).body.status === 'ready', 'both ready', 20_000);
  });

  it('stalled (SIGSTOP): a cold pull completes, bounded by the command timeout; /readyz says degraded', async () => {
    redis.pause();
    try {
      expect(await pull(b, repo, 'stalled', stalled)).toEqual([200, 200, 200]);
      await until(async () => (await readyz(b)).body.status === 'degraded', 'B degraded');
    } finally {
      redis.resume();
    }
    await until(async () => (await readyz(b)).body.status === 'ready', 'B ready', 20_000);
  });
});

describe('through Sentinel', () => {
  it('a replica finds the master through a real Sentinel, shares its decision and is ready', async () => {
    const sentinel = await startSentinel(redis);
    const img = await pushImage(reg.url, 'team/sentinel', 'v1');
    const c = counter();
    const p = await startProxy({
      upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
      observers: [c.observer],
      extra: {
        storage: {
          meta: 'redis',
          redis: {
            sentinels: [{ host: '127.0.0.1', port: sentinel.port }],
            name: sentinel.name,
            allowInsecure: true,
            signingKey: { env: 'PC_REDIS_META_SIGNING_KEY' },
            keyPrefix: 'sentinel:',
          },
        },
      },
    });
    try {
      const r: Replica = { p, c, clock: { t: 0 } };
      expect(await pull(r, 'team/sentinel', 'v1', img)).toEqual([200, 200, 200]);
      expect((await readyz(r)).body.status).toBe('ready');
      const k = redis.client();
      try {
        await until(async () => (await k.keys('sentinel:v1:decision:*')).length > 0, 'the decision in the master');
        expect(await k.get('sentinel:v1:epoch')).toBe('0');
      } finally {
        k.disconnect();
      }
    } finally {
      await p.stop();
      await sentinel.stop();
    }
  });
});

describe('an allow forged in Redis', () => {
  const SIGNED_ONLY = { scopes: [{ name: 'signed-only', images: ['**'], signatures: { authorities: ['release-team'] } }] };
  beforeAll(async () => {
    await pushImage(reg.url, 'team/forged', 'v1');
  });

  /** A decides (deny: nothing is signed); then whoever can write to Redis turns that entry into an allow. */
  async function forge(prefix: string, redisOpts: Record<string, unknown>): Promise<{ a: Replica; b: Replica }> {
    const [a, b] = await Promise.all([
      replica({ prefix, settings: SIGNED_ONLY, redis: redisOpts }),
      replica({ prefix, settings: SIGNED_ONLY, redis: redisOpts }),
    ]);
    expect((await manifest(a, 'team/forged', 'v1')).status).toBe(403);
    const c = redis.client();
    try {
      const keys = await c.keys(`${prefix}v1:decision:*`);
      expect(keys.length).toBe(1);
      const entry = JSON.parse((await c.get(keys[0]!))!) as { admission: Record<string, unknown> };
      Object.assign(entry.admission, { serve: true, outcome: 'allow', message: '', violations: [] });
      await c.set(keys[0]!, JSON.stringify(entry), 'PX', 600_000);
    } finally {
      c.disconnect();
    }
    return { a, b };
  }

  it('with allowUnsigned (no signingKey), Redis is trusted: the forged allow is served (why the key is required)', async () => {
    const { a, b } = await forge('forge1:', { signingKey: undefined, allowUnsigned: true });
    try {
      expect((await manifest(b, 'team/forged', 'v1')).status).toBe(200);
    } finally {
      await Promise.all([a.p.stop(), b.p.stop()]);
    }
  });

  it('with storage.redis.signingKey, the forged entry is a miss: the replica decides itself and denies', async () => {
    const { a, b } = await forge('forge2:', { signingKey: { env: 'PC_REDIS_META_SIGNING_KEY' } });
    try {
      const before = b.c.decisions;
      expect((await manifest(b, 'team/forged', 'v1')).status).toBe(403);
      expect(b.c.decisions).toBe(before + 1);
      // And a genuine, signed entry is still shared: a second image decided on A is reused by B.
      const other = await pushImage(reg.url, 'team/forged', 'v2');
      expect((await manifest(a, 'team/forged', 'v2')).status).toBe(403);
      const n = b.c.decisions;
      expect((await manifest(b, 'team/forged', 'v2')).status).toBe(403);
      expect(b.c.decisions).toBe(n);
      expect(other.digest).toMatch(/^sha256:/);
    } finally {
      await Promise.all([a.p.stop(), b.p.stop()]);
    }
  });
});
