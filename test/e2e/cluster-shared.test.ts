/**
 * e2e: replicas share what an admitted image is (issue 13). Three Portcullis processes on one SeaweedFS bucket and
 * one real redis-server, in front of the real Distribution registry, behind Debian's haproxy balancing round-robin
 * request by request (no affinity): a pull's manifest and blobs land on different replicas.
 *
 * - skopeo copies of an admitted three-layer image through haproxy succeed with the right bytes; a denied image is
 *   403 with its reason; a blob of a denied image asked for by digest is refused by every replica.
 * - Redis FLUSHALL and the upstream stopped: a replica started afterwards with an empty data dir serves the cached
 *   admitted image (by tag, right bytes) from the bucket, and still refuses the denied one.
 * - Forged closure hints in Redis (a wrong signature; a valid one naming an admitted root that does not list the
 *   blob) never admit anything.
 */
import { ListObjectsV2Command } from '@aws-sdk/client-s3';
import { createHash, createHmac } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startCluster, type Replica, type RunningCluster } from '../harness/cluster.js';
import { expectOk, skopeoCopy } from '../harness/clients.js';
import { startHaproxy, type RunningHaproxy } from '../harness/haproxy.js';
import { MANIFEST_ACCEPT, pushImage, type PushedImage } from '../harness/images.js';
import { startRedis, type RunningRedis } from '../harness/redis.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';
import { startSeaweed, type RunningSeaweed } from '../harness/seaweedfs.js';
import { until } from '../harness/wait.js';

const BUCKET = 'portcullis-shared';
const ALIAS = 'upstream.shared';
const KEY = 'cluster-shared-signing-key-0123456789abcdef';
const PREFIX = 'pc:';
/** team/app is admitted except its `latest` tag; team/other matches no scope. */
const SETTINGS = { no_match: 'deny', scopes: [{ name: 'app', images: ['*/team/app'], deny_tags: ['latest'] }] };

let weed: RunningSeaweed;
let reg: RunningRegistry;
let redis: RunningRedis;
let cluster: RunningCluster;
let lb: RunningHaproxy;
let tmp: string;
let app: PushedImage;
let latest: PushedImage;
let other: PushedImage;

beforeAll(async () => {
  tmp = await mkdtemp('/tmp/pcshared-');
  [weed, reg, redis] = await Promise.all([startSeaweed(), startRegistry(), startRedis()]);
  await weed.createBucket(BUCKET);
  app = await pushImage(reg.url, 'team/app', 'v1', { layers: 3, layerSizeMiB: 0.2 });
  latest = await pushImage(reg.url, 'team/app', 'latest', { layers: 1, layerSizeMiB: 0.05 });
  other = await pushImage(reg.url, 'team/other', 'v1', { layers: 1, layerSizeMiB: 0.05 });
  cluster = await startCluster({
    replicas: 3,
    dir: path.join(tmp, 'cluster'),
    upstream: { name: 'local', registry: reg.host, url: reg.url, aliases: [ALIAS] },
    weed,
    bucket: BUCKET,
    prefix: 'shared/',
    settings: SETTINGS,
    redis: { url: redis.url, signingKey: KEY, keyPrefix: PREFIX },
  });
  lb = await startHaproxy(cluster.replicas.map((r) => r.host));
}, 180_000);

afterAll(async () => {
  await lb?.stop();
  await cluster?.stop();
  await Promise.all([reg?.stop(), redis?.stop(), weed?.stop()]);
  if (tmp) await rm(tmp, { recursive: true, force: true });
}, 60_000);

const blobUrl = (base: string, repo: string, digest: string): string => `${base}/v2/${ALIAS}/${repo}/blobs/${digest}`;

/** A skopeo copy to a fresh dir; every blob of `img` is there with its digest. */
async function copyAndCheck(host: string, ref: string, img: PushedImage, what: string): Promise<void> {
  const dest = await mkdtemp(path.join(tmp, 'copy-'));
  expectOk(await skopeoCopy(`docker://${host}/${ALIAS}/${ref}`, dest, { timeoutMs: 120_000 }), what);
  for (const d of [img.config.digest, ...img.layers.map((l) => l.digest)]) {
    const bytes = await readFile(path.join(dest, d.slice('sha256:'.length)));
    expect(`sha256:${createHash('sha256').update(bytes).digest('hex')}`).toBe(d);
  }
}

async function status(url: string, accept = false): Promise<{ status: number; reason: string | null; body: string }> {
  const res = await fetch(url, accept ? { headers: { accept: MANIFEST_ACCEPT } } : {});
  return { status: res.status, reason: res.headers.get('portcullis-reason'), body: await res.text() };
}

