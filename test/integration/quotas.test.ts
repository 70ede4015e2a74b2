/**
 * Quotas on upstream-costly work (src/auth/quota.ts) against a real Distribution upstream, with an injected clock:
 * cold blobs per identity, cold manifests per address; warm (cached) pulls are never limited; a refusal is
 * `429 TOOMANYREQUESTS` with Retry-After, counted by identity class.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { expectOk, runTool } from '../harness/clients.js';
import { MANIFEST_ACCEPT, pushImage, type PushedImage } from '../harness/images.js';
import { startProxy, type RunningProxy } from '../harness/proxy.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';

let reg: RunningRegistry;
let tmp: string;
let htpasswd: string;
let img: PushedImage;
let other: PushedImage;
let third: PushedImage;
let fourth: PushedImage;
const basic = (u: string, p: string): string => `Basic ${Buffer.from(`${u}:${p}`).toString('base64')}`;
const ALICE = basic('alice', 'alice-pw');
const BOB = basic('bob', 'bob-pw');

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'pc-quotas-'));
  htpasswd = join(tmp, 'htpasswd');
  expectOk(await runTool('htpasswd', ['-Bbc', htpasswd, 'alice', 'alice-pw']), 'htpasswd');
  expectOk(await runTool('htpasswd', ['-Bb', htpasswd, 'bob', 'bob-pw']), 'htpasswd');
  reg = await startRegistry();
  img = await pushImage(reg.url, 'demo/app', 'v1', { layers: 3 });
  other = await pushImage(reg.url, 'demo/other', 'v1');
  third = await pushImage(reg.url, 'demo/third', 'v1');
  fourth = await pushImage(reg.url, 'demo/fourth', 'v1');
}, 60_000);

afterAll(async () => {
  await reg?.stop();
  await rm(tmp, { recursive: true, force: true });
});

describe('quotas', () => {
  let px: RunningProxy;
  let t = Date.UTC(2026, 11, 1, 12);
  beforeAll(async () => {
    px = await startProxy({
      upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
      defaultUpstream: 'local',
      now: () => t,
      extra: {
        auth: { anonymous: false, htpasswd: { file: htpasswd } },
        quotas: { perIdentity: { coldBlobs: { burst: 2, perMinute: 6 } }, perAddress: { coldManifests: { burst: 3, perMinute: 6 } } },
      },
    });
  });
  afterAll(async () => px?.stop());

  const get = (path: string, auth: string): Promise<Response> => fetch(`${px.url}${path}`, { headers: { accept: MANIFEST_ACCEPT, authorization: auth } });

  test('cold blobs per identity: the third cold blob is a 429 with Retry-After; warm blobs and other identities are not limited', async () => {
    expect((await get('/v2/demo/app/manifests/v1', ALICE)).status).toBe(200);
    const [l0, l1, l2] = img.layers.map((l) => l.digest);
    expect((await get(`/v2/demo/app/blobs/${l0}`, ALICE)).status).toBe(200);
    expect((await get(`/v2/demo/app/blobs/${l1}`, ALICE)).status).toBe(200);
    const refused = await get(`/v2/demo/app/blobs/${l2}`, ALICE);
    expect(refused.status).toBe(429);
    expect(refused.headers.get('retry-after')).toBe('10');
    const body = (await refused.json()) as { errors: Array<{ code: string; message: string }> };
    expect(body.errors[0]!.code).toBe('TOOMANYREQUESTS');
    expect(body.errors[0]!.message).toContain('quota for coldBlobs per identity exceeded');
    // Warm: as often as wanted.
    for (let i = 0; i < 5; i++) expect((await get(`/v2/demo/app/blobs/${l0}`, ALICE)).status).toBe(200);
    // Bob has his own bucket.
    expect((await get('/v2/demo/app/manifests/v1', BOB)).status).toBe(200);
    expect((await get(`/v2/demo/app/blobs/${l2}`, BOB)).status).toBe(200);
    // Ten seconds later alice has one token again.
    t += 10_000;
    expect((await get(`/v2/demo/app/blobs/${img.config.digest}`, ALICE)).status).toBe(200);
    const metrics = await (await fetch(`${px.url}/metrics`)).text();
    expect(metrics).toContain('portcullis_quota_rejections_total{class="basic",kind="coldBlobs",key="identity"} 1');
    expect(metrics).not.toMatch(/quota_[a-z_]+\{[^}]*alice/);
  });

  test('cold manifests per address: every identity on one address shares it; cached manifests are not limited', async () => {
    t += 60_000; // a full bucket: three cold manifests
    expect((await get('/v2/demo/other/manifests/v1', BOB)).status).toBe(200);
    expect((await get(`/v2/demo/app/manifests/${img.digest}`, BOB)).status).toBe(200); // cached: no token
    expect((await get(`/v2/demo/third/manifests/${third.digest}`, ALICE)).status).toBe(200);
    expect((await get('/v2/demo/third/manifests/v1', BOB)).status).toBe(200); // the tag is cold, its manifest not
    const refused = await get(`/v2/demo/fourth/manifests/${fourth.digest}`, ALICE);
    expect(refused.status).toBe(429);
    expect(((await refused.json()) as { errors: Array<{ message: string }> }).errors[0]!.message).toContain('per address');
    for (let i = 0; i < 5; i++) expect((await get(`/v2/demo/other/manifests/${other.digest}`, ALICE)).status).toBe(200);
  });
});
