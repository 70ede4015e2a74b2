/**
 * Units of issue 11's second round: the verified-token memory of the token issuer (a reused Bearer token is not
 * verified again, but still expires on time and a tampered copy is not believed), and the config shapes of
 * forwarded identities and scoped report tokens.
 */
import { describe, expect, test } from 'vitest';
import { forwardIdentitySchema } from '../../src/auth/config.js';
import { TokenAuthority } from '../../src/auth/token.js';
import { scanSchema } from '../../src/scan/config.js';

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
