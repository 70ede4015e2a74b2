import { Agent } from 'undici';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AuthError, Authenticator, MAX_TOKEN_RESPONSE_BYTES, realmRefusal, type Credentials } from '../../src/upstream/auth.js';
import { type LocalServer, startServer, until } from './helpers.js';

const dispatcher = new Agent({ connections: 32 });
afterAll(() => dispatcher.close());

const SCOPE = 'repository:library/nginx:pull';

interface Realm {
  server: LocalServer;
  /** Next responses to POSTs, by default 404 (GET only). */
  postStatus: number;
  getStatus: number;
  /** While set, the realm holds every answer until this settles. */
  hold: Promise<void> | undefined;
  expiresIn: number | undefined;
  counter: number;
}

async function startRealm(): Promise<Realm> {
  const realm: Realm = { server: undefined as unknown as LocalServer, postStatus: 404, getStatus: 200, hold: undefined, expiresIn: 300, counter: 0 };
  realm.server = await startServer(async (req, _body, res) => {
    if (realm.hold) await realm.hold;
    const status = req.method === 'POST' ? realm.postStatus : realm.getStatus;
    res.statusCode = status;
    res.setHeader('content-type', 'application/json');
    if (status !== 200) {
      res.end('{"errors":[]}');
      return;
    }
    realm.counter++;
    const body: Record<string, unknown> = req.method === 'POST' ? { access_token: `post-${realm.counter}` } : { token: `get-${realm.counter}` };
    if (realm.expiresIn !== undefined) body.expires_in = realm.expiresIn;
    res.end(JSON.stringify(body));
  });
  return realm;
}

let realm: Realm;
let clock: number;
const now = () => clock;

beforeEach(async () => {
  realm = await startRealm();
  clock = 1_000_000;
});
afterEach(async () => {
  await realm.server.close();
});

function bearer(extra = ''): string {
  return `Bearer realm="${realm.server.url}/token",service="registry.test"${extra}`;
}

function make(creds?: Credentials, upstream = 'http://127.0.0.1:1', fetches?: string[]): Authenticator {
  return new Authenticator({ upstreamUrl: new URL(upstream), credentials: () => creds, dispatcher, now, onTokenFetch: (o) => fetches?.push(o) });
}

