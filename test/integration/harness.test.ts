/**
 * Proves the test harness (test/harness/*) against the real Distribution 2.8 registry:
 * pushes over the HTTP API round-trip byte-exactly, the access log is parsed, and a token-auth
 * registry works with our token issuer (anonymous pull via the token flow, 401 Bearer challenge).
 */
import { createHash } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MANIFEST_ACCEPT, MT, pushImage, pushIndex, pushRaw, sha256 } from '../harness/images.js';
import { startRegistry, writeHtpasswd, type RunningRegistry } from '../harness/registry.js';
import { startTokenIssuer, type RunningTokenIssuer } from '../harness/token-issuer.js';

async function getManifest(
  url: string,
  repo: string,
  ref: string,
  auth?: string,
): Promise<{ status: number; body: Buffer; contentType: string | null; digest: string | null }> {
  const res = await fetch(`${url}/v2/${repo}/manifests/${ref}`, {
    headers: { Accept: MANIFEST_ACCEPT, ...(auth ? { Authorization: auth } : {}) },
  });
  const body = Buffer.from(await res.arrayBuffer());
  return {
    status: res.status,
    body,
    contentType: res.headers.get('content-type'),
    digest: res.headers.get('docker-content-digest'),
  };
}

describe('plain registry harness', () => {
  let reg: RunningRegistry;
  beforeAll(async () => {
    reg = await startRegistry();
  });
  afterAll(async () => {
    await reg?.stop();
  });

  it('answers /v2/ on loopback', async () => {
    expect(reg.host).toMatch(/^127\.0\.0\.1:\d+$/);
    const res = await fetch(`${reg.url}/v2/`);
    expect(res.status).toBe(200);
    expect(res.headers.get('docker-distribution-api-version')).toBe('registry/2.0');
  });

  it('pushes a single-arch image and reads it back by tag and digest', async () => {
    const img = await pushImage(reg.url, 'test/app', 'v1', { layers: 2, layerSizeMiB: 0.05 });
    expect(img.layers).toHaveLength(2);
    expect(img.layers[0]!.diffId).toBe(img.layers[0]!.digest);

    for (const ref of ['v1', img.digest]) {
      const got = await getManifest(reg.url, 'test/app', ref);
      expect(got.status).toBe(200);
      expect(got.contentType).toBe(MT.ociManifest);
      expect(got.digest).toBe(img.digest);
      expect(sha256(got.body)).toBe(img.digest);
      expect(got.body.equals(img.manifest)).toBe(true);
    }

    reg.clearLog();
    const layer = img.layers[0]!;
    const blob = await fetch(`${reg.url}/v2/test/app/blobs/${layer.digest}`, {
      headers: { 'User-Agent': 'harness-test/1' },
    });
    const bytes = Buffer.from(await blob.arrayBuffer());
    expect(blob.status).toBe(200);
    expect(bytes.length).toBe(layer.size);
    expect(`sha256:${createHash('sha256').update(bytes).digest('hex')}`).toBe(layer.digest);
    // A valid ustar archive: magic at offset 257 of the first header.
    expect(bytes.subarray(257, 263).toString('latin1')).toBe('ustar\0');

    const hits = await reg.waitForRequests((r) => r.method === 'GET' && r.path === `/v2/test/app/blobs/${layer.digest}` && r.status === 200);
    expect(hits.map((h) => h.userAgent)).toEqual(['harness-test/1']);
  });

  it('pushes a gzip docker-flavoured image with a tar diff_id', async () => {
    const img = await pushImage(reg.url, 'test/docker', 'gz', { compressed: true, mediaType: 'docker' });
    expect(img.manifestMediaType).toBe(MT.dockerManifest);
    expect(img.layers[0]!.diffId).not.toBe(img.layers[0]!.digest);
    const got = await getManifest(reg.url, 'test/docker', 'gz');
    expect(got.digest).toBe(img.digest);
    const cfg = JSON.parse(img.config.bytes.toString()) as { rootfs: { diff_ids: string[] } };
    expect(cfg.rootfs.diff_ids).toEqual([img.layers[0]!.diffId]);
  });

  it('pushes a 2-platform OCI index', async () => {
    const idx = await pushIndex(reg.url, 'test/multi', 'latest', [
      { os: 'linux', architecture: 'amd64' },
      { os: 'linux', architecture: 'arm64', variant: 'v8' },
    ]);
    const got = await getManifest(reg.url, 'test/multi', 'latest');
    expect(got.status).toBe(200);
    expect(got.contentType).toBe(MT.ociIndex);
    expect(got.digest).toBe(idx.digest);
    expect(sha256(got.body)).toBe(idx.digest);
    const parsed = JSON.parse(got.body.toString()) as {
      manifests: Array<{ digest: string; platform: { architecture: string; variant?: string } }>;
    };
    expect(parsed.manifests.map((m) => m.platform.architecture)).toEqual(['amd64', 'arm64']);
    expect(parsed.manifests[1]!.platform.variant).toBe('v8');
    for (const child of idx.children) {
      const c = await getManifest(reg.url, 'test/multi', child.digest);
      expect(c.status).toBe(200);
      expect(sha256(c.body)).toBe(child.digest);
    }
  });

  it('pushRaw stores hand-crafted bytes verbatim', async () => {
    // Odd whitespace on purpose: digests are over bytes, not over canonical JSON.
    const bytes = Buffer.from(`{ "schemaVersion": 2,\n  "mediaType": "${MT.ociIndex}", "manifests": [] }`);
    const digest = await pushRaw(reg.url, 'test/raw', 'weird', bytes, MT.ociIndex);
    const got = await getManifest(reg.url, 'test/raw', digest);
    expect(got.body.equals(bytes)).toBe(true);
  });
});

