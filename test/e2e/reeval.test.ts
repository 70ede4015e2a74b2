/**
 * e2e: continuous re-evaluation with purge, a candidate policy's impact, and warming, against a real CNCF
 * Distribution upstream, real skopeo and crane pulls, the proxy in-process with the committed policy bundle, and a
 * re-evaluation schedule this test runs by hand (an injected Scheduler: no timers).
 *
 * - A report with a new CRITICAL is pushed for a cached, admitted image; the next scheduled run purges it: a pull by
 *   digest is denied and its own blobs are gone from the cache, while the base layer it shares with an allowed image
 *   stays and that image still pulls (from the cache); reads running during the purge complete.
 * - A candidate bundle (built with opa) that denies one cached image lists exactly that change, and the active
 *   policy is unchanged afterwards (API and CLI).
 * - Warming: admitted images (an index's platforms too) are then pulled with zero upstream blob requests; a denied
 *   image is reported with its reason and none of its blobs is fetched.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { cp, mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { FileBlobStore } from '../../src/cache/blobstore.js';
import type { Scheduler } from '../../src/gate/reeval-schedule.js';
import type { ImpactReport } from '../../src/gate/impact.js';
import type { WarmReport } from '../../src/server/warm.js';
import type { Digest } from '../../src/routing/reference.js';
import { cranePull, expectOk, requireTool, runTool, skopeoCopy } from '../harness/clients.js';
import { MT, pushBlob, pushImage, pushIndex, pushRaw, sha256, type PushedImage, type PushedIndex } from '../harness/images.js';
import { startProxy, type RunningProxy } from '../harness/proxy.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';

const REPORT_TOKEN = 'ci-report-token-reeval';
const ADMIN_TOKEN = 'admin-token-reeval';
process.env.PC_REEVAL_REPORT_TOKEN = REPORT_TOKEN;
process.env.PC_REEVAL_ADMIN_TOKEN = ADMIN_TOKEN;
const ALIAS = 'upstream.reeval';

const settings = {
  no_match: 'deny',
  scopes: [
    { name: 'denied', images: ['*/demo/warm-denied'], deny_tags: ['*'] },
    // `scan: {}`: no CRITICAL, and a report required.
    { name: 'scanned', images: ['*/demo/app'], scan: {} },
    { name: 'team', images: ['*/demo/warm-team'], clients: { groups: ['deployers'] } },
    { name: 'rest', images: ['**'] },
  ],
};

const ZERO = `sha256:${'0'.repeat(64)}`;
const cleanFixture = readFileSync('test/fixtures/scan/trivy-clean.json', 'utf8');
const criticalFixture = readFileSync('test/fixtures/scan/trivy-critical.json', 'utf8');

/** A scheduler whose task runs when the test says so. */
function manualScheduler(): Scheduler & { tick(): Promise<void>; intervalMs: number | undefined } {
  let task: (() => Promise<void>) | undefined;
  const s = {
    intervalMs: undefined as number | undefined,
    every(ms: number, t: () => Promise<void>) {
      task = t;
      s.intervalMs = ms;
      return { stop: () => (task = undefined) };
    },
    tick: () => (task ? task() : Promise.reject(new Error('nothing scheduled'))),
  };
  return s;
}

let reg: RunningRegistry;
let px: RunningProxy;
let vuln: PushedImage;
let safe: { digest: string; config: string; layers: string[] };
let frozen: PushedImage;
let warmImage: PushedImage;
let warmDenied: PushedImage;
let warmTeam: PushedImage;
let warmMulti: PushedIndex;
const scheduler = manualScheduler();
const logLines: Array<Record<string, unknown>> = [];
let work: string;

function boundReport(fixture: string, repo: string, digest: string): string {
  return fixture
    .replaceAll(`registry.example/demo/app@${ZERO}`, `${reg.host}/${repo}@${digest}`)
    .replace(/"CreatedAt": "[^"]+"/, `"CreatedAt": "${new Date().toISOString()}"`);
}

async function pushReport(repo: string, digest: string, body: string): Promise<void> {
  const res = await fetch(`${px.url}/api/v1/reports/${reg.host}/${repo}@${digest}`, {
    method: 'PUT',
    headers: { authorization: `Bearer ${REPORT_TOKEN}`, 'content-type': 'application/json' },
    body,
  });
  expect(res.status, await res.text()).toBe(201);
}