describe('three replicas behind haproxy (round-robin, no affinity)', () => {
  it('skopeo copies of an admitted multi-layer image succeed; a denied image is 403 with its reason; its blobs are refused by every replica', async () => {
    // Three copies: with three replicas in rotation, each request of each copy may land anywhere.
    for (let i = 0; i < 3; i++) await copyAndCheck(lb.host, 'team/app:v1', app, `copy ${i} through haproxy`);
    // The blobs one by one through haproxy: consecutive requests go to consecutive replicas.
    for (const d of [app.config.digest, ...app.layers.map((l) => l.digest)]) {
      for (let i = 0; i < 3; i++) expect((await status(blobUrl(lb.url, 'team/app', d))).status).toBe(200);
    }

    const denied = await status(`${lb.url}/v2/${ALIAS}/team/app/manifests/latest`, true);
    expect(denied.status).toBe(403);
    expect(denied.reason).toMatch(/latest/);
    expect((await status(`${lb.url}/v2/${ALIAS}/team/other/manifests/v1`, true)).status).toBe(403);
    const dest = await mkdtemp(path.join(tmp, 'copy-denied-'));
    expect((await skopeoCopy(`docker://${lb.host}/${ALIAS}/team/app:latest`, dest, { timeoutMs: 60_000 })).code).not.toBe(0);
    for (const r of cluster.replicas) {
      for (const [repo, img] of [
        ['team/app', latest],
        ['team/other', other],
      ] as const) {
        const got = await status(blobUrl(r.url, repo, img.layers[0]!.digest));
        expect(got.status, `${r.url} ${repo}`).toBe(403);
        expect(got.body).toContain('not_in_admitted_closure');
      }
    }
  }, 240_000);
});

describe('forged closure hints in Redis', () => {
  /** The sorted set of hints for a member (shared.ts key layout). */
  const hintKey = (repo: string, member: string): string => `${PREFIX}v1:links:${createHash('sha256').update(`local\n${repo}\n${member}`).digest('hex')}`;
  const signed = (key: string, payload: Record<string, unknown>, secret = KEY): string => {
    const text = JSON.stringify(payload);
    return JSON.stringify({ ...payload, mac: createHmac('sha256', secret).update(`${key}\n${text}`).digest('hex') });
  };

  it('a hint with a wrong signature, or a signed one naming an admitted root that does not list the blob, admits nothing', async () => {
    const c = redis.client();
    try {
      const blob = latest.layers[0]!.digest;
      const k = hintKey('team/app', blob);
      const until = Date.now() + 3_600_000;
      // Signed with another key: claims the `latest` image was admitted for tag v1 (which the policy allows).
      await c.zadd(
        k,
        until,
        signed(k, { v: 1, role: 'layer', root: latest.digest, voucher: latest.digest, tag: 'v1' }, 'not-the-cluster-key-0123456789abcdef'),
      );
      // Properly signed, but the admitted root does not list this blob: the manifest, not the hint, says what it lists.
      await c.zadd(k, until, signed(k, { v: 1, role: 'layer', root: app.digest, voucher: app.digest, tag: 'v1' }));
      for (const r of cluster.replicas) {
        const got = await status(blobUrl(r.url, 'team/app', blob));
        expect(got.status, r.url).toBe(403);
        expect(got.body).toContain('not_in_admitted_closure');
      }
      // A signed hint naming the denied root itself: decided again here, and denied with its reason.
      await c.zadd(k, until + 1, signed(k, { v: 1, role: 'layer', root: latest.digest, voucher: latest.digest, tag: 'latest' }));
      for (const r of cluster.replicas) {
        const got = await status(blobUrl(r.url, 'team/app', blob));
        expect(got.status, r.url).toBe(403);
        expect(got.reason).toMatch(/latest/);
      }
    } finally {
      c.disconnect();
    }
  }, 60_000);
});

describe('Redis flushed and the upstream stopped', () => {
  let fresh: Replica;
  it('a replica started afterwards with an empty data dir serves the cached admitted image from the bucket, and still refuses the denied one', async () => {
    // The bucket is written behind the responses: wait until the tag mapping and the admitted manifests landed.
    const s3 = weed.client();
    const count = async (prefix: string): Promise<number> =>
      (await s3.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: `shared/meta/v1/${prefix}` }))).KeyCount ?? 0;
    await until(async () => (await count('tags/')) >= 1 && (await count('manifests/')) >= 1, 'durable tag and manifest', 30_000);
    s3.destroy();
    await redis.flush();
    await reg.stop();
    fresh = await cluster.addReplica();
    await copyAndCheck(fresh.host, 'team/app:v1', app, 'copy from the fresh replica').catch((e: unknown) => {
      throw new Error(`${String(e)}\nfresh replica's log:\n${fresh.output().slice(-4000)}`);
    });
    await copyAndCheck(fresh.host, `team/app@${app.digest}`, app, 'copy by digest from the fresh replica');
    // Never admitted, so never kept in the bucket: with the upstream down there is nothing to decide it on.
    const denied = await status(`${fresh.url}/v2/${ALIAS}/team/app/manifests/latest`, true);
    expect(denied.status).toBe(503);
    expect((await skopeoCopy(`docker://${fresh.host}/${ALIAS}/team/app:latest`, await mkdtemp(path.join(tmp, 'copy-')), { timeoutMs: 60_000 })).code).not.toBe(
      0,
    );
    expect((await status(blobUrl(fresh.url, 'team/other', other.layers[0]!.digest))).status).toBe(403);
  }, 180_000);
});