describe('token-auth registry harness', () => {
  let issuer: RunningTokenIssuer;
  let reg: RunningRegistry;
  beforeAll(async () => {
    issuer = await startTokenIssuer({ users: { alice: 's3cret' }, expiresIn: 120 });
    reg = await startRegistry({
      auth: {
        kind: 'token',
        realm: issuer.realm,
        service: issuer.service,
        issuer: issuer.issuer,
        rootCertBundlePath: issuer.rootCertBundlePath,
      },
    });
  });
  afterAll(async () => {
    await reg?.stop();
    await issuer?.stop();
  });

  it('challenges unauthenticated requests with Bearer', async () => {
    const res = await fetch(`${reg.url}/v2/secure/app/manifests/v1`, { headers: { Accept: MANIFEST_ACCEPT } });
    expect(res.status).toBe(401);
    const challenge = res.headers.get('www-authenticate') ?? '';
    expect(challenge).toContain(`Bearer realm="${issuer.realm}"`);
    expect(challenge).toContain(`service="${issuer.service}"`);
    expect(challenge).toContain('scope="repository:secure/app:pull"');
  });

  it('lets a user push with a token and anonymous pull via the token flow', async () => {
    // Push: token obtained over HTTP with Basic credentials (the GET flow).
    const basic = `Basic ${Buffer.from('alice:s3cret').toString('base64')}`;
    const tr = await fetch(`${issuer.realm}?service=${issuer.service}&scope=repository:secure/app:pull,push`, {
      headers: { Authorization: basic },
    });
    expect(tr.status).toBe(200);
    const pushTok = ((await tr.json()) as { token: string }).token;
    const img = await pushImage(reg.url, 'secure/app', 'v1', { auth: `Bearer ${pushTok}` });

    // Anonymous pull: follow the challenge to the realm without credentials.
    const first = await fetch(`${reg.url}/v2/secure/app/manifests/v1`, { headers: { Accept: MANIFEST_ACCEPT } });
    await first.arrayBuffer();
    const ch = first.headers.get('www-authenticate') ?? '';
    const param = (k: string): string => new RegExp(`${k}="([^"]*)"`).exec(ch)?.[1] ?? '';
    const tokenUrl = new URL(param('realm'));
    tokenUrl.searchParams.set('service', param('service'));
    tokenUrl.searchParams.set('scope', param('scope'));
    const anon = (await (await fetch(tokenUrl)).json()) as { token: string; expires_in: number };
    expect(anon.expires_in).toBe(120);
    const got = await getManifest(reg.url, 'secure/app', 'v1', `Bearer ${anon.token}`);
    expect(got.status).toBe(200);
    expect(got.digest).toBe(img.digest);

    // Anonymous may not push.
    const post = await fetch(`${reg.url}/v2/secure/app/blobs/uploads/`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${anon.token}` },
    });
    expect(post.status).toBe(401);

    // OAuth2 POST flow.
    const form = new URLSearchParams({
      grant_type: 'password',
      service: issuer.service,
      client_id: 'harness',
      scope: 'repository:secure/app:pull',
      username: 'alice',
      password: 's3cret',
    });
    const pr = await fetch(issuer.realm, { method: 'POST', body: form });
    expect(pr.status).toBe(200);
    const oauth = (await pr.json()) as { access_token: string };
    expect((await getManifest(reg.url, 'secure/app', 'v1', `Bearer ${oauth.access_token}`)).status).toBe(200);

    const log = issuer.requests();
    expect(log.map((r) => [r.method, r.user ?? null, r.withCredentials])).toEqual([
      ['GET', 'alice', true],
      ['GET', null, false],
      ['POST', 'alice', true],
    ]);
    expect(log[1]!.granted).toEqual([{ type: 'repository', name: 'secure/app', actions: ['pull'] }]);

    // Wrong password is refused by the issuer.
    const bad = await fetch(`${issuer.realm}?service=${issuer.service}&scope=repository:secure/app:pull`, {
      headers: { Authorization: `Basic ${Buffer.from('alice:nope').toString('base64')}` },
    });
    expect(bad.status).toBe(401);
  });
});

describe('htpasswd registry harness', () => {
  let reg: RunningRegistry;
  let htpasswd: string;
  beforeAll(async () => {
    htpasswd = await writeHtpasswd({ alice: 's3cret' });
    reg = await startRegistry({ auth: { kind: 'htpasswd', path: htpasswd } });
  });
  afterAll(async () => {
    await reg?.stop();
    if (htpasswd) await rm(dirname(htpasswd), { recursive: true, force: true });
  });

  it('challenges with Basic and accepts the bcrypt user', async () => {
    const anon = await fetch(`${reg.url}/v2/`);
    expect(anon.status).toBe(401);
    expect(anon.headers.get('www-authenticate')).toMatch(/^Basic realm=/);
    const auth = `Basic ${Buffer.from('alice:s3cret').toString('base64')}`;
    const img = await pushImage(reg.url, 'basic/app', 'v1', { auth });
    const got = await getManifest(reg.url, 'basic/app', 'v1', auth);
    expect(got.digest).toBe(img.digest);
  });
});