async function metric(name: string, labels: string): Promise<number | undefined> {
  const text = await (await fetch(`${px.url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name}{${labels}}`));
  return line === undefined ? undefined : Number(line.split(' ').pop());
}

/** The upstream blob GETs the registry logged since the last clearLog(), once a sentinel request shows the log is current. */
async function upstreamBlobGets(): Promise<string[]> {
  const sentinel = `/v2/?sentinel=${Math.random().toString(36).slice(2)}`;
  await (await fetch(`${reg.url}${sentinel}`)).arrayBuffer();
  await reg.waitForRequests((r) => r.path === sentinel, 1, 10_000);
  return reg
    .requests()
    .filter((r) => r.method === 'GET' && r.path.includes('/blobs/'))
    .map((r) => r.path);
}

/** A blob GET through the proxy, paused after its first chunk until finish() is called. */
async function startRead(repo: string, digest: string): Promise<{ finish(): Promise<{ size: number; digest: string }> }> {
  const res = await fetch(`${px.url}/v2/${ALIAS}/${repo}/blobs/${digest}`);
  expect(res.status).toBe(200);
  const reader = res.body!.getReader();
  const hash = createHash('sha256');
  let size = 0;
  const first = await reader.read();
  expect(first.done).toBe(false);
  const firstBytes = first.value as Uint8Array;
  hash.update(firstBytes);
  size += firstBytes.length;
  return {
    async finish() {
      for (;;) {
        const r = await reader.read();
        if (r.done) break;
        const bytes = r.value as Uint8Array;
        hash.update(bytes);
        size += bytes.length;
      }
      return { size, digest: `sha256:${hash.digest('hex')}` };
    },
  };
}

beforeAll(async () => {
  requireTool('skopeo');
  requireTool('crane');
  work = await mkdtemp(join(tmpdir(), 'pc-reeval-'));
  reg = await startRegistry();
  // Large enough layers that a paused reader keeps its lease through the purge (socket buffers hold a few MiB).
  vuln = await pushImage(reg.url, 'demo/app', 'vuln', { layers: 2, layerSizeMiB: 24 });
  // "safe" shares vuln's first (base) layer, and has a small layer and a config of its own.
  const ownLayer = await pushBlob(reg.url, 'demo/app', Buffer.from(`safe layer ${Date.now()}`));
  const base = vuln.layers[0]!;
  const configBytes = Buffer.from(
    JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [base.diffId, ownLayer.digest] }, config: {} }),
  );
  const config = await pushBlob(reg.url, 'demo/app', configBytes);
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MT.ociManifest,
      config: { mediaType: MT.ociConfig, digest: config.digest, size: config.size },
      layers: [
        { mediaType: base.mediaType, digest: base.digest, size: base.size },
        { mediaType: MT.ociLayerTar, digest: ownLayer.digest, size: ownLayer.size },
      ],
    }),
  );
  const digest = await pushRaw(reg.url, 'demo/app', 'safe', manifest, MT.ociManifest);
  expect(digest).toBe(sha256(manifest));
  safe = { digest, config: config.digest, layers: [base.digest, ownLayer.digest] };
  frozen = await pushImage(reg.url, 'demo/frozen', 'v1');
  warmImage = await pushImage(reg.url, 'demo/warm', 'v1', { layers: 2 });
  warmDenied = await pushImage(reg.url, 'demo/warm-denied', 'v1');
  warmTeam = await pushImage(reg.url, 'demo/warm-team', 'v1');
  warmMulti = await pushIndex(reg.url, 'demo/warm-multi', 'v1', [
    { os: 'linux', architecture: 'amd64' },
    { os: 'linux', architecture: 'arm64' },
  ]);
  px = await startProxy({
    upstreams: [{ name: 'local', registry: reg.host, url: reg.url, aliases: [ALIAS] }],
    settings,
    scheduler,
    logger: pino({ level: 'info' }, { write: (s: string) => void logLines.push(JSON.parse(s) as Record<string, unknown>) }),
    extra: {
      scan: { order: ['reports'], reports: { token: { env: 'PC_REEVAL_REPORT_TOKEN' } }, admin: { token: { env: 'PC_REEVAL_ADMIN_TOKEN' } } },
      reevaluate: { interval: '15m', purge: true },
      warm: { maxImages: 3 },
    },
  });
});

afterAll(async () => {
  await px?.stop();
  await reg?.stop();
  if (work) await rm(work, { recursive: true, force: true });
});

