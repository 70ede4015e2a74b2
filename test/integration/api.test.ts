/**
 * The registry API served by Portcullis, end to end against a REAL upstream: CNCF Distribution 2.8 (Debian's
 * `docker-registry`) on loopback, with content pushed over its HTTP API. The proxy runs in-process
 * (test/harness/proxy.ts) with the committed policy bundle and an allow-all scope unless a test says otherwise.
 *
 * Where a claim is "no outbound request", it is proven from the proxy's own upstream request counter (incremented
 * before any upstream response is read) AND from a record that the upstream side keeps (the registry's access log,
 * or a live but unconfigured fake registry that must see nothing).
 *
 * The only content Distribution 2.8 cannot hold (a schema1 manifest: 2.8 refuses to store one) comes from the
 * hand-written fake upstream (test/harness/fake-upstream.ts).
 */
import { existsSync } from 'node:fs';
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFakeUpstream, type FakeUpstream } from '../harness/fake-upstream.js';
import { MT, pushBlob, pushImage, pushIndex, pushRaw, sha256, type PushedImage, type PushedIndex } from '../harness/images.js';
import { startProxy, type RunningProxy } from '../harness/proxy.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';

// ---------------------------------------------------------------------------------------------------------------
// helpers

interface Got {
  status: number;
  headers: Headers;
  body: Buffer;
}

async function get(url: string, init: RequestInit = {}): Promise<Got> {
  const res = await fetch(url, init);
  return { status: res.status, headers: res.headers, body: Buffer.from(await res.arrayBuffer()) };
}

const ACCEPT_ALL = [MT.ociIndex, MT.ociManifest, MT.dockerList, MT.dockerManifest].join(', ');
const accept = (a: string = ACCEPT_ALL): RequestInit => ({ headers: { accept: a } });

/** The single OCI error of an error response body. */
function ociError(g: Got): { code: string; message: string; detail: unknown } {
  expect(g.headers.get('content-type')).toMatch(/^application\/json/);
  const doc = JSON.parse(g.body.toString('utf8')) as { errors: Array<{ code: string; message: string; detail: unknown }> };
  expect(Array.isArray(doc.errors)).toBe(true);
  expect(doc.errors.length).toBeGreaterThan(0);
  return doc.errors[0]!;
}

/** A request whose path is sent byte for byte (fetch would normalise `..` away), with arbitrary headers. */
function raw(
  base: string,
  method: string,
  path: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; headers: IncomingHttpHeaders; body: Buffer }> {
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: u.hostname, port: u.port, method, path, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

/** Total upstream requests the proxy has sent (any upstream, any outcome). */
async function upstreamCalls(p: RunningProxy): Promise<number> {
  const m = await p.proxy.app.metrics.upstreamRequests.get();
  return m.values.reduce((s, v) => s + v.value, 0);
}

/** Value of one sample in Prometheus text format, labels matched in any order; 0 when absent. */
function metricValue(text: string, name: string, labels: Record<string, string> = {}): number {
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const lbl = /\{([^}]*)\}/.exec(line)?.[1] ?? '';
    const have: Record<string, string | undefined> = Object.fromEntries(
      [...lbl.matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((m): [string, string | undefined] => [m[1] ?? '', m[2]]),
    );
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) return Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return 0;
}

/** Registry access-log requests after `fn`, given a moment for the log line (written after the response). */
async function settleLog(reg: RunningRegistry): Promise<void> {
  // Log lines trail responses by well under a few ms on loopback; a probe request with a known marker flushes
  // the ordering question entirely: once its line is in, every earlier request's line is too.
  const marker = `/v2/flush-${Math.random().toString(36).slice(2)}/tags/list`;
  await (await fetch(`${reg.url}${marker}`)).arrayBuffer();
  await reg.waitForRequests((r) => r.path === marker);
}

/** Forgets the access log, after letting the lines of requests already answered arrive. */
async function resetLog(reg: RunningRegistry): Promise<void> {
  await settleLog(reg);
  reg.clearLog();
}

function upstreamRequestsExcludingFlush(reg: RunningRegistry): Array<{ method: string; path: string }> {
  return reg.requests().filter((r) => !r.path.startsWith('/v2/flush-'));
}

// ---------------------------------------------------------------------------------------------------------------

