/**
 * e2e: real registry clients pull real images from a real CNCF Distribution through Portcullis.
 *
 * Images, pushed straight to Distribution (test/harness/images.ts, uncompressed tar layers):
 *   e2e/single:v1   one platform, 2 layers
 *   e2e/multi:v1    an OCI index over linux/amd64 and linux/arm64
 *   e2e/large:v1    200 MiB in 5 layers of 40 MiB
 *   e2e/ctr:v1      only ever pulled by containerd, so its decision and its upstream fetches are made on ns= requests
 *   e2e/app:blocked denied by the scope's deny_tags
 *
 * Routing: containers/image and crane name the upstream in the path (`<proxy>/<upstream host>/<repo>`). A docker
 * reference cannot carry a port inside its path (`127.0.0.1:P/127.0.0.1:U/repo` is "invalid reference format" for
 * skopeo, crane and podman alike), so the upstream gets a port-less alias, `upstream.e2e`, for the path prefix.
 * containerd names it with `?ns=127.0.0.1:U`, which may carry a port.
 *
 * Needs root (containerd) and the tools of scripts/install-tools.sh; a missing tool fails loudly.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DecisionObserver } from '../../src/gate/gate.js';
import {
  type ContainerdHandle,
  crane,
  cranePull,
  expectOk,
  podmanProbe,
  podmanPull,
  skopeo,
  skopeoCopy,
  startContainerd,
  writeHostsDir,
} from '../harness/clients.js';
import { type PushedImage, type PushedIndex, pushImage, pushIndex } from '../harness/images.js';
import { startProxy, type RunningProxy } from '../harness/proxy.js';
import { type RunningRegistry, startRegistry } from '../harness/registry.js';
import { clientConfig } from '../../src/clients/config.js';

const ALIAS = 'upstream.e2e';
const PROXY_UA = 'portcullis/0.1';

let reg: RunningRegistry;
let proxy: RunningProxy;
let tmp: string;
let single: PushedImage;
let multi: PushedIndex;
let large: PushedImage;
let ctrImage: PushedImage;
const decisions: Array<Parameters<DecisionObserver['onDecision']>[0]> = [];
/** Never cleared: a denial may come from the decision cache, made by an earlier test's request. */
const everyDecision: typeof decisions = [];

async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 })) h.update(chunk as Buffer);
  return `sha256:${h.digest('hex')}`;
}

/** Every blob of an image: config + layers. */
const blobsOf = (img: PushedImage): string[] => [img.config.digest, ...img.layers.map((l) => l.digest)];

/**
 * Checks a skopeo `dir:` copy: every file named by a hex digest hashes to that digest, and the expected blobs are all
 * there. Returns the set of digests found.
 */
async function checkDir(dir: string, expected: string[]): Promise<Set<string>> {
  const found = new Set<string>();
  for (const f of await readdir(dir)) {
    const m = /^([0-9a-f]{64})(\.manifest\.json)?$/.exec(f);
    if (!m) continue;
    const d = `sha256:${m[1]}`;
    expect(await sha256File(path.join(dir, f)), `${f} must hash to its name`).toBe(d);
    found.add(d);
  }
  for (const d of expected) expect(found.has(d), `blob ${d} copied`).toBe(true);
  return found;
}

/** Checks a crane `--format oci` layout: every blob hashes to its name; returns the digests present. */
async function checkLayout(dir: string): Promise<Set<string>> {
  const found = new Set<string>();
  const blobDir = path.join(dir, 'blobs', 'sha256');
  for (const f of await readdir(blobDir)) {
    const d = `sha256:${f}`;
    expect(await sha256File(path.join(blobDir, f)), `${f} must hash to its name`).toBe(d);
    found.add(d);
  }
  return found;
}

interface Recorded {
  method: string;
  url: string;
  status: number;
  ociNamespace: string | undefined;
  userAgent: string | undefined;
}

