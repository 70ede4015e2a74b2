/**
 * Upstream authentication against a REAL Distribution 2.8: `auth: token` with the test token issuer
 * (test/harness/token-issuer.ts, which records every token request), and `auth: htpasswd` (Basic).
 *
 * The proxy's token cache refreshes at 90% of `expires_in`. Distribution itself accepts a token for a while past
 * its `exp`, so expiry is shown by the proxy asking the issuer again, not by a 401 cycle.
 */
import { rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MT, pushImage, type PushedImage } from '../harness/images.js';
import { startProxy, type RunningProxy, type TestUpstream } from '../harness/proxy.js';
import { startRegistry, writeHtpasswd, type RunningRegistry } from '../harness/registry.js';
import { startTokenIssuer, type RunningTokenIssuer, type TokenIssuerOptions } from '../harness/token-issuer.js';

const ACCEPT = [MT.ociIndex, MT.ociManifest, MT.dockerList, MT.dockerManifest].join(', ');
const PW_ENV = 'PORTCULLIS_TEST_AUTH_PASSWORD';
const USER = 'alice';
const PASSWORD = 'correct horse battery staple';

interface Got {
  status: number;
  headers: Headers;
  body: Buffer;
  error?: { code: string; message: string };
}

async function get(url: string, init: RequestInit = { headers: { accept: ACCEPT } }): Promise<Got> {
  const res = await fetch(url, init);
  const body = Buffer.from(await res.arrayBuffer());
  const out: Got = { status: res.status, headers: res.headers, body };
  if (res.status >= 400 && body.length) out.error = (JSON.parse(body.toString()) as { errors: Array<{ code: string; message: string }> }).errors[0];
  return out;
}

interface TokenRealm {
  issuer: RunningTokenIssuer;
  reg: RunningRegistry;
}

async function tokenRegistry(opts: TokenIssuerOptions): Promise<TokenRealm> {
  const issuer = await startTokenIssuer({ users: { [USER]: PASSWORD }, ...opts });
  const reg = await startRegistry({
    auth: { kind: 'token', realm: issuer.realm, service: issuer.service, issuer: issuer.issuer, rootCertBundlePath: issuer.rootCertBundlePath },
  });
  return { issuer, reg };
}

/** Pushes an image with a token minted directly (not recorded by the issuer). */
function pushWithToken(t: TokenRealm, repo: string, tag: string): Promise<PushedImage> {
  const token = t.issuer.mint(USER, [{ type: 'repository', name: repo, actions: ['pull', 'push'] }]);
  return pushImage(t.reg.url, repo, tag, { auth: `Bearer ${token}` });
}

function upstream(reg: RunningRegistry, withCredentials: boolean, extra: Record<string, unknown> = {}): TestUpstream {
  return {
    name: 'secure',
    registry: reg.host,
    url: reg.url,
    ...(withCredentials ? { credentials: { username: USER, password: { env: PW_ENV } } } : {}),
    ...extra,
  };
}

/** Pulls an image the way a client does: root manifest by tag, then config and layers. */
async function pull(p: RunningProxy, host: string, repo: string, tag: string, img: PushedImage): Promise<void> {
  const m = await get(`${p.url}/v2/${host}/${repo}/manifests/${tag}`);
  expect(m.status, m.error?.message).toBe(200);
  expect(m.headers.get('docker-content-digest')).toBe(img.digest);
  for (const d of [img.config, ...img.layers]) {
    const b = await get(`${p.url}/v2/${host}/${repo}/blobs/${d.digest}`, {});
    expect(b.status, d.digest).toBe(200);
    expect(b.body.length).toBe(d.size);
  }
}

const scopeOf = (repo: string): string => `repository:${repo}:pull`;

beforeAll(() => {
  // Credentials are read at request time from the process environment (config only names the variable).
  process.env[PW_ENV] = PASSWORD;
});
afterAll(() => {
  delete process.env[PW_ENV];
});

