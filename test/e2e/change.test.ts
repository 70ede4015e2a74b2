/**
 * e2e: zero failed pulls under change (issue 10, "How it is shown"). The REAL server (`node dist/cli.js serve`, built
 * by `npm run build`) with `reusePort`, a real Distribution upstream, 20 concurrent skopeo pulls of a 2-platform
 * index and the kubelet's pull path (containerd's CRI plugin driven by crictl, test/harness/cri.ts), while:
 *
 * 1. the policy bundle is replaced by one that still allows the image (hot reload: every admission is decided again
 *    inline on its next request);
 * 2. the signing key is rotated: the authority's key file is replaced by another key that also signed the images
 *    (a new trust revision: admissions are decided again inline; the index is signed, its children inherit that);
 * 3. the process is replaced: a second server starts on the same address and data dir (SO_REUSEPORT), then the first
 *    gets SIGTERM and drains;
 *
 * and every pull succeeds with every byte matching its digest. Then a bundle that denies the image (built with
 * `opa build`) stops the pulls at their next request, with the bundle's reason.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFile, mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { repackWithRevision } from '../harness/bundles.js';
import { requireTool, runTool, skopeoCopy } from '../harness/clients.js';
import { type CriHandle, startCri } from '../harness/cri.js';
import { MANIFEST_ACCEPT, type PushedImage, type PushedIndex, pushImage, pushIndex } from '../harness/images.js';
import { freePort, type RunningRegistry, startRegistry } from '../harness/registry.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const CLI = path.join(ROOT, 'dist', 'cli.js');
const WORKERS = 20;
/** Each worker pulls at most this many times (every loop is bounded). */
const MAX_PULLS = 40;
const ALIAS = 'upstream.change';

let reg: RunningRegistry;
let tmp: string;
let port: number;
let configPath: string;
let bundle: string;
let denyBundle: string;
let activeKey: string;
let index: PushedIndex;
const criImages: PushedImage[] = [];
const servers = new Set<ChildProcess>();
let cri: CriHandle | undefined;

interface Server {
  child: ChildProcess;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  output(): string;
}

/** Starts `node dist/cli.js serve`; resolves once this process logged that it listens (the port may be shared). */
async function startServer(): Promise<Server> {
  const child = spawn(process.execPath, [CLI, 'serve', '--config', configPath], { stdio: ['ignore', 'pipe', 'pipe'], cwd: ROOT });
  servers.add(child);
  let out = '';
  const listening = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not listen within 20 s:\n${out}`)), 20_000);
    const onData = (b: Buffer): void => {
      out += b.toString();
      if (out.includes('"msg":"listening"')) {
        clearTimeout(timer);
        resolve();
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', (b: Buffer) => (out += b.toString()));
    child.once('exit', () => reject(new Error(`server exited during start-up:\n${out}`)));
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => {
      servers.delete(child);
      resolve({ code, signal });
    }),
  );
  await listening;
  return { child, exited, output: () => out };
}

const sha256File = async (p: string): Promise<string> =>
  `sha256:${createHash('sha256')
    .update(await readFile(p))
    .digest('hex')}`;

/** One skopeo pull of the index's linux/amd64 image into a fresh dir; every file named by a digest must hash to it. */
async function skopeoPull(dest: string): Promise<{ ok: boolean; error: string }> {
  const r = await skopeoCopy(`docker://127.0.0.1:${port}/${ALIAS}/e2e/change:v1`, dest, { timeoutMs: 120_000 });
  try {
    if (r.code !== 0) return { ok: false, error: r.stderr.trim().split('\n').slice(-2).join(' ') };
    const amd = index.children[0]!;
    const want = [amd.config.digest, ...amd.layers.map((l) => l.digest)];
    const found = new Set<string>();
    for (const f of await readdir(dest)) {
      const m = /^([0-9a-f]{64})$/.exec(f);
      if (!m) continue;
      if ((await sha256File(path.join(dest, f))) !== `sha256:${m[1]}`) return { ok: false, error: `${f} does not hash to its name` };
      found.add(`sha256:${m[1]}`);
    }
    const missing = want.filter((d) => !found.has(d));
    return missing.length ? { ok: false, error: `missing blobs ${missing.join(', ')}` } : { ok: true, error: '' };
  } finally {
    await rm(dest, { recursive: true, force: true });
  }
}

