/**
 * A rolling upgrade (issue 13, day 2): a replica of the previous release (PREVIOUS_COMMIT, built by
 * test/harness/old-build.ts and cached) and one of this build run side by side as one cluster on the same real
 * redis-server and the same SeaweedFS bucket, in front of a real Distribution registry. Pulls through both succeed,
 * the tag mapping and the decision one made are used by the other (shared Redis entries, no second upstream tag
 * lookup), a CRITICAL report pushed to either is honoured by the other, and once the old replica is stopped the new
 * one serves alone, a cold image included.
 */
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startCluster, type Replica, type RunningCluster } from '../harness/cluster.js';
import { MANIFEST_ACCEPT, pushImage, sha256, type PushedImage } from '../harness/images.js';
import { previousBuild } from '../harness/old-build.js';
import { startRedis, type RunningRedis } from '../harness/redis.js';
import { startRegistry, type RegistryRequest, type RunningRegistry } from '../harness/registry.js';
import { startSeaweed, type RunningSeaweed } from '../harness/seaweedfs.js';
import { until } from '../harness/wait.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const BUCKET = 'portcullis-upgrade';
const REPORT_TOKEN = 'upgrade-report-token-0c41';
const ZERO = `sha256:${'0'.repeat(64)}`;
const critical = readFileSync(path.join(ROOT, 'test/fixtures/scan/trivy-critical.json'), 'utf8');
const clean = readFileSync(path.join(ROOT, 'test/fixtures/scan/trivy-clean.json'), 'utf8');

let tmp: string;
let weed: RunningSeaweed;
let redis: RunningRedis;
let reg: RunningRegistry;
let cluster: RunningCluster;
let oldR: Replica;
let newR: Replica;
let oldBuild: { cli: string; builtNow: boolean; ms: number };
let imgA: PushedImage;

beforeAll(async () => {
  const t0 = Date.now();
  const b = previousBuild();
  oldBuild = { cli: b.cli, builtNow: b.builtNow, ms: Date.now() - t0 };
  tmp = await mkdtemp('/tmp/pc-upgrade-');
  weed = await startSeaweed();
  await weed.createBucket(BUCKET);
  [redis, reg] = await Promise.all([startRedis(), startRegistry()]);
  process.env.PC_UPGRADE_REPORT_TOKEN = REPORT_TOKEN;
  process.env.PC_UPGRADE_SIGNING_KEY = 'upgrade-signing-key-5b7e0123456789abcdef';
  cluster = await startCluster({
    replicas: 2,
    clis: [oldBuild.cli, path.join(ROOT, 'dist', 'cli.js')],
    dir: path.join(tmp, 'cluster'),
    upstream: { name: 'local', registry: reg.host, url: reg.url },
    weed,
    bucket: BUCKET,
    prefix: 'upgrade/',
    cluster: { failuresToDown: 2 },
    extra: {
      policy: {
        bundleFile: path.join(ROOT, 'policies', 'bundle.tar.gz'),
        settings: { no_match: 'deny', scopes: [{ name: 'all', images: ['**'], scan: { on_missing: 'allow' } }] },
      },
      scan: { order: ['reports'], reports: { token: { env: 'PC_UPGRADE_REPORT_TOKEN' }, maxSize: '64KiB' } },
      storage: {
        meta: 'redis',
        redis: { url: redis.url, allowInsecure: true, signingKey: { env: 'PC_UPGRADE_SIGNING_KEY' }, pollInterval: '500ms', maxStaleness: '5s' },
      },
    },
  });
  [oldR, newR] = cluster.replicas as [Replica, Replica];
}, 900_000);

afterAll(async () => {
  await cluster?.stop();
  await Promise.all([reg?.stop(), redis?.stop(), weed?.stop()]);
  if (tmp) await rm(tmp, { recursive: true, force: true });
}, 60_000);