describe('registry API against Distribution 2.8', () => {
  let reg: RunningRegistry;
  let proxy: RunningProxy;
  let H: string; // the registry host as clients name it, e.g. 127.0.0.1:5001
  let img: PushedImage; // team/app:v1, 2 layers
  let dockerImg: PushedImage; // team/docker:v1, docker v2 schema 2
  let idx: PushedIndex; // team/multi:latest, amd64 + arm64
  let hidden: PushedImage; // team/hidden:v1, never pulled through the proxy
  let locked: PushedIndex; // team/locked:v1, denied by policy
  let unconfigured: FakeUpstream; // a live registry that is NOT configured on the proxy

  beforeAll(async () => {
    reg = await startRegistry();
    H = reg.host;
    img = await pushImage(reg.url, 'team/app', 'v1', { layers: 2, layerSizeMiB: 0.05 });
    dockerImg = await pushImage(reg.url, 'team/docker', 'v1', { mediaType: 'docker' });
    idx = await pushIndex(reg.url, 'team/multi', 'latest', [
      { os: 'linux', architecture: 'amd64' },
      { os: 'linux', architecture: 'arm64', variant: 'v8' },
    ]);
    hidden = await pushImage(reg.url, 'team/hidden', 'v1');
    locked = await pushIndex(reg.url, 'team/locked', 'v1', [{ os: 'linux', architecture: 'amd64' }]);
    unconfigured = await startFakeUpstream();
    await resetLog(reg);
    proxy = await startProxy({
      upstreams: [{ name: 'local', registry: H, url: reg.url }],
      extra: { cache: { tagTTL: '1h' } },
      settings: {
        no_match: 'deny',
        scopes: [
          // Needs a signature the proxy cannot verify (none configured): every root in it is denied.
          { name: 'locked', images: [`${H}/team/locked`], signatures: { authorities: ['release-team'] } },
          { name: 'all', images: ['**'] },
        ],
      },
    });
  });

  afterAll(async () => {
    await proxy?.stop();
    await unconfigured?.stop();
    await reg?.stop();
  });

  describe('base, health and unknown routes', () => {
    it('GET and HEAD /v2/ answer 200 with Docker-Distribution-API-Version', async () => {
      for (const method of ['GET', 'HEAD']) {
        const r = await get(`${proxy.url}/v2/`, { method });
        expect(r.status).toBe(200);
        expect(r.headers.get('docker-distribution-api-version')).toBe('registry/2.0');
      }
      expect((await get(`${proxy.url}/v2`)).status).toBe(200);
    });

    it('/healthz and /readyz answer 200 once the policy is loaded', async () => {
      const h = await get(`${proxy.url}/healthz`);
      expect(h.status).toBe(200);
      expect(JSON.parse(h.body.toString())).toMatchObject({ status: 'ok' });
      const r = await get(`${proxy.url}/readyz`);
      expect(r.status).toBe(200);
      expect(JSON.parse(r.body.toString())).toMatchObject({ status: 'ready', problems: [] });
    });

    it('unknown routes get 404 with an OCI error body and no outbound request', async () => {
      const before = await upstreamCalls(proxy);
      for (const path of ['/nothing', '/v3/', `/v2/${H}/team/app/whatever/v1`, `/v2/${H}/team/app/manifests/v1/extra`, '/v2/_catalog']) {
        const r = await get(`${proxy.url}${path}`);
        expect(r.status, path).toBe(404);
        expect(ociError(r).code, path).toMatch(/^(NOT_FOUND|UNSUPPORTED|NAME_UNKNOWN)$/);
      }
      expect(await upstreamCalls(proxy)).toBe(before);
    });
  });

  describe('manifests', () => {
    it('GET by tag and by digest through the path prefix: exact bytes, digest, type and length', async () => {
      for (const ref of ['v1', img.digest]) {
        const r = await get(`${proxy.url}/v2/${H}/team/app/manifests/${ref}`, accept());
        expect(r.status, ref).toBe(200);
        expect(r.body.equals(img.manifest)).toBe(true);
        expect(r.headers.get('docker-content-digest')).toBe(img.digest);
        expect(r.headers.get('content-type')).toBe(MT.ociManifest);
        expect(r.headers.get('content-length')).toBe(String(img.manifest.length));
        expect(r.headers.get('content-encoding')).toBeNull();
      }
    });

    it('HEAD by tag and by digest carries the same headers and no body', async () => {
      for (const ref of ['v1', img.digest]) {
        const r = await raw(proxy.url, 'HEAD', `/v2/${H}/team/app/manifests/${ref}`, { accept: ACCEPT_ALL });
        expect(r.status, ref).toBe(200);
        expect(r.body.length).toBe(0);
        expect(r.headers['docker-content-digest']).toBe(img.digest);
        expect(r.headers['content-type']).toBe(MT.ociManifest);
        expect(r.headers['content-length']).toBe(String(img.manifest.length));
      }
      // A cold HEAD (nothing cached yet for this repository) works as well.
      const cold = await raw(proxy.url, 'HEAD', `/v2/${H}/team/docker/manifests/v1`, { accept: ACCEPT_ALL });
      expect(cold.status).toBe(200);
      expect(cold.body.length).toBe(0);
      expect(cold.headers['docker-content-digest']).toBe(dockerImg.digest);
      expect(cold.headers['content-type']).toBe(MT.dockerManifest);
      expect(cold.headers['content-length']).toBe(String(dockerImg.manifest.length));
    });

    it('serves Docker schema 2 manifests with their own media type', async () => {
      const r = await get(`${proxy.url}/v2/${H}/team/docker/manifests/v1`, accept());
      expect(r.status).toBe(200);
      expect(r.body.equals(dockerImg.manifest)).toBe(true);
      expect(r.headers.get('content-type')).toBe(MT.dockerManifest);
    });

    it('routes by ?ns= and echoes OCI-Namespace', async () => {
      const r = await get(`${proxy.url}/v2/team/app/manifests/v1?ns=${H}`, accept());
      expect(r.status).toBe(200);
      expect(r.headers.get('oci-namespace')).toBe(H);
      expect(r.headers.get('docker-content-digest')).toBe(img.digest);
      // The prefix route does not claim a namespace.
      const p = await get(`${proxy.url}/v2/${H}/team/app/manifests/v1`, accept());
      expect(p.headers.get('oci-namespace')).toBeNull();
      // containerd with a `_default` hosts dir sends ns AND a host-prefixed name: accepted when they agree.
      const both = await get(`${proxy.url}/v2/${H}/team/app/manifests/v1?ns=${H}`, accept());
      expect(both.status).toBe(200);
      expect(both.headers.get('docker-content-digest')).toBe(img.digest);
      expect(both.headers.get('oci-namespace')).toBe(H);
    });

    it('without ns, prefix or default upstream the name is unknown, and nothing goes out', async () => {
      const before = await upstreamCalls(proxy);
      const r = await get(`${proxy.url}/v2/team/app/manifests/v1`, accept());
      expect(r.status).toBe(404);
      expect(ociError(r).code).toBe('NAME_UNKNOWN');
      expect(await upstreamCalls(proxy)).toBe(before);
    });

    it('an unconfigured ns or prefix host gets 404 NAME_UNKNOWN and no outbound request, even to a live registry', async () => {
      const seeded = unconfigured.addManifest('team/app', 'v1', img.manifest, MT.ociManifest);
      expect(seeded).toBe(img.digest);
      await resetLog(reg);
      const before = await upstreamCalls(proxy);
      const attempts = [
        `/v2/team/app/manifests/v1?ns=${unconfigured.host}`,
        `/v2/team/app/manifests/v1?ns=evil.example.com`,
        `/v2/team/app/blobs/${img.layers[0]!.digest}?ns=${unconfigured.host}`,
        `/v2/team/app/tags/list?ns=${unconfigured.host}`,
        `/v2/${unconfigured.host}/team/app/manifests/v1`,
        `/v2/${unconfigured.host}/team/app/blobs/${img.layers[0]!.digest}`,
        `/v2/${unconfigured.host}/team/app/referrers/${img.digest}`,
        `/v2/evil.example.com/team/app/manifests/v1`,
        `/v2/localhost/team/app/manifests/v1`,
      ];
      for (const path of attempts) {
        const r = await get(`${proxy.url}${path}`, accept());
        expect(r.status, path).toBe(404);
        expect(ociError(r).code, path).toBe('NAME_UNKNOWN');
        // HEAD too: same status, no body.
        const h = await raw(proxy.url, 'HEAD', path);
        expect(h.status, path).toBe(404);
        expect(h.body.length).toBe(0);
      }
      expect(await upstreamCalls(proxy)).toBe(before);
      expect(unconfigured.requests()).toEqual([]);
      await settleLog(reg);
      expect(upstreamRequestsExcludingFlush(reg)).toEqual([]);
    });

    it('honours the client Accept header: unacceptable type → 404 MANIFEST_UNKNOWN; */* and none work', async () => {
      const only = await get(`${proxy.url}/v2/${H}/team/app/manifests/v1`, accept(MT.dockerManifest));
      expect(only.status).toBe(404);
      expect(ociError(only).code).toBe('MANIFEST_UNKNOWN');
      const onlyHead = await raw(proxy.url, 'HEAD', `/v2/${H}/team/app/manifests/${img.digest}`, { accept: MT.dockerList });
      expect(onlyHead.status).toBe(404);
      const idxAsManifest = await get(`${proxy.url}/v2/${H}/team/multi/manifests/latest`, accept(`${MT.ociManifest}, ${MT.dockerManifest}`));
      expect(idxAsManifest.status).toBe(404);
      expect(ociError(idxAsManifest).code).toBe('MANIFEST_UNKNOWN');

      const star = await get(`${proxy.url}/v2/${H}/team/app/manifests/v1`, accept('*/*'));
      expect(star.status).toBe(200);
      expect(star.headers.get('content-type')).toBe(MT.ociManifest);
      const withQ = await get(`${proxy.url}/v2/${H}/team/app/manifests/v1`, accept(`${MT.dockerManifest}, ${MT.ociManifest};q=0.5`));
      expect(withQ.status).toBe(200);
      const none = await get(`${proxy.url}/v2/${H}/team/app/manifests/v1`);
      expect(none.status).toBe(200);
      expect(none.body.equals(img.manifest)).toBe(true);
    });

    it('a multi-arch index by tag, then a child by digest, then that child’s blobs', async () => {
      const r = await get(`${proxy.url}/v2/${H}/team/multi/manifests/latest`, accept());
      expect(r.status).toBe(200);
      expect(r.headers.get('content-type')).toBe(MT.ociIndex);
      expect(r.headers.get('docker-content-digest')).toBe(idx.digest);
      expect(r.body.equals(idx.manifest)).toBe(true);
      for (const child of idx.children) {
        const c = await get(`${proxy.url}/v2/${H}/team/multi/manifests/${child.digest}`, accept());
        expect(c.status).toBe(200);
        expect(c.body.equals(child.manifest)).toBe(true);
        expect(c.headers.get('docker-content-digest')).toBe(child.digest);
        for (const d of [child.config, ...child.layers]) {
          const b = await get(`${proxy.url}/v2/${H}/team/multi/blobs/${d.digest}`);
          expect(b.status, d.digest).toBe(200);
          expect(sha256(b.body)).toBe(d.digest);
          expect(b.headers.get('content-length')).toBe(String(d.size));
        }
      }
      // By ns too (same upstream, same repository, same closure).
      const child = idx.children[1]!;
      const viaNs = await get(`${proxy.url}/v2/team/multi/blobs/${child.layers[0]!.digest}?ns=${H}`);
      expect(viaNs.status).toBe(200);
    });

    it('refuses bad names, tags and digests with 400 and the OCI code, and sends nothing upstream', async () => {
      await resetLog(reg);
      const before = await upstreamCalls(proxy);
      const cases: Array<[string, string]> = [
        [`/v2/${H}/Team/App/manifests/v1`, 'NAME_INVALID'],
        [`/v2/Team/app/manifests/v1?ns=${H}`, 'NAME_INVALID'],
        [`/v2/${H}/team/../etc/manifests/v1`, 'NAME_INVALID'],
        [`/v2/${H}/team/%2e%2e/etc/manifests/v1`, 'NAME_INVALID'],
        [`/v2/${H}/team/%2E%2E/%2E%2E/etc/blobs/${img.layers[0]!.digest}`, 'NAME_INVALID'],
        [`/v2/${H}/team//app/manifests/v1`, 'NAME_INVALID'],
        [`/v2/${H}/team/app_/manifests/v1`, 'NAME_INVALID'],
        [`/v2/${H}/-team/app/tags/list`, 'NAME_INVALID'],
        [`/v2/${H}/${'a'.repeat(300)}/manifests/v1`, 'NAME_INVALID'],
        [`/v2/${H}/team/app/manifests/-v1`, 'MANIFEST_INVALID'],
        [`/v2/${H}/team/app/manifests/.v1`, 'MANIFEST_INVALID'],
        [`/v2/${H}/team/app/manifests/${'t'.repeat(129)}`, 'MANIFEST_INVALID'],
        [`/v2/${H}/team/app/manifests/v1%20x`, 'MANIFEST_INVALID'],
        [`/v2/${H}/team/app/manifests/sha256:short`, 'DIGEST_INVALID'],
        [`/v2/${H}/team/app/manifests/md5:d41d8cd98f00b204e9800998ecf8427e`, 'DIGEST_INVALID'],
        [`/v2/${H}/team/app/manifests/sha256:${'A'.repeat(64)}`, 'DIGEST_INVALID'],
        [`/v2/${H}/team/app/blobs/sha256:short`, 'DIGEST_INVALID'],
        [`/v2/${H}/team/app/blobs/md5:d41d8cd98f00b204e9800998ecf8427e`, 'DIGEST_INVALID'],
        [`/v2/${H}/team/app/blobs/v1`, 'DIGEST_INVALID'],
        [`/v2/${H}/team/app/referrers/sha256:short`, 'DIGEST_INVALID'],
        [`/v2/${H}/team/app/tags/list?n=-1`, 'UNSUPPORTED'],
        [`/v2/${H}/team/app/tags/list?n=abc`, 'UNSUPPORTED'],
      ];
      for (const [path, code] of cases) {
        const r = await raw(proxy.url, 'GET', path);
        expect(r.status, path).toBe(400);
        const body = JSON.parse(r.body.toString()) as { errors: Array<{ code: string }> };
        expect(body.errors[0]!.code, path).toBe(code);
      }
      expect(await upstreamCalls(proxy)).toBe(before);
      await settleLog(reg);
      expect(upstreamRequestsExcludingFlush(reg)).toEqual([]);
    });

    it('a path with raw .. segments never reaches the filesystem or the upstream', async () => {
      const before = await upstreamCalls(proxy);
      for (const path of [
        `/v2/${H}/../../../../etc/passwd/blobs/${img.layers[0]!.digest}`,
        `/v2/${H}/team/app/blobs/..%2f..%2f..%2fetc%2fpasswd`,
        `/v2/${H}/team/app/manifests/..%2f..%2fmeta.sqlite`,
      ]) {
        const r = await raw(proxy.url, 'GET', path);
        expect([400, 404], path).toContain(r.status);
        expect(r.body.toString()).toMatch(/"errors"/);
      }
      expect(await upstreamCalls(proxy)).toBe(before);
    });

    it('unknown tags and digests are 404 MANIFEST_UNKNOWN', async () => {
      const t = await get(`${proxy.url}/v2/${H}/team/app/manifests/nope`, accept());
      expect(t.status).toBe(404);
      expect(ociError(t).code).toBe('MANIFEST_UNKNOWN');
      const d = await get(`${proxy.url}/v2/${H}/team/app/manifests/sha256:${'0'.repeat(64)}`, accept());
      expect(d.status).toBe(404);
      expect(ociError(d).code).toBe('MANIFEST_UNKNOWN');
      const h = await raw(proxy.url, 'HEAD', `/v2/${H}/team/app/manifests/nope`);
      expect(h.status).toBe(404);
      expect(h.body.length).toBe(0);
    });

    it('a manifest cached for one repository is not served for another', async () => {
      // team/app's manifest is cached; asking for its digest under team/docker must go upstream (and 404 there).
      const r = await get(`${proxy.url}/v2/${H}/team/docker/manifests/${img.digest}`, accept());
      expect(r.status).toBe(404);
      expect(ociError(r).code).toBe('MANIFEST_UNKNOWN');
    });
  });

  describe('the gate closes the by-digest bypass', () => {
    it('a blob of an image never pulled through the proxy is 403 DENIED, GET and HEAD', async () => {
      for (const d of [hidden.config.digest, hidden.layers[0]!.digest]) {
        const r = await get(`${proxy.url}/v2/${H}/team/hidden/blobs/${d}`);
        expect(r.status).toBe(403);
        const e = ociError(r);
        expect(e.code).toBe('DENIED');
        expect(e.message).toContain('not part of an admitted image');
        const h = await raw(proxy.url, 'HEAD', `/v2/${H}/team/hidden/blobs/${d}`);
        expect(h.status).toBe(403);
        expect(h.body.length).toBe(0);
        expect(h.headers['portcullis-reason']).toContain('not part of an admitted image');
      }
    });

    it('a blob admitted in one repository is not reachable through another', async () => {
      // team/app's layers are admitted (pulled above) in team/app only.
      const r = await get(`${proxy.url}/v2/${H}/team/hidden/blobs/${img.layers[0]!.digest}`);
      expect(r.status).toBe(403);
      expect(ociError(r).message).toContain('not part of an admitted image');
    });

    it('a denied index, its child by digest and their blobs all stay 403', async () => {
      const root = await get(`${proxy.url}/v2/${H}/team/locked/manifests/v1`, accept());
      expect(root.status).toBe(403);
      const e = ociError(root);
      expect(e.code).toBe('DENIED');
      expect(e.message).toContain('signature required');
      expect(root.headers.get('portcullis-decision-id')).toBeTruthy();
      const head = await raw(proxy.url, 'HEAD', `/v2/${H}/team/locked/manifests/v1`, { accept: ACCEPT_ALL });
      expect(head.status).toBe(403);
      expect(head.headers['portcullis-decision-id']).toBeTruthy();
      expect(head.headers['portcullis-reason']).toContain('signature required');

      const child = locked.children[0]!;
      // A child asked for by digest with no admitted root is a root of its own, and the same policy denies it.
      const c = await get(`${proxy.url}/v2/${H}/team/locked/manifests/${child.digest}`, accept());
      expect(c.status).toBe(403);
      expect(ociError(c).code).toBe('DENIED');
      for (const d of [child.config.digest, child.layers[0]!.digest]) {
        const b = await get(`${proxy.url}/v2/${H}/team/locked/blobs/${d}`);
        expect(b.status).toBe(403);
        expect(ociError(b).message).toContain('not part of an admitted image');
      }
    });
  });

  describe('blobs', () => {
    let layer: PushedImage['layers'][number];
    let bytes: Buffer;

    beforeAll(async () => {
      layer = img.layers[0]!;
      // Admit the image (the gate records its closure when the root is served).
      expect((await get(`${proxy.url}/v2/${H}/team/app/manifests/v1`, accept())).status).toBe(200);
      const direct = await get(`${reg.url}/v2/team/app/blobs/${layer.digest}`);
      bytes = direct.body;
    });

    it('GET streams the exact bytes with digest, length and no content-encoding', async () => {
      const r = await get(`${proxy.url}/v2/${H}/team/app/blobs/${layer.digest}`, { headers: { 'accept-encoding': 'gzip, zstd' } });
      expect(r.status).toBe(200);
      expect(r.body.equals(bytes)).toBe(true);
      expect(r.headers.get('docker-content-digest')).toBe(layer.digest);
      expect(r.headers.get('content-length')).toBe(String(layer.size));
      expect(r.headers.get('content-encoding')).toBeNull();
      expect(r.headers.get('accept-ranges')).toBe('bytes');
    });

    it('HEAD has the length and digest and no body', async () => {
      for (const d of [img.config, layer]) {
        const r = await raw(proxy.url, 'HEAD', `/v2/${H}/team/app/blobs/${d.digest}`);
        expect(r.status).toBe(200);
        expect(r.body.length).toBe(0);
        expect(r.headers['content-length']).toBe(String(d.size));
        expect(r.headers['docker-content-digest']).toBe(d.digest);
      }
    });

    it('Range: 206 with Content-Range, open-ended and suffix ranges; unsatisfiable → 416', async () => {
      const url = `${proxy.url}/v2/${H}/team/app/blobs/${layer.digest}`;
      const size = layer.size;
      const cases: Array<[string, number, number]> = [
        ['bytes=0-9', 0, 9],
        ['bytes=100-199', 100, 199],
        [`bytes=${size - 10}-`, size - 10, size - 1],
        ['bytes=-7', size - 7, size - 1],
        [`bytes=-${size + 100}`, 0, size - 1],
        [`bytes=5-${size + 1000}`, 5, size - 1],
      ];
      for (const [range, start, end] of cases) {
        const r = await get(url, { headers: { range } });
        expect(r.status, range).toBe(206);
        expect(r.headers.get('content-range'), range).toBe(`bytes ${start}-${end}/${size}`);
        expect(r.headers.get('content-length'), range).toBe(String(end - start + 1));
        expect(r.body.equals(bytes.subarray(start, end + 1)), range).toBe(true);
      }
      for (const range of [`bytes=${size}-`, `bytes=${size + 5}-${size + 10}`, 'bytes=-0']) {
        const r = await get(url, { headers: { range } });
        expect(r.status, range).toBe(416);
        expect(r.headers.get('content-range'), range).toBe(`bytes */${size}`);
      }
      // An unparseable Range is ignored (RFC 9110): the whole blob.
      const whole = await get(url, { headers: { range: 'items=0-1' } });
      expect(whole.status).toBe(200);
      expect(whole.body.equals(bytes)).toBe(true);
    });

    it('a Range on a cold blob (first request ever) is served while the download runs, and the blob is cached', async () => {
      const cold = img.layers[1]!;
      const direct = (await get(`${reg.url}/v2/team/app/blobs/${cold.digest}`)).body;
      await resetLog(reg);
      const r = await get(`${proxy.url}/v2/${H}/team/app/blobs/${cold.digest}`, { headers: { range: 'bytes=1000-1999' } });
      expect(r.status).toBe(206);
      expect(r.headers.get('content-range')).toBe(`bytes 1000-1999/${cold.size}`);
      expect(r.body.equals(direct.subarray(1000, 2000))).toBe(true);
      // The download completes in the background and lands in the cache.
      const path = join(proxy.dataDir, 'blobs', 'sha256', cold.digest.slice(7, 9), cold.digest.slice(7));
      for (let i = 0; i < 100 && !existsSync(path); i++) await new Promise((res) => setTimeout(res, 20));
      expect(existsSync(path)).toBe(true);
      const again = await get(`${proxy.url}/v2/${H}/team/app/blobs/${cold.digest}`);
      expect(again.body.equals(direct)).toBe(true);
      await settleLog(reg);
      const gets = upstreamRequestsExcludingFlush(reg).filter((q) => q.method === 'GET' && q.path.includes(cold.digest));
      expect(gets).toHaveLength(1);
    });

    it('an unknown blob inside no closure is 403, never fetched', async () => {
      const before = await upstreamCalls(proxy);
      const r = await get(`${proxy.url}/v2/${H}/team/app/blobs/sha256:${'1'.repeat(64)}`);
      expect(r.status).toBe(403);
      expect(await upstreamCalls(proxy)).toBe(before);
    });
  });

  describe('tags/list', () => {
    const tags = ['a1', 'b2', 'c3', 'd4', 'e5', 'v1'];
    beforeAll(async () => {
      // Pushed out of lexical order: the proxy must sort (Distribution 2.8 does not).
      const base = await pushImage(reg.url, 'team/tags', 'v1');
      for (const t of ['d4', 'a1', 'e5', 'c3', 'b2']) await pushRaw(reg.url, 'team/tags', t, base.manifest, MT.ociManifest);
    });

    it('lists all tags in lexical order under the client’s name', async () => {
      const r = await get(`${proxy.url}/v2/${H}/team/tags/tags/list`);
      expect(r.status).toBe(200);
      const doc = JSON.parse(r.body.toString()) as { name: string; tags: string[] };
      expect(doc.name).toBe(`${H}/team/tags`);
      expect(doc.tags).toEqual(tags);
      expect(r.headers.get('link')).toBeNull();
    });

    it('paginates with n and last, with a Link that comes back through the proxy (prefix route)', async () => {
      const seen: string[] = [];
      let next: string | null = `/v2/${H}/team/tags/tags/list?n=2`;
      for (let page = 0; next && page < 10; page++) {
        const r = await get(`${proxy.url}${next}`);
        expect(r.status).toBe(200);
        const doc = JSON.parse(r.body.toString()) as { tags: string[] };
        expect(doc.tags.length).toBeLessThanOrEqual(2);
        seen.push(...doc.tags);
        const link = r.headers.get('link');
        if (link) {
          expect(link).toMatch(/^<\/v2\/[^>]+>; rel="next"$/);
          next = /^<([^>]+)>/.exec(link)![1]!;
          expect(next.startsWith(`/v2/${H}/team/tags/tags/list?`)).toBe(true);
          expect(next).toContain('n=2');
          expect(next).toContain(`last=${doc.tags[doc.tags.length - 1]}`);
        } else next = null;
      }
      expect(seen).toEqual(tags);
    });

    it('last alone skips up to and including that tag; n=0 is empty; ns is kept on the Link', async () => {
      const after = JSON.parse((await get(`${proxy.url}/v2/${H}/team/tags/tags/list?last=c3`)).body.toString()) as { tags: string[] };
      expect(after.tags).toEqual(['d4', 'e5', 'v1']);
      const zero = await get(`${proxy.url}/v2/${H}/team/tags/tags/list?n=0`);
      expect(zero.status).toBe(200);
      expect((JSON.parse(zero.body.toString()) as { tags: string[] }).tags).toEqual([]);
      expect(zero.headers.get('link')).toBeNull();

      const ns = await get(`${proxy.url}/v2/team/tags/tags/list?n=4&ns=${H}`);
      expect(ns.status).toBe(200);
      expect(ns.headers.get('oci-namespace')).toBe(H);
      const doc = JSON.parse(ns.body.toString()) as { name: string; tags: string[] };
      expect(doc.name).toBe('team/tags');
      expect(doc.tags).toEqual(tags.slice(0, 4));
      const link = ns.headers.get('link') ?? '';
      const target = /^<([^>]+)>; rel="next"$/.exec(link)?.[1];
      expect(target).toBeDefined();
      const u = new URL(target!, proxy.url);
      expect(u.pathname).toBe('/v2/team/tags/tags/list');
      expect(u.searchParams.get('ns')).toBe(H);
      expect(u.searchParams.get('last')).toBe('d4');
      const rest = JSON.parse((await get(`${proxy.url}${target}`)).body.toString()) as { tags: string[] };
      expect(rest.tags).toEqual(tags.slice(4));
    });

    it('an unknown repository is 404 NAME_UNKNOWN', async () => {
      const r = await get(`${proxy.url}/v2/${H}/team/nothing-here/tags/list`);
      expect(r.status).toBe(404);
      expect(ociError(r).code).toBe('NAME_UNKNOWN');
    });
  });

  describe('referrers (Distribution 2.8 has no API: tag-schema fallback)', () => {
    const SIG = 'application/vnd.example.signature';
    const SBOM = 'application/vnd.example.sbom';
    let sigDigest: string;
    let sbomDigest: string;

    beforeAll(async () => {
      const empty = await pushBlob(reg.url, 'team/app', Buffer.from('{}'));
      const subject = { mediaType: MT.ociManifest, digest: img.digest, size: img.manifest.length };
      const artifact = async (artifactType: string, payload: string): Promise<{ digest: string; size: number }> => {
        const layer = await pushBlob(reg.url, 'team/app', Buffer.from(payload));
        const m = Buffer.from(
          JSON.stringify({
            schemaVersion: 2,
            mediaType: MT.ociManifest,
            artifactType,
            config: { mediaType: 'application/vnd.oci.empty.v1+json', digest: empty.digest, size: 2 },
            layers: [{ mediaType: 'application/octet-stream', digest: layer.digest, size: layer.size }],
            subject,
            annotations: { 'org.example.kind': artifactType },
          }),
        );
        return { digest: await pushRaw(reg.url, 'team/app', sha256(m), m, MT.ociManifest), size: m.length };
      };
      const sig = await artifact(SIG, 'signature');
      const sbom = await artifact(SBOM, 'sbom');
      sigDigest = sig.digest;
      sbomDigest = sbom.digest;
      const index = Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: MT.ociIndex,
          manifests: [
            { mediaType: MT.ociManifest, digest: sig.digest, size: sig.size, artifactType: SIG, annotations: { 'org.example.kind': SIG } },
            { mediaType: MT.ociManifest, digest: sbom.digest, size: sbom.size, artifactType: SBOM },
          ],
        }),
      );
      await pushRaw(reg.url, 'team/app', `sha256-${img.digest.slice(7)}`, index, MT.ociIndex);
    });

    it('the upstream really has no referrers API (precondition)', async () => {
      const r = await get(`${reg.url}/v2/team/app/referrers/${img.digest}`);
      expect(r.status).toBe(404);
    });

    it('lists the referrers from the sha256-<hex> tag', async () => {
      const r = await get(`${proxy.url}/v2/${H}/team/app/referrers/${img.digest}`);
      expect(r.status).toBe(200);
      expect(r.headers.get('content-type')).toBe(MT.ociIndex);
      expect(r.headers.get('oci-filters-applied')).toBeNull();
      const doc = JSON.parse(r.body.toString()) as {
        schemaVersion: number;
        mediaType: string;
        manifests: Array<{ digest: string; artifactType?: string; annotations?: Record<string, string> }>;
      };
      expect(doc.schemaVersion).toBe(2);
      expect(doc.mediaType).toBe(MT.ociIndex);
      expect(doc.manifests.map((m) => [m.digest, m.artifactType])).toEqual([
        [sigDigest, SIG],
        [sbomDigest, SBOM],
      ]);
      expect(doc.manifests[0]!.annotations).toEqual({ 'org.example.kind': SIG });
      expect(r.headers.get('content-length')).toBe(String(r.body.length));
    });

    it('filters by artifactType and says so in OCI-Filters-Applied', async () => {
      const r = await get(`${proxy.url}/v2/${H}/team/app/referrers/${img.digest}?artifactType=${encodeURIComponent(SBOM)}`);
      expect(r.status).toBe(200);
      expect(r.headers.get('oci-filters-applied')).toBe('artifactType');
      const doc = JSON.parse(r.body.toString()) as { manifests: Array<{ digest: string }> };
      expect(doc.manifests.map((m) => m.digest)).toEqual([sbomDigest]);
      const none = await get(`${proxy.url}/v2/${H}/team/app/referrers/${img.digest}?artifactType=application/x-none`);
      expect(none.status).toBe(200);
      expect(none.headers.get('oci-filters-applied')).toBe('artifactType');
      expect((JSON.parse(none.body.toString()) as { manifests: unknown[] }).manifests).toEqual([]);
    });

    it('works by ns as well', async () => {
      const r = await get(`${proxy.url}/v2/team/app/referrers/${img.digest}?ns=${H}`);
      expect(r.status).toBe(200);
      expect(r.headers.get('oci-namespace')).toBe(H);
      expect((JSON.parse(r.body.toString()) as { manifests: unknown[] }).manifests).toHaveLength(2);
    });

    it('a subject without referrers gets 200 and an empty index', async () => {
      for (const subject of [dockerImg.digest, `sha256:${'2'.repeat(64)}`]) {
        const r = await get(`${proxy.url}/v2/${H}/team/app/referrers/${subject}`);
        expect(r.status).toBe(200);
        expect(r.headers.get('content-type')).toBe(MT.ociIndex);
        expect(JSON.parse(r.body.toString())).toEqual({ schemaVersion: 2, mediaType: MT.ociIndex, manifests: [] });
      }
    });
  });

  describe('read-only: pushes and deletes', () => {
    it('PUT/POST/PATCH/DELETE answer 405 UNSUPPORTED with an OCI error, and nothing goes upstream', async () => {
      await resetLog(reg);
      const before = await upstreamCalls(proxy);
      const cases: Array<[string, string]> = [
        ['PUT', `/v2/${H}/team/app/manifests/v2`],
        ['DELETE', `/v2/${H}/team/app/manifests/${img.digest}`],
        ['DELETE', `/v2/${H}/team/app/blobs/${img.layers[0]!.digest}`],
        ['POST', `/v2/${H}/team/app/blobs/uploads/`],
        ['PATCH', `/v2/${H}/team/app/blobs/uploads/0b9b1c9e-aaaa`],
        ['PUT', `/v2/${H}/team/app/blobs/uploads/0b9b1c9e-aaaa?digest=${img.layers[0]!.digest}`],
        ['POST', `/v2/team/app/blobs/uploads/?ns=${H}`],
      ];
      for (const [method, path] of cases) {
        const r = await raw(proxy.url, method, path, { 'content-type': 'application/octet-stream' });
        expect(r.status, `${method} ${path}`).toBe(405);
        const body = JSON.parse(r.body.toString()) as { errors: Array<{ code: string }> };
        expect(body.errors[0]!.code).toBe('UNSUPPORTED');
      }
      // A GET on the upload endpoint is not a pull either.
      const g = await raw(proxy.url, 'GET', `/v2/${H}/team/app/blobs/uploads/abc`);
      expect(g.status).toBe(405);
      expect(await upstreamCalls(proxy)).toBe(before);
      await settleLog(reg);
      expect(upstreamRequestsExcludingFlush(reg)).toEqual([]);
    });
  });

  describe('limits', () => {
    it('oversized request headers are rejected with 431', async () => {
      for (const size of [20 * 1024, 256 * 1024]) {
        const r = await raw(proxy.url, 'GET', `/v2/${H}/team/app/manifests/v1`, { 'x-big': 'x'.repeat(size) });
        expect(r.status, String(size)).toBe(431);
        expect(JSON.parse(r.body.toString())).toMatchObject({ errors: [{ message: expect.stringMatching(/too large/) as unknown }] });
      }
      // The server is still fine afterwards.
      expect((await get(`${proxy.url}/v2/`)).status).toBe(200);
    });

    it('a manifest over limits.maxManifestSize is refused and not cached', async () => {
      const small = await startProxy({ upstreams: [{ name: 'local', registry: H, url: reg.url }], extra: { limits: { maxManifestSize: '512B' } } });
      try {
        expect(img.manifest.length).toBeGreaterThan(512);
        for (const ref of ['v1', img.digest]) {
          const r = await get(`${small.url}/v2/${H}/team/app/manifests/${ref}`, accept());
          expect(r.status, ref).toBeGreaterThanOrEqual(400);
          expect(r.status, ref).not.toBe(404);
          const e = ociError(r);
          expect(e.code).toBe('MANIFEST_INVALID');
          expect(e.message).toMatch(/512-byte limit/);
        }
        // Nothing about it was cached or admitted: its blobs stay unreachable.
        const b = await get(`${small.url}/v2/${H}/team/app/blobs/${img.layers[0]!.digest}`);
        expect(b.status).toBe(403);
        // A small manifest is still fine.
        const tiny = await pushRaw(
          reg.url,
          'team/app',
          'tiny',
          Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MT.ociIndex, manifests: [] })),
          MT.ociIndex,
        );
        const t = await get(`${small.url}/v2/${H}/team/app/manifests/tiny`, accept());
        expect(t.status).toBe(200);
        expect(t.headers.get('docker-content-digest')).toBe(tiny);
      } finally {
        await small.stop();
      }
    });
  });

  describe('metrics', () => {
    it('exposes request, upstream and cache metrics with sensible values', async () => {
      const layer = img.layers[0]!;
      expect((await get(`${proxy.url}/v2/${H}/team/app/manifests/v1`, accept())).status).toBe(200);
      // Make sure the layer is cached, then count hits across one more GET.
      expect((await get(`${proxy.url}/v2/${H}/team/app/blobs/${layer.digest}`)).status).toBe(200);
      const m1 = await get(`${proxy.url}/metrics`);
      expect(m1.status).toBe(200);
      expect(m1.headers.get('content-type')).toMatch(/^text\/plain/);
      const t1 = m1.body.toString();
      const hits1 = metricValue(t1, 'portcullis_cache_requests_total', { kind: 'blob', result: 'hit' });
      expect((await get(`${proxy.url}/v2/${H}/team/app/blobs/${layer.digest}`)).status).toBe(200);
      const t2 = (await get(`${proxy.url}/metrics`)).body.toString();
      expect(metricValue(t2, 'portcullis_cache_requests_total', { kind: 'blob', result: 'hit' })).toBe(hits1 + 1);
      expect(metricValue(t2, 'portcullis_cache_requests_total', { kind: 'blob', result: 'miss' })).toBeGreaterThanOrEqual(1);
      expect(metricValue(t2, 'portcullis_cache_requests_total', { kind: 'tag', result: 'hit' })).toBeGreaterThanOrEqual(1);
      expect(metricValue(t2, 'portcullis_served_bytes_total', { source: 'cache' })).toBeGreaterThanOrEqual(layer.size * 2);
      expect(metricValue(t2, 'portcullis_upstream_bytes_total', { upstream: 'local' })).toBeGreaterThanOrEqual(layer.size);
      expect(metricValue(t2, 'portcullis_upstream_requests_total', { upstream: 'local', kind: 'blob', method: 'GET', status: '200' })).toBeGreaterThanOrEqual(
        1,
      );
      expect(metricValue(t2, 'portcullis_http_requests_total', { kind: 'blob', method: 'GET', status: '200' })).toBeGreaterThanOrEqual(2);
      expect(metricValue(t2, 'portcullis_http_requests_total', { kind: 'blob', method: 'GET', status: '403' })).toBeGreaterThanOrEqual(1);
      expect(metricValue(t2, 'portcullis_cache_bytes')).toBeGreaterThanOrEqual(layer.size);
      expect(metricValue(t2, 'portcullis_cache_entries')).toBeGreaterThanOrEqual(1);
      expect(metricValue(t2, 'portcullis_decisions_total', { outcome: 'allow' })).toBeGreaterThanOrEqual(1);
      expect(metricValue(t2, 'portcullis_decisions_total', { outcome: 'deny' })).toBeGreaterThanOrEqual(1);
      expect(t2).toContain('portcullis_http_request_duration_seconds_bucket');
      expect(metricValue(t2, 'portcullis_digest_mismatches_total')).toBe(0);
    });
  });

  describe('tag → digest cache', () => {
    it('within tagTTL a GET by tag sends nothing upstream (no HEAD revalidation)', async () => {
      expect((await get(`${proxy.url}/v2/${H}/team/app/manifests/v1`, accept())).status).toBe(200);
      await resetLog(reg);
      const before = await upstreamCalls(proxy);
      for (let i = 0; i < 3; i++) {
        const r = await get(`${proxy.url}/v2/${H}/team/app/manifests/v1`, accept());
        expect(r.status).toBe(200);
        expect(r.headers.get('docker-content-digest')).toBe(img.digest);
        expect((await raw(proxy.url, 'HEAD', `/v2/${H}/team/app/manifests/v1`)).status).toBe(200);
      }
      expect(await upstreamCalls(proxy)).toBe(before);
      await settleLog(reg);
      expect(upstreamRequestsExcludingFlush(reg)).toEqual([]);
    });

    it('with a zero TTL, a moved tag is seen on the next GET, revalidated with a HEAD (not a GET by tag)', async () => {
      const p = await startProxy({ upstreams: [{ name: 'local', registry: H, url: reg.url }], extra: { cache: { tagTTL: '0s' } } });
      try {
        const first = await pushImage(reg.url, 'team/moving', 'stable');
        const a = await get(`${p.url}/v2/${H}/team/moving/manifests/stable`, accept());
        expect(a.headers.get('docker-content-digest')).toBe(first.digest);
        const second = await pushImage(reg.url, 'team/moving', 'stable');
        expect(second.digest).not.toBe(first.digest);
        await resetLog(reg);
        const b = await get(`${p.url}/v2/${H}/team/moving/manifests/stable`, accept());
        expect(b.status).toBe(200);
        expect(b.headers.get('docker-content-digest')).toBe(second.digest);
        expect(b.body.equals(second.manifest)).toBe(true);
        await settleLog(reg);
        const calls = upstreamRequestsExcludingFlush(reg).map((q) => `${q.method} ${q.path}`);
        expect(calls).toContain('HEAD /v2/team/moving/manifests/stable');
        expect(calls).not.toContain('GET /v2/team/moving/manifests/stable');
        expect(calls).toContain(`GET /v2/team/moving/manifests/${second.digest}`);
        // And the new image's blobs are admitted, the old digest still served by digest (it is still a root).
        expect((await get(`${p.url}/v2/${H}/team/moving/blobs/${second.layers[0]!.digest}`)).status).toBe(200);
      } finally {
        await p.stop();
      }
    });
  });
});

