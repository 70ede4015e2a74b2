/**
 * The admission gate against a real Distribution upstream: denials and their explanations, the bypass catalogue
 * (nothing of a denied image reaches the client by digest), modes, fail-closed evaluation errors, and policy
 * hot reload from a file. Policy decisions come from the committed WASM bundle (real `opa build` output).
 */
import { copyFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { MANIFEST_ACCEPT, pushImage, pushIndex, type PushedImage, type PushedIndex } from '../harness/images.js';
import { startProxy, type RunningProxy } from '../harness/proxy.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';

let reg: RunningRegistry;
let allowed: PushedImage;
let blocked: PushedImage;
let blockedIndex: PushedIndex;

const settings = {
  no_match: 'deny',
  scopes: [
    // Denied by tag (tag.denied) and by digest (a signature is required, and none is configured).
    { name: 'blocked-repo', images: ['*/demo/blocked', '*/demo/blocked-multi'], deny_tags: ['*'], signatures: { authorities: ['release-team'] } },
    { name: 'warned', images: ['*/demo/warned'], mode: 'warn', deny_tags: ['*'] },
    { name: 'dry', images: ['*/demo/dry'], mode: 'dry-run', deny_tags: ['*'] },
    // Signatures are required but not configured in the proxy, so every digest here is denied unless excepted.
    { name: 'moving', images: ['*/demo/moving'], signatures: { authorities: ['release-team'] } },
    { name: 'all', images: ['**'], deny_tags: ['latest'] },
  ],
  exceptions: [] as unknown[],
};

async function get(p: RunningProxy, path: string, method = 'GET'): Promise<Response> {
  return fetch(`${p.url}${path}`, { method, headers: { accept: MANIFEST_ACCEPT } });
}

async function errorOf(res: Response): Promise<{ code: string; message: string; detail: unknown }> {
  const body = (await res.json()) as { errors: Array<{ code: string; message: string; detail: unknown }> };
  return body.errors[0]!;
}

beforeAll(async () => {
  reg = await startRegistry();
  allowed = await pushImage(reg.url, 'demo/app', 'v1', { layers: 2 });
  blocked = await pushImage(reg.url, 'demo/blocked', 'v1', { layers: 2 });
  blockedIndex = await pushIndex(reg.url, 'demo/blocked-multi', 'v1', [
    { os: 'linux', architecture: 'amd64' },
    { os: 'linux', architecture: 'arm64' },
  ]);
});

afterAll(async () => {
  await reg?.stop();
});

describe('decisions and the bypass catalogue', () => {
  let px: RunningProxy;
  beforeAll(async () => {
    px = await startProxy({ upstreams: [{ name: 'local', registry: reg.host, url: reg.url }], settings });
  });
  afterAll(async () => px?.stop());

  test('an allowed image is served: manifest, config and layers', async () => {
    const m = await get(px, `/v2/${reg.host}/demo/app/manifests/v1`);
    expect(m.status).toBe(200);
    expect(m.headers.get('portcullis-decision-id')).toMatch(/^[0-9a-f-]{36}$/);
    for (const d of [allowed.config, ...allowed.layers]) {
      const b = await get(px, `/v2/${reg.host}/demo/app/blobs/${d.digest}`);
      expect(b.status).toBe(200);
      expect(Buffer.from(await b.arrayBuffer()).length).toBe(d.size);
    }
  });

  test('a denied tag gets 403 DENIED naming the rule, the image and the decision id', async () => {
    const res = await get(px, `/v2/${reg.host}/demo/blocked/manifests/v1`);
    expect(res.status).toBe(403);
    const err = await errorOf(res);
    expect(err.code).toBe('DENIED');
    expect(err.message).toContain(`denied ${reg.host}/demo/blocked@${blocked.digest}`);
    expect(err.message).toContain('tag "v1" is not allowed [tag.denied]');
    expect(err.message).toMatch(/\[decision [0-9a-f-]{36}\]$/);
    expect(err.message).not.toContain('\n');
    expect((err.detail as { violations: Array<{ rule: string }> }).violations.map((v) => v.rule)).toContain('tag.denied');
  });

  test('HEAD carries the decision id and reason in headers, with no body', async () => {
    const res = await get(px, `/v2/${reg.host}/demo/blocked/manifests/v1`, 'HEAD');
    expect(res.status).toBe(403);
    expect(res.headers.get('portcullis-decision-id')).toMatch(/^[0-9a-f-]{36}$/);
    expect(res.headers.get('portcullis-reason')).toContain('tag.denied');
    expect(await res.text()).toBe('');
  });

  test("bypass: a denied image's layers and config by digest are refused without touching the upstream", async () => {
    await get(px, `/v2/${reg.host}/demo/blocked/manifests/v1`);
    reg.clearLog();
    for (const d of [blocked.config, ...blocked.layers]) {
      for (const method of ['GET', 'HEAD']) {
        const res = await get(px, `/v2/${reg.host}/demo/blocked/blobs/${d.digest}`, method);
        expect(res.status).toBe(403);
        if (method === 'GET') expect((await errorOf(res)).message).toContain('not part of an admitted image');
      }
    }
    // The same layer is not reachable through another repository's name either.
    const cross = await get(px, `/v2/${reg.host}/demo/app/blobs/${blocked.layers[0]!.digest}`);
    expect(cross.status).toBe(403);
    expect(reg.requests().filter((r) => r.path.includes('/blobs/'))).toEqual([]);
  });

  test('bypass: the root of a denied image by digest, GET and HEAD, and HEAD blobs/<manifest digest>', async () => {
    for (const method of ['GET', 'HEAD']) {
      const res = await get(px, `/v2/${reg.host}/demo/blocked/manifests/${blocked.digest}`, method);
      expect(res.status).toBe(403);
      expect(res.headers.get('portcullis-reason')).toContain('signature.required');
      if (method === 'GET') expect(await res.text()).toContain(`denied ${reg.host}/demo/blocked@${blocked.digest}`);
    }
    const blobHead = await get(px, `/v2/${reg.host}/demo/blocked/blobs/${blocked.digest}`, 'HEAD');
    expect(blobHead.status).toBe(403);
  });

  test("bypass: a denied index's child manifests and their layers by digest are refused", async () => {
    const idx = await get(px, `/v2/${reg.host}/demo/blocked-multi/manifests/v1`);
    expect(idx.status).toBe(403);
    reg.clearLog();
    for (const child of blockedIndex.children) {
      // A child by digest is not in any admitted closure, so it is a root of its own and is decided: denied.
      const cm = await get(px, `/v2/${reg.host}/demo/blocked-multi/manifests/${child.digest}`);
      expect(cm.status).toBe(403);
      expect(await cm.text()).toContain('signature.required');
      const m = await get(px, `/v2/${reg.host}/demo/blocked-multi/blobs/${child.layers[0]!.digest}`);
      expect(m.status).toBe(403);
    }
    expect(reg.requests().filter((r) => r.path.includes('/blobs/'))).toEqual([]);
  });

  test('bypass: an unconfigured ns or path prefix is refused with NAME_UNKNOWN', async () => {
    const a = await get(px, `/v2/demo/app/manifests/v1?ns=evil.example.com`);
    expect(a.status).toBe(404);
    expect((await errorOf(a)).code).toBe('NAME_UNKNOWN');
    const b = await get(px, `/v2/evil.example.com/demo/app/manifests/v1`);
    expect(b.status).toBe(404);
    expect((await errorOf(b)).code).toBe('NAME_UNKNOWN');
  });

  test('warn mode serves with a Warning header; dry-run serves silently', async () => {
    await pushImage(reg.url, 'demo/warned', 'v1');
    await pushImage(reg.url, 'demo/dry', 'v1');
    const w = await get(px, `/v2/${reg.host}/demo/warned/manifests/v1`);
    expect(w.status).toBe(200);
    expect(w.headers.get('warning')).toMatch(/^299 - "portcullis: would deny .*tag\.denied/);
    const d = await get(px, `/v2/${reg.host}/demo/dry/manifests/v1`);
    expect(d.status).toBe(200);
    expect(d.headers.get('warning')).toBeNull();
    const metrics = await (await fetch(`${px.url}/metrics`)).text();
    expect(metrics).toMatch(/portcullis_decisions_total\{outcome="warn",rule="tag.denied",upstream="local",mode="warn"\} 1/);
    expect(metrics).toMatch(/portcullis_decisions_total\{outcome="dry-run-deny",rule="tag.denied",upstream="local",mode="dry-run"\} 1/);
    expect(metrics).toMatch(/portcullis_decisions_total\{outcome="deny",rule="signature.required",upstream="local",mode="enforce"\} \d+/);
  });
});

describe('a tag that moves to a denied digest gets a new decision', () => {
  test('admitted digest A, then the tag moves to B, which is denied', async () => {
    const a = await pushImage(reg.url, 'demo/moving', 'prod');
    const s = structuredClone(settings);
    s.exceptions = [{ digests: [a.digest], rules: ['signature.required'], owner: 'sec', reason: 'grandfathered', expires: '2999-01-01T00:00:00Z' }];
    const px = await startProxy({ upstreams: [{ name: 'local', registry: reg.host, url: reg.url }], settings: s, extra: { cache: { tagTTL: '0s' } } });
    try {
      const first = await get(px, `/v2/${reg.host}/demo/moving/manifests/prod`);
      expect(first.status).toBe(200);
      expect(first.headers.get('docker-content-digest')).toBe(a.digest);
      const b = await pushImage(reg.url, 'demo/moving', 'prod');
      const second = await get(px, `/v2/${reg.host}/demo/moving/manifests/prod`);
      expect(second.status).toBe(403);
      const err = await errorOf(second);
      expect(err.message).toContain(`@${b.digest}`);
      expect(err.message).toContain('signature.required');
      // B's layers stay unreachable, A's (admitted) stay reachable.
      expect((await get(px, `/v2/${reg.host}/demo/moving/blobs/${b.layers[0]!.digest}`)).status).toBe(403);
      expect((await get(px, `/v2/${reg.host}/demo/moving/blobs/${a.layers[0]!.digest}`)).status).toBe(200);
    } finally {
      await px.stop();
    }
  });
});

describe('fail closed', () => {
  test('an unreachable external OPA denies with the error in the reason', async () => {
    const px = await startProxy({
      upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
      extra: { policy: { opaUrl: 'http://127.0.0.1:9/', opaTimeout: '1s', allowInsecureHttp: true } },
    });
    try {
      const res = await get(px, `/v2/${reg.host}/demo/app/manifests/v1`);
      expect(res.status).toBe(403);
      const err = await errorOf(res);
      expect(err.message).toContain('policy evaluation failed');
      expect(err.message).toContain('[policy.error]');
      reg.clearLog();
      expect((await get(px, `/v2/${reg.host}/demo/app/blobs/${allowed.layers[0]!.digest}`)).status).toBe(403);
      expect(reg.requests().filter((r) => r.path.includes('/blobs/'))).toEqual([]);
    } finally {
      await px.stop();
    }
  });
});

describe('hot reload from a bundle file', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'pc-bundle-'));
  });
  afterAll(async () => rm(dir, { recursive: true, force: true }));

  test('a broken bundle keeps the last good revision deciding; a good one takes over within a poll', async () => {
    const bundle = join(dir, 'bundle.tar.gz');
    await copyFile(resolve('policies/bundle.tar.gz'), bundle);
    const px = await startProxy({
      upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
      settings,
      extra: { policy: { bundleFile: bundle, pollInterval: '100ms' } },
    });
    try {
      const goodRevision = px.proxy.policy.revision;
      // Pulls keep running while the file is swapped for garbage.
      let failures = 0;
      let running = true;
      const puller = (async () => {
        let n = 0;
        while (running && n++ < 500) {
          const r = await get(px, `/v2/${reg.host}/demo/app/manifests/v1`);
          if (r.status !== 200) failures++;
          await r.arrayBuffer();
        }
      })();
      await writeFile(bundle, 'this is not a bundle');
      await px.proxy.policy.poll();
      expect(px.proxy.policy.last?.ok).toBe(false);
      expect(px.proxy.policy.revision).toBe(goodRevision);
      const metrics = await (await fetch(`${px.url}/metrics`)).text();
      expect(metrics).toMatch(/portcullis_policy_last_reload_success 0/);
      expect(metrics).toMatch(/portcullis_policy_reloads_total\{result="error"\} [1-9]/);
      // A denied image is still denied by the old revision.
      expect((await get(px, `/v2/${reg.host}/demo/blocked/manifests/v1`)).status).toBe(403);

      // A good bundle with another revision: the same policy, re-stamped. Wait for the poller, not poll().
      const { repackWithRevision } = await import('../harness/bundles.js');
      await repackWithRevision(resolve('policies/bundle.tar.gz'), bundle, 'reloaded-1');
      const deadline = Date.now() + 5_000;
      while (px.proxy.policy.revision !== 'reloaded-1' && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      expect(px.proxy.policy.revision).toBe('reloaded-1');
      running = false;
      await puller;
      expect(failures).toBe(0);
      const res = await get(px, `/v2/${reg.host}/demo/app/manifests/v1`);
      expect(res.status).toBe(200);
      const after = await (await fetch(`${px.url}/metrics`)).text();
      expect(after).toMatch(/portcullis_policy_bundle_info\{revision="reloaded-1",source="file"\} 1/);
      expect(after).toMatch(/portcullis_policy_last_reload_success 1/);
    } finally {
      await px.stop();
    }
  });
});