describe('Authenticator', () => {
  it('sends nothing until a challenge is learned', async () => {
    const a = make();
    expect(await a.authorization(SCOPE)).toBeUndefined();
    expect(realm.server.requests).toHaveLength(0);
  });

  it('fetches an anonymous bearer token with GET, service and scope, and caches it per scope until expiry', async () => {
    const fetches: string[] = [];
    const a = make(undefined, 'http://127.0.0.1:1', fetches);
    expect(a.onUnauthorized(bearer(), SCOPE)).toBe(true);
    expect(await a.authorization(SCOPE)).toBe('Bearer get-1');
    const req = realm.server.requests[0]!;
    expect(req.method).toBe('GET');
    const url = new URL(req.url, realm.server.url);
    expect(url.pathname).toBe('/token');
    expect(url.searchParams.get('service')).toBe('registry.test');
    expect(url.searchParams.getAll('scope')).toEqual([SCOPE]);
    expect(req.headers.authorization).toBeUndefined();

    // Cached while valid (expires_in 300 s)...
    clock += 200_000;
    expect(await a.authorization(SCOPE)).toBe('Bearer get-1');
    expect(realm.server.requests).toHaveLength(1);
    // ...a different scope gets its own token...
    expect(await a.authorization('repository:library/redis:pull')).toBe('Bearer get-2');
    expect(realm.server.requests).toHaveLength(2);
    // ...and after expiry the first is fetched again.
    clock += 101_000;
    expect(await a.authorization(SCOPE)).toBe('Bearer get-3');
    expect(realm.server.requests).toHaveLength(3);
    expect(fetches).toEqual(['ok', 'ok', 'ok']);
  });

  it('assumes a 60 s lifetime when expires_in is missing', async () => {
    realm.expiresIn = undefined;
    const a = make();
    a.onUnauthorized(bearer(), SCOPE);
    expect(await a.authorization(SCOPE)).toBe('Bearer get-1');
    clock += 45_000;
    expect(await a.authorization(SCOPE)).toBe('Bearer get-1');
    clock += 15_001; // 60 s after issue: must not still be used
    expect(await a.authorization(SCOPE)).toBe('Bearer get-2');
    expect(realm.server.requests).toHaveLength(2);
  });

  it('sends several scopes as repeated scope parameters', async () => {
    const a = make();
    a.onUnauthorized(bearer(), SCOPE);
    await a.authorization(`${SCOPE} repository:other/repo:pull`);
    const url = new URL(realm.server.requests[0]!.url, realm.server.url);
    expect(url.searchParams.getAll('scope')).toEqual([SCOPE, 'repository:other/repo:pull']);
  });

  it('shares one token request between concurrent callers', async () => {
    let release = (): void => {};
    realm.hold = new Promise<void>((r) => (release = r));
    const a = make();
    a.onUnauthorized(bearer(), SCOPE);
    // The token request stays open until it has reached the realm, long after all 20 callers asked.
    const pending = Promise.all(Array.from({ length: 20 }, () => a.authorization(SCOPE)));
    await until(() => realm.server.requests.length > 0, 'the token request');
    release();
    const results = await pending;
    expect(new Set(results)).toEqual(new Set(['Bearer get-1']));
    expect(realm.server.requests).toHaveLength(1);
  });

  it('uses the OAuth2 POST form with credentials', async () => {
    realm.postStatus = 200;
    const a = make({ username: 'bob', password: 'p@ss word' });
    a.onUnauthorized(bearer(), SCOPE);
    expect(await a.authorization(SCOPE)).toBe('Bearer post-1');
    expect(realm.server.requests).toHaveLength(1);
    const req = realm.server.requests[0]!;
    expect(req.method).toBe('POST');
    expect(req.headers['content-type']).toBe('application/x-www-form-urlencoded');
    const form = new URLSearchParams(req.body.toString());
    expect(Object.fromEntries(form)).toMatchObject({ grant_type: 'password', username: 'bob', password: 'p@ss word', scope: SCOPE, service: 'registry.test' });
    expect(form.get('client_id')).toBeTruthy();
  });

  it('falls back to GET with Basic credentials when the realm answers the POST with 404', async () => {
    realm.postStatus = 404;
    const a = make({ username: 'bob', password: 'pw' });
    a.onUnauthorized(bearer(), SCOPE);
    expect(await a.authorization(SCOPE)).toBe('Bearer get-1');
    expect(realm.server.requests.map((r) => r.method)).toEqual(['POST', 'GET']);
    expect(realm.server.requests[1]!.headers.authorization).toBe(`Basic ${Buffer.from('bob:pw').toString('base64')}`);
  });

  it('fails (and does not cache) on a token error, then retries on the next call', async () => {
    realm.getStatus = 500;
    const fetches: string[] = [];
    const a = make(undefined, 'http://127.0.0.1:1', fetches);
    a.onUnauthorized(bearer(), SCOPE);
    await expect(a.authorization(SCOPE)).rejects.toBeInstanceOf(AuthError);
    realm.getStatus = 200;
    expect(await a.authorization(SCOPE)).toBe('Bearer get-1');
    expect(fetches).toEqual(['error', 'ok']);
  });

  it('refuses an http realm for an https upstream, without contacting it', async () => {
    const a = make({ username: 'bob', password: 'pw' }, 'https://registry.example');
    a.onUnauthorized(bearer(), SCOPE);
    const err = await a.authorization(SCOPE).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AuthError);
    expect((err as Error).message).toMatch(/non-https/);
    expect(realm.server.requests).toHaveLength(0);
  });

  it('refuses a realm that is not a URL', async () => {
    const a = make();
    a.onUnauthorized('Bearer realm="not a url",service="x"', SCOPE);
    await expect(a.authorization(SCOPE)).rejects.toBeInstanceOf(AuthError);
  });

  it('answers Basic challenges with credentials, and declines them without', async () => {
    const withCreds = make({ username: 'u', password: 'p' });
    expect(withCreds.onUnauthorized('Basic realm="r"', SCOPE)).toBe(true);
    expect(await withCreds.authorization(SCOPE)).toBe(`Basic ${Buffer.from('u:p').toString('base64')}`);
    const anon = make();
    expect(anon.onUnauthorized('Basic realm="r"', SCOPE)).toBe(false);
    expect(await anon.authorization(SCOPE)).toBeUndefined();
  });

  it('prefers a Bearer challenge with a realm over Basic, and ignores unusable headers', async () => {
    const a = make({ username: 'u', password: 'p' });
    expect(a.onUnauthorized(`Basic realm="r", ${bearer()}`, SCOPE)).toBe(true);
    expect(await a.authorization(SCOPE)).toBe('Bearer get-1');
    expect(make().onUnauthorized(undefined, SCOPE)).toBe(false);
    expect(make().onUnauthorized('Negotiate', SCOPE)).toBe(false);
    expect(make().onUnauthorized('Bearer service="no-realm"', SCOPE)).toBe(false);
  });

  it('onUnauthorized says whether a retry can help: a new challenge, or a cached token to drop', async () => {
    const a = make();
    expect(a.onUnauthorized(bearer(), SCOPE)).toBe(true);
    // Same challenge, no token yet: retrying changes nothing.
    expect(a.onUnauthorized(bearer(), SCOPE)).toBe(false);
    await a.authorization(SCOPE);
    // A 401 with a cached token: drop it and retry with a fresh one.
    expect(a.onUnauthorized(bearer(), SCOPE)).toBe(true);
    expect(await a.authorization(SCOPE)).toBe('Bearer get-2');
    // A changed challenge (new scope in the header) is worth a retry.
    expect(a.onUnauthorized(bearer(',scope="repository:x:pull"'), SCOPE)).toBe(true);
  });

  describe('onUnauthorized with the Authorization the failed request carried', () => {
    it('every request that went out before the challenge was known may retry', () => {
      const a = make();
      expect(a.onUnauthorized(bearer(), SCOPE, null)).toBe(true);
      expect(a.onUnauthorized(bearer(), SCOPE, null)).toBe(true);
    });

    it('a refused current token is dropped; a refused older token leaves the current one cached', async () => {
      const a = make();
      a.onUnauthorized(bearer(), SCOPE, null);
      expect(await a.authorization(SCOPE)).toBe('Bearer get-1');
      // A request that still carried some older token: retry, but keep the current token.
      expect(a.onUnauthorized(bearer(), SCOPE, 'Bearer ancient')).toBe(true);
      expect(await a.authorization(SCOPE)).toBe('Bearer get-1');
      expect(realm.server.requests).toHaveLength(1);
      // The current token itself was refused: fetch a new one.
      expect(a.onUnauthorized(bearer(), SCOPE, 'Bearer get-1')).toBe(true);
      expect(await a.authorization(SCOPE)).toBe('Bearer get-2');
    });

    it('refused Basic credentials are not retried against the same challenge', () => {
      const a = make({ username: 'u', password: 'p' });
      const basic = `Basic ${Buffer.from('u:p').toString('base64')}`;
      expect(a.onUnauthorized('Basic realm="r"', SCOPE, null)).toBe(true);
      expect(a.onUnauthorized('Basic realm="r"', SCOPE, basic)).toBe(false);
      expect(a.onUnauthorized('Basic realm="other"', SCOPE, basic)).toBe(true);
    });
  });
});

