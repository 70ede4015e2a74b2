/**
 * Closures that cannot be laundered, and admissions bound to what decided them (issue 10 §1–2, DESIGN §11), against
 * a real Distribution upstream with the committed policy bundle (real `opa build` output), scan reports pushed
 * through the report API (Trivy JSON fixtures bound to the pushed digests), and real restarts on the same data dir.
 *
 * Attacks first: a denied manifest listed as a layer of an allowed image; a denied child of an allowed index; children
 * the index's own scan skips (attestation-annotated, nested indexes); tag lists and referrers of a repository no
 * scope allows. Then: restarts and hot reloads with a policy that denies (children and blobs stop, with the reason)
 * and one that still allows (blobs keep flowing without a new manifest request).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { copyFile, mkdtemp, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { checkImage } from '../../src/server/check.js';
import { repackWithRevision } from '../harness/bundles.js';
import { requireTool, runTool } from '../harness/clients.js';
import { MANIFEST_ACCEPT, MT, pushBlob, pushImage, pushIndex, pushRaw, sha256, type PushedImage, type PushedIndex } from '../harness/images.js';
import { ALLOW_ALL, startProxy, type RunningProxy } from '../harness/proxy.js';
import { freePort, startRegistry, type RunningRegistry } from '../harness/registry.js';

const REPORT_TOKEN = 'closures-report-token-7d1a';
process.env.PC_CLOSURES_REPORT_TOKEN = REPORT_TOKEN;
const ZERO = `sha256:${'0'.repeat(64)}`;
const critical = readFileSync('test/fixtures/scan/trivy-critical.json', 'utf8');
const clean = readFileSync('test/fixtures/scan/trivy-clean.json', 'utf8');

let reg: RunningRegistry;

beforeAll(async () => {
  reg = await startRegistry();
});
afterAll(async () => {
  await reg?.stop();
});

const get = (p: RunningProxy, path: string, method = 'GET'): Promise<Response> =>
  fetch(`${p.url}/v2/${reg.host}/${path}`, { method, headers: { accept: MANIFEST_ACCEPT } });

async function denial(res: Response): Promise<{ code: string; message: string }> {
  expect(res.status).toBe(403);
  return ((await res.json()) as { errors: Array<{ code: string; message: string }> }).errors[0]!;
}

/** Upstream requests for blobs or manifests since the last clearLog(). */
const upstream = (what: 'blobs' | 'manifests' | 'tags' | 'referrers'): string[] =>
  reg
    .requests()
    .filter((r) => r.path.includes(`/${what}/`))
    .map((r) => r.path);

describe('laundering through an allowed image is refused', () => {
  let px: RunningProxy;
  let evil: PushedImage;
  let cleanDigest: string;
  beforeAll(async () => {
    // Every image in demo/launder needs a signature the proxy cannot verify (none is configured), except the one
    // image an exception names: the "clean" image whose layers list the denied manifest's digest.
    evil = await pushImage(reg.url, 'demo/launder', 'evil', { layers: 2 });
    const base = await pushImage(reg.url, 'demo/launder', 'base');
    await pushBlob(reg.url, 'demo/launder', evil.manifest);
    const doc = {
      schemaVersion: 2,
      mediaType: MT.ociManifest,
      config: { mediaType: MT.ociConfig, digest: base.config.digest, size: base.config.size },
      layers: [
        { mediaType: MT.ociLayerTar, digest: base.layers[0]!.digest, size: base.layers[0]!.size },
        { mediaType: MT.ociLayerTar, digest: evil.digest, size: evil.manifest.length },
      ],
    };
    cleanDigest = await pushRaw(reg.url, 'demo/launder', 'clean', Buffer.from(JSON.stringify(doc)), MT.ociManifest);
    px = await startProxy({
      upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
      settings: {
        scopes: [{ name: 'signed-only', images: ['**'], signatures: { authorities: ['release-team'] } }],
        exceptions: [{ digests: [cleanDigest], rules: ['signature.required'], owner: 'sec', reason: 'reviewed', expires: '2999-01-01T00:00:00Z' }],
      },
    });
  });
  afterAll(async () => px?.stop());

  test('a denied manifest listed as a layer of an admitted image: by digest 403, and its layers 403', async () => {
    expect((await get(px, 'demo/launder/manifests/evil')).status).toBe(403);
    expect((await get(px, 'demo/launder/manifests/clean')).status).toBe(200);
    reg.clearLog();
    for (const method of ['GET', 'HEAD']) {
      const m = await get(px, `demo/launder/manifests/${evil.digest}`, method);
      expect(m.status).toBe(403);
      expect(m.headers.get('portcullis-reason')).toContain('signature.required');
      if (method === 'GET') expect((await denial(m)).message).toContain(`denied ${reg.host}/demo/launder@${evil.digest}`);
      for (const l of [evil.config, ...evil.layers]) expect((await get(px, `demo/launder/blobs/${l.digest}`, method)).status).toBe(403);
    }
    expect(upstream('blobs')).toEqual([]);
  });
});