describe('token auth, anonymous pulls allowed', () => {
  let t: TokenRealm;
  let img: PushedImage;
  let other: PushedImage;

  beforeAll(async () => {
    t = await tokenRegistry({});
    img = await pushWithToken(t, 'team/app', 'v1');
    other = await pushWithToken(t, 'team/other', 'v1');
    for (const tag of ['t1', 't2', 't3', 't4', 't5']) {
      await fetch(`${t.reg.url}/v2/team/other/manifests/${tag}`, {
        method: 'PUT',
        headers: {
          'content-type': other.manifestMediaType,
          authorization: `Bearer ${t.issuer.mint(USER, [{ type: 'repository', name: 'team/other', actions: ['pull', 'push'] }])}`,
        },
        body: other.manifest,
      }).then(async (r) => {
        expect(r.status).toBe(201);
        await r.arrayBuffer();
      });
    }
  });
  afterAll(async () => {
    await t?.reg.stop();
    await t?.issuer.stop();
  });

  it('the registry really demands a token (precondition)', async () => {
    const r = await fetch(`${t.reg.url}/v2/team/app/manifests/v1`, { headers: { accept: ACCEPT } });
    expect(r.status).toBe(401);
    expect(r.headers.get('www-authenticate')).toMatch(/^Bearer realm=/);
  });

  it('an anonymous pull through the proxy works, with anonymous GET token requests for the pull scope', async () => {
    const p = await startProxy({ upstreams: [upstream(t.reg, false)] });
    try {
      t.issuer.clearRequests();
      await pull(p, t.reg.host, 'team/app', 'v1', img);
      const reqs = t.issuer.requests();
      expect(reqs.length).toBeGreaterThanOrEqual(1);
      for (const r of reqs) {
        expect(r.method).toBe('GET');
        expect(r.withCredentials).toBe(false);
        expect(r.service).toBe(t.issuer.service);
        expect(r.scopes).toEqual([scopeOf('team/app')]);
        expect(r.status).toBe(200);
      }
      expect(reqs).toHaveLength(1);
      const fetches = await p.proxy.app.metrics.tokenFetches.get();
      expect(fetches.values.find((v) => v.labels.outcome === 'ok' && v.labels.upstream === 'secure')?.value).toBe(1);
    } finally {
      await p.stop();
    }
  });

  it('tokens are cached per scope: 20 upstream manifest and blob requests cost one token request', async () => {
    // tagTTL 0: every GET by tag revalidates with a HEAD upstream; an uncached blob HEAD goes upstream every time.
    const p = await startProxy({ upstreams: [upstream(t.reg, false)], extra: { cache: { tagTTL: '0s' } } });
    try {
      t.issuer.clearRequests();
      const layer = img.layers[0]!;
      t.reg.clearLog();
      for (let i = 0; i < 10; i++) {
        const m = await get(`${p.url}/v2/${t.reg.host}/team/app/manifests/v1`);
        expect(m.status).toBe(200);
        const h = await get(`${p.url}/v2/${t.reg.host}/team/app/blobs/${layer.digest}`, { method: 'HEAD' });
        expect(h.status).toBe(200);
        expect(h.headers.get('content-length')).toBe(String(layer.size));
      }
      // The registry saw at least the 20 authorised requests (HEAD manifest ×10, HEAD blob ×10).
      await t.reg.waitForRequests((r) => r.method === 'HEAD' && r.status === 200, 20, 3000);
      expect(t.issuer.requests().filter((r) => r.scopes.includes(scopeOf('team/app')))).toHaveLength(1);
    } finally {
      await p.stop();
    }
  });

  it('concurrent cold requests (the challenge not yet known) all succeed and share one token request', async () => {
    const p = await startProxy({ upstreams: [upstream(t.reg, false)] });
    try {
      t.issuer.clearRequests();
      const tags = ['t1', 't2', 't3', 't4', 't5', 'v1'];
      const results = await Promise.all(tags.map((tag) => get(`${p.url}/v2/${t.reg.host}/team/other/manifests/${tag}`)));
      results.forEach((r, i) => expect(r.status, `${tags[i]}: ${r.error?.message ?? ''}`).toBe(200));
      expect(t.issuer.requests().filter((r) => r.scopes.includes(scopeOf('team/other')))).toHaveLength(1);
    } finally {
      await p.stop();
    }
  });

  it('with credentials the OAuth2 POST form (grant_type=password) is used, and the pull works', async () => {
    const p = await startProxy({ upstreams: [upstream(t.reg, true)] });
    try {
      t.issuer.clearRequests();
      await pull(p, t.reg.host, 'team/app', 'v1', img);
      const reqs = t.issuer.requests();
      expect(reqs).toHaveLength(1);
      expect(reqs[0]).toMatchObject({ method: 'POST', grantType: 'password', user: USER, withCredentials: true, status: 200, service: t.issuer.service });
      expect(reqs[0]!.clientId).toBeTruthy();
      expect(reqs[0]!.scopes).toEqual([scopeOf('team/app')]);
    } finally {
      await p.stop();
    }
  });

  it('wrong credentials are a clear 502 that mentions credentials', async () => {
    process.env[`${PW_ENV}_WRONG`] = 'not the password';
    const p = await startProxy({
      upstreams: [{ name: 'secure', registry: t.reg.host, url: t.reg.url, credentials: { username: USER, password: { env: `${PW_ENV}_WRONG` } } }],
    });
    try {
      const r = await get(`${p.url}/v2/${t.reg.host}/team/app/manifests/v1`);
      expect(r.status).toBe(502);
      expect(r.error?.message).toMatch(/credential/i);
      expect(r.error?.message).toContain('"secure"');
    } finally {
      delete process.env[`${PW_ENV}_WRONG`];
      await p.stop();
    }
  });
});