describe('scheduled re-evaluation with purge', () => {
  test('a new CRITICAL on a cached image: the next scheduled run purges it, and only it', async () => {
    expect(scheduler.intervalMs).toBe(15 * 60_000);
    const app = px.proxy.app;
    await pushReport('demo/app', vuln.digest, boundReport(cleanFixture, 'demo/app', vuln.digest));
    await pushReport('demo/app', safe.digest, boundReport(cleanFixture, 'demo/app', safe.digest));
    expectOk(await skopeoCopy(`docker://${px.host}/${ALIAS}/demo/app:vuln`, join(work, 'vuln')), 'skopeo copy vuln');
    expectOk(await skopeoCopy(`docker://${px.host}/${ALIAS}/demo/app:safe`, join(work, 'safe')), 'skopeo copy safe');
    const base = vuln.layers[0]!.digest as Digest;
    const own = [vuln.config.digest, vuln.layers[1]!.digest] as Digest[];
    // A client has its bytes before the cache file is committed (write-behind): wait for the downloads to land.
    for (const d of [base, ...own, safe.config, ...safe.layers] as Digest[]) await app.downloads.get(d)?.finished;
    for (const d of [base, ...own, safe.config, ...safe.layers] as Digest[]) expect(app.blobStore.has(d), d).toBe(true);

    // A first run: both allowed.
    await scheduler.tick();
    expect(px.proxy.operations.schedule!.last!.report.images.map((e) => [e.tag, e.outcome])).toEqual([
      ['safe', 'allow'],
      ['vuln', 'allow'],
    ]);
    expect(await metric('portcullis_cached_images', 'verdict="allow"')).toBe(2);

    // Clients reading blobs (vuln's own layer, and the shared base layer) while the purge happens.
    const readOwn = await startRead('demo/app', vuln.layers[1]!.digest);
    const readBase = await startRead('demo/app', base);

    await pushReport('demo/app', vuln.digest, boundReport(criticalFixture, 'demo/app', vuln.digest));
    await scheduler.tick();
    const run = px.proxy.operations.schedule!.last!;
    expect(run.newlyDenied.map((e) => [e.tag, e.previous, e.deny.map((v) => v.rule)])).toEqual([['vuln', 'allow', ['scan.limit']]]);
    expect(run.purged!.images).toEqual([`${reg.host}/demo/app:vuln@${vuln.digest}`]);
    expect(run.purged!.removed.sort()).toEqual([...own].sort());
    expect(run.purged!.kept).toEqual([base]);

    // Gone from the cache (the store no longer has them), the shared base layer and the allowed image's blobs stay.
    for (const d of own) expect(app.blobStore.has(d), d).toBe(false);
    for (const d of [base, safe.config, ...safe.layers] as Digest[]) expect(app.blobStore.has(d), d).toBe(true);
    // The reader of the purged layer still holds it: its bytes are on disk until it finishes.
    expect(existsSync((app.blobStore as FileBlobStore).pathFor(vuln.layers[1]!.digest as Digest))).toBe(true);

    // The reads that were running complete, byte for byte.
    expect(await readOwn.finish()).toEqual({ size: vuln.layers[1]!.size, digest: vuln.layers[1]!.digest });
    expect(await readBase.finish()).toEqual({ size: vuln.layers[0]!.size, digest: base });
    // Once its last reader let go, the purged layer's file goes too (the unlink is asynchronous: bounded wait).
    for (let i = 0; i < 200 && existsSync((app.blobStore as FileBlobStore).pathFor(vuln.layers[1]!.digest as Digest)); i++)
      await new Promise((r) => setTimeout(r, 10));
    expect(existsSync((app.blobStore as FileBlobStore).pathFor(vuln.layers[1]!.digest as Digest))).toBe(false);

    // The next pull by digest is denied, with the reason.
    const denied = await skopeoCopy(`docker://${px.host}/${ALIAS}/demo/app@${vuln.digest}`, join(work, 'vuln-again'));
    expect(denied.code).not.toBe(0);
    expect(`${denied.stderr}`).toMatch(/denied/i);
    const byDigest = await fetch(`${px.url}/v2/${ALIAS}/demo/app/manifests/${vuln.digest}`, { headers: { accept: MT.ociManifest } });
    expect(byDigest.status).toBe(403);
    expect(JSON.stringify(await byDigest.json())).toContain('scan.limit');

    // The allowed image sharing the base layer still pulls, by digest, entirely from the cache.
    reg.clearLog();
    expectOk(await skopeoCopy(`docker://${px.host}/${ALIAS}/demo/app@${safe.digest}`, join(work, 'safe-again')), 'skopeo copy safe by digest');
    expect(await upstreamBlobGets()).toEqual([]);

    // Metrics and the log line for the image that turned denied.
    expect(await metric('portcullis_cached_images', 'verdict="allow"')).toBe(1);
    expect(await metric('portcullis_cached_images', 'verdict="deny"')).toBe(1);
    expect(await metric('portcullis_reevaluation_denials', 'rule="scan.limit"')).toBe(1);
    expect(await metric('portcullis_reevaluation_purged_total', 'kind="blobs"')).toBe(2);
    const logged = logLines.filter((l) => l.msg === 'cached image is now denied');
    expect(logged).toHaveLength(1);
    expect(logged[0]).toMatchObject({ image: `${reg.host}/demo/app:vuln@${vuln.digest}`, previous: 'allow', rules: ['scan.limit'] });
    expect(String(logged[0]!.reason)).toContain('CRITICAL');

    // The last run, for the operator's views.
    const last = await fetch(`${px.url}/api/v1/admin/reevaluate/last`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    expect(last.status).toBe(200);
    expect(await last.json()).toMatchObject({
      evaluated: 2,
      would_deny: 1,
      newly_denied: [{ image: `${reg.host}/demo/app:vuln@${vuln.digest}`, previous: 'allow' }],
      purged: { images: [`${reg.host}/demo/app:vuln@${vuln.digest}`] },
    });

    // A later run finds nothing new to log or purge.
    await scheduler.tick();
    expect(px.proxy.operations.schedule!.last!.newlyDenied).toEqual([]);
    expect(px.proxy.operations.schedule!.last!.purged!.removed).toEqual([]);
    expect(logLines.filter((l) => l.msg === 'cached image is now denied')).toHaveLength(1);
  }, 240_000);
});

/** The committed policy plus one rule that freezes demo/frozen, built with opa as scripts/policy-build.sh does. */
async function buildCandidate(): Promise<string> {
  requireTool('opa');
  const src = join(work, 'candidate', 'portcullis');
  await mkdir(src, { recursive: true });
  for (const f of await readdir('policies/portcullis'))
    if (f.endsWith('.rego') && !f.endsWith('_test.rego')) await cp(join('policies/portcullis', f), join(src, f));
  await writeFile(
    join(src, 'freeze.rego'),
    'package portcullis\n\nviolations contains {"rule": "image.frozen", "message": "demo/frozen is frozen for the rollout"} if {\n\tinput.image.repository == "demo/frozen"\n}\n',
  );
  const out = join(work, 'candidate.tar.gz');
  const r = await runTool('opa', [
    'build',
    '-t',
    'wasm',
    '-e',
    'portcullis/decision',
    '--capabilities',
    'policies/capabilities.json',
    '-r',
    'candidate-freeze',
    '-o',
    out,
    src,
  ]);
  expectOk(r, 'opa build');
  return out;
}

const admin = { authorization: `Bearer ${ADMIN_TOKEN}` };

describe('policy impact before a rollout', () => {
  test('a candidate bundle that denies one cached image lists exactly that change, and the active policy stays', async () => {
    expectOk(await cranePull(`${px.host}/${ALIAS}/demo/frozen:v1`, join(work, 'frozen.tar')), 'crane pull frozen');
    const bundlePath = await buildCandidate();
    const active = px.proxy.policy.revision;

    const res = await fetch(`${px.url}/api/v1/admin/impact`, {
      method: 'POST',
      headers: { ...admin, 'content-type': 'application/gzip' },
      body: readFileSync(bundlePath),
    });
    expect(res.status).toBe(200);
    const r = (await res.json()) as ImpactReport;
    expect(r).toMatchObject({ active_revision: active, candidate_revision: 'candidate-freeze', errors: [] });
    expect(r.evaluated.cached).toBe(3);
    // The cached images: exactly the frozen one changes (the CRITICAL one was and stays denied, the other allowed).
    expect(r.changes.filter((c) => c.source === 'cached')).toEqual([
      {
        source: 'cached',
        image: `${reg.host}/demo/frozen:v1@${frozen.digest}`,
        digest: frozen.digest,
        change: 'allowed→denied',
        active: { outcome: 'allow', deny: [], warn: [] },
        candidate: { outcome: 'deny', deny: [{ rule: 'image.frozen', message: 'demo/frozen is frozen for the rollout' }], warn: [] },
      },
    ]);
    // Recent decisions: crane's pull of it is listed too (with who asked), and nothing else.
    const recent = r.changes.filter((c) => c.source === 'recent');
    expect(recent.length).toBeGreaterThan(0);
    for (const c of recent)
      expect(c).toMatchObject({ image: `${reg.host}/demo/frozen:v1@${frozen.digest}`, change: 'allowed→denied', client: 'anonymous via anonymous' });

    // Nothing was activated: same revision, and the image still pulls.
    expect(px.proxy.policy.revision).toBe(active);
    expect((await fetch(`${px.url}/v2/${ALIAS}/demo/frozen/manifests/v1`, { headers: { accept: MT.ociManifest } })).status).toBe(200);

    // The CLI asks the running proxy the same, and exits 1 because something would change.
    const cli = await runTool('node', [resolve('dist/cli.js'), 'policy', 'impact', '--url', px.url, '--bundle', bundlePath], {
      env: { ...process.env, PORTCULLIS_ADMIN_TOKEN: ADMIN_TOKEN },
    });
    expect(cli.code, cli.stderr).toBe(1);
    expect(cli.stdout).toContain(`DENY   ${reg.host}/demo/frozen:v1@${frozen.digest}: demo/frozen is frozen for the rollout [image.frozen]`);

    // Candidate settings alone (the active bundle): a scope that denies the tag of "safe".
    const withSettings = await fetch(`${px.url}/api/v1/admin/impact`, {
      method: 'POST',
      headers: { ...admin, 'content-type': 'application/json' },
      body: JSON.stringify({ settings: { ...settings, scopes: [{ name: 'no-safe', images: ['*/demo/app'], deny_tags: ['safe'] }, ...settings.scopes] } }),
    });
    expect(withSettings.status).toBe(200);
    const s = (await withSettings.json()) as ImpactReport;
    expect(s.candidate_revision).toBe(active);
    expect(s.changes.filter((c) => c.source === 'cached').map((c) => [c.image, c.change, c.candidate.deny.map((v) => v.rule)])).toEqual([
      [`${reg.host}/demo/app:safe@${safe.digest}`, 'allowed→denied', ['tag.denied']],
      // The CRITICAL one: the new first scope has no scan requirement, so it would be allowed.
      [`${reg.host}/demo/app:vuln@${vuln.digest}`, 'denied→allowed', []],
    ]);
  });

  test('the CLI without --url opens the data dir itself (no proxy running on it)', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'pc-reeval-cli-'));
    const upstreams = [{ name: 'local', registry: reg.host, url: reg.url, aliases: [ALIAS] }];
    const q = await startProxy({ upstreams, settings, dataDir });
    try {
      expectOk(await cranePull(`${q.host}/${ALIAS}/demo/frozen:v1`, join(work, 'frozen-cli.tar')), 'crane pull frozen');
    } finally {
      await q.stop();
    }
    const config = join(work, 'cli-config.yaml');
    await writeFile(
      config,
      JSON.stringify({
        dataDir,
        upstreams,
        decisionLog: { sink: 'none' },
        log: { level: 'warn' },
        policy: { bundleFile: resolve('policies/bundle.tar.gz'), settings },
      }),
    );
    const cli = await runTool('node', [resolve('dist/cli.js'), 'policy', 'impact', '--config', config, '--bundle', join(work, 'candidate.tar.gz'), '--json']);
    expect(cli.code, cli.stderr).toBe(1);
    const r = JSON.parse(cli.stdout) as ImpactReport;
    expect(r.changes.map((c) => [c.source, c.image, c.change])).toEqual([['cached', `${reg.host}/demo/frozen:v1@${frozen.digest}`, 'allowed→denied']]);
    // Settings alone: the active bundle with a scope that freezes nothing changes nothing.
    await writeFile(join(work, 'same.yaml'), JSON.stringify(settings));
    const same = await runTool('node', [resolve('dist/cli.js'), 'policy', 'impact', '--config', config, '--settings', join(work, 'same.yaml')]);
    expect(same.code, same.stderr).toBe(0);
    expect(same.stdout).toMatch(/: 0 changes \(1 cached image, 0 recent decisions\)/);
    await rm(dataDir, { recursive: true, force: true });
  });

  test('the impact endpoint needs the admin token and refuses what is not a bundle', async () => {
    const none = await fetch(`${px.url}/api/v1/admin/impact`, { method: 'POST', headers: { 'content-type': 'application/gzip' }, body: Buffer.from('x') });
    expect(none.status).toBe(401);
    const ci = await fetch(`${px.url}/api/v1/admin/impact`, {
      method: 'POST',
      headers: { authorization: `Bearer ${REPORT_TOKEN}`, 'content-type': 'application/gzip' },
      body: Buffer.from('x'),
    });
    expect(ci.status).toBe(401);
    const garbage = await fetch(`${px.url}/api/v1/admin/impact`, {
      method: 'POST',
      headers: { ...admin, 'content-type': 'application/gzip' },
      body: Buffer.from('not a bundle'),
    });
    expect(garbage.status).toBe(400);
    expect(((await garbage.json()) as { errors: Array<{ code: string; message: string }> }).errors[0]).toMatchObject({ code: 'BUNDLE_INVALID' });
    const get = await fetch(`${px.url}/api/v1/admin/impact`, { headers: admin });
    expect(get.status).toBe(405);
  });
});