/** A pass-through HTTP server that records each request and the proxy's answer (the testbed's logproxy). */
async function startRecorder(target: string): Promise<{ url: string; seen: Recorded[]; stop(): Promise<void> }> {
  const t = new URL(target);
  const seen: Recorded[] = [];
  const srv = http.createServer((req, res) => {
    const up = http.request({ host: t.hostname, port: t.port, method: req.method, path: req.url, headers: req.headers }, (ur) => {
      seen.push({
        method: req.method ?? '',
        url: req.url ?? '',
        status: ur.statusCode ?? 0,
        ociNamespace: ur.headers['oci-namespace'] as string | undefined,
        userAgent: req.headers['user-agent'],
      });
      res.writeHead(ur.statusCode ?? 502, ur.headers);
      ur.pipe(res);
    });
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  return {
    url: `http://127.0.0.1:${(srv.address() as AddressInfo).port}`,
    seen,
    stop: () => {
      srv.closeAllConnections();
      return new Promise((r) => srv.close(() => r()));
    },
  };
}

beforeAll(async () => {
  tmp = await mkdtemp('/tmp/pce2e-');
  reg = await startRegistry();
  single = await pushImage(reg.url, 'e2e/single', 'v1', { layers: 2, layerSizeMiB: 1 });
  multi = await pushIndex(
    reg.url,
    'e2e/multi',
    'v1',
    [
      { os: 'linux', architecture: 'amd64' },
      { os: 'linux', architecture: 'arm64' },
    ],
    { layers: 1, layerSizeMiB: 0.5 },
  );
  large = await pushImage(reg.url, 'e2e/large', 'v1', { layers: 5, layerSizeMiB: 40 });
  ctrImage = await pushImage(reg.url, 'e2e/ctr', 'v1', { layers: 2, layerSizeMiB: 0.5 });
  await pushImage(reg.url, 'e2e/app', 'blocked', { layers: 1 });
  await pushImage(reg.url, 'e2e/app', 'ok', { layers: 1 });
  proxy = await startProxy({
    upstreams: [{ name: 'local', registry: reg.host, url: reg.url, aliases: [ALIAS] }],
    settings: { no_match: 'deny', scopes: [{ name: 'all', images: ['**'], deny_tags: ['blocked'] }] },
    observers: [{ onDecision: (e) => void (decisions.push(e), everyDecision.push(e)) }],
  });
  reg.clearLog();
}, 120_000);

afterAll(async () => {
  await proxy?.stop();
  await reg?.stop();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

describe('skopeo through the path prefix', () => {
  it('copies a single-arch image; every blob matches its pushed digest', async () => {
    const dest = path.join(tmp, 'sk-single');
    expectOk(await skopeoCopy(`docker://${proxy.host}/${ALIAS}/e2e/single:v1`, dest), 'skopeo copy single');
    await checkDir(dest, blobsOf(single));
    expect(await readFile(path.join(dest, 'manifest.json'))).toEqual(single.manifest);
    // Everything the upstream served went to the proxy, once per blob.
    const seen = reg.requests();
    expect(seen.every((r) => r.userAgent === PROXY_UA)).toBe(true);
    for (const d of blobsOf(single)) expect(seen.filter((r) => r.method === 'GET' && r.path.endsWith(`/blobs/${d}`))).toHaveLength(1);
  });

  it('copies the 2-platform index with --all', async () => {
    const dest = path.join(tmp, 'sk-multi');
    expectOk(await skopeoCopy(`docker://${proxy.host}/${ALIAS}/e2e/multi:v1`, dest, { all: true }), 'skopeo copy --all');
    const found = await checkDir(dest, multi.children.flatMap(blobsOf));
    for (const c of multi.children) expect(found.has(c.digest), `child manifest ${c.platform.architecture}`).toBe(true);
    expect(await readFile(path.join(dest, 'manifest.json'))).toEqual(multi.manifest);
  });

  it('copies the 200 MiB image in 5 layers', async () => {
    const dest = path.join(tmp, 'sk-large');
    const t0 = performance.now();
    expectOk(await skopeoCopy(`docker://${proxy.host}/${ALIAS}/e2e/large:v1`, dest), 'skopeo copy large');
    const ms = performance.now() - t0;
    await checkDir(dest, blobsOf(large));
    const total = large.layers.reduce((a, l) => a + l.size, 0);
    expect(total).toBeGreaterThan(200 * 1024 * 1024);
    await rm(dest, { recursive: true, force: true });
    // For the report only (the benchmark issue measures properly): the same copy straight from the upstream.
    const t1 = performance.now();
    expectOk(await skopeoCopy(`docker://${reg.host}/e2e/large:v1`, dest), 'skopeo copy large direct');
    const direct = performance.now() - t1;
    console.info(`skopeo pull of ${(total / 2 ** 20).toFixed(0)} MiB: cold through the proxy ${ms.toFixed(0)} ms, direct ${direct.toFixed(0)} ms`);
    await rm(dest, { recursive: true, force: true });
  }, 60_000);

  it('shows the deny message for a denied tag', async () => {
    const r = await skopeoCopy(`docker://${proxy.host}/${ALIAS}/e2e/app:blocked`, path.join(tmp, 'sk-blocked'));
    expect(r.code).not.toBe(0);
    // skopeo's logrus output escapes the quotes: tag \"blocked\". It prints the OCI error body of the GET, as
    // before the reason phrase (issue 14): the reason, the rule and the decision id, whole.
    expect(r.stderr).toMatch(
      /reading manifest blocked in [\d.:]+\/upstream\.e2e\/e2e\/app: denied: portcullis: denied 127\.0\.0\.1:\d+\/e2e\/app@sha256:[0-9a-f]{64}: tag \\?"blocked\\?" is not allowed \[tag\.denied\] \[decision [0-9a-f-]{36}\]/,
    );
    // The same repository's other tags still pull.
    expectOk(await skopeoCopy(`docker://${proxy.host}/${ALIAS}/e2e/app:ok`, path.join(tmp, 'sk-ok')), 'skopeo copy app:ok');
  });
});

describe('tag listing through the path prefix', () => {
  it('skopeo inspect and crane ls see the upstream tags', async () => {
    const r = expectOk(await skopeo(['--insecure-policy', 'inspect', '--tls-verify=false', `docker://${proxy.host}/${ALIAS}/e2e/app:ok`]), 'skopeo inspect');
    const info = JSON.parse(r.stdout) as { RepoTags: string[]; Digest: string; Name: string };
    expect(info.RepoTags.sort()).toEqual(['blocked', 'ok']);
    expect(info.Name).toBe(`${proxy.host}/${ALIAS}/e2e/app`);
    const ls = expectOk(await crane(['ls', '--insecure', `${proxy.host}/${ALIAS}/e2e/app`]), 'crane ls');
    expect(ls.stdout.trim().split('\n').sort()).toEqual(['blocked', 'ok']);
  });
});

describe('crane through the path prefix', () => {
  it('pulls the single-arch image as an OCI layout', async () => {
    const dest = path.join(tmp, 'cr-single');
    expectOk(await cranePull(`${proxy.host}/${ALIAS}/e2e/single:v1`, dest, { format: 'oci' }), 'crane pull');
    const found = await checkLayout(dest);
    for (const d of [single.digest, ...blobsOf(single)]) expect(found.has(d), d).toBe(true);
  });

  it('pulls linux/arm64 out of the index', async () => {
    const dest = path.join(tmp, 'cr-arm64');
    expectOk(await cranePull(`${proxy.host}/${ALIAS}/e2e/multi:v1`, dest, { format: 'oci', platform: 'linux/arm64' }), 'crane pull arm64');
    const found = await checkLayout(dest);
    const arm = multi.children.find((c) => c.platform.architecture === 'arm64')!;
    const amd = multi.children.find((c) => c.platform.architecture === 'amd64')!;
    for (const d of [arm.digest, ...blobsOf(arm)]) expect(found.has(d), d).toBe(true);
    for (const d of amd.layers.map((l) => l.digest)) expect(found.has(d), `amd64 layer ${d} must not be pulled`).toBe(false);
  });

  it('pulls the 200 MiB image (tarball, from the now warm cache)', async () => {
    const dest = path.join(tmp, 'cr-large.tar');
    const t0 = performance.now();
    expectOk(await cranePull(`${proxy.host}/${ALIAS}/e2e/large:v1`, dest), 'crane pull large');
    console.info(`crane warm pull of the 200 MiB image: ${(performance.now() - t0).toFixed(0)} ms`);
    expect((await stat(dest)).size).toBeGreaterThan(200 * 1024 * 1024);
    await rm(dest, { force: true });
  }, 60_000);
});

describe('containerd 1.6 (ctr --hosts-dir, fallback-proof hosts.toml, routed by ns)', () => {
  let cd: ContainerdHandle;
  let hostsDir: string;
  let snapshotter: 'overlayfs' | 'native' = 'overlayfs';

  beforeAll(async () => {
    cd = await startContainerd();
    hostsDir = path.join(tmp, 'hosts');
    await writeHostsDir(hostsDir, reg.host, proxy.url);
  }, 60_000);
  afterAll(async () => {
    await cd?.stop();
  });

  /** Pull with overlayfs; if this sandbox cannot mount overlay, fall back to native once and for all. */
  async function pull(ref: string, namespace: string, dir = hostsDir) {
    let r = await cd.pull(ref, { hostsDir: dir, namespace, snapshotter });
    if (r.code !== 0 && snapshotter === 'overlayfs' && /overlay|mount/i.test(r.stderr)) {
      console.warn(`overlayfs unpack failed here, using the native snapshotter: ${r.stderr.trim().split('\n').pop()}`);
      snapshotter = 'native';
      r = await cd.pull(ref, { hostsDir: dir, namespace, snapshotter });
    }
    return r;
  }

  /** Committed snapshot directories holding a layer's data.bin of the given size. */
  async function unpackedDataFiles(sizes: number[]): Promise<number> {
    const snapDir = path.join(cd.dir, 'root', `io.containerd.snapshotter.v1.${snapshotter}`, 'snapshots');
    let hits = 0;
    const want = new Set(sizes);
    for (const id of await readdir(snapDir)) {
      const f = path.join(snapDir, id, snapshotter === 'overlayfs' ? 'fs' : '', 'data.bin');
      const st = await stat(f).catch(() => undefined);
      if (st && want.has(st.size)) hits++;
    }
    return hits;
  }

  it('pulls and unpacks through the proxy; every request carried ns and nothing bypassed it', async () => {
    reg.clearLog();
    decisions.length = 0;
    // This pull goes through a recording pass-through in front of the proxy, to see containerd's own requests.
    const recorder = await startRecorder(proxy.url);
    const recHosts = path.join(tmp, 'hosts-rec');
    await writeHostsDir(recHosts, reg.host, recorder.url);
    const ref = `${reg.host}/e2e/ctr:v1`;
    let r;
    try {
      r = expectOk(await pull(ref, 'e2e', recHosts), 'ctr pull via hosts dir');
    } finally {
      await recorder.stop();
    }
    const ns = `ns=${encodeURIComponent(reg.host)}`;
    // (A set: should the overlayfs fallback have re-run the pull, containerd repeats some of these.)
    expect([...new Set(recorder.seen.map((x) => `${x.method} ${x.url}`))].sort()).toEqual(
      [
        `HEAD /v2/e2e/ctr/manifests/v1?${ns}`,
        `GET /v2/e2e/ctr/manifests/${ctrImage.digest}?${ns}`,
        ...blobsOf(ctrImage).map((d) => `GET /v2/e2e/ctr/blobs/${d}?${ns}`),
      ].sort(),
    );
    for (const x of recorder.seen) {
      expect(x.status).toBe(200);
      expect(x.ociNamespace).toBe(reg.host);
      expect(x.userAgent).toMatch(/^containerd\//);
    }
    expect(r.stdout).toMatch(/unpacking linux\/amd64 sha256:[0-9a-f]{64}\.\.\.\s*done/);
    // The root decision was made on a request routed by ns= (containerd adds ns=<registry host>).
    const d = decisions.find((e) => e.input.image.repository === 'e2e/ctr');
    expect(d?.route.routing).toBe('ns');
    expect(d?.route.ns).toBe(reg.host);
    expect(d?.input.request.client.user_agent).toMatch(/^containerd\//);
    // The upstream saw only the proxy: manifest by tag (HEAD), manifest by digest and each blob once.
    const seen = await reg.waitForRequests((x) => x.method === 'GET' && x.path.includes('/blobs/'), 3, 5000);
    expect(seen).toHaveLength(3);
    expect(reg.requests().every((x) => x.userAgent === PROXY_UA)).toBe(true);
    for (const b of blobsOf(ctrImage)) expect(seen.some((x) => x.path.endsWith(b))).toBe(true);
    expect(await unpackedDataFiles([512 * 1024])).toBe(2);
    const ls = expectOk(await cd.ctr(['-n', 'e2e', 'images', 'check']), 'ctr images check');
    expect(ls.stdout).toMatch(new RegExp(`${reg.host.replace(/\./g, '\\.')}/e2e/ctr:v1\\s.*complete`));
  });

  it('pulls the index (linux/amd64) and the 200 MiB image', async () => {
    expectOk(await pull(`${reg.host}/e2e/multi:v1`, 'e2e'), 'ctr pull multi');
    const t0 = performance.now();
    const r = expectOk(await pull(`${reg.host}/e2e/large:v1`, 'e2e'), 'ctr pull large');
    console.info(`ctr pull + unpack (${snapshotter}) of the 200 MiB image, warm proxy: ${(performance.now() - t0).toFixed(0)} ms`);
    expect(r.stdout).toContain('done');
    expect(await unpackedDataFiles([40 * 1024 * 1024])).toBe(5);
    expect(reg.requests().every((x) => x.userAgent === PROXY_UA)).toBe(true);
  }, 90_000);

  it('pulls by digest (the digest is the root the gate decides on)', async () => {
    reg.clearLog();
    const r = expectOk(await pull(`${reg.host}/e2e/single@${single.digest}`, 'bydigest'), 'ctr pull by digest');
    expect(r.stdout).toContain('done');
    expect(reg.requests().filter((x) => x.userAgent !== PROXY_UA)).toEqual([]);
  });

  it('a denied tag fails the pull with the reason and decision id in the 403, and does not fall back to the upstream', async () => {
    reg.clearLog();
    const r = await pull(`${reg.host}/e2e/app:blocked`, 'e2e');
    expect(r.code).not.toBe(0);
    // containerd resolves with a HEAD, which has no body: it prints the status line, so the reason phrase carries
    // the rule, the reason and the decision id (before issue 14 this was `403 Forbidden`, testbed §5).
    const m = new RegExp(
      `pulling from host ${proxy.host.replace(/\./g, '\\.')} failed with status code \\[manifests blocked\\]: ` +
        `403 denied: tag\\.denied: tag "blocked" is not allowed \\[decision ([0-9a-f-]{36})\\]`,
    ).exec(r.stderr);
    expect(m, r.stderr).not.toBeNull();
    console.info(`ctr shows: ${r.stderr.trim().split('\n').pop()}`);
    // The id is a real decision's, the one the decision log records.
    expect(everyDecision.some((d) => d.admission.decisionId === m![1] && d.input.image.tag === 'blocked')).toBe(true);
    // The HEAD carries the same in headers, for logs and debugging tools:
    const head = await fetch(`${proxy.url}/v2/e2e/app/manifests/blocked?ns=${encodeURIComponent(reg.host)}`, { method: 'HEAD' });
    expect(head.status).toBe(403);
    expect(head.headers.get('portcullis-reason')).toBe('tag "blocked" is not allowed [tag.denied]');
    expect(reg.requests().filter((x) => x.userAgent !== PROXY_UA)).toEqual([]);
  });
});

describe('podman with a prefix→location rewrite', () => {
  it('pulls through the proxy', async () => {
    const probe = await podmanProbe();
    expect(probe, `podman info failed: ${probe.detail}`).toMatchObject({ ok: true });
    // What `portcullis client-config podman` writes for this proxy's config: the registry has a port, so its location
    // goes through the alias.
    const conf = path.join(tmp, 'registries.conf');
    const generated = clientConfig('podman', proxy.config, { proxyUrl: proxy.url });
    expect(generated.files[0]!.content).toContain(`location = "${proxy.host}/${ALIAS}"`);
    await writeFile(conf, ['unqualified-search-registries = []', generated.files[0]!.content].join('\n'));
    reg.clearLog();
    const r = expectOk(await podmanPull(`${reg.host}/e2e/single:v1`, { registriesConf: conf }), 'podman pull');
    expect(r.stderr).toContain('Writing manifest to image destination');
    expect(r.stdout.trim()).toMatch(/^[0-9a-f]{64}$/);
    // Served from the proxy's cache: the upstream saw at most a tag revalidation, and only from the proxy.
    expect(reg.requests().filter((x) => x.userAgent !== PROXY_UA)).toEqual([]);

    const denied = await podmanPull(`${reg.host}/e2e/app:blocked`, { registriesConf: conf });
    expect(denied.code).not.toBe(0);
    // The OCI error body of the GET, as before the reason phrase (issue 14): reason, rule and decision id, whole.
    expect(denied.stderr).toMatch(/denied: portcullis: denied .*tag "blocked" is not allowed \[tag\.denied\] \[decision [0-9a-f-]{36}\]/);
  }, 90_000);
});
