/**
 * `portcullis config check` finds everything `serve` would refuse: every cross-field rule is in the config schema,
 * and each refusal names the field. One config per rule, each otherwise valid.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/config/load.js';
import { checkConfigFile } from '../../src/server/bootstrap.js';
import { cleanupTempDirs, tempDir } from './helpers.js';

afterAll(cleanupTempDirs);

const UPSTREAM = { name: 'u', registry: 'docker.io', url: 'https://registry-1.docker.io' };
const KEY_AUTHORITY = { name: 'release', kind: 'key', key: '/etc/portcullis/release.pub' };

/** Each case: the config (upstreams added when absent) and the field its refusal must name. */
const CASES: Array<{ rule: string; doc: Record<string, unknown>; field: string }> = [
  {
    rule: 'a policy scope requires an undefined signature authority',
    field: 'policy.settings.scopes',
    doc: {
      signatures: { authorities: [KEY_AUTHORITY] },
      policy: { settings: { scopes: [{ name: 'prod', images: ['**'], signatures: { authorities: ['release', 'ci'] } }] } },
    },
  },
  {
    rule: 'a required attestation names an undefined authority',
    field: 'policy.settings.scopes[0].attestations.required[0].authorities[1]',
    doc: {
      signatures: { authorities: [KEY_AUTHORITY] },
      policy: { settings: { scopes: [{ name: 'prod', attestations: { required: [{ predicateType: 'sbom', authorities: ['release', 'ci'] }] } }] } },
    },
  },
  {
    rule: 'a required attestation condition is not RE2',
    field: 'policy.settings.scopes[0].attestations.required[0].conditions.builderId.regex',
    doc: {
      signatures: { authorities: [KEY_AUTHORITY] },
      policy: {
        settings: {
          scopes: [
            {
              attestations: {
                required: [{ predicateType: 'slsa-provenance', authorities: ['release'], conditions: { builderId: { regex: 'https://(?!evil).*' } } }],
              },
            },
          ],
        },
      },
    },
  },
  {
    rule: 'an unknown attestation condition',
    field: 'policy.settings.scopes[0].attestations.required[0].conditions',
    doc: {
      signatures: { authorities: [KEY_AUTHORITY] },
      policy: {
        settings: {
          scopes: [{ attestations: { required: [{ predicateType: 'slsa-provenance', authorities: ['release'], conditions: { builderID: 'x' } }] } }],
        },
      },
    },
  },
  {
    rule: 'a condition on an SBOM',
    field: 'policy.settings.scopes[0].attestations.required[0].conditions',
    doc: {
      signatures: { authorities: [KEY_AUTHORITY] },
      policy: { settings: { scopes: [{ attestations: { required: [{ predicateType: 'sbom', authorities: ['release'], conditions: { builderId: 'x' } }] } }] } },
    },
  },
  {
    rule: 'scan attestations trust an undefined authority',
    field: 'scan.attestations.authorities[1]',
    doc: { signatures: { authorities: [KEY_AUTHORITY] }, scan: { attestations: { authorities: ['release', 'nobody'] } } },
  },
  { rule: 'two upstreams serve one host', field: 'upstreams[1].registry', doc: { upstreams: [UPSTREAM, { ...UPSTREAM, name: 'v' }] } },
  { rule: 'two upstreams share a name', field: 'upstreams[1].name', doc: { upstreams: [UPSTREAM, { ...UPSTREAM, registry: 'ghcr.io' }] } },
  {
    rule: 'credentials and a credential provider',
    field: 'upstreams[0].credentialProvider',
    doc: { upstreams: [{ ...UPSTREAM, credentials: { username: 'a', password: { env: 'P' } }, credentialProvider: { command: '/bin/true' } }] },
  },
  {
    rule: 'username and usernameFrom',
    field: 'upstreams[0].credentials',
    doc: { upstreams: [{ ...UPSTREAM, credentials: { username: 'a', usernameFrom: { env: 'U' }, password: { env: 'P' } } }] },
  },
  { rule: 'a secret from both env and file', field: 'metricsToken', doc: { metricsToken: { env: 'T', file: '/run/t' } } },
  { rule: 'defaultUpstream names no upstream', field: 'defaultUpstream', doc: { defaultUpstream: 'nope' } },
  { rule: 'anonymous: false without a method', field: 'auth.anonymous', doc: { auth: { anonymous: false } } },
  { rule: 'client certificates without tls.clientCA', field: 'auth.mtls', doc: { auth: { mtls: {} } } },
  { rule: 'clientAuth optional without tls.clientCA', field: 'tls.clientAuth', doc: { tls: { cert: 'c.pem', key: 'k.pem', clientAuth: 'optional' } } },
  { rule: 'a token endpoint without a way to authenticate', field: 'auth.token', doc: { auth: { anonymous: false, token: {} } } },
  {
    rule: 'an OIDC provider with both key sources',
    field: 'auth.oidc[0]',
    doc: { auth: { oidc: [{ issuer: 'https://i', audience: 'a', jwksFile: '/j', jwksUrl: 'https://i/jwks' }] } },
  },
  { rule: 'two policy sources', field: 'policy', doc: { policy: { bundleFile: 'b.tar.gz', opaUrl: 'https://opa:8181' } } },
  { rule: 'a plain-http bundle server', field: 'policy.bundleUrl', doc: { policy: { bundleUrl: 'http://bundles/b.tar.gz' } } },
  { rule: 'bundle signing with an external OPA', field: 'policy.signing', doc: { policy: { opaUrl: 'https://opa:8181', signing: { publicKey: '/k.pem' } } } },
  { rule: 'a file sink without a file', field: 'decisionLog.file', doc: { decisionLog: { sink: 'file' } } },
  { rule: 'an http sink without a url', field: 'decisionLog.url', doc: { decisionLog: { sink: 'http' } } },
  { rule: 'a spool without the http sink', field: 'decisionLog.spool', doc: { decisionLog: { sink: 'stdout', spool: { maxSize: '1MiB' } } } },
  { rule: 'a scan source listed but not configured', field: 'scan.order[0]', doc: { scan: { order: ['scanner'], reports: { token: { env: 'T' } } } } },
  { rule: 'a report API without a token', field: 'scan.reports.token', doc: { scan: { reports: {} } } },
  {
    rule: 'a keyless authority with subject and subjectRegExp',
    field: 'signatures.authorities[0]',
    doc: { signatures: { authorities: [{ name: 'ci', kind: 'keyless', issuer: 'https://i', subject: 'a', subjectRegExp: 'a', trustedRoot: '/r.json' }] } },
  },
  {
    rule: 'a transparency-log threshold without a trusted root',
    field: 'signatures.authorities[0].tlogThreshold',
    doc: { signatures: { authorities: [{ ...KEY_AUTHORITY, tlogThreshold: 1 }] } },
  },
  { rule: 'two authorities with one name', field: 'signatures.authorities[1].name', doc: { signatures: { authorities: [KEY_AUTHORITY, KEY_AUTHORITY] } } },
];