describe('warming before a rollout', () => {
  test('admitted images are fetched ahead and then pulled with no upstream blob request; a denied one is reported and not fetched', async () => {
    reg.clearLog();
    const res = await fetch(`${px.url}/api/v1/admin/warm`, {
      method: 'POST',
      headers: { ...admin, 'content-type': 'application/json' },
      body: JSON.stringify({ images: [`${ALIAS}/demo/warm:v1`, `${ALIAS}/demo/warm-multi:v1`, `${ALIAS}/demo/warm-denied:v1`] }),
    });
    expect(res.status).toBe(200);
    const r = (await res.json()) as WarmReport;
    expect(r).toMatchObject({ admitted: 2, denied: 1, failed: 0 });
    expect(r.images[0]).toMatchObject({
      image: `${reg.host}/demo/warm:v1@${warmImage.digest}`,
      result: 'admitted',
      blobs: { total: 3, fetched: 3, cached: 0 },
    });
    expect(r.images[1]).toMatchObject({
      image: `${reg.host}/demo/warm-multi:v1@${warmMulti.digest}`,
      result: 'admitted',
      blobs: { total: 4, fetched: 4, cached: 0 },
    });
    expect(r.images[1]!.children!.map((c) => [c.platform, c.result])).toEqual([
      ['linux/amd64', 'admitted'],
      ['linux/arm64', 'admitted'],
    ]);
    expect(r.images[2]).toMatchObject({ image: `${reg.host}/demo/warm-denied:v1@${warmDenied.digest}`, result: 'denied', rules: ['tag.denied'] });
    expect(r.images[2]!.reason).toContain('tag "v1" is not allowed');
    // Nothing of the denied image was fetched.
    const fetched = await upstreamBlobGets();
    for (const d of [warmDenied.config.digest, ...warmDenied.layers.map((l) => l.digest)]) {
      expect(fetched.some((p) => p.includes(d))).toBe(false);
      expect(px.proxy.app.blobStore.has(d as Digest)).toBe(false);
    }
    expect(fetched).toHaveLength(7);

    // The rollout's pulls: served entirely from the cache.
    reg.clearLog();
    expectOk(await skopeoCopy(`docker://${px.host}/${ALIAS}/demo/warm:v1`, join(work, 'warm')), 'skopeo copy warm');
    expectOk(
      await cranePull(`${px.host}/${ALIAS}/demo/warm-multi:v1`, join(work, 'warm-multi.tar'), { platform: 'linux/arm64' }),
      'crane pull warm-multi arm64',
    );
    expect(await upstreamBlobGets()).toEqual([]);

    // Warming again costs nothing: everything is cached.
    const again = (await (
      await fetch(`${px.url}/api/v1/admin/warm`, {
        method: 'POST',
        headers: { ...admin, 'content-type': 'application/json' },
        body: JSON.stringify({ images: [`${ALIAS}/demo/warm:v1`] }),
      })
    ).json()) as WarmReport;
    expect(again.images[0]).toMatchObject({ result: 'admitted', blobs: { total: 3, fetched: 0, cached: 3 } });
    expect(await metric('portcullis_warm_images_total', 'result="denied"')).toBe(1);
  });

  test('the CLI reports a denied image and exits 1; requests are bounded and need the admin token', async () => {
    const cli = await runTool('node', [resolve('dist/cli.js'), 'warm', '--url', px.url, `${ALIAS}/demo/warm-denied:v1`], {
      env: { ...process.env, PORTCULLIS_ADMIN_TOKEN: ADMIN_TOKEN },
    });
    expect(cli.code, cli.stderr).toBe(1);
    expect(cli.stdout).toContain(`DENIED ${reg.host}/demo/warm-denied:v1@${warmDenied.digest}: tag "v1" is not allowed`);

    // Decided for a client identity (policy `clients` rules): anonymous is refused, the deployers group admitted.
    const anonymous = await runTool('node', [resolve('dist/cli.js'), 'warm', '--url', px.url, `${ALIAS}/demo/warm-team:v1`], {
      env: { ...process.env, PORTCULLIS_ADMIN_TOKEN: ADMIN_TOKEN },
    });
    expect(anonymous.code, anonymous.stderr).toBe(1);
    expect(anonymous.stdout).toContain('[client.not_allowed]');
    const team = await runTool(
      'node',
      [resolve('dist/cli.js'), 'warm', '--url', px.url, '--as', 'ci-bot', '--groups', 'deployers', `${ALIAS}/demo/warm-team:v1`],
      { env: { ...process.env, PORTCULLIS_ADMIN_TOKEN: ADMIN_TOKEN } },
    );
    expect(team.code, team.stderr).toBe(0);
    expect(team.stdout).toContain(`ADMITTED ${reg.host}/demo/warm-team:v1@${warmTeam.digest}: 2 blobs, 2 fetched`);

    const tooMany = await fetch(`${px.url}/api/v1/admin/warm`, {
      method: 'POST',
      headers: { ...admin, 'content-type': 'application/json' },
      body: JSON.stringify({ images: ['a/b:1', 'a/b:2', 'a/b:3', 'a/b:4'] }),
    });
    expect(tooMany.status).toBe(400);
    expect(await tooMany.text()).toContain('warm.maxImages');
    const big = await fetch(`${px.url}/api/v1/admin/warm`, {
      method: 'POST',
      headers: { ...admin, 'content-type': 'application/json' },
      body: JSON.stringify({ images: ['x'.repeat(70_000)] }),
    });
    expect(big.status).toBe(413);
    const anon = await fetch(`${px.url}/api/v1/admin/warm`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ images: [`${ALIAS}/demo/warm:v1`] }),
    });
    expect(anon.status).toBe(401);
  });
});