/** Pulls by tag: the manifest's status, then each blob's status and the digest of the bytes it got. */
async function pull(r: Replica, repo: string, img: PushedImage): Promise<Array<number | string>> {
  const m = await fetch(`${r.url}/v2/${reg.host}/${repo}/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT } });
  await m.arrayBuffer();
  const out: Array<number | string> = [m.status];
  if (m.status !== 200) return out;
  for (const b of [img.config, ...img.layers]) {
    const res = await fetch(`${r.url}/v2/${reg.host}/${repo}/blobs/${b.digest}`);
    out.push(res.status === 200 ? sha256(new Uint8Array(await res.arrayBuffer())) : res.status);
  }
  return out;
}

const pulled = (img: PushedImage): Array<number | string> => [200, img.config.digest, ...img.layers.map((l) => l.digest)];

function pushReport(r: Replica, repo: string, digest: string, report = critical): Promise<Response> {
  return fetch(`${r.url}/api/v1/reports/${reg.host}/${repo}@${digest}`, {
    method: 'PUT',
    headers: { authorization: `Bearer ${REPORT_TOKEN}`, 'content-type': 'application/json' },
    body: report
      .replaceAll(`registry.example/demo/app@${ZERO}`, `${reg.host}/${repo}@${digest}`)
      .replace(/"CreatedAt": "[^"]+"/, `"CreatedAt": "${new Date().toISOString()}"`),
  });
}

async function redisKeys(pattern: string): Promise<string[]> {
  const c = redis.client();
  try {
    return (await c.keys(pattern)).sort();
  } finally {
    c.disconnect();
  }
}

const tagLookups = (repo: string) => (r: RegistryRequest) => r.path === `/v2/${repo}/manifests/v1`;

describe('a rolling upgrade: the previous release and this one on one Redis and one bucket', () => {
  it('pulls through both succeed, with the tag and the decision of one used by the other', async () => {
    console.log(`previous build ${oldBuild.builtNow ? 'built' : 'cached'} in ${oldBuild.ms} ms`);
    const img = (imgA = await pushImage(reg.url, 'upgrade/a', 'v1', { layers: 2 }));
    // A clean report: a decision awaiting a report is not shared (it must see one as soon as it lands); this one is.
    expect((await pushReport(oldR, 'upgrade/a', img.digest, clean)).status).toBe(201);
    expect(await pull(oldR, 'upgrade/a', img)).toEqual(pulled(img));
    await reg.settleLog();
    const lookups = reg.requests().filter(tagLookups('upgrade/a')).length;
    // Shared entries are written without waiting for Redis' answer.
    await until(async () => (await redisKeys('portcullis:v1:tag:*')).length === 1, 'the tag in Redis', 10_000);
    const decisions = await redisKeys('portcullis:v1:decision:*');
    expect(decisions.length).toBeGreaterThan(0);
    expect(await pull(newR, 'upgrade/a', img)).toEqual(pulled(img));
    await reg.settleLog();
    // The new replica took the old one's tag mapping and decision from Redis: no tag lookup upstream, no new entry.
    expect(reg.requests().filter(tagLookups('upgrade/a'))).toHaveLength(lookups);
    expect(await redisKeys('portcullis:v1:decision:*')).toEqual(decisions);
    // One upstream GET per blob across both versions (the bucket and the owner are shared).
    for (const b of [img.config, ...img.layers])
      expect(reg.requests().filter((r) => r.method === 'GET' && r.path.endsWith(`/blobs/${b.digest}`))).toHaveLength(1);
  });

  it.each([
    ['the new release', 'the old one', 'upgrade/b', () => newR, () => oldR],
    ['the old release', 'the new one', 'upgrade/c', () => oldR, () => newR],
  ])('a CRITICAL report pushed to %s is honoured by %s', async (_a, _b, repo, to, other) => {
    const img = await pushImage(reg.url, repo, 'v1');
    expect(await pull(other(), repo, img)).toEqual(pulled(img));
    expect((await pushReport(to(), repo, img.digest)).status).toBe(201);
    await until(async () => (await pull(other(), repo, img))[0] === 403, `${repo} denied by the other replica`, 30_000);
    const denied = await fetch(`${other().url}/v2/${reg.host}/${repo}/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT } });
    expect(denied.headers.get('portcullis-reason')).toMatch(/CRITICAL|critical/);
    expect((await fetch(`${other().url}/v2/${reg.host}/${repo}/blobs/${img.layers[0]!.digest}`)).status).toBe(403);
  });

  it('with the old replica stopped, the new one serves alone: warm images, and a cold one', async () => {
    oldR.kill('SIGTERM');
    await oldR.exited;
    expect(await pull(newR, 'upgrade/a', imgA)).toEqual(pulled(imgA));
    const cold = await pushImage(reg.url, 'upgrade/d', 'v1', { layers: 3 });
    expect(await pull(newR, 'upgrade/d', cold)).toEqual(pulled(cold));
  });
});
