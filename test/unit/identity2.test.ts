/**
 * Units of issue 11's second round: the verified-token memory of the token issuer (a reused Bearer token is not
 * verified again, but still expires on time and a tampered copy is not believed), and the config shapes of
 * forwarded identities and scoped report tokens.
 */
import { createPrivateKey, generateKeyPairSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SignJWT } from 'jose';
import { describe, expect, test } from 'vitest';
import { ForwardedVerifier, ForwardSigner } from '../../src/auth/forwarded.js';
import { forwardIdentitySchema } from '../../src/config/auth.js';
import { TokenAuthority } from '../../src/auth/token.js';
import { scanSchema } from '../../src/config/scan.js';

describe('TokenAuthority remembers verified tokens', () => {
  test('a cached token still expires at its exp, and a tampered copy is refused', async () => {
    let now = Date.parse('2026-12-07T12:00:00Z');
    const ta = await TokenAuthority.create({ service: 'portcullis', ttl: 60_000, now: () => now });
    const { token } = await ta.issue({ user: 'alice', groups: ['team-a'], method: 'basic' }, [{ type: 'repository', name: 'demo/app', actions: ['pull'] }]);
    expect(await ta.verify(token, 'demo/app')).toMatchObject({ ok: true, identity: { user: 'alice' } });
    // Remembered: the scope is still checked on every request.
    expect(await ta.verify(token, 'demo/other')).toMatchObject({ ok: false, code: 'TOKEN_SCOPE' });
    const [h, p, s] = token.split('.');
    const claims = JSON.parse(Buffer.from(p!, 'base64url').toString('utf8')) as Record<string, unknown>;
    const forged = `${h}.${Buffer.from(JSON.stringify({ ...claims, sub: 'root' })).toString('base64url')}.${s}`;
    expect(await ta.verify(forged, 'demo/app')).toMatchObject({ ok: false, code: 'TOKEN_INVALID' });
    now += 61_000;
    expect(await ta.verify(token, 'demo/app')).toMatchObject({ ok: false, code: 'TOKEN_EXPIRED' });
  });
});

describe('config', () => {
  test('forwardIdentity: ttl at most 60 s; keyId printable', () => {
    expect(forwardIdentitySchema.safeParse({ key: 'k.pem', keyId: 'node-a', audience: 'central', ttl: '61s' }).success).toBe(false);
    expect(forwardIdentitySchema.parse({ key: 'k.pem', keyId: 'node-a', audience: 'central' }).ttl).toBe(30_000);
    expect(forwardIdentitySchema.safeParse({ key: 'k.pem', keyId: 'a b', audience: 'central' }).success).toBe(false);
  });

  test('scan.reports: token or tokens, scoped tokens name at least one repository', () => {
    expect(scanSchema.safeParse({ reports: {} }).error?.issues[0]?.path.join('.')).toBe('reports.token');
    expect(scanSchema.safeParse({ reports: { tokens: [{ token: { env: 'T' }, repositories: [] }] } }).success).toBe(false);
    expect(scanSchema.parse({ reports: { tokens: [{ token: { env: 'T' }, repositories: ['ghcr.io/acme/**'] }] } }).reports?.tokens).toHaveLength(1);
  });
});

describe('ForwardedVerifier', () => {
  const node = { user: 'node-a', groups: ['nodes'], method: 'mtls' as const };

  async function setup(): Promise<{ dir: string; priv: string; verifier: ForwardedVerifier; now: { t: number } }> {
    const dir = await mkdtemp(join(tmpdir(), 'pc-fwd-unit-'));
    const { privateKey, publicKey } = generateKeyPairSync('ed25519');
    const priv = join(dir, 'node.pem');
    await writeFile(priv, privateKey.export({ format: 'pem', type: 'pkcs8' }));
    const jwk = { ...publicKey.export({ format: 'jwk' }), kid: 'node-a-1', alg: 'EdDSA', use: 'sig' };
    await writeFile(join(dir, 'jwks.json'), JSON.stringify({ keys: [jwk] }));
    const now = { t: Date.parse('2026-12-07T12:00:00Z') };
    const verifier = new ForwardedVerifier({ audience: 'central', trustedKeys: [{ node: 'node-a', jwksFile: join(dir, 'jwks.json') }] }, () => now.t);
    return { dir, priv, verifier, now };
  }

  test('a JWKS file with an Ed25519 key: the client is named, the node is under via', async () => {
    const { dir, priv, verifier, now } = await setup();
    const h = await new ForwardSigner({ key: priv, keyId: 'node-a-1', audience: 'central', ttl: 30_000, now: () => now.t }).sign({
      user: 'alice',
      groups: ['team-a'],
      method: 'oidc',
    });
    expect(await verifier.verify(h, node)).toEqual({ ok: true, identity: { user: 'alice', groups: ['team-a'], method: 'oidc', via: node } });
    // Another node presenting it, or the right node 31 s later: refused.
    expect(await verifier.verify(h, { ...node, user: 'node-b' })).toMatchObject({ ok: false, code: 'FORWARDED_INVALID' });
    now.t += 31_000;
    expect(await verifier.verify(h, node)).toMatchObject({ ok: false, code: 'FORWARDED_INVALID' });
    await rm(dir, { recursive: true, force: true });
  });

  test('a validly signed header that claims a lifetime over 60 s, or an unknown method, is refused', async () => {
    const { dir, priv, verifier, now } = await setup();
    const key = createPrivateKey(readFileSync(priv));
    const iat = Math.floor(now.t / 1000);
    const long = await new SignJWT({ groups: [], method: 'basic' })
      .setProtectedHeader({ alg: 'EdDSA', kid: 'node-a-1' })
      .setSubject('alice')
      .setAudience('central')
      .setIssuedAt(iat)
      .setExpirationTime(iat + 3600)
      .sign(key);
    expect(await verifier.verify(long, node)).toMatchObject({ ok: false, code: 'FORWARDED_INVALID' });
    const odd = await new SignJWT({ groups: [], method: 'scanner' })
      .setProtectedHeader({ alg: 'EdDSA', kid: 'node-a-1' })
      .setSubject('alice')
      .setAudience('central')
      .setIssuedAt(iat)
      .setExpirationTime(iat + 30)
      .sign(key);
    expect(await verifier.verify(odd, node)).toMatchObject({ ok: false, code: 'FORWARDED_INVALID' });
    await rm(dir, { recursive: true, force: true });
  });
});
