/**
 * Client authentication units (src/auth): htpasswd Basic with a real `htpasswd -B` file, the Portcullis token
 * issuer, OIDC tokens against a JWKS file, certificate naming, failed-login throttling and log redaction. Clocks are
 * injected; nothing waits on wall-clock time.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { AuthOutcome, AuthRequest } from '../../src/auth/authenticator.js';
import { BcryptWorker, type PasswordHasher } from '../../src/auth/bcrypt-pool.js';
import { ClientAuth } from '../../src/auth/client-auth.js';
import { authSchema } from '../../src/config/auth.js';
import { BAD_CREDENTIALS_MESSAGE, HtpasswdAuthenticator } from '../../src/auth/htpasswd.js';
import { certNames, globMatch, MtlsAuthenticator } from '../../src/auth/mtls.js';
import { KeyedBuckets } from '../../src/auth/rate-limit.js';
import { LOG_REDACT } from '../../src/auth/redact.js';
import { parseScopes, TokenAuthority } from '../../src/auth/token.js';
import { expectOk, runTool } from '../harness/clients.js';

let dir: string;
let htpasswdFile: string;
const worker = new BcryptWorker();

/** Counts the comparisons that reach the hasher. */
class CountingHasher implements PasswordHasher {
  calls: string[] = [];
  compare(password: string, hash: string): Promise<boolean> {
    this.calls.push(hash);
    return worker.compare(password, hash);
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

function basic(user: string, password: string, ip = '10.0.0.1', repository?: string): AuthRequest {
  return {
    headers: { authorization: `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}` },
    socket: {} as AuthRequest['socket'],
    ip,
    ...(repository ? { repository } : {}),
  };
}

function bearer(token: string, repository?: string): AuthRequest {
  return { headers: { authorization: `Bearer ${token}` }, socket: {} as AuthRequest['socket'], ip: '10.0.0.9', ...(repository ? { repository } : {}) };
}

function failure(o: AuthOutcome | undefined): { code: string; message: string; retryAfterSeconds?: number } {
  if (!o || o.ok) throw new Error(`expected a failure, got ${JSON.stringify(o)}`);
  return o;
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'pc-auth-'));
  htpasswdFile = join(dir, 'htpasswd');
  expectOk(await runTool('htpasswd', ['-Bbc', htpasswdFile, 'alice', 's3cret']), 'htpasswd');
  expectOk(await runTool('htpasswd', ['-Bb', htpasswdFile, 'bob', 'hunter2']), 'htpasswd');
});

afterAll(async () => {
  await worker.close();
  await rm(dir, { recursive: true, force: true });
});

