/**
 * The Notation settings added for timestamps and revocation: their defaults, errors that name the authority and the
 * field, and the TSA trust store as trust material (loaded, and part of the trust revision).
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { signaturesSchema } from '../../src/config/signatures.js';
import { loadTrust, type NotationAuthority } from '../../src/verify/trust.js';
import { requireTool } from '../harness/clients.js';

const dir = mkdtempSync(join(tmpdir(), 'pc-notation-config-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function selfSigned(name: string): string {
  const cert = join(dir, `${name}.crt`);
  execFileSync(
    requireTool('openssl'),
    ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'].concat([
      '-keyout',
      join(dir, `${name}.key`),
      '-out',
      cert,
      '-days',
      '2',
      '-subj',
      `/CN=${name}`,
    ]),
    { stdio: 'ignore' },
  );
  return cert;
}

const notary = (extra: Record<string, unknown>): Record<string, unknown> => ({
  name: 'notary',
  kind: 'notation',
  trustStore: [selfSigned('ca')],
  trustedIdentities: ['*'],
  ...extra,
});

function problems(authority: Record<string, unknown>, rest: Record<string, unknown> = {}): string[] {
  const r = signaturesSchema.safeParse({ authorities: [authority], ...rest });
  return r.success ? [] : r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`);
}

describe('Notation timestamp and revocation settings', () => {
  it('default to Notation strict: no TSA store, timestamps always verified when one is given, revocation enforced', () => {
    const c = signaturesSchema.parse({ authorities: [notary({})] });
    expect(c.authorities[0]).toMatchObject({ tsaTrustStore: [], verifyTimestamp: 'always', revocation: 'enforce' });
    expect(c.revocation).toEqual({ timeout: 5_000, cacheEntries: 10_000, maxTTL: 86_400_000, maxResponseSize: 8 * 1024 * 1024 });
  });

  it("take the defaults of expiry, the authentic timestamp and revocation from Notation's level; each may be overridden", () => {
    const strict = signaturesSchema.parse({ authorities: [notary({})] }).authorities[0];
    expect(strict).toMatchObject({ level: 'strict', expiry: 'enforce', signingTime: 'enforce', revocation: 'enforce' });
    const permissive = signaturesSchema.parse({ authorities: [notary({ level: 'permissive' })] }).authorities[0];
    expect(permissive).toMatchObject({ expiry: 'log', signingTime: 'log', revocation: 'log' });
    const overridden = signaturesSchema.parse({ authorities: [notary({ level: 'permissive', revocation: 'enforce' })] }).authorities[0];
    expect(overridden).toMatchObject({ expiry: 'log', signingTime: 'log', revocation: 'enforce' });
    // audit and skip admit what no authority vouches for: a gate refuses them, naming the field.
    for (const level of ['audit', 'skip']) expect(problems(notary({ level }))[0]).toMatch(/^authorities\.0\.level: .*authenticity is not verified/);
  });

  it('name the authority and the field when wrong', () => {
    expect(problems(notary({ revocation: 'strict' }))[0]).toMatch(/^authorities\.0\.revocation: authority "notary": revocation: /);
    expect(problems(notary({ verifyTimestamp: 'never' }))[0]).toMatch(/^authorities\.0\.verifyTimestamp: authority "notary": verifyTimestamp: /);
    expect(problems(notary({}), { revocation: { cacheEntries: 0 } })[0]).toMatch(/^revocation\.cacheEntries: /);
    expect(problems(notary({}), { revocation: { timeout: 'soon' } })[0]).toMatch(/^revocation\.timeout: expected a duration/);
  });

  it('load the TSA trust store, refuse an empty one, and make it part of the trust revision', () => {
    const tsa = selfSigned('tsa');
    const cfg = signaturesSchema.parse({ authorities: [notary({ tsaTrustStore: [tsa] })] });
    const trust = loadTrust(cfg);
    const a = trust.authorities[0] as NotationAuthority;
    expect(a.tsaRoots.map((c) => c.subject)).toEqual(['CN=tsa']);
    writeFileSync(tsa, readFileSync(selfSigned('tsa2')));
    expect(loadTrust(cfg).revision).not.toBe(trust.revision);
    const empty = join(dir, 'empty.pem');
    writeFileSync(empty, 'nothing');
    expect(() => loadTrust(signaturesSchema.parse({ authorities: [notary({ tsaTrustStore: [empty] })] }))).toThrow(
      /authority "notary": .*empty\.pem holds no X\.509 certificate/,
    );
    expect(() => loadTrust(signaturesSchema.parse({ authorities: [notary({ tsaTrustStore: [join(dir, 'missing')] })] }))).toThrow(
      /authority "notary": cannot read TSA trust store .*missing: ENOENT/,
    );
  });
});
