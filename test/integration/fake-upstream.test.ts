/**
 * Checks the fault-injecting fake upstream itself (test/harness/fake-upstream.ts), so that a proxy test failing
 * against it can be trusted to be the proxy's fault. Everything here is in-process and loopback-only; it runs in well
 * under a second apart from the deliberately slow/delayed cases.
 */
import { createHash } from 'node:crypto';
import http from 'node:http';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { type EchoServer, type FakeUpstream, manualSleep, startEchoServer, startFakeUpstream } from '../harness/fake-upstream.js';

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const ACCEPT_ALL = `${OCI_MANIFEST}, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json`;

const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** A small but realistic image: config + one layer + manifest, all in repo `demo/app`. */
function seed(up: FakeUpstream): { manifest: Buffer; digest: string; layer: Buffer; layerDigest: string } {
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } }));
  const layer = Buffer.alloc(64 * 1024, 7);
  const configDigest = up.addBlob('demo/app', config);
  const layerDigest = up.addBlob('demo/app', layer);
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: configDigest, size: config.length },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: layerDigest, size: layer.length }],
    }),
  );
  const digest = up.addManifest('demo/app', 'v1', manifest, OCI_MANIFEST);
  return { manifest, digest, layer, layerDigest };
}

/** Raw GET with node:http, so a truncated body surfaces as an 'aborted'/'error' rather than being hidden by fetch. */
function rawGet(url: string): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: Buffer; complete: boolean }> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      const finish = (): void => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks), complete: res.complete });
      res.on('end', finish);
      res.on('aborted', finish);
      res.on('error', finish);
    });
    req.on('error', reject);
  });
}