describe('token auth, authentication required', () => {
  let t: TokenRealm;
  let img: PushedImage;

  beforeAll(async () => {
    // Short-lived tokens: the proxy must fetch a new one after 90% of a second.
    t = await tokenRegistry({ requireAuth: true, expiresIn: 1 });
    img = await pushWithToken(t, 'private/app', 'v1');
  });
  afterAll(async () => {
    await t?.reg.stop();
    await t?.issuer.stop();
  });

  it('without credentials the client gets a clear 502 that mentions credentials', async () => {
    const p = await startProxy({ upstreams: [upstream(t.reg, false)] });
    try {
      const r = await get(`${p.url}/v2/${t.reg.host}/private/app/manifests/v1`);
      expect(r.status).toBe(502);
      expect(r.error?.message).toMatch(/credential/i);
      expect(r.error?.message).toContain('"secure"');
    } finally {
      await p.stop();
    }
  });

  it('with credentials the pull works, the issuer saw them, and an expired token is replaced', async () => {
    // The proxy's clock: the token's lifetime runs on it, so the test moves it instead of waiting a second.
    let clock = Date.now();
    const p = await startProxy({ upstreams: [upstream(t.reg, true)], extra: { cache: { tagTTL: '0s' } }, now: () => clock });
    try {
      t.issuer.clearRequests();
      await pull(p, t.reg.host, 'private/app', 'v1', img);
      const first = t.issuer.requests();
      expect(first).toHaveLength(1);
      expect(first[0]).toMatchObject({ method: 'POST', grantType: 'password', user: USER, withCredentials: true, status: 200 });

      // Within the lifetime: reused.
      expect((await get(`${p.url}/v2/${t.reg.host}/private/app/manifests/v1`)).status).toBe(200);
      expect(t.issuer.requests()).toHaveLength(1);
      // Past 90% of expires_in (1 s) the cached token is stale: the next upstream request fetches a new one.
      clock += 950;
      const again = await get(`${p.url}/v2/${t.reg.host}/private/app/manifests/v1`);
      expect(again.status).toBe(200);
      const all = t.issuer.requests();
      expect(all.length).toBe(2);
      expect(all[1]).toMatchObject({ method: 'POST', user: USER, status: 200 });
    } finally {
      await p.stop();
    }
  });
});