describe('htpasswd Basic', () => {
  function make(opts: { now?: () => number; burst?: number } = {}) {
    const hasher = new CountingHasher();
    const now = opts.now ?? (() => 1_000_000);
    const a = new HtpasswdAuthenticator({
      file: htpasswdFile,
      groups: { 'team-a': ['alice'], admins: ['alice', 'carol'] },
      cacheTTL: 60_000,
      failures: new KeyedBuckets({ burst: opts.burst ?? 10, perSecond: 1 / 6 }, now),
      hasher,
      now,
    });
    return { a, hasher };
  }

  test('the right password names the user and the groups that list it', async () => {
    const { a } = make();
    expect(await a.authenticate(basic('alice', 's3cret'))).toEqual({ ok: true, identity: { user: 'alice', groups: ['admins', 'team-a'], method: 'basic' } });
  });

  test('a wrong password and an unknown user are indistinguishable, and both cost one bcrypt', async () => {
    const { a, hasher } = make();
    const wrong = failure(await a.authenticate(basic('alice', 'nope')));
    const unknown = failure(await a.authenticate(basic('mallory', 'nope')));
    expect(wrong).toEqual(unknown);
    expect(wrong).toEqual({ ok: false, code: 'BAD_CREDENTIALS', message: BAD_CREDENTIALS_MESSAGE });
    // One comparison each; the unknown user's is against a dummy bcrypt hash of the file's cost.
    expect(hasher.calls).toHaveLength(2);
    expect(hasher.calls[1]).toMatch(/^\$2[aby]\$05\$/);
    expect(hasher.calls[1]).not.toBe(hasher.calls[0]);
  });

  test('a verified credential is remembered (no second bcrypt) until the cache TTL, keyed by an HMAC', async () => {
    let t = 1_000_000;
    const { a, hasher } = make({ now: () => t });
    await a.authenticate(basic('bob', 'hunter2'));
    await a.authenticate(basic('bob', 'hunter2'));
    expect(hasher.calls).toHaveLength(1);
    // The password is not what the cache holds.
    expect(JSON.stringify([...(a as unknown as { verified: Map<string, unknown> }).verified.keys()])).not.toContain('hunter2');
    // A different password for the same user is not a cache hit.
    failure(await a.authenticate(basic('bob', 'hunter3')));
    expect(hasher.calls).toHaveLength(2);
    t += 60_001;
    await a.authenticate(basic('bob', 'hunter2'));
    expect(hasher.calls).toHaveLength(3);
  });

  test('failed attempts are throttled per address before any hashing; a success does not count', async () => {
    let t = 5_000_000;
    const { a, hasher } = make({ now: () => t, burst: 3 });
    expect((await a.authenticate(basic('alice', 's3cret', '10.1.1.1')))?.ok).toBe(true);
    for (let i = 0; i < 3; i++) expect(failure(await a.authenticate(basic('alice', `bad${i}`, '10.1.1.1'))).code).toBe('BAD_CREDENTIALS');
    const calls = hasher.calls.length;
    const limited = failure(await a.authenticate(basic('alice', 'bad-again', '10.1.1.1')));
    expect(limited.code).toBe('RATE_LIMITED');
    expect(limited.retryAfterSeconds).toBe(6);
    expect(hasher.calls.length).toBe(calls);
    // Even the right password waits: the bucket is empty.
    expect(failure(await a.authenticate(basic('mallory', 'x', '10.1.1.1'))).code).toBe('RATE_LIMITED');
    // Another address is not affected; after the refill, one more attempt is allowed.
    expect(failure(await a.authenticate(basic('alice', 'bad', '10.2.2.2'))).code).toBe('BAD_CREDENTIALS');
    t += 6_000;
    expect((await a.authenticate(basic('alice', 's3cret', '10.1.1.1')))?.ok).toBe(true);
  });

  test('hashing runs off the event loop: the loop keeps turning while a cost-12 comparison runs', async () => {
    const slow = join(dir, 'htpasswd-slow');
    expectOk(await runTool('htpasswd', ['-Bbc', '-C', '12', slow, 'carol', 'pw']), 'htpasswd');
    const a = new HtpasswdAuthenticator({ file: slow, groups: {}, cacheTTL: 0, failures: new KeyedBuckets({ burst: 10, perSecond: 1 }), hasher: worker });
    let turns = 0;
    let done = false;
    const spin = (): void => {
      turns++;
      if (!done) setImmediate(spin);
    };
    setImmediate(spin);
    const r = await a.authenticate(basic('carol', 'pw'));
    done = true;
    expect(r?.ok).toBe(true);
    // On the main thread the comparison would block every turn until it finished.
    expect(turns).toBeGreaterThan(10);
  });

  test('a full queue is refused, not queued', async () => {
    const tiny = new BcryptWorker(1);
    const hash = (await import('bcryptjs')).default.hashSync('x', 10);
    const first = tiny.compare('x', hash);
    await expect(tiny.compare('x', hash)).rejects.toThrow('too many password verifications queued');
    expect(await first).toBe(true);
    await tiny.close();
  });
});

