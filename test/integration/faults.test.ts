/**
 * Upstream faults, injected by the FAKE upstream (test/harness/fake-upstream.ts): a hand-written node:http registry
 * used here precisely because a real registry will not truncate a body, serve bytes that do not match their digest,
 * rate-limit, fail once, stall, or redirect to another host on demand. Everything else (the happy path, routing,
 * caching) is tested against a real Distribution 2.8 in api.test.ts.
 *
 * The invariant behind most of these tests: a client never receives a COMPLETE response for bytes that do not
 * match their digest, and nothing unverified is ever committed to the cache.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import http from 'node:http';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { manualSleep, startEchoServer, startFakeUpstream, type EchoServer, type FakeUpstream } from '../harness/fake-upstream.js';
import { startProxy, type RunningProxy } from '../harness/proxy.js';
import { until } from '../harness/wait.js';

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const ACCEPT = `${OCI_MANIFEST}, application/vnd.oci.image.index.v1+json`;
const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const esc = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

interface Seeded {
  repo: string;
  manifest: Buffer;
  digest: string;
  config: Buffer;
  configDigest: string;
  layer: Buffer;
  layerDigest: string;
}

let seq = 0;
/** A fresh image (unique bytes, so no cache is shared between tests) in a fresh repository, tagged v1. */
function seed(up: FakeUpstream, layerSize = 256 * 1024): Seeded {
  const repo = `faults/app${++seq}`;
  const config = Buffer.from(
    JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] }, n: randomBytes(8).toString('hex') }),
  );
  const layer = randomBytes(layerSize);
  const configDigest = up.addBlob(repo, config);
  const layerDigest = up.addBlob(repo, layer);
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: configDigest, size: config.length },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: layerDigest, size: layer.length }],
    }),
  );
  const digest = up.addManifest(repo, 'v1', manifest, OCI_MANIFEST);
  return { repo, manifest, digest, config, configDigest, layer, layerDigest };
}

interface RawResult {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  /** The response ended cleanly with every byte its framing promised. */
  complete: boolean;
}

/** GET with node:http so that a broken transfer is visible (fetch would throw or hide it). */
function rawGet(url: string, headers: Record<string, string> = {}): Promise<RawResult> {
  return new Promise((resolve) => {
    let settled = false;
    const req = http.get(url, { agent: false, headers }, (res) => {
      const chunks: Buffer[] = [];
      const finish = (): void => {
        if (settled) return;
        settled = true;
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks), complete: res.complete });
      };
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', finish);
      res.on('error', finish);
      res.on('close', finish);
    });
    // The proxy may cut the connection before it sends any header (the download failed first): that is a failed
    // transfer too, reported as status 0.
    req.on('error', () => {
      if (!settled) {
        settled = true;
        resolve({ status: 0, headers: {}, body: Buffer.alloc(0), complete: false });
      }
    });
  });
}

async function json(
  url: string,
  headers: Record<string, string> = { accept: ACCEPT },
): Promise<{ status: number; headers: Headers; body: Buffer; error?: { code: string; message: string } }> {
  const res = await fetch(url, { headers });
  const body = Buffer.from(await res.arrayBuffer());
  let error: { code: string; message: string } | undefined;
  if (res.status >= 400 && body.length) error = (JSON.parse(body.toString()) as { errors: Array<{ code: string; message: string }> }).errors[0];
  return { status: res.status, headers: res.headers, body, ...(error ? { error } : {}) };
}

const blobPath = (p: RunningProxy, digest: string): string => join(p.dataDir, 'blobs', 'sha256', digest.slice(7, 9), digest.slice(7));

/** Waits (bounded) until no blob download is in flight, so "nothing was committed" is a settled fact. */
async function downloadsIdle(p: RunningProxy): Promise<void> {
  for (let i = 0; i < 200 && p.proxy.app.downloads.active > 0; i++) await new Promise((r) => setTimeout(r, 10));
  expect(p.proxy.app.downloads.active).toBe(0);
}

function tmpFiles(p: RunningProxy): string[] {
  const dir = join(p.dataDir, 'tmp');
  return existsSync(dir) ? readdirSync(dir) : [];
}