describe('Basic auth (htpasswd)', () => {
  let reg: RunningRegistry;
  let htpasswd: string;
  let img: PushedImage;
  const basic = `Basic ${Buffer.from(`${USER}:${PASSWORD}`).toString('base64')}`;

  beforeAll(async () => {
    htpasswd = await writeHtpasswd({ [USER]: PASSWORD });
    reg = await startRegistry({ auth: { kind: 'htpasswd', path: htpasswd } });
    img = await pushImage(reg.url, 'basic/app', 'v1', { auth: basic });
  });
  afterAll(async () => {
    await reg?.stop();
    if (htpasswd) await rm(dirname(htpasswd), { recursive: true, force: true });
  });

  it('with credentials the pull works (Basic sent upstream)', async () => {
    const p = await startProxy({ upstreams: [upstream(reg, true)] });
    try {
      await pull(p, reg.host, 'basic/app', 'v1', img);
      // Tags and referrers go through the same authenticated client.
      const tags = await get(`${p.url}/v2/${reg.host}/basic/app/tags/list`, {});
      expect(tags.status).toBe(200);
      expect(JSON.parse(tags.body.toString())).toEqual({ name: `${reg.host}/basic/app`, tags: ['v1'] });
      const refs = await get(`${p.url}/v2/${reg.host}/basic/app/referrers/${img.digest}`, {});
      expect(refs.status).toBe(200);
    } finally {
      await p.stop();
    }
  });

  it('concurrent cold requests all authenticate', async () => {
    const p = await startProxy({ upstreams: [upstream(reg, true)] });
    try {
      const results = await Promise.all([
        get(`${p.url}/v2/${reg.host}/basic/app/manifests/v1`),
        get(`${p.url}/v2/${reg.host}/basic/app/manifests/${img.digest}`),
        get(`${p.url}/v2/${reg.host}/basic/app/tags/list`, {}),
        get(`${p.url}/v2/${reg.host}/basic/app/referrers/${img.digest}`, {}),
      ]);
      results.forEach((r, i) => expect(r.status, `request ${i}: ${r.error?.message ?? ''}`).toBe(200));
    } finally {
      await p.stop();
    }
  });

  it('without credentials the client gets a clear 502 that mentions credentials', async () => {
    const p = await startProxy({ upstreams: [upstream(reg, false)] });
    try {
      for (const path of [`/v2/${reg.host}/basic/app/manifests/v1`, `/v2/${reg.host}/basic/app/tags/list`]) {
        const r = await get(`${p.url}${path}`);
        expect(r.status, path).toBe(502);
        expect(r.error?.message, path).toMatch(/credential/i);
        expect(r.error?.message, path).toContain('"secure"');
      }
    } finally {
      await p.stop();
    }
  });
});

describe('a token realm outside the upstream domain (real Distribution, hostile realm name)', () => {
  // The registry advertises its realm on 127.0.0.2 while the proxy knows the upstream as 127.0.0.1: another host,
  // so the upstream's credentials must not go there. (Not `localhost`: on a stock Debian it resolves to ::1 first,
  // which the test upstream's egress rules rightly refuse.)
  let issuer: RunningTokenIssuer;
  let reg: RunningRegistry;
  let img: PushedImage;
  let realm: string;

  beforeAll(async () => {
    issuer = await startTokenIssuer({ users: { [USER]: PASSWORD }, requireAuth: true, host: '127.0.0.2' });
    realm = issuer.realm;
    reg = await startRegistry({
      auth: { kind: 'token', realm, service: issuer.service, issuer: issuer.issuer, rootCertBundlePath: issuer.rootCertBundlePath },
    });
    const token = issuer.mint(USER, [{ type: 'repository', name: 'far/app', actions: ['pull', 'push'] }]);
    img = await pushImage(reg.url, 'far/app', 'v1', { auth: `Bearer ${token}` });
  });
  afterAll(async () => {
    await reg?.stop();
    await issuer?.stop();
  });

  it('the realm gets an anonymous request only (no Basic, no POSTed password): the pull fails, with a warning counted', async () => {
    const p = await startProxy({ upstreams: [upstream(reg, true)] });
    try {
      issuer.clearRequests();
      const r = await get(`${p.url}/v2/${reg.host}/far/app/manifests/v1`);
      expect(r.status).toBe(502);
      const reqs = issuer.requests();
      expect(reqs.length).toBeGreaterThanOrEqual(1);
      for (const q of reqs) {
        expect(q.method).toBe('GET');
        expect(q.withCredentials).toBe(false);
        expect(q.user).toBeUndefined();
      }
      const refused = await p.proxy.app.metrics.tokenRealmRefused.get();
      expect(refused.values.find((v) => v.labels.upstream === 'secure')?.value).toBe(1);
    } finally {
      await p.stop();
    }
  });

  it('listed in upstreams[].tokenRealms, the same realm gets the credentials and the pull works', async () => {
    const p = await startProxy({ upstreams: [upstream(reg, true, { tokenRealms: [new URL(realm).origin] })] });
    try {
      issuer.clearRequests();
      await pull(p, reg.host, 'far/app', 'v1', img);
      expect(issuer.requests()[0]).toMatchObject({ method: 'POST', user: USER, withCredentials: true, status: 200 });
    } finally {
      await p.stop();
    }
  });
});