describe('fake upstream', () => {
  let up: FakeUpstream;
  let echo: EchoServer | undefined;
  beforeEach(async () => {
    up = await startFakeUpstream();
  });
  afterEach(async () => {
    await up.stop();
    await echo?.stop();
    echo = undefined;
  });

  it('answers /v2/ and serves manifests by tag and digest, GET and HEAD', async () => {
    const { manifest, digest } = seed(up);
    const ping = await fetch(`${up.url}/v2/`);
    expect(ping.status).toBe(200);
    expect(ping.headers.get('docker-distribution-api-version')).toBe('registry/2.0');

    for (const ref of ['v1', digest]) {
      const get = await fetch(`${up.url}/v2/demo/app/manifests/${ref}`, { headers: { accept: ACCEPT_ALL } });
      expect(get.status).toBe(200);
      expect(get.headers.get('docker-content-digest')).toBe(digest);
      expect(get.headers.get('content-type')).toBe(OCI_MANIFEST);
      expect(Buffer.from(await get.arrayBuffer())).toEqual(manifest);

      const head = await fetch(`${up.url}/v2/demo/app/manifests/${ref}`, { method: 'HEAD' });
      expect(head.status).toBe(200);
      expect(head.headers.get('docker-content-digest')).toBe(digest);
      expect(head.headers.get('content-length')).toBe(String(manifest.length));
      expect(head.headers.get('content-type')).toBe(OCI_MANIFEST);
    }
    const missing = await fetch(`${up.url}/v2/demo/app/manifests/nope`);
    expect(missing.status).toBe(404);
    expect(((await missing.json()) as { errors: Array<{ code: string }> }).errors[0]?.code).toBe('MANIFEST_UNKNOWN');
  });

  it('serves blobs by digest, with Range, and 404 BLOB_UNKNOWN otherwise', async () => {
    const { layer, layerDigest } = seed(up);
    const r = await fetch(`${up.url}/v2/demo/app/blobs/${layerDigest}`);
    expect(r.status).toBe(200);
    expect(r.headers.get('docker-content-digest')).toBe(layerDigest);
    expect(sha(Buffer.from(await r.arrayBuffer()))).toBe(layerDigest);

    const part = await fetch(`${up.url}/v2/demo/app/blobs/${layerDigest}`, { headers: { range: 'bytes=10-19' } });
    expect(part.status).toBe(206);
    expect(part.headers.get('content-range')).toBe(`bytes 10-19/${layer.length}`);
    expect((await part.arrayBuffer()).byteLength).toBe(10);

    const unknown = await fetch(`${up.url}/v2/demo/app/blobs/sha256:${'0'.repeat(64)}`);
    expect(unknown.status).toBe(404);
  });

  it('lists tags with pagination', async () => {
    for (const t of ['c', 'a', 'b']) up.addManifest('demo/tags', t, Buffer.from(`{"t":"${t}"}`), OCI_MANIFEST);
    const all = await fetch(`${up.url}/v2/demo/tags/tags/list`);
    expect(await all.json()).toEqual({ name: 'demo/tags', tags: ['a', 'b', 'c'] });
    const page = await fetch(`${up.url}/v2/demo/tags/tags/list?n=2`);
    expect(await page.json()).toEqual({ name: 'demo/tags', tags: ['a', 'b'] });
    expect(page.headers.get('link')).toBe('</v2/demo/tags/tags/list?n=2&last=b>; rel="next"');
  });

  it('strictAccept emulates distribution 2.8: OCI manifest without OCI Accept is 404', async () => {
    const strict = await startFakeUpstream({ strictAccept: true });
    try {
      seed(strict);
      expect((await fetch(`${strict.url}/v2/demo/app/manifests/v1`)).status).toBe(404);
      expect((await fetch(`${strict.url}/v2/demo/app/manifests/v1`, { headers: { accept: ACCEPT_ALL } })).status).toBe(200);
    } finally {
      await strict.stop();
    }
  });

  it('records requests with headers and clears them', async () => {
    seed(up);
    await fetch(`${up.url}/v2/demo/app/manifests/v1?ns=docker.io`, { method: 'HEAD', headers: { 'x-probe': 'yes' } });
    const reqs = up.requests();
    expect(reqs).toHaveLength(1);
    expect(reqs[0]).toMatchObject({ method: 'HEAD', path: '/v2/demo/app/manifests/v1?ns=docker.io', status: 200 });
    expect(reqs[0]?.headers['x-probe']).toBe('yes');
    up.clearRequests();
    expect(up.requests()).toHaveLength(0);
  });

  it('truncate: full Content-Length, then the connection closes early', async () => {
    const { layer, layerDigest } = seed(up);
    up.setFault({ pathRegex: /\/blobs\// }, { kind: 'truncate', afterBytes: 1000 });
    const r = await rawGet(`${up.url}/v2/demo/app/blobs/${layerDigest}`);
    expect(r.headers['content-length']).toBe(String(layer.length));
    expect(r.complete).toBe(false);
    expect(r.body.length).toBe(1000);
    // fetch must reject on the body, not silently return fewer bytes
    const f = await fetch(`${up.url}/v2/demo/app/blobs/${layerDigest}`);
    await expect(f.arrayBuffer()).rejects.toThrow();
  });

  it('wrong-bytes: same length and headers, different digest', async () => {
    const { manifest, digest, layerDigest } = seed(up);
    up.setFault({ pathRegex: /./ }, { kind: 'wrong-bytes' });
    const m = await fetch(`${up.url}/v2/demo/app/manifests/v1`, { headers: { accept: ACCEPT_ALL } });
    const body = Buffer.from(await m.arrayBuffer());
    expect(m.headers.get('docker-content-digest')).toBe(digest);
    expect(body.length).toBe(manifest.length);
    expect(sha(body)).not.toBe(digest);
    expect(() => JSON.parse(body.toString('utf8')) as unknown).not.toThrow(); // still looks like a manifest
    const b = await fetch(`${up.url}/v2/demo/app/blobs/${layerDigest}`);
    expect(sha(Buffer.from(await b.arrayBuffer()))).not.toBe(layerDigest);
  });

  it('status: 429 with Retry-After; 503 applied once then success', async () => {
    seed(up);
    up.setFault({ method: 'GET', pathRegex: /\/manifests\/v1$/ }, { kind: 'status', status: 429, headers: { 'Retry-After': '1' }, times: 1 });
    const limited = await fetch(`${up.url}/v2/demo/app/manifests/v1`, { headers: { accept: ACCEPT_ALL } });
    expect(limited.status).toBe(429);
    expect(limited.headers.get('retry-after')).toBe('1');
    expect(((await limited.json()) as { errors: Array<{ code: string }> }).errors[0]?.code).toBe('TOOMANYREQUESTS');

    up.setFault({ pathRegex: /\/manifests\// }, { kind: 'status', status: 503, times: 1 });
    expect((await fetch(`${up.url}/v2/demo/app/manifests/v1`, { headers: { accept: ACCEPT_ALL } })).status).toBe(503);
    expect((await fetch(`${up.url}/v2/demo/app/manifests/v1`, { headers: { accept: ACCEPT_ALL } })).status).toBe(200);

    // method filter: a HEAD-only fault leaves GET alone
    up.setFault({ method: 'HEAD', pathRegex: /\/manifests\// }, { kind: 'status', status: 403 });
    expect((await fetch(`${up.url}/v2/demo/app/manifests/v1`, { method: 'HEAD' })).status).toBe(403);
    expect((await fetch(`${up.url}/v2/demo/app/manifests/v1`, { headers: { accept: ACCEPT_ALL } })).status).toBe(200);
    up.clearFaults();
    expect((await fetch(`${up.url}/v2/demo/app/manifests/v1`, { method: 'HEAD' })).status).toBe(200);
  });

  it('slow: the body arrives one tick (bytesPerSecond / 10) at a time, 100 ms apart', async () => {
    const clock = manualSleep();
    const held = await startFakeUpstream({ sleep: clock.sleep });
    try {
      const blob = Buffer.alloc(3000, 1);
      const d = held.addBlob('demo/slow', blob);
      held.setFault({ pathRegex: /\/blobs\// }, { kind: 'slow', bytesPerSecond: 10_000 });
      const r = await fetch(`${held.url}/v2/demo/slow/blobs/${d}`);
      const reader = (r.body as ReadableStream<Uint8Array>).getReader();
      const got: Buffer[] = [];
      const readUpTo = async (n: number): Promise<void> => {
        while (Buffer.concat(got).length < n) {
          const { done, value } = await reader.read();
          if (done) throw new Error('body ended early');
          got.push(Buffer.from(value));
        }
      };
      // 3 chunks of 1000 bytes: each of the two waits between them holds back the rest until it is over.
      for (let tick = 1; tick <= 2; tick++) {
        await readUpTo(tick * 1000);
        await clock.called(tick);
        expect(Buffer.concat(got).length, `bytes before wait ${tick} ends`).toBe(tick * 1000);
        clock.release();
      }
      await readUpTo(3000);
      expect((await reader.read()).done).toBe(true);
      expect(clock.calls).toEqual([100, 100]);
      expect(sha(Buffer.concat(got))).toBe(d);
      expect(held.requests().at(-1)!.fault).toBe('slow');
    } finally {
      clock.release();
      await held.stop();
    }
  }, 10_000);

  it('delay: headers are held back for the given time', async () => {
    const clock = manualSleep();
    const held = await startFakeUpstream({ sleep: clock.sleep });
    try {
      seed(held);
      held.setFault({ pathRegex: /^\/v2\/$/ }, { kind: 'delay', ms: 300 });
      let answered = false;
      const res = fetch(`${held.url}/v2/`).then((r) => {
        answered = true;
        return r;
      });
      await clock.called(1);
      expect(clock.calls).toEqual([300]);
      // The request is in, the wait runs: no answer yet.
      expect(held.requests()).toHaveLength(1);
      expect(answered).toBe(false);
      clock.release();
      expect((await res).status).toBe(200);
      expect(held.requests()[0]!.fault).toBe('delay');
    } finally {
      clock.release();
      await held.stop();
    }
  }, 10_000);

  it('redirect: 307 to another host, which records headers and serves the blob', async () => {
    const { layer, layerDigest } = seed(up);
    echo = await startEchoServer({ body: layer });
    up.setFault({ pathRegex: /\/blobs\// }, { kind: 'redirect', to: `${echo.url}/cdn/${layerDigest}` });
    const r = await fetch(`${up.url}/v2/demo/app/blobs/${layerDigest}`, { redirect: 'manual' });
    expect(r.status).toBe(307);
    expect(r.headers.get('location')).toBe(`${echo.url}/cdn/${layerDigest}`);
    const followed = await fetch(r.headers.get('location')!, { headers: { 'x-from': 'test' } });
    expect(sha(Buffer.from(await followed.arrayBuffer()))).toBe(layerDigest);
    expect(echo.requests()).toHaveLength(1);
    expect(echo.requests()[0]?.headers['x-from']).toBe('test');
    expect(echo.requests()[0]?.headers.authorization).toBeUndefined();
  });
});

describe('fake upstream auth', () => {
  it('requireBearer: 401 challenge, own token endpoint with Basic credentials, then 200', async () => {
    const up = await startFakeUpstream({
      requireBearer: { realm: '/token', service: 'fake', token: 'tok123', tokenCredentials: { user: 'u', pass: 'p' } },
    });
    try {
      seed(up);
      const ping = await fetch(`${up.url}/v2/`);
      expect(ping.status).toBe(401);
      const anon = await fetch(`${up.url}/v2/demo/app/manifests/v1`);
      expect(anon.status).toBe(401);
      expect(anon.headers.get('www-authenticate')).toBe(`Bearer realm="${up.url}/token",service="fake",scope="repository:demo/app:pull"`);
      expect((await fetch(`${up.url}/token?service=fake`)).status).toBe(401);
      const tok = await fetch(`${up.url}/token?service=fake&scope=repository:demo/app:pull`, {
        headers: { authorization: `Basic ${Buffer.from('u:p').toString('base64')}` },
      });
      expect(((await tok.json()) as { token: string }).token).toBe('tok123');
      const ok = await fetch(`${up.url}/v2/demo/app/manifests/v1`, { headers: { authorization: 'Bearer tok123', accept: ACCEPT_ALL } });
      expect(ok.status).toBe(200);
    } finally {
      await up.stop();
    }
  });

  it('requireBasic: 401 with a Basic challenge, 200 with the right credentials', async () => {
    const up = await startFakeUpstream({ requireBasic: { user: 'alice', pass: 's3cret' } });
    try {
      seed(up);
      const anon = await fetch(`${up.url}/v2/`);
      expect(anon.status).toBe(401);
      expect(anon.headers.get('www-authenticate')).toBe('Basic realm="fake-upstream"');
      const ok = await fetch(`${up.url}/v2/`, { headers: { authorization: `Basic ${Buffer.from('alice:s3cret').toString('base64')}` } });
      expect(ok.status).toBe(200);
    } finally {
      await up.stop();
    }
  });

  it('auth is checked before faults: the authenticated request is the one redirected', async () => {
    const up = await startFakeUpstream({ requireBearer: { realm: 'http://127.0.0.1:1/token', service: 's', token: 't' } });
    const echo = await startEchoServer({ body: Buffer.from('x') });
    try {
      const { layerDigest } = seed(up);
      up.setFault({ pathRegex: /\/blobs\// }, { kind: 'redirect', to: `${echo.url}/b`, times: 1 });
      expect((await fetch(`${up.url}/v2/demo/app/blobs/${layerDigest}`, { redirect: 'manual' })).status).toBe(401);
      const r = await fetch(`${up.url}/v2/demo/app/blobs/${layerDigest}`, { redirect: 'manual', headers: { authorization: 'Bearer t' } });
      expect(r.status).toBe(307);
    } finally {
      await up.stop();
      await echo.stop();
    }
  });
});