describe('warming within quotas', () => {
  test('warming takes quota tokens for what it fetches, and stops an image when they run out', async () => {
    const t0 = Date.now();
    const q = await startProxy({
      upstreams: [{ name: 'local', registry: reg.host, url: reg.url, aliases: [ALIAS] }],
      settings,
      // A frozen clock: the bucket does not refill during the test.
      now: () => t0,
      extra: {
        scan: { admin: { token: { env: 'PC_REEVAL_ADMIN_TOKEN' } } },
        quotas: { perIdentity: { coldBlobs: { burst: 2, perMinute: 1 } } },
      },
    });
    try {
      const res = await fetch(`${q.url}/api/v1/admin/warm`, {
        method: 'POST',
        headers: { ...admin, 'content-type': 'application/json' },
        body: JSON.stringify({ images: [`${ALIAS}/demo/warm:v1`] }),
      });
      expect(res.status).toBe(200);
      const r = (await res.json()) as WarmReport;
      expect(r).toMatchObject({ admitted: 0, failed: 1 });
      expect(r.images[0]!.reason).toMatch(/^quota for coldBlobs per identity exceeded; retry in \d+s$/);
      // Two blobs (the burst) were fetched and stay; the third was not asked for upstream.
      const blobs = [warmImage.config.digest, ...warmImage.layers.map((l) => l.digest)] as Digest[];
      expect(blobs.filter((d) => q.proxy.app.blobStore.has(d))).toHaveLength(2);
      expect(await (await fetch(`${q.url}/metrics`)).text()).toContain('portcullis_quota_rejections_total{class="token",kind="coldBlobs",key="identity"} 1');
    } finally {
      await q.stop();
    }
  });
});