/** Pulls through the proxy over HTTP (manifest, then every blob) so the blob cache is warm before the change. */
async function warm(repo: string, img: PushedImage | PushedIndex): Promise<void> {
  const base = `http://127.0.0.1:${port}/v2/${reg.host}/${repo}`;
  const res = await fetch(`${base}/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT } });
  expect(res.status).toBe(200);
  await res.arrayBuffer();
  const images = 'children' in img ? img.children : [img];
  for (const c of images) {
    if ('children' in img) expect((await fetch(`${base}/manifests/${c.digest}`, { headers: { accept: MANIFEST_ACCEPT } })).status).toBe(200);
    for (const b of [c.config, ...c.layers]) {
      const r = await fetch(`${base}/blobs/${b.digest}`);
      expect(r.status).toBe(200);
      await r.arrayBuffer();
    }
  }
}

async function metric(pattern: RegExp): Promise<boolean> {
  const text = await fetch(`http://127.0.0.1:${port}/metrics`).then(
    (r) => r.text(),
    () => '',
  );
  return pattern.test(text);
}

async function until(what: string, cond: () => Promise<boolean> | boolean, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * The kernel setting a lossless process replacement needs (README, `reusePort`): connections still in the old
 * listener's accept queue move to the new listener instead of being reset. Set for this test, as an operator would,
 * and put back afterwards.
 */
const MIGRATE_REQ = '/proc/sys/net/ipv4/tcp_migrate_req';
let migrateReqBefore: string | undefined;

beforeAll(async () => {
  migrateReqBefore = (await readFile(MIGRATE_REQ, 'utf8')).trim();
  if (migrateReqBefore !== '1') await writeFile(MIGRATE_REQ, '1\n');
  requireTool('opa');
  requireTool('skopeo');
  requireTool('cosign2');
  tmp = await mkdtemp('/tmp/pcchange-');
  reg = await startRegistry();
  index = await pushIndex(
    reg.url,
    'e2e/change',
    'v1',
    [
      { os: 'linux', architecture: 'amd64' },
      { os: 'linux', architecture: 'arm64' },
    ],
    { layers: 3, layerSizeMiB: 0.5 },
  );
  for (let i = 0; i < 4; i++) criImages.push(await pushImage(reg.url, `e2e/change-cri-${i}`, 'v1', { layers: 1, layerSizeMiB: 0.25 }));

  // Two signing keys; the index (not its children: no --recursive) and the CRI images are signed with both.
  const env = { ...process.env, HOME: tmp, COSIGN_PASSWORD: '', DOCKER_CONFIG: path.join(tmp, 'docker'), TUF_ROOT: path.join(tmp, 'tuf') };
  const cosign = async (args: string[]): Promise<void> => {
    const r = await runTool('cosign2', args, { env, cwd: tmp, timeoutMs: 60_000 });
    expect(r.code, `cosign2 ${args.join(' ')}: ${r.stderr}`).toBe(0);
  };
  for (const k of ['k1', 'k2']) await cosign(['generate-key-pair', '--output-key-prefix', k]);
  const refs = [`${reg.host}/e2e/change:v1`, ...criImages.map((_, i) => `${reg.host}/e2e/change-cri-${i}:v1`)];
  for (const k of ['k1', 'k2'])
    for (const ref of refs) await cosign(['sign', '--key', `${k}.key`, '--tlog-upload=false', '--allow-insecure-registry', '--allow-http-registry', '-y', ref]);
  activeKey = path.join(tmp, 'active.pub');
  await copyFile(path.join(tmp, 'k1.pub'), activeKey);

  bundle = path.join(tmp, 'bundle.tar.gz');
  await copyFile(path.join(ROOT, 'policies', 'bundle.tar.gz'), bundle);
  const src = path.join(tmp, 'freeze');
  await mkdir(src);
  await writeFile(
    path.join(src, 'freeze.rego'),
    'package portcullis\n\ndecision := {"allow": false, "deny": [{"rule": "freeze.all", "message": "all pulls are frozen"}], "warn": [], "scope": null, "mode": "enforce"}\n',
  );
  denyBundle = path.join(tmp, 'freeze.tar.gz');
  const built = await runTool('opa', ['build', '-t', 'wasm', '-e', 'portcullis/decision', '-r', 'freeze-1', '-o', denyBundle, src]);
  expect(built.code, built.stderr).toBe(0);

  port = await freePort();
  const doc = {
    listen: `127.0.0.1:${port}`,
    reusePort: true,
    dataDir: path.join(tmp, 'data'),
    upstreams: [{ name: 'local', registry: reg.host, url: reg.url, aliases: [ALIAS] }],
    log: { level: 'info' },
    decisionLog: { sink: 'none' },
    shutdownGrace: '20s',
    policy: {
      bundleFile: bundle,
      pollInterval: '200ms',
      settings: { no_match: 'deny', scopes: [{ name: 'signed', images: ['**'], signatures: { authorities: ['release'] } }] },
    },
    signatures: { authorities: [{ name: 'release', kind: 'key', key: activeKey }], reloadInterval: '200ms' },
  };
  configPath = path.join(tmp, 'portcullis.json');
  await writeFile(configPath, JSON.stringify(doc));
  cri = await startCri({ proxyUrl: `http://127.0.0.1:${port}`, config: parseConfig(JSON.stringify(doc), configPath, {}) });
}, 180_000);

afterAll(async () => {
  if (migrateReqBefore !== undefined && migrateReqBefore !== '1') await writeFile(MIGRATE_REQ, `${migrateReqBefore}\n`);
  for (const c of servers) c.kill('SIGKILL');
  await cri?.stop();
  await reg?.stop();
  if (tmp) await rm(tmp, { recursive: true, force: true, maxRetries: 3 });
});

describe('zero failed pulls under change', () => {
  it('20 skopeo pulls and CRI pulls survive a bundle push and a process replacement; a denying bundle then stops them with its reason', async () => {
    const first = await startServer();
    await warm('e2e/change', index);
    for (let i = 0; i < criImages.length; i++) await warm(`e2e/change-cri-${i}`, criImages[i]!);

    let phase: 'change' | 'done' = 'change';
    const done = Array.from({ length: WORKERS }, () => 0);
    const failures: string[] = [];
    const workers = Array.from({ length: WORKERS }, async (_, w) => {
      for (let n = 0; n < MAX_PULLS && phase === 'change'; n++) {
        const r = await skopeoPull(path.join(tmp, `w${w}-${n}`));
        if (!r.ok) failures.push(`worker ${w} pull ${n}: ${r.error}`);
        done[w]!++;
      }
    });
    const criResults: Array<{ image: string; ok: boolean; error: string }> = [];
    const criLoop = (async () => {
      for (let i = 0; phase === 'change' && i < 3 * criImages.length; i++) {
        const image = `${reg.host}/e2e/change-cri-${i % criImages.length}:v1`;
        const r = await cri!.pull(image, { timeoutMs: 60_000 });
        criResults.push({ image, ok: r.ok, error: r.error });
        await cri!.remove(image);
      }
    })();
    const pulledSince = async (base: number[]): Promise<void> =>
      until('every worker to finish another pull', () => done.every((n, i) => n > base[i]!), 120_000);

    await pulledSince(done.map(() => 0));
    // 1. A bundle that still allows the image: admissions are decided again on their next request.
    await repackWithRevision(path.join(ROOT, 'policies', 'bundle.tar.gz'), bundle, 'still-allows-2');
    await until('the new revision', () => metric(/portcullis_policy_bundle_info\{revision="still-allows-2"/));
    await pulledSince([...done]);
    // 2. The signing key is rotated to one that also signed the images: a new trust revision.
    await copyFile(path.join(tmp, 'k2.pub'), activeKey);
    await until('the new trust material', () => first.output().includes('signature trust material changed'));
    await pulledSince([...done]);
    // 3. A new process on the same address and data dir, then SIGTERM to the old one, which drains and exits 0.
    const second = await startServer();
    first.child.kill('SIGTERM');
    expect(await first.exited).toEqual({ code: 0, signal: null });
    await pulledSince([...done]);
    phase = 'done';
    await Promise.all([...workers, criLoop]);

    expect(failures).toEqual([]);
    expect(done.reduce((a, b) => a + b, 0)).toBeGreaterThanOrEqual(3 * WORKERS);
    expect(criResults.length).toBeGreaterThan(0);
    expect(criResults.filter((r) => !r.ok)).toEqual([]);

    // 4. A bundle that denies the image: the next request of every pull is refused with the bundle's reason.
    await copyFile(denyBundle, bundle);
    await until('the denying revision', () => metric(/portcullis_policy_bundle_info\{revision="freeze-1"/));
    const denied = await Promise.all(Array.from({ length: 5 }, (_, i) => skopeoPull(path.join(tmp, `deny-${i}`))));
    for (const r of denied) {
      expect(r.ok).toBe(false);
      expect(r.error).toContain('all pulls are frozen');
    }
    // A pull that had its manifest before the push is stopped at its next blob, with the reason.
    const amd = index.children[0]!;
    const blob = await fetch(`http://127.0.0.1:${port}/v2/${reg.host}/e2e/change/blobs/${amd.layers[0]!.digest}`);
    expect(blob.status).toBe(403);
    expect(await blob.text()).toContain('all pulls are frozen [freeze.all]');
    const criDenied = await cri!.pull(`${reg.host}/e2e/change-cri-0:v1`, { timeoutMs: 60_000 });
    expect(criDenied.ok).toBe(false);
    // containerd resolves with a HEAD: only the status line reaches the kubelet, and its reason phrase carries the rule.
    expect(criDenied.error).toMatch(/403 denied: freeze\.all: all pulls are frozen \[decision [0-9a-f-]{36}\]/);

    second.child.kill('SIGTERM');
    expect(await second.exited).toEqual({ code: 0, signal: null });
  }, 600_000);
});