describe('Portcullis tokens', () => {
  test('scopes: host:port names, several per parameter, only pull granted', () => {
    expect(parseScopes(['repository:127.0.0.1:5001/demo/app:pull,push repository:team-a/app:pull', 'registry:catalog:*', 'repository:x:push'])).toEqual([
      { type: 'repository', name: '127.0.0.1:5001/demo/app', actions: ['pull'] },
      { type: 'repository', name: 'team-a/app', actions: ['pull'] },
    ]);
  });

  test('a token grants pull on its repositories only, and expires', async () => {
    let t = Date.UTC(2026, 11, 1);
    const ta = await TokenAuthority.create({ service: 'portcullis', ttl: 300_000, now: () => t });
    const issued = await ta.issue({ user: 'alice', groups: ['team-a'], method: 'basic' }, parseScopes(['repository:team-a/app:pull']));
    expect(issued.expires_in).toBe(300);
    expect(await ta.authenticate(bearer(issued.token, 'team-a/app'))).toEqual({ ok: true, identity: { user: 'alice', groups: ['team-a'], method: 'token' } });
    expect(failure(await ta.authenticate(bearer(issued.token, 'team-b/app'))).code).toBe('TOKEN_SCOPE');
    // /v2/ (no repository) only needs a valid token.
    expect((await ta.authenticate(bearer(issued.token)))?.ok).toBe(true);
    t += 301_000;
    expect(failure(await ta.authenticate(bearer(issued.token, 'team-a/app'))).code).toBe('TOKEN_EXPIRED');
  });

  test('a token from another key, or for another audience, is refused', async () => {
    const ours = await TokenAuthority.create({ service: 'portcullis', ttl: 300_000 });
    const forged = await (await TokenAuthority.create({ service: 'portcullis', ttl: 300_000 })).issue({ user: 'alice', groups: [], method: 'basic' }, []);
    expect(failure(await ours.authenticate(bearer(forged.token))).code).toBe('TOKEN_INVALID');
    const { privateKey } = await generateKeyPair('ES256');
    const other = await new SignJWT({ access: [] })
      .setProtectedHeader({ alg: 'ES256' })
      .setIssuer('portcullis')
      .setAudience('elsewhere')
      .setSubject('a')
      .setExpirationTime('5m')
      .sign(privateKey);
    expect(failure(await ours.authenticate(bearer(other))).code).toBe('TOKEN_INVALID');
  });
});

describe('OIDC bearer tokens against a JWKS file', () => {
  let auth: ClientAuth;
  let sign: (claims: Record<string, unknown>, exp?: number) => Promise<string>;
  const now = Date.UTC(2026, 11, 1);

  beforeAll(async () => {
    const { privateKey, publicKey } = await generateKeyPair('ES256');
    const jwk = { ...(await exportJWK(publicKey)), kid: 'ci-1', alg: 'ES256', use: 'sig' };
    const jwksFile = join(dir, 'jwks.json');
    await writeFile(jwksFile, JSON.stringify({ keys: [jwk] }));
    sign = (claims, exp = now / 1000 + 600) =>
      new SignJWT(claims)
        .setProtectedHeader({ alg: 'ES256', kid: 'ci-1' })
        .setIssuedAt(now / 1000)
        .setExpirationTime(exp)
        .sign(privateKey);
    auth = await ClientAuth.create(
      authSchema.parse({
        anonymous: false,
        oidc: [{ issuer: 'https://ci.example', audience: 'portcullis', jwksFile, userClaim: 'sub', groupsClaim: 'teams', groups: ['ci'] }],
      }),
      { now: () => now },
    );
  });
  afterAll(async () => auth?.close());

  test('a valid token names the user and maps its claims to groups (Bearer, or as a Basic password)', async () => {
    const jwt = await sign({ iss: 'https://ci.example', aud: 'portcullis', sub: 'repo:acme/api', teams: ['team-a'] });
    const want = { ok: true, identity: { user: 'repo:acme/api', groups: ['ci', 'team-a'], method: 'oidc' } };
    expect(await auth.authenticate(bearer(jwt))).toEqual(want);
    expect(await auth.authenticate(basic('oidc', jwt))).toEqual(want);
  });

  test('wrong audience, expired, unknown issuer and another key are refused', async () => {
    expect(failure(await auth.authenticate(bearer(await sign({ iss: 'https://ci.example', aud: 'someone-else', sub: 'x' })))).code).toBe('TOKEN_AUDIENCE');
    expect(failure(await auth.authenticate(bearer(await sign({ iss: 'https://ci.example', aud: 'portcullis', sub: 'x' }, now / 1000 - 10)))).code).toBe(
      'TOKEN_EXPIRED',
    );
    expect(failure(await auth.authenticate(bearer(await sign({ iss: 'https://evil.example', aud: 'portcullis', sub: 'x' })))).code).toBe('TOKEN_ISSUER');
    const { privateKey } = await generateKeyPair('ES256');
    const forged = await new SignJWT({ iss: 'https://ci.example', aud: 'portcullis', sub: 'x' })
      .setProtectedHeader({ alg: 'ES256', kid: 'ci-1' })
      .setExpirationTime(now / 1000 + 60)
      .sign(privateKey);
    expect(failure(await auth.authenticate(bearer(forged))).code).toBe('TOKEN_INVALID');
  });

  test('no credentials on a listener without anonymous access', async () => {
    expect(failure(await auth.authenticate({ headers: {}, socket: {} as AuthRequest['socket'], ip: '1.2.3.4' })).code).toBe('CREDENTIALS_REQUIRED');
  });
});