async function metric(p: RunningProxy, name: string, labels: Record<string, string>): Promise<number> {
  const text = await p.proxy.app.metrics.registry.metrics();
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`)) continue;
    const ok = Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`));
    if (ok) return Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return 0;
}

const blobGets = (up: FakeUpstream, digest: string): number => up.requests().filter((r) => r.method === 'GET' && r.path.endsWith(`/blobs/${digest}`)).length;

// ---------------------------------------------------------------------------------------------------------------

describe('upstream faults (fake upstream)', () => {
  let up: FakeUpstream;
  let proxy: RunningProxy;
  let U: string; // registry host for the prefix route
  const realSleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
  /** How the fake waits for `slow` and `delay`: a test may hold those waits with a manualSleep(). */
  let sleepFor = realSleep;

  beforeAll(async () => {
    up = await startFakeUpstream({ strictAccept: true, sleep: (ms) => sleepFor(ms) });
    U = up.host;
    proxy = await startProxy({ upstreams: [{ name: 'fake', registry: up.host, url: up.url }] });
  });
  afterAll(async () => {
    await proxy?.stop();
    await up?.stop();
  });
  beforeEach(() => {
    up.clearFaults();
    up.clearRequests();
    sleepFor = realSleep;
  });

  /** Pull the root manifest so that the gate admits the image's closure. */
  async function admit(s: Seeded): Promise<void> {
    const r = await json(`${proxy.url}/v2/${U}/${s.repo}/manifests/v1`);
    expect(r.status).toBe(200);
    expect(r.body.equals(s.manifest)).toBe(true);
  }

  describe('blobs', () => {
    it('a truncated body breaks the client’s transfer, commits nothing, and the next request fetches again', async () => {
      const s = seed(up);
      await admit(s);
      up.setFault({ method: 'GET', pathRegex: new RegExp(`/blobs/${esc(s.layerDigest)}$`) }, { kind: 'truncate', afterBytes: 100_000, times: 1 });
      const r = await rawGet(`${proxy.url}/v2/${U}/${s.repo}/blobs/${s.layerDigest}`);
      expect(r.complete).toBe(false);
      expect(r.body.length).toBeLessThan(s.layer.length);
      await downloadsIdle(proxy);
      expect(existsSync(blobPath(proxy, s.layerDigest))).toBe(false);
      expect(tmpFiles(proxy)).toEqual([]);

      const again = await rawGet(`${proxy.url}/v2/${U}/${s.repo}/blobs/${s.layerDigest}`);
      expect(again.status).toBe(200);
      expect(again.complete).toBe(true);
      expect(again.body.equals(s.layer)).toBe(true);
      expect(blobGets(up, s.layerDigest)).toBe(2);
      await downloadsIdle(proxy);
      expect(existsSync(blobPath(proxy, s.layerDigest))).toBe(true);
    });

    it('wrong bytes for a digest: the client never gets a complete response, nothing is cached, the mismatch is counted', async () => {
      const s = seed(up);
      await admit(s);
      const before = await metric(proxy, 'portcullis_digest_mismatches_total', { upstream: 'fake', kind: 'blob' });
      up.setFault({ method: 'GET', pathRegex: new RegExp(`/blobs/${esc(s.layerDigest)}$`) }, { kind: 'wrong-bytes', times: 1 });
      const r = await rawGet(`${proxy.url}/v2/${U}/${s.repo}/blobs/${s.layerDigest}`);
      // Same length as the real blob: only withholding the end can tell the client something is wrong.
      expect(r.complete).toBe(false);
      expect(r.body.length).toBeLessThan(s.layer.length);
      await downloadsIdle(proxy);
      expect(existsSync(blobPath(proxy, s.layerDigest))).toBe(false);
      expect(tmpFiles(proxy)).toEqual([]);
      expect(await metric(proxy, 'portcullis_digest_mismatches_total', { upstream: 'fake', kind: 'blob' })).toBe(before + 1);

      const again = await rawGet(`${proxy.url}/v2/${U}/${s.repo}/blobs/${s.layerDigest}`);
      expect(again.complete).toBe(true);
      expect(again.body.equals(s.layer)).toBe(true);
    });

    it('wrong bytes with several concurrent clients (Range joiners too): none completes with bad bytes', async () => {
      const s = seed(up, 512 * 1024);
      await admit(s);
      up.setFault({ method: 'GET', pathRegex: new RegExp(`/blobs/${esc(s.layerDigest)}$`) }, { kind: 'wrong-bytes', times: 1 });
      const url = `${proxy.url}/v2/${U}/${s.repo}/blobs/${s.layerDigest}`;
      const results = await Promise.all([rawGet(url), rawGet(url), rawGet(url, { range: 'bytes=0-99' }), rawGet(url, { range: 'bytes=-10' })]);
      const expected = [s.layer, s.layer, s.layer.subarray(0, 100), s.layer.subarray(s.layer.length - 10)];
      results.forEach((r, i) => {
        // A client either sees its transfer broken, or (when the mismatch came before any of its bytes were sent)
        // a clean 502 naming the mismatch, or the right bytes; never wrong bytes in a complete 200/206.
        if (!r.complete) return;
        if (r.status === 200 || r.status === 206) expect(r.body.equals(expected[i]!), `client ${i} completed with wrong bytes`).toBe(true);
        else {
          expect(r.status, `client ${i}`).toBe(502);
          expect(r.body.toString()).toMatch(/"code":"UPSTREAM_ERROR".*digest mismatch/);
        }
      });
      expect(results[0].complete).toBe(false);
      await downloadsIdle(proxy);
      expect(tmpFiles(proxy)).toEqual([]);
    });

    it('concurrent clients, late joiners and Range requests share ONE upstream GET', async () => {
      const s = seed(up, 256 * 1024);
      await admit(s);
      // The upstream body is held after its first tick until every client has joined: all arrive while the one
      // download runs, without guessing how long that takes.
      const clock = manualSleep();
      sleepFor = clock.sleep;
      up.setFault({ method: 'GET', pathRegex: new RegExp(`/blobs/${esc(s.layerDigest)}$`) }, { kind: 'slow', bytesPerSecond: 256 * 1024 });
      const url = `${proxy.url}/v2/${U}/${s.repo}/blobs/${s.layerDigest}`;
      const joinsBefore = await metric(proxy, 'portcullis_singleflight_joins_total', { kind: 'blob' });
      const first = Array.from({ length: 6 }, () => rawGet(url));
      await clock.called(1);
      const late = [rawGet(url), rawGet(url, { range: 'bytes=1000-2999' }), rawGet(url, { range: `bytes=${s.layer.length - 100}-` })];
      await until(
        async () => (await metric(proxy, 'portcullis_singleflight_joins_total', { kind: 'blob' })) - joinsBefore >= 8,
        '8 clients joining the download',
      );
      clock.open();
      const all = await Promise.all([...first, ...late]);
      for (const r of all.slice(0, 7)) {
        expect(r.status).toBe(200);
        expect(r.complete).toBe(true);
        expect(r.body.equals(s.layer)).toBe(true);
      }
      expect(all[7]!.status).toBe(206);
      expect(all[7]!.body.equals(s.layer.subarray(1000, 3000))).toBe(true);
      expect(all[8]!.status).toBe(206);
      expect(all[8]!.body.equals(s.layer.subarray(s.layer.length - 100))).toBe(true);
      expect(blobGets(up, s.layerDigest)).toBe(1);
      expect(await metric(proxy, 'portcullis_singleflight_joins_total', { kind: 'blob' })).toBeGreaterThanOrEqual(8);
    });

    it('a slow body still completes', async () => {
      const s = seed(up, 48 * 1024);
      await admit(s);
      up.setFault({ method: 'GET', pathRegex: new RegExp(`/blobs/${esc(s.layerDigest)}$`) }, { kind: 'slow', bytesPerSecond: 96 * 1024, times: 1 });
      const r = await rawGet(`${proxy.url}/v2/${U}/${s.repo}/blobs/${s.layerDigest}`);
      // The body really came slowly (5 ticks, 100 ms apart), and it still completed.
      expect(
        up
          .requests()
          .filter((q) => q.method === 'GET' && q.path.endsWith(`/blobs/${s.layerDigest}`))
          .map((q) => q.fault),
      ).toEqual(['slow']);
      expect(r.complete).toBe(true);
      expect(r.body.equals(s.layer)).toBe(true);
    });

    it('429 with Retry-After is passed on (not retried); 503 once is retried and succeeds', async () => {
      const s = seed(up);
      await admit(s);
      const re = new RegExp(`/blobs/${esc(s.layerDigest)}$`);
      up.setFault({ method: 'GET', pathRegex: re }, { kind: 'status', status: 429, headers: { 'Retry-After': '42' }, times: 1 });
      const limited = await json(`${proxy.url}/v2/${U}/${s.repo}/blobs/${s.layerDigest}`, {});
      expect(limited.status).toBe(429);
      expect(limited.headers.get('retry-after')).toBe('42');
      expect(limited.error?.code).toBe('TOOMANYREQUESTS');
      expect(blobGets(up, s.layerDigest)).toBe(1);

      up.clearRequests();
      up.setFault({ method: 'GET', pathRegex: re }, { kind: 'status', status: 503, times: 1 });
      const r = await rawGet(`${proxy.url}/v2/${U}/${s.repo}/blobs/${s.layerDigest}`);
      expect(r.status).toBe(200);
      expect(r.body.equals(s.layer)).toBe(true);
      expect(blobGets(up, s.layerDigest)).toBe(2);
    });
  });

  describe('manifests', () => {
    it('wrong bytes for a manifest: 502 naming the mismatch, counted, and nothing cached', async () => {
      const s = seed(up);
      const before = await metric(proxy, 'portcullis_digest_mismatches_total', { upstream: 'fake', kind: 'manifest' });
      up.setFault({ method: 'GET', pathRegex: /\/manifests\// }, { kind: 'wrong-bytes', times: 1 });
      const r = await json(`${proxy.url}/v2/${U}/${s.repo}/manifests/v1`);
      expect(r.status).toBe(502);
      expect(r.error?.message).toContain(s.digest);
      expect(r.error?.message).toMatch(/hash|mismatch/);
      expect(r.error?.message).toContain('"fake"');
      expect(await metric(proxy, 'portcullis_digest_mismatches_total', { upstream: 'fake', kind: 'manifest' })).toBe(before + 1);
      expect(proxy.proxy.app.meta.getManifest('fake', s.repo, s.digest as `sha256:${string}`)).toBeUndefined();
      // Nothing admitted either.
      expect((await json(`${proxy.url}/v2/${U}/${s.repo}/blobs/${s.layerDigest}`, {})).status).toBe(403);

      // By digest too.
      up.setFault({ method: 'GET', pathRegex: /\/manifests\// }, { kind: 'wrong-bytes', times: 1 });
      const d = await json(`${proxy.url}/v2/${U}/${s.repo}/manifests/${s.digest}`);
      expect(d.status).toBe(502);

      // The fault is gone: the real bytes are fetched and served.
      const ok = await json(`${proxy.url}/v2/${U}/${s.repo}/manifests/v1`);
      expect(ok.status).toBe(200);
      expect(ok.body.equals(s.manifest)).toBe(true);
    });

    it('a truncated manifest is refused with a 502 that names the upstream, and not cached', async () => {
      const s = seed(up);
      up.setFault({ method: 'GET', pathRegex: /\/manifests\// }, { kind: 'truncate', afterBytes: 20, times: 1 });
      const r = await json(`${proxy.url}/v2/${U}/${s.repo}/manifests/${s.digest}`);
      expect(r.status).toBe(502);
      expect(r.error?.message).toContain('"fake"');
      expect(proxy.proxy.app.meta.getManifest('fake', s.repo, s.digest as `sha256:${string}`)).toBeUndefined();
    });

    it('429 with Retry-After on the tag HEAD or the GET by digest → 429 TOOMANYREQUESTS with the same Retry-After', async () => {
      const s = seed(up);
      up.setFault({ method: 'HEAD', pathRegex: /\/manifests\/v1$/ }, { kind: 'status', status: 429, headers: { 'Retry-After': '30' }, times: 1 });
      const r = await json(`${proxy.url}/v2/${U}/${s.repo}/manifests/v1`);
      expect(r.status).toBe(429);
      expect(r.error?.code).toBe('TOOMANYREQUESTS');
      expect(r.headers.get('retry-after')).toBe('30');
      expect(up.requests().filter((q) => q.path.includes('/manifests/'))).toHaveLength(1);

      up.setFault({ method: 'GET', pathRegex: /\/manifests\/sha256:/ }, { kind: 'status', status: 429, headers: { 'Retry-After': '7' }, times: 1 });
      const d = await json(`${proxy.url}/v2/${U}/${s.repo}/manifests/${s.digest}`);
      expect(d.status).toBe(429);
      expect(d.headers.get('retry-after')).toBe('7');
      // HEAD carries the status and header too.
      up.setFault({ method: 'GET', pathRegex: /\/manifests\/sha256:/ }, { kind: 'status', status: 429, headers: { 'Retry-After': '9' }, times: 1 });
      const h = await fetch(`${proxy.url}/v2/${U}/${s.repo}/manifests/${s.digest}`, { method: 'HEAD' });
      expect(h.status).toBe(429);
      expect(h.headers.get('retry-after')).toBe('9');
    });

    it('503 once then success: the request succeeds and the fake saw 2 requests', async () => {
      const s = seed(up);
      up.setFault({ method: 'HEAD', pathRegex: /\/manifests\/v1$/ }, { kind: 'status', status: 503, times: 1 });
      const r = await json(`${proxy.url}/v2/${U}/${s.repo}/manifests/v1`);
      expect(r.status).toBe(200);
      expect(r.headers.get('docker-content-digest')).toBe(s.digest);
      expect(up.requests().filter((q) => q.method === 'HEAD' && q.path.endsWith('/manifests/v1'))).toHaveLength(2);
      expect(await metric(proxy, 'portcullis_upstream_retries_total', { upstream: 'fake', reason: '503' })).toBeGreaterThanOrEqual(1);
    });

    it('503 every time: 503 after the retries, naming the upstream', async () => {
      const s = seed(up);
      up.setFault({ method: 'HEAD', pathRegex: /\/manifests\/v1$/ }, { kind: 'status', status: 503 });
      const r = await json(`${proxy.url}/v2/${U}/${s.repo}/manifests/v1`);
      expect(r.status).toBe(503);
      expect(r.error?.message).toContain('"fake"');
      // retries: 2 in the test harness → 3 attempts.
      expect(up.requests().filter((q) => q.method === 'HEAD')).toHaveLength(3);
    });

    it('the upstream is sent the full modern Accept list (the fake, like Distribution, 404s OCI types otherwise)', async () => {
      const s = seed(up);
      // The client only accepts OCI manifests and says so narrowly; upstream must still get every type.
      const r = await json(`${proxy.url}/v2/${U}/${s.repo}/manifests/v1`, { accept: OCI_MANIFEST });
      expect(r.status).toBe(200);
      for (const q of up.requests().filter((x) => x.path.includes('/manifests/'))) {
        const a = String(q.headers.accept);
        for (const t of [
          OCI_MANIFEST,
          'application/vnd.oci.image.index.v1+json',
          'application/vnd.docker.distribution.manifest.v2+json',
          'application/vnd.docker.distribution.manifest.list.v2+json',
        ])
          expect(a).toContain(t);
      }
    });
  });

  describe('tags/list from an upstream that paginates itself', () => {
    it('the upstream Link is rewritten to the proxy path', async () => {
      const s = seed(up);
      for (const t of ['b', 'a', 'c']) up.addManifest(s.repo, t, s.manifest, OCI_MANIFEST);
      const r = await json(`${proxy.url}/v2/${U}/${s.repo}/tags/list?n=2`, {});
      expect(r.status).toBe(200);
      expect(JSON.parse(r.body.toString())).toEqual({ name: `${U}/${s.repo}`, tags: ['a', 'b'] });
      expect(r.headers.get('link')).toBe(`</v2/${U}/${s.repo}/tags/list?n=2&last=b>; rel="next"`);
      const next = await json(`${proxy.url}/v2/${U}/${s.repo}/tags/list?n=2&last=b`, {});
      expect((JSON.parse(next.body.toString()) as { tags: string[] }).tags).toEqual(['c', 'v1']);
      expect(next.headers.get('link')).toBeNull();
    });

    it('a truncated tag list is a 502 naming the upstream, not an internal error', async () => {
      const s = seed(up);
      up.setFault({ method: 'GET', pathRegex: /\/tags\/list/ }, { kind: 'truncate', afterBytes: 5, times: 1 });
      const r = await json(`${proxy.url}/v2/${U}/${s.repo}/tags/list`, {});
      expect(r.status).toBe(502);
      expect(r.error?.message).toContain('"fake"');
    });
  });
});

describe('stale-if-error on upstream 5xx', () => {
  it('a known tag is served stale with a Warning while the upstream answers 503; an unknown one gets the 503', async () => {
    const up = await startFakeUpstream();
    const p = await startProxy({
      upstreams: [{ name: 'flaky', registry: up.host, url: up.url, retries: 0 }],
      extra: { cache: { tagTTL: '0s', staleIfError: '1h' } },
    });
    try {
      const s = seed(up);
      expect((await json(`${p.url}/v2/${up.host}/${s.repo}/manifests/v1`)).status).toBe(200);
      up.setFault({ pathRegex: /\/manifests\// }, { kind: 'status', status: 503 });
      const stale = await json(`${p.url}/v2/${up.host}/${s.repo}/manifests/v1`);
      expect(stale.status).toBe(200);
      expect(stale.body.equals(s.manifest)).toBe(true);
      expect(stale.headers.get('warning')).toMatch(/^299 - "/);
      const unknown = await json(`${p.url}/v2/${up.host}/${s.repo}/manifests/other`);
      expect(unknown.status).toBe(503);
      expect(unknown.error?.message).toContain('"flaky"');
    } finally {
      await p.stop();
      await up.stop();
    }
  });
});

describe('stale-if-error when a moved tag’s manifest cannot be had', () => {
  it('serves the last verified mapping while GET by the new digest fails or returns wrong bytes', async () => {
    const up = await startFakeUpstream();
    const p = await startProxy({
      upstreams: [{ name: 'flaky', registry: up.host, url: up.url, retries: 0 }],
      extra: { cache: { tagTTL: '0s', staleIfError: '1h' } },
    });
    try {
      const s = seed(up);
      expect((await json(`${p.url}/v2/${up.host}/${s.repo}/manifests/v1`)).status).toBe(200);
      // The tag moves upstream: its HEAD answers with the new digest, but the manifest itself fails.
      const moved = Buffer.from(s.manifest.toString().replace('"schemaVersion":2', '"schemaVersion":2,"annotations":{"v":"2"}'));
      const newDigest = up.addManifest(s.repo, 'v1', moved, OCI_MANIFEST);
      up.setFault({ method: 'GET', pathRegex: new RegExp(`/manifests/${esc(newDigest)}$`) }, { kind: 'status', status: 503, times: 1 });
      const stale = await json(`${p.url}/v2/${up.host}/${s.repo}/manifests/v1`);
      expect(stale.status).toBe(200);
      expect(stale.headers.get('docker-content-digest')).toBe(s.digest);
      expect(stale.headers.get('warning')).toMatch(/^299 - "/);
      up.setFault({ method: 'GET', pathRegex: new RegExp(`/manifests/${esc(newDigest)}$`) }, { kind: 'wrong-bytes', times: 1 });
      const tampered = await json(`${p.url}/v2/${up.host}/${s.repo}/manifests/v1`);
      expect(tampered.status).toBe(200);
      expect(tampered.headers.get('docker-content-digest')).toBe(s.digest);
      // Once the upstream serves it, the new mapping wins.
      const fresh = await json(`${p.url}/v2/${up.host}/${s.repo}/manifests/v1`);
      expect(fresh.status).toBe(200);
      expect(fresh.headers.get('docker-content-digest')).toBe(newDigest);
      expect(fresh.headers.get('warning')).toBeNull();
    } finally {
      await p.stop();
      await up.stop();
    }
  });
});

describe('unreachable and stalling upstreams', () => {
  it('connection refused → 503 naming the upstream', async () => {
    const gone = await startFakeUpstream();
    const url = gone.url;
    const host = gone.host;
    await gone.stop();
    const p = await startProxy({ upstreams: [{ name: 'gone', registry: host, url, retries: 1 }] });
    try {
      for (const path of [`/v2/${host}/x/y/manifests/v1`, `/v2/${host}/x/y/tags/list`, `/v2/${host}/x/y/referrers/sha256:${'a'.repeat(64)}`]) {
        const r = await json(`${p.url}${path}`);
        expect(r.status, path).toBe(503);
        expect(r.error?.message, path).toContain('"gone"');
      }
    } finally {
      await p.stop();
    }
  });

  it('a response slower than timeouts.headers is abandoned and retried', async () => {
    // The delayed answers never come until the test ends: a 200 can only be the retry's.
    const clock = manualSleep();
    const up = await startFakeUpstream({ sleep: clock.sleep });
    const p = await startProxy({ upstreams: [{ name: 'stall', registry: up.host, url: up.url, retries: 1, timeouts: { headers: '300ms' } }] });
    try {
      const s = seed(up);
      up.setFault({ method: 'HEAD', pathRegex: /\/manifests\/v1$/ }, { kind: 'delay', ms: 3000, times: 1 });
      const r = await json(`${p.url}/v2/${up.host}/${s.repo}/manifests/v1`);
      expect(r.status).toBe(200);
      expect(
        up
          .requests()
          .filter((q) => q.method === 'HEAD')
          .map((q) => q.fault),
      ).toEqual(['delay', undefined]);

      up.setFault({ method: 'GET', pathRegex: /\/manifests\/sha256:/ }, { kind: 'delay', ms: 3000 });
      const s2 = seed(up);
      const d = await json(`${p.url}/v2/${up.host}/${s2.repo}/manifests/${s2.digest}`);
      expect(d.status).toBe(503);
      expect(d.error?.message).toContain('"stall"');
    } finally {
      clock.open();
      await p.stop();
      await up.stop();
    }
  }, 30_000);
});

describe('redirects to another host with upstream credentials', () => {
  const PW_ENV = 'PORTCULLIS_TEST_FAULTS_PASSWORD';
  let echo: EchoServer;
  beforeAll(async () => {
    process.env[PW_ENV] = 's3cret-pw';
    echo = await startEchoServer();
  });
  afterAll(async () => {
    delete process.env[PW_ENV];
    await echo?.stop();
  });
  afterEach(() => echo.clearRequests());

  for (const scheme of ['basic', 'bearer'] as const) {
    it(`${scheme}: the blob is served from the redirect target, which never sees Authorization`, async () => {
      const up = await startFakeUpstream(
        scheme === 'basic'
          ? { requireBasic: { user: 'alice', pass: 's3cret-pw' } }
          : { requireBearer: { realm: '/token', service: 'fake', token: 'tok-123', tokenCredentials: { user: 'alice', pass: 's3cret-pw' } } },
      );
      const p = await startProxy({
        upstreams: [{ name: 'private', registry: up.host, url: up.url, credentials: { username: 'alice', password: { env: PW_ENV } } }],
      });
      try {
        const s = seed(up);
        echo.setBody(s.layer);
        const m = await json(`${p.url}/v2/${up.host}/${s.repo}/manifests/v1`);
        expect(m.status).toBe(200);
        up.clearRequests();
        up.setFault(
          { method: 'GET', pathRegex: new RegExp(`/blobs/${esc(s.layerDigest)}$`) },
          { kind: 'redirect', to: `${echo.url}/cdn/${s.layerDigest.slice(7)}?sig=abc` },
        );
        const r = await rawGet(`${p.url}/v2/${up.host}/${s.repo}/blobs/${s.layerDigest}`);
        expect(r.status).toBe(200);
        expect(r.complete).toBe(true);
        expect(sha(r.body)).toBe(s.layerDigest);

        const atEcho = echo.requests();
        expect(atEcho).toHaveLength(1);
        expect(atEcho[0]!.path).toBe(`/cdn/${s.layerDigest.slice(7)}?sig=abc`);
        expect(atEcho[0]!.headers.authorization).toBeUndefined();
        const atUpstream = up.requests().filter((q) => q.path.endsWith(`/blobs/${s.layerDigest}`));
        expect(atUpstream.length).toBeGreaterThanOrEqual(1);
        const authed = atUpstream.filter((q) => typeof q.headers.authorization === 'string');
        expect(authed.length).toBeGreaterThanOrEqual(1);
        expect(String(authed[0]!.headers.authorization)).toBe(
          scheme === 'basic' ? `Basic ${Buffer.from('alice:s3cret-pw').toString('base64')}` : 'Bearer tok-123',
        );
        expect(authed[0]!.status).toBe(307);
      } finally {
        await p.stop();
        await up.stop();
      }
    });
  }
});