async function problems(doc: Record<string, unknown>): Promise<string[]> {
  const file = join(tempDir('pc-cfgcheck-'), 'portcullis.yaml');
  writeFileSync(file, JSON.stringify({ upstreams: [UPSTREAM], ...doc }));
  try {
    await checkConfigFile(file, {});
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    return (e as ConfigError).problems;
  }
  throw new Error('config check accepted it');
}

describe('config check refuses every cross-field error, naming the field', () => {
  for (const c of CASES) {
    it(c.rule, async () => {
      const found = await problems(c.doc);
      expect(
        found.filter((p) => p.startsWith(`${c.field}: `)),
        found.join('\n'),
      ).toHaveLength(1);
    });
  }

  it('a valid config passes (the cases above fail for their rule, not for a missing field)', async () => {
    // Without any signature authority a scope requiring one is valid: it denies at run time (not_configured).
    const file = join(tempDir('pc-cfgcheck-'), 'portcullis.yaml');
    writeFileSync(
      file,
      JSON.stringify({
        upstreams: [UPSTREAM],
        scan: { attestations: { authorities: ['*'] } },
        policy: {
          settings: {
            scopes: [
              {
                name: 'prod',
                signatures: { authorities: ['release'] },
                attestations: {
                  required: [
                    {
                      name: 'build',
                      predicateType: 'slsa-provenance',
                      authorities: ['release'],
                      conditions: {
                        builderId: 'https://github.com/slsa-framework/**',
                        sourceRepository: { regex: 'https://github\\.com/acme/.+' },
                        sourceRef: ['refs/heads/main', 'refs/tags/v*'],
                      },
                    },
                    { predicateType: 'sbom', authorities: ['release'] },
                    { predicateType: 'https://example.com/test-result/v1', authorities: ['release'] },
                  ],
                },
              },
            ],
          },
        },
      }),
    );
    await expect(checkConfigFile(file, {})).resolves.toMatchObject({ upstreams: [{ name: 'u' }] });
  });
});

describe('config check loads the files serve loads', () => {
  it('a missing htpasswd file and a forwarded-identity key of the wrong type are refused, naming the field', async () => {
    const dir = tempDir('pc-cfgcheck-');
    const file = join(dir, 'portcullis.yaml');
    writeFileSync(file, JSON.stringify({ upstreams: [UPSTREAM], auth: { htpasswd: { file: join(dir, 'missing.htpasswd') } } }));
    await expect(checkConfigFile(file, {})).rejects.toThrow(/missing\.htpasswd/);
    const { generateKeyPairSync } = await import('node:crypto');
    const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'pem', type: 'pkcs8' }) as string;
    writeFileSync(join(dir, 'fwd.pem'), rsa);
    writeFileSync(file, JSON.stringify({ upstreams: [{ ...UPSTREAM, forwardIdentity: { key: join(dir, 'fwd.pem'), keyId: 'n1', audience: 'central' } }] }));
    await expect(checkConfigFile(file, {})).rejects.toThrow('upstream "u": forwardIdentity.key: expected an EC P-256 or Ed25519 key, got rsa');
  });
});