describe('client certificates', () => {
  test('SAN parsing and mapping: SPIFFE URI first, groups from the first matching rule', () => {
    const names = certNames('node-1', 'DNS:node-1.example, URI:spiffe://example.org/ns/team-a/sa/node, IP Address:127.0.0.1');
    expect(names).toEqual({ cn: 'node-1', uris: ['spiffe://example.org/ns/team-a/sa/node'], dns: ['node-1.example'] });
    const m = new MtlsAuthenticator({
      user: 'uri',
      map: [
        { uri: 'spiffe://example.org/ns/team-b/**', groups: ['team-b'] },
        { uri: 'spiffe://example.org/ns/team-a/**', groups: ['team-a', 'nodes'] },
      ],
    });
    expect(m.identityOf(names)).toEqual({ user: 'spiffe://example.org/ns/team-a/sa/node', groups: ['nodes', 'team-a'], method: 'mtls' });
    expect(new MtlsAuthenticator({ user: 'cn', map: [{ cn: 'node-*', user: 'nodes', groups: [] }] }).identityOf(names)?.user).toBe('nodes');
    expect(new MtlsAuthenticator({ user: 'dns', map: [] }).identityOf(names)?.user).toBe('node-1.example');
  });

  test('globs: * stays within a path component, ** crosses', () => {
    expect(globMatch('spiffe://example.org/ns/*/sa/node', 'spiffe://example.org/ns/team-a/sa/node')).toBe(true);
    expect(globMatch('spiffe://example.org/ns/*', 'spiffe://example.org/ns/team-a/sa/node')).toBe(false);
    expect(globMatch('spiffe://example.org/**', 'spiffe://example.org/ns/team-a/sa/node')).toBe(true);
    expect(globMatch('a.example', 'aXexample')).toBe(false);
  });
});

describe('log redaction', () => {
  test('credentials in headers never reach the log', () => {
    const lines: string[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, cb) {
        lines.push(chunk.toString());
        cb();
      },
    });
    const log = pino({ redact: LOG_REDACT }, sink);
    log.info({ req: { headers: { authorization: 'Basic YWxpY2U6czNjcmV0', cookie: 'sid=1' } } }, 'request');
    log.info({ headers: { authorization: 'Bearer eyJsecret.x.y' } }, 'upstream');
    log.info({ user: 'alice', password: 's3cret', token: 'tok' }, 'login');
    const out = lines.join('');
    expect(out).not.toMatch(/YWxpY2U6czNjcmV0|eyJsecret|s3cret|"tok"|sid=1/);
    expect(out.match(/\[redacted\]/g)?.length).toBe(5);
    expect(out).toContain('"user":"alice"');
  });
});
