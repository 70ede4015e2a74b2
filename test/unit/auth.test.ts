import { Agent } from 'undici';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AuthError, Authenticator, type Credentials } from '../../src/upstream/auth.js';
import { type LocalServer, sleep, startServer } from './helpers.js';

const dispatcher = new Agent({ connections: 32 });
afterAll(() => dispatcher.close());

const SCOPE = 'repository:library/nginx:pull';

interface Realm {
  server: LocalServer;
  /** Next responses to POSTs, by default 404 (GET only). */
  postStatus: number;
  getStatus: number;
  delayMs: number;
  expiresIn: number | undefined;
  counter: number;
}

async function startRealm(): Promise<Realm> {
  const realm: Realm = { server: undefined as unknown as LocalServer, postStatus: 404, getStatus: 200, delayMs: 0, expiresIn: 300, counter: 0 };
  realm.server = await startServer(async (req, _body, res) => {
    if (realm.delayMs) await sleep(realm.delayMs);
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
  return new Authenticator(new URL(upstream), () => creds, dispatcher, now, (o) => fetches?.push(o));
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
    realm.delayMs = 80;
    const a = make();
    a.onUnauthorized(bearer(), SCOPE);
    const results = await Promise.all(Array.from({ length: 20 }, () => a.authorization(SCOPE)));
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