describe('children of an admitted index are decided on their own evidence', () => {
  let px: RunningProxy;
  let mixed: PushedIndex;
  let smuggled: PushedImage;
  let inner: PushedImage;
  let nestedDigest: string;
  let outerDigest: string;

  const report = (fixture: string, repo: string, digest: string): Promise<Response> =>
    fetch(`${px.url}/api/v1/reports/${reg.host}/${repo}@${digest}`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${REPORT_TOKEN}`, 'content-type': 'application/json' },
      body: fixture
        .replaceAll(`registry.example/demo/app@${ZERO}`, `${reg.host}/${repo}@${digest}`)
        .replace(/"CreatedAt": "[^"]+"/, `"CreatedAt": "${new Date().toISOString()}"`),
    });

  beforeAll(async () => {
    mixed = await pushIndex(reg.url, 'demo/mixed', 'v1', [
      { os: 'linux', architecture: 'amd64' },
      { os: 'linux', architecture: 'arm64' },
    ]);
    // An index whose own scan skips two children: a runnable image annotated as an attestation manifest, and a
    // nested index (itself listing a vulnerable image).
    const amd = await pushImage(reg.url, 'demo/outer', undefined);
    smuggled = await pushImage(reg.url, 'demo/outer', undefined);
    inner = await pushImage(reg.url, 'demo/outer', undefined);
    const nested = {
      schemaVersion: 2,
      mediaType: MT.ociIndex,
      manifests: [{ mediaType: MT.ociManifest, digest: inner.digest, size: inner.manifest.length, platform: { os: 'linux', architecture: 'amd64' } }],
    };
    const nestedBytes = Buffer.from(JSON.stringify(nested));
    nestedDigest = await pushRaw(reg.url, 'demo/outer', sha256(nestedBytes), nestedBytes, MT.ociIndex);
    const outer = {
      schemaVersion: 2,
      mediaType: MT.ociIndex,
      manifests: [
        { mediaType: MT.ociManifest, digest: amd.digest, size: amd.manifest.length, platform: { os: 'linux', architecture: 'amd64' } },
        {
          mediaType: MT.ociManifest,
          digest: smuggled.digest,
          size: smuggled.manifest.length,
          platform: { os: 'unknown', architecture: 'unknown' },
          annotations: { 'vnd.docker.reference.type': 'attestation-manifest', 'vnd.docker.reference.digest': amd.digest },
        },
        { mediaType: MT.ociIndex, digest: nestedDigest, size: nestedBytes.length },
      ],
    };
    outerDigest = await pushRaw(reg.url, 'demo/outer', 'v1', Buffer.from(JSON.stringify(outer)), MT.ociIndex);
    px = await startProxy({
      upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
      settings: { scopes: [{ name: 'scanned', images: ['**'], scan: {} }] },
      extra: { scan: { order: ['reports'], reports: { token: { env: 'PC_CLOSURES_REPORT_TOKEN' }, maxSize: '64KiB' } } },
    });
    const [mAmd, mArm] = mixed.children;
    for (const [fixture, repo, digest] of [
      [clean, 'demo/mixed', mixed.digest],
      [clean, 'demo/mixed', mAmd!.digest],
      [critical, 'demo/mixed', mArm!.digest],
      [clean, 'demo/outer', amd.digest],
      [critical, 'demo/outer', smuggled.digest],
      [clean, 'demo/outer', nestedDigest],
      [critical, 'demo/outer', inner.digest],
    ] as const) {
      expect((await report(fixture, repo, digest)).status).toBe(201);
    }
  });
  afterAll(async () => px?.stop());

  test('a denied child is refused and named; its sibling and the sibling’s layers are served', async () => {
    const [amd, arm] = mixed.children;
    expect((await get(px, 'demo/mixed/manifests/v1')).status).toBe(200);
    const err = await denial(await get(px, `demo/mixed/manifests/${arm!.digest}`));
    expect(err.code).toBe('DENIED');
    expect(err.message).toContain(`denied ${reg.host}/demo/mixed@${arm!.digest}`);
    expect(err.message).toContain('1 CRITICAL vulnerability (CVE-2024-0727) exceeds limit 0 [scan.limit]');
    for (const l of [arm!.config, ...arm!.layers]) expect((await get(px, `demo/mixed/blobs/${l.digest}`)).status).toBe(403);
    expect((await get(px, `demo/mixed/manifests/${amd!.digest}`)).status).toBe(200);
    for (const l of [amd!.config, ...amd!.layers]) expect((await get(px, `demo/mixed/blobs/${l.digest}`)).status).toBe(200);
  });

  test('an attestation-annotated runnable child and a nested index’s image are scanned and refused', async () => {
    expect((await get(px, 'demo/outer/manifests/v1')).status).toBe(200);
    const s = await denial(await get(px, `demo/outer/manifests/${smuggled.digest}`));
    expect(s.message).toContain(`@${smuggled.digest}`);
    expect(s.message).toContain('[scan.limit]');
    expect((await get(px, `demo/outer/manifests/${nestedDigest}`)).status).toBe(200);
    const i = await denial(await get(px, `demo/outer/manifests/${inner.digest}`));
    expect(i.message).toContain(`@${inner.digest}`);
    for (const l of [...smuggled.layers, ...inner.layers]) expect((await get(px, `demo/outer/blobs/${l.digest}`)).status).toBe(403);
    expect(outerDigest).toMatch(/^sha256:/);
  });
});

describe('portcullis check by digest takes the path a pull takes', () => {
  test('a platform manifest of an admitted index is checked as its child: the exception for the index covers it', async () => {
    const multi = await pushIndex(reg.url, 'demo/checked', 'v1', [
      { os: 'linux', architecture: 'amd64' },
      { os: 'linux', architecture: 'arm64' },
    ]);
    const px = await startProxy({
      upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
      settings: {
        scopes: [{ name: 'signed-only', images: ['**'], signatures: { authorities: ['release-team'] } }],
        exceptions: [{ digests: [multi.digest], rules: ['signature.required'], owner: 'sec', reason: 'reviewed', expires: '2999-01-01T00:00:00Z' }],
      },
    });
    try {
      expect((await get(px, 'demo/checked/manifests/v1')).status).toBe(200);
      const child = multi.children[1]!;
      const report = await checkImage(px.proxy.app, `${reg.host}/demo/checked@${child.digest}`, {});
      expect(report.admission).toMatchObject({ serve: true, outcome: 'allow' });
      // Pulled the same way, it is served.
      expect((await get(px, `demo/checked/manifests/${child.digest}`)).status).toBe(200);
    } finally {
      await px.stop();
    }
  });
});

describe('tag lists and referrers follow the repository rules', () => {
  test('a repository no scope allows gets 403 DENIED for its tag list and referrers, and nothing is fetched', async () => {
    const img = await pushImage(reg.url, 'demo/secret', 'v1');
    await pushImage(reg.url, 'demo/open', 'v1');
    const px = await startProxy({
      upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
      settings: { scopes: [{ name: 'open', images: ['*/demo/open'] }] },
    });
    try {
      reg.clearLog();
      for (const method of ['GET', 'HEAD']) {
        for (const path of ['demo/secret/tags/list', 'demo/secret/tags/list?n=0', `demo/secret/referrers/${img.digest}`]) {
          const res = await get(px, path, method);
          expect(res.status, `${method} ${path}`).toBe(403);
          expect(res.headers.get('portcullis-reason')).toContain('scope.no_match');
          if (method === 'GET') expect((await denial(res)).code).toBe('DENIED');
        }
      }
      expect([...upstream('tags'), ...upstream('referrers'), ...upstream('manifests')]).toEqual([]);
      const open = await get(px, 'demo/open/tags/list');
      expect(open.status).toBe(200);
      expect(((await open.json()) as { tags: string[] }).tags).toEqual(['v1']);
      expect((await get(px, `demo/open/referrers/${img.digest}`)).status).toBe(200);
    } finally {
      await px.stop();
    }
  });
});

describe('a denied tag does not cut off another client’s pull of the same bytes', () => {
  test('tag latest of digest D is denied while a client pulls D’s layers under tag 1.0: its pull goes on', async () => {
    const img = await pushImage(reg.url, 'demo/twotags', '1.0', { layers: 2 });
    await pushRaw(reg.url, 'demo/twotags', 'latest', img.manifest, img.manifestMediaType);
    const px = await startProxy({
      upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
      settings: { scopes: [{ name: 'all', images: ['**'], deny_tags: ['latest'] }] },
    });
    try {
      expect((await get(px, 'demo/twotags/manifests/1.0')).status).toBe(200);
      expect((await get(px, `demo/twotags/blobs/${img.layers[0]!.digest}`)).status).toBe(200);
      expect((await denial(await get(px, 'demo/twotags/manifests/latest'))).message).toContain('[tag.denied]');
      const rest = await get(px, `demo/twotags/blobs/${img.layers[1]!.digest}`);
      expect(rest.status).toBe(200);
      expect(sha256(Buffer.from(await rest.arrayBuffer()))).toBe(img.layers[1]!.digest);
    } finally {
      await px.stop();
    }
  });
});

describe('admissions are bound to the policy, settings and trust that decided them', () => {
  let app: PushedImage;
  let multi: PushedIndex;
  const up = (): Array<{ name: string; registry: string; url: string }> => [{ name: 'local', registry: reg.host, url: reg.url }];

  beforeAll(async () => {
    app = await pushImage(reg.url, 'demo/bound', 'v1', { layers: 2 });
    multi = await pushIndex(reg.url, 'demo/bound-multi', 'v1', [
      { os: 'linux', architecture: 'amd64' },
      { os: 'linux', architecture: 'arm64' },
    ]);
  });

  /** Starts a proxy, admits the image and the index with one child (as a pull in progress would have), stops it. */
  async function admitThenStop(dataDir: string): Promise<void> {
    const px = await startProxy({ upstreams: up(), dataDir });
    try {
      expect((await get(px, 'demo/bound/manifests/v1')).status).toBe(200);
      expect((await get(px, 'demo/bound-multi/manifests/v1')).status).toBe(200);
      expect((await get(px, `demo/bound-multi/manifests/${multi.children[0]!.digest}`)).status).toBe(200);
      expect((await get(px, `demo/bound/blobs/${app.layers[0]!.digest}`)).status).toBe(200);
    } finally {
      await px.stop();
    }
  }

  test('a restart with a policy denying the registry: children and blobs of earlier admissions are 403 with the reason', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'pc-bound-'));
    try {
      await admitThenStop(dataDir);
      const px = await startProxy({ upstreams: up(), dataDir, settings: { registries: ['registry.invalid'], scopes: [{ name: 'all', images: ['**'] }] } });
      try {
        reg.clearLog();
        const child = multi.children[0]!;
        for (const path of [
          `demo/bound/blobs/${app.layers[1]!.digest}`,
          `demo/bound/blobs/${app.layers[0]!.digest}`,
          `demo/bound-multi/blobs/${child.layers[0]!.digest}`,
          `demo/bound-multi/manifests/${child.digest}`,
        ]) {
          const err = await denial(await get(px, path));
          expect(err.message, path).toContain(`registry "${reg.host}" is not allowed`);
        }
        expect(upstream('blobs')).toEqual([]);
      } finally {
        await px.stop();
      }
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  });

  test('a restart with a changed policy that still allows: blobs by digest are served without a new manifest request', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'pc-bound-'));
    try {
      await admitThenStop(dataDir);
      const changed = { ...ALLOW_ALL, scopes: [{ name: 'bound', images: ['*/demo/bound*'] }, ...ALLOW_ALL.scopes] };
      const decisions: string[] = [];
      const px = await startProxy({
        upstreams: up(),
        dataDir,
        settings: changed,
        observers: [{ onDecision: (e) => decisions.push(`${e.input.image.digest} ${e.input.image.tag}`) }],
      });
      try {
        reg.clearLog();
        const child = multi.children[0]!;
        for (const [repo, d] of [
          ['demo/bound', app.layers[1]!],
          ['demo/bound', app.config],
          ['demo/bound-multi', child.layers[0]!],
          ['demo/bound-multi', child.config],
        ] as const) {
          const res = await get(px, `${repo}/blobs/${d.digest}`);
          expect(res.status, `${repo} ${d.digest}`).toBe(200);
          expect(sha256(Buffer.from(await res.arrayBuffer()))).toBe(d.digest);
        }
        // Decided again inline, from the store: the image as tagged, the index as tagged, then its child.
        expect(decisions).toEqual([`${app.digest} v1`, `${multi.digest} v1`, `${child.digest} null`]);
        expect(upstream('manifests')).toEqual([]);
      } finally {
        await px.stop();
      }
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  });

  test('a hot bundle reload: one that still allows keeps blobs flowing; one that denies stops them with its reason', async () => {
    requireTool('opa');
    const dir = await mkdtemp(join(tmpdir(), 'pc-bound-bundle-'));
    try {
      const bundle = join(dir, 'bundle.tar.gz');
      await copyFile(resolve('policies/bundle.tar.gz'), bundle);
      const src = join(dir, 'deny');
      await mkdir(src);
      await writeFile(
        join(src, 'deny.rego'),
        'package portcullis\n\ndecision := {"allow": false, "deny": [{"rule": "freeze.all", "message": "all pulls are frozen"}], "warn": [], "scope": null, "mode": "enforce"}\n',
      );
      const denyBundle = join(dir, 'deny.tar.gz');
      const built = await runTool('opa', ['build', '-t', 'wasm', '-e', 'portcullis/decision', '-r', 'freeze-1', '-o', denyBundle, src]);
      expect(built.code, built.stderr).toBe(0);

      const px = await startProxy({ upstreams: up(), extra: { policy: { bundleFile: bundle, pollInterval: '1h' } } });
      try {
        expect((await get(px, 'demo/bound/manifests/v1')).status).toBe(200);
        await repackWithRevision(resolve('policies/bundle.tar.gz'), bundle, 'still-allows-2');
        await px.proxy.policy.poll();
        expect(px.proxy.policy.revision).toBe('still-allows-2');
        reg.clearLog();
        const ok = await get(px, `demo/bound/blobs/${app.layers[0]!.digest}`);
        expect(ok.status).toBe(200);
        await ok.arrayBuffer();
        expect(upstream('manifests')).toEqual([]);

        await copyFile(denyBundle, bundle);
        await px.proxy.policy.poll();
        expect(px.proxy.policy.revision).toBe('freeze-1');
        const err = await denial(await get(px, `demo/bound/blobs/${app.layers[1]!.digest}`));
        expect(err.message).toContain('all pulls are frozen [freeze.all]');
      } finally {
        await px.stop();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('an external OPA that activates a new bundle revision: admissions are decided again, and a freezing bundle stops blobs', async () => {
    requireTool('opa');
    const dir = await mkdtemp(join(tmpdir(), 'pc-bound-opa-'));
    const children: ChildProcess[] = [];
    let served = Buffer.alloc(0);
    const bundles = createServer((req, res) => {
      if (req.url !== '/bundles/p.tar.gz') return void res.writeHead(404).end();
      res.writeHead(200, { 'content-type': 'application/gzip' }).end(served);
    });
    try {
      const data = join(dir, 'data');
      await mkdir(data);
      await writeFile(join(data, 'data.json'), JSON.stringify({ portcullis: { config: ALLOW_ALL } }));
      const freeze = join(dir, 'freeze');
      await mkdir(freeze);
      await writeFile(
        join(freeze, 'freeze.rego'),
        'package portcullis\n\ndecision := {"allow": false, "deny": [{"rule": "freeze.all", "message": "all pulls are frozen"}], "warn": [], "scope": null, "mode": "enforce"}\n',
      );
      const b1 = join(dir, 'b1.tar.gz');
      const b2 = join(dir, 'b2.tar.gz');
      for (const [out, rev, srcs] of [
        [b1, 'opa-1', [resolve('policies/portcullis'), data]],
        [b2, 'opa-2', [freeze]],
      ] as const) {
        const r = await runTool('opa', ['build', '--ignore', '*_test.rego', '-r', rev, '-o', out, ...srcs]);
        expect(r.code, r.stderr).toBe(0);
      }
      served = await readFile(b1);
      await new Promise<void>((r) => bundles.listen(0, '127.0.0.1', () => r()));
      const bundlePort = (bundles.address() as AddressInfo).port;
      const opaPort = await freePort();
      const cfg = join(dir, 'opa.yaml');
      await writeFile(
        cfg,
        `services:\n  local:\n    url: http://127.0.0.1:${bundlePort}\nbundles:\n  p:\n    service: local\n    resource: /bundles/p.tar.gz\n    polling: {min_delay_seconds: 1, max_delay_seconds: 1}\n`,
      );
      children.push(spawn('opa', ['run', '--server', '--addr', `127.0.0.1:${opaPort}`, '--log-level', 'error', '-c', cfg], { stdio: 'ignore' }));
      await waitFor(() =>
        fetch(`http://127.0.0.1:${opaPort}/health?bundles`).then(
          (r) => r.ok,
          () => false,
        ),
      );

      const px = await startProxy({
        upstreams: up(),
        extra: { policy: { opaUrl: `http://127.0.0.1:${opaPort}`, pollInterval: '200ms', allowInsecureHttp: true } },
      });
      try {
        expect((await get(px, 'demo/bound/manifests/v1')).status).toBe(200);
        expect(px.proxy.policy.revision).toBe(`opa-rest:127.0.0.1:${opaPort}#p=opa-1`);
        const ok = await get(px, `demo/bound/blobs/${app.layers[0]!.digest}`);
        expect(ok.status).toBe(200);
        await ok.arrayBuffer();
        served = await readFile(b2);
        await waitFor(() => px.proxy.policy.revision.endsWith('#p=opa-2'));
        const err = await denial(await get(px, `demo/bound/blobs/${app.layers[1]!.digest}`));
        expect(err.message).toContain('all pulls are frozen [freeze.all]');
      } finally {
        await px.stop();
      }
    } finally {
      for (const c of children) c.kill('SIGKILL');
      bundles.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

/** Polls until `cond` holds (at most 30 s). */
async function waitFor(cond: () => boolean | Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 100));
  }
}