describe('default upstream and the Docker Hub library/ rule', () => {
  let reg: RunningRegistry;
  let proxy: RunningProxy;
  let alpine: PushedImage;
  let app: PushedImage;

  beforeAll(async () => {
    reg = await startRegistry();
    alpine = await pushImage(reg.url, 'library/alpine', 'latest');
    app = await pushImage(reg.url, 'team/app', 'v1');
    proxy = await startProxy({
      upstreams: [{ name: 'hub', registry: reg.host, url: reg.url, libraryPrefix: true }],
      defaultUpstream: 'hub',
    });
  });
  afterAll(async () => {
    await proxy?.stop();
    await reg?.stop();
  });

  it('a plain name goes to the default upstream', async () => {
    const r = await get(`${proxy.url}/v2/team/app/manifests/v1`, accept());
    expect(r.status).toBe(200);
    expect(r.headers.get('docker-content-digest')).toBe(app.digest);
    expect(r.headers.get('oci-namespace')).toBeNull();
    expect((await get(`${proxy.url}/v2/team/app/blobs/${app.layers[0]!.digest}`)).status).toBe(200);
  });

  it('a single-component name becomes library/<name> upstream, on every endpoint', async () => {
    await resetLog(reg);
    const r = await get(`${proxy.url}/v2/alpine/manifests/latest`, accept());
    expect(r.status).toBe(200);
    expect(r.headers.get('docker-content-digest')).toBe(alpine.digest);
    const b = await get(`${proxy.url}/v2/alpine/blobs/${alpine.layers[0]!.digest}`);
    expect(b.status).toBe(200);
    expect(sha256(b.body)).toBe(alpine.layers[0]!.digest);
    const t = await get(`${proxy.url}/v2/alpine/tags/list`);
    expect(t.status).toBe(200);
    expect(JSON.parse(t.body.toString())).toEqual({ name: 'alpine', tags: ['latest'] });
    // Via ns and via the prefix, the same rule applies.
    expect((await get(`${proxy.url}/v2/alpine/manifests/latest?ns=${reg.host}`, accept())).status).toBe(200);
    expect((await get(`${proxy.url}/v2/${reg.host}/alpine/manifests/latest`, accept())).status).toBe(200);
    // The explicit library/ name is the same repository (and the same admitted closure).
    expect((await get(`${proxy.url}/v2/library/alpine/blobs/${alpine.layers[0]!.digest}`)).status).toBe(200);
    await settleLog(reg);
    const paths = upstreamRequestsExcludingFlush(reg).map((q) => q.path);
    expect(paths.length).toBeGreaterThan(0);
    for (const p of paths) expect(p).toMatch(/^\/v2\/library\/alpine\//);
  });
});

describe('schema1 manifests (from the fake upstream: Distribution 2.8 will not store them)', () => {
  let fake: FakeUpstream;
  let proxy: RunningProxy;
  beforeAll(async () => {
    fake = await startFakeUpstream();
    proxy = await startProxy({ upstreams: [{ name: 'old', registry: fake.host, url: fake.url }] });
  });
  afterAll(async () => {
    await proxy?.stop();
    await fake?.stop();
  });

  it('refuses schema1 (signed and unsigned) with a clear error and caches nothing', async () => {
    const s1 = Buffer.from(JSON.stringify({ schemaVersion: 1, name: 'legacy/app', tag: 'v1', architecture: 'amd64', fsLayers: [], history: [] }));
    const d1 = fake.addManifest('legacy/app', 'v1', s1, 'application/vnd.docker.distribution.manifest.v1+prettyjws');
    fake.addManifest('legacy/app', 'v2', s1, 'application/vnd.docker.distribution.manifest.v1+json');
    for (const ref of ['v1', 'v2', d1]) {
      const r = await get(`${proxy.url}/v2/${fake.host}/legacy/app/manifests/${ref}`, accept('*/*'));
      expect(r.status, ref).toBeGreaterThanOrEqual(400);
      expect(r.status, ref).toBeLessThan(500);
      const e = ociError(r);
      expect(e.code).toMatch(/^(MANIFEST_INVALID|UNSUPPORTED)$/);
      expect(e.message).toMatch(/schema ?1/i);
    }
    // Not cached: each attempt asks again.
    fake.clearRequests();
    await get(`${proxy.url}/v2/${fake.host}/legacy/app/manifests/${d1}`, accept('*/*'));
    expect(fake.requests().filter((q) => q.method === 'GET' && q.path.includes('/manifests/'))).toHaveLength(1);
  });
});

describe('stale-if-error and restart on the same data directory', () => {
  let reg: RunningRegistry;
  let proxy: RunningProxy | undefined;
  let img: PushedImage;
  let dataDir: string;

  beforeAll(async () => {
    reg = await startRegistry();
    img = await pushImage(reg.url, 'team/app', 'v1', { layers: 1, layerSizeMiB: 0.1 });
    await pushImage(reg.url, 'team/app', 'never-pulled');
    const { mkdtemp } = await import('node:fs/promises');
    const { tmpdir } = await import('node:os');
    dataDir = await mkdtemp(join(tmpdir(), 'pc-restart-'));
  });
  afterAll(async () => {
    await proxy?.stop();
    await reg?.stop();
    const { rm } = await import('node:fs/promises');
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  });

  const start = (): Promise<RunningProxy> =>
    startProxy({
      upstreams: [{ name: 'local', registry: reg.host, url: reg.url, retries: 1, timeouts: { connect: '2s' } }],
      extra: { cache: { tagTTL: '0s', staleIfError: '1h' } },
      dataDir,
    });

  it('serves a known tag stale (with a Warning) while the upstream is down; an unknown tag gets 503 naming it', async () => {
    proxy = await start();
    const H = reg.host;
    const m = await get(`${proxy.url}/v2/${H}/team/app/manifests/v1`, accept());
    expect(m.status).toBe(200);
    expect(m.headers.get('warning')).toBeNull();
    for (const d of [img.config, ...img.layers]) expect((await get(`${proxy.url}/v2/${H}/team/app/blobs/${d.digest}`)).status).toBe(200);

    await reg.stop();

    const stale = await get(`${proxy.url}/v2/${H}/team/app/manifests/v1`, accept());
    expect(stale.status).toBe(200);
    expect(stale.headers.get('docker-content-digest')).toBe(img.digest);
    expect(stale.body.equals(img.manifest)).toBe(true);
    expect(stale.headers.get('warning')).toMatch(/^299 - ".*upstream.*"$/);
    const staleHead = await raw(proxy.url, 'HEAD', `/v2/${H}/team/app/manifests/v1`);
    expect(staleHead.status).toBe(200);
    expect(staleHead.headers['docker-content-digest']).toBe(img.digest);

    const unknown = await get(`${proxy.url}/v2/${H}/team/app/manifests/never-pulled`, accept());
    expect([502, 503]).toContain(unknown.status);
    expect(ociError(unknown).message).toContain('"local"');
    // A cached blob needs no upstream at all.
    const blob = await get(`${proxy.url}/v2/${H}/team/app/blobs/${img.layers[0]!.digest}`);
    expect(blob.status).toBe(200);
    expect(sha256(blob.body)).toBe(img.layers[0]!.digest);
  });

  it('after a restart on the same dataDir, cached manifests and blobs are served with the upstream still down', async () => {
    await proxy!.stop({ keepData: true });
    proxy = await start();
    const H = reg.host;
    const byDigest = await get(`${proxy.url}/v2/${H}/team/app/manifests/${img.digest}`, accept());
    expect(byDigest.status).toBe(200);
    expect(byDigest.body.equals(img.manifest)).toBe(true);
    for (const d of [img.config, ...img.layers]) {
      const b = await get(`${proxy.url}/v2/${H}/team/app/blobs/${d.digest}`);
      expect(b.status, d.digest).toBe(200);
      expect(sha256(b.body)).toBe(d.digest);
      const r = await get(`${proxy.url}/v2/${H}/team/app/blobs/${d.digest}`, { headers: { range: 'bytes=-4' } });
      expect(r.status).toBe(206);
    }
    const byTag = await get(`${proxy.url}/v2/${H}/team/app/manifests/v1`, accept());
    expect(byTag.status).toBe(200);
    expect(byTag.headers.get('warning')).toMatch(/^299 /);
    const metrics = (await get(`${proxy.url}/metrics`)).body.toString();
    expect(metricValue(metrics, 'portcullis_cache_requests_total', { kind: 'blob', result: 'hit' })).toBeGreaterThanOrEqual(2);
    expect(metricValue(metrics, 'portcullis_cache_entries')).toBeGreaterThanOrEqual(2);
    // Nothing is downloading: no download, and no write-behind backlog.
    expect(metricValue(metrics, 'portcullis_blob_downloads_inflight')).toBe(0);
    expect(metricValue(metrics, 'portcullis_blob_download_unwritten_bytes')).toBe(0);
  });
});