describe("credentials only to the upstream's own token realm", () => {
  const u = (s: string): URL => new URL(s);

  it('realmRefusal: same host or registrable domain, or listed; never http for an https upstream', () => {
    expect(realmRefusal(u('https://registry-1.docker.io'), u('https://auth.docker.io/token'), [])).toBeUndefined();
    expect(realmRefusal(u('https://ghcr.io'), u('https://ghcr.io/token'), [])).toBeUndefined();
    expect(realmRefusal(u('https://registry.gitlab.example.co.uk'), u('https://auth.example.co.uk/jwt'), [])).toBeUndefined();
    expect(realmRefusal(u('http://127.0.0.1:5000'), u('http://127.0.0.1:5001/token'), [])).toBeUndefined();
    // Another domain, even under the same public suffix (co.uk) or the same private one (github.io).
    expect(realmRefusal(u('https://registry.example.com'), u('https://auth.attacker.example/token'), [])).toMatch(/outside the upstream's domain example\.com/);
    expect(realmRefusal(u('https://registry.example.co.uk'), u('https://attacker.co.uk/token'), [])).toMatch(/outside/);
    expect(realmRefusal(u('https://alice.github.io'), u('https://mallory.github.io/token'), [])).toMatch(/outside/);
    expect(realmRefusal(u('http://127.0.0.1:5000'), u('http://localhost:5001/token'), [])).toMatch(/outside/);
    expect(realmRefusal(u('http://127.0.0.1:5000'), u('http://127.0.0.2:5001/token'), [])).toMatch(/outside/);
    // Listed by origin or host name.
    expect(realmRefusal(u('https://registry.example.com'), u('https://sso.corp.example/token'), ['https://sso.corp.example'])).toBeUndefined();
    expect(realmRefusal(u('https://registry.example.com'), u('https://sso.corp.example/token'), ['sso.corp.example'])).toBeUndefined();
    expect(realmRefusal(u('https://registry.example.com'), u('https://sso.corp.example:8443/token'), ['https://sso.corp.example'])).toMatch(/outside/);
    // Scheme: never plain http for an https upstream, listed or not.
    expect(realmRefusal(u('https://registry.example.com'), u('http://auth.example.com/token'), ['auth.example.com'])).toMatch(/plain http/);
  });

  it('a realm on another host gets an anonymous GET: no Basic header, no POSTed password; one warning per realm', async () => {
    realm.postStatus = 200;
    const refused: Array<[string, string]> = [];
    const a = new Authenticator({
      upstreamUrl: new URL('http://registry.test:1'),
      credentials: () => ({ username: 'bob', password: 'hunter2' }),
      dispatcher,
      now,
      onRealmRefused: (r, reason) => refused.push([r, reason]),
    });
    a.onUnauthorized(bearer(), SCOPE);
    expect(await a.authorization(SCOPE)).toBe('Bearer get-1');
    expect(await a.authorization('repository:other/app:pull')).toBe('Bearer get-2');
    expect(realm.server.requests).toHaveLength(2);
    for (const req of realm.server.requests) {
      expect(req.method).toBe('GET');
      expect(req.headers.authorization).toBeUndefined();
      expect(req.body.toString()).not.toContain('hunter2');
      expect(req.url).not.toContain('hunter2');
    }
    expect(refused).toEqual([[realm.server.url, expect.stringMatching(/outside the upstream's domain/) as string]]);
  });

  it('the same realm listed in tokenRealms gets the credentials (OAuth2 POST)', async () => {
    realm.postStatus = 200;
    const a = new Authenticator({
      upstreamUrl: new URL('http://registry.test:1'),
      credentials: () => ({ username: 'bob', password: 'hunter2' }),
      dispatcher,
      now,
      tokenRealms: [realm.server.url],
    });
    a.onUnauthorized(bearer(), SCOPE);
    expect(await a.authorization(SCOPE)).toBe('Bearer post-1');
    expect(realm.server.requests[0]!.method).toBe('POST');
    expect(realm.server.requests[0]!.body.toString()).toContain('password=hunter2');
  });
});

describe('bounded token handling', () => {
  it('the token cache holds at most maxTokens scopes: invented repository names cannot grow it', async () => {
    const a = new Authenticator({ upstreamUrl: new URL('http://127.0.0.1:1'), credentials: () => undefined, dispatcher, now, maxTokens: 8 });
    a.onUnauthorized(bearer(), SCOPE);
    for (let i = 0; i < 40; i++) await a.authorization(`repository:invented/name${i}:pull`);
    expect(realm.server.requests).toHaveLength(40);
    expect(a.cachedTokens).toBe(8);
    // The most recent scopes are the ones kept.
    await a.authorization('repository:invented/name39:pull');
    expect(realm.server.requests).toHaveLength(40);
  });

  it('a token response larger than the cap is refused, not buffered', async () => {
    await realm.server.close();
    const padding = 'x'.repeat(MAX_TOKEN_RESPONSE_BYTES);
    realm.server = await startServer((_req, _body, res) => {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ token: 'huge', padding }));
    });
    const a = make();
    a.onUnauthorized(bearer(), SCOPE);
    await expect(a.authorization(SCOPE)).rejects.toThrow(/larger than/);
  });
});
