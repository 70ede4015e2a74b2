/**
 * Signature verification without registries or signing tools: configuration errors, trust loading, and each
 * format (cosign legacy by key and keyless, Sigstore bundles, Notation JWS) against each rejection reason. The
 * keyless material comes from a local Fulcio/Rekor/CT log (@sigstore/mock) signed through @sigstore/sign; the
 * Notation certificates from openssl; the JWS from jose. The e2e test (test/e2e/signatures.test.ts) repeats the
 * important cases with signatures made by the real cosign and notation binaries.
 */
import { execFileSync } from 'node:child_process';
import { createHash, generateKeyPairSync, sign as cryptoSign, createPrivateKey, type KeyObject } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bundleToJSON, toDSSEBundle } from '@sigstore/bundle';
import { dsse } from '@sigstore/core';
import { DSSEBundleBuilder, FulcioSigner, MessageSignatureBundleBuilder, RekorWitness } from '@sigstore/sign';
import { FlattenedSign } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Manifest } from '../../src/proxy/manifests.js';
import { parseManifest, type ParsedManifest } from '../../src/oci/mediatypes.js';
import type { Digest } from '../../src/routing/reference.js';
import { isAccessory, isRunnable } from '../../src/oci/artifacts.js';
import { admittedRootKind, needsOwnDecision, rootKind } from '../../src/gate/classify.js';
import { signaturesSchema } from '../../src/config/signatures.js';
import type { SignatureCode } from '../../src/policy/codes.js';
import { cosignItems, type CosignItem, type Outcome } from '../../src/verify/cosign.js';
import { verifyCosignKeyless, verifyCosignWithKey } from '../../src/verify/cosign-verify.js';
import type { FoundArtifact } from '../../src/verify/discovery.js';
import { checkSignatureConfig } from '../../src/verify/index.js';
import { requiredAuthorities } from '../../src/config/signatures.js';
import { parseConfig } from '../../src/config/load.js';
import { verifyNotation } from '../../src/verify/notation.js';
import { parseNotationJws } from '../../src/verify/notation-jws.js';
import { loadTrust, trustFilesChanged, type KeyAuthority, type KeylessAuthority, type NotationAuthority } from '../../src/verify/trust.js';
import { startLocalSigstore, type LocalSigstore } from '../harness/signature-sigstore.js';

const dir = mkdtempSync(join(tmpdir(), 'pc-sigunit-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const hex = (c: string): string => c.repeat(64).slice(0, 64);
const DIGEST = `sha256:${hex('ab')}` as Digest;
const OTHER = `sha256:${hex('cd')}` as Digest;
const ISSUER = 'https://token.actions.githubusercontent.com';
const SUBJECT = 'https://github.com/acme/app/.github/workflows/release.yml@refs/heads/main';

let n = 0;
function file(name: string, content: string | Buffer): string {
  const p = join(dir, `${n++}-${name}`);
  writeFileSync(p, content);
  return p;
}

function configOf(authorities: unknown[]) {
  return signaturesSchema.parse({ authorities });
}

function problems(authorities: unknown[]): string[] {
  const r = signaturesSchema.safeParse({ authorities });
  return r.success ? [] : r.error.issues.map((i) => i.message);
}

function manifestOf(doc: unknown): Manifest {
  const bytes = Buffer.from(JSON.stringify(doc));
  return {
    digest: `sha256:${createHash('sha256').update(bytes).digest('hex')}` as Digest,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    bytes,
    parsed: parseManifest(bytes, undefined),
  };
}

const EMPTY = { mediaType: 'application/vnd.oci.empty.v1+json', digest: 'sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a', size: 2 };

/** Items from one artifact, with its blobs served from memory. */
async function items(
  kind: FoundArtifact['kind'],
  layers: Array<{ mediaType: string; bytes: Buffer; annotations?: Record<string, string> }>,
): Promise<CosignItem[]> {
  const blobs = new Map<string, Buffer>();
  const descs = layers.map((l) => {
    const digest = `sha256:${createHash('sha256').update(l.bytes).digest('hex')}`;
    blobs.set(digest, l.bytes);
    return { mediaType: l.mediaType, digest, size: l.bytes.length, ...(l.annotations ? { annotations: l.annotations } : {}) };
  });
  const manifest = manifestOf({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: EMPTY, layers: descs });
  const out = await cosignItems(
    { kind, via: kind === 'sigstore-bundle' ? 'referrers' : 'sig-tag', manifest },
    (d) => Promise.resolve(blobs.get(d.digest)!),
    10,
  );
  for (const o of out) if ('error' in o) throw new Error(o.error);
  return out as CosignItem[];
}

function simpleSigning(digest: string): Buffer {
  return Buffer.from(
    JSON.stringify({
      critical: {
        identity: { 'docker-reference': '127.0.0.1:5000/acme/app' },
        image: { 'docker-manifest-digest': digest },
        type: 'cosign container image signature',
      },
      optional: null,
    }),
  );
}

function statement(digest: string, predicateType = 'https://sigstore.dev/cosign/sign/v1', predicate: unknown = {}): Buffer {
  return Buffer.from(
    JSON.stringify({ _type: 'https://in-toto.io/Statement/v1', subject: [{ name: 'img', digest: { sha256: digest.slice(7) } }], predicateType, predicate }),
  );
}

function keyPair(type: 'P-256' | 'P-384' | 'rsa' | 'ed25519'): { publicKey: KeyObject; privateKey: KeyObject } {
  if (type === 'rsa') return generateKeyPairSync('rsa', { modulusLength: 2048 });
  if (type === 'ed25519') return generateKeyPairSync('ed25519');
  return generateKeyPairSync('ec', { namedCurve: type });
}

/** Signs like cosign: ECDSA with the curve's hash (DER), RSA PKCS#1 v1.5 SHA-256, pure Ed25519. */
function cosignSign(key: KeyObject, data: Buffer): Buffer {
  if (key.asymmetricKeyType === 'ed25519') return cryptoSign(null, data, key);
  const curve = key.asymmetricKeyDetails?.namedCurve;
  return cryptoSign(curve === 'secp384r1' ? 'sha384' : 'sha256', data, key);
}

function keyAuthority(publicKey: KeyObject, name = 'release'): KeyAuthority {
  const path = file('key.pub', publicKey.export({ format: 'pem', type: 'spki' }));
  return loadTrust(configOf([{ name, kind: 'key', key: path }])).authorities[0] as KeyAuthority;
}

/** A rejection with its stable code (policy/codes.ts) and its reason for people. */
function expectReason(o: Outcome, code: SignatureCode, re: RegExp): void {
  expect(o.ok, JSON.stringify(o)).toBe(false);
  if (!o.ok) {
    expect(o.code, o.reason).toBe(code);
    expect(o.reason).toMatch(re);
  }
}

describe('signatures config', () => {
  it('accepts the three kinds with defaults', () => {
    const c = configOf([
      { name: 'k', kind: 'key', key: '/k.pub' },
      { name: 'c', kind: 'keyless', issuer: ISSUER, subject: SUBJECT, trustedRoot: '/r.json' },
      { name: 'n', kind: 'notation', trustStore: ['/ca'], trustedIdentities: ['x509.subject: C=US, ST=WA, O=acme'] },
    ]);
    expect(c.authorities.map((a) => a.kind)).toEqual(['key', 'keyless', 'notation']);
    expect(c.authorities[1]).toMatchObject({ tlogThreshold: 1, ctlogThreshold: 1, timestampThreshold: 1, extensions: {} });
    expect(c.authorities[2]).toMatchObject({ expiry: 'enforce', signingTime: 'enforce' });
    expect(c.cache).toEqual({ verifiedTTL: 3_600_000, unverifiedTTL: 30_000 });
  });

  it('names the authority in every error', () => {
    expect(problems([{ name: 'ci', kind: 'keyless', issuer: ISSUER, trustedRoot: '/r.json' }])).toEqual([
      'authority "ci": give exactly one of subject or subjectRegExp',
    ]);
    expect(problems([{ name: 'ci', kind: 'keyless', issuer: ISSUER, subjectRegExp: '(', trustedRoot: '/r.json' }])[0]).toMatch(
      /^authority "ci": invalid regular expression/,
    );
    expect(problems([{ name: 'ci', kind: 'keyless', issuer: ISSUER, subject: 's', trustedRoot: '/r', extensions: { 'not-an-oid': 'x' } }])[0]).toMatch(
      /^authority "ci": extensions\.not-an-oid/,
    );
    expect(problems([{ name: 'rel', kind: 'key' }])[0]).toMatch(/^authority "rel": key: /);
    expect(problems([{ name: 'rel', kind: 'key', key: '/k', tlogThreshold: 1 }])[0]).toMatch(/^authority "rel": tlogThreshold > 0 needs a trustedRoot/);
    expect(problems([{ name: 'rel', kind: 'magic' }])[0]).toMatch(/^authority "rel": /);
    expect(problems([{ name: 'n', kind: 'notation', trustStore: ['/ca'], trustedIdentities: ['acme'] }])[0]).toMatch(/^authority "n": "acme" is not/);
    expect(
      problems([
        { name: 'a', kind: 'key', key: '/k' },
        { name: 'a', kind: 'key', key: '/k' },
      ]),
    ).toEqual(['authority "a": duplicate authority name']);
    expect(problems([{ kind: 'key', key: '/k' }])[0]).toMatch(/^authority #1: name: /);
  });

  it('own PKI (ca) and TUF sources: defaults and the rules between fields', () => {
    const pki = configOf([{ name: 'pki', kind: 'keyless', subject: 'dev@acme.example', ca: { roots: ['/root.pem'] } }]).authorities[0];
    // Nothing beyond the chain unless asked for; an issuer is optional with a CA of your own.
    expect(pki).toMatchObject({ tlogThreshold: 0, ctlogThreshold: 0, timestampThreshold: 0, tsaThreshold: 0, ca: { roots: ['/root.pem'], intermediates: [] } });
    expect(problems([{ name: 'ci', kind: 'keyless', issuer: ISSUER, subject: SUBJECT }])).toEqual([
      'authority "ci": give a trustedRoot (Fulcio) or a ca (your own PKI)',
    ]);
    expect(problems([{ name: 'ci', kind: 'keyless', subject: SUBJECT, trustedRoot: '/r.json' }])).toEqual([
      'authority "ci": issuer is required with Fulcio certificates',
    ]);
    expect(problems([{ name: 'pki', kind: 'keyless', subject: 's', ca: { roots: ['/r.pem'] }, ctlogThreshold: 1 }])).toEqual([
      'authority "pki": a private CA issues no SCTs; ctlogThreshold must be 0 with ca',
    ]);
    expect(problems([{ name: 'pki', kind: 'keyless', subject: 's', ca: { roots: ['/r.pem'] }, tsaThreshold: 1 }])[0]).toMatch(
      /^authority "pki": tlogThreshold or tsaThreshold > 0 needs a trustedRoot/,
    );
    expect(problems([{ name: 'pki', kind: 'keyless', subject: 's', ca: { roots: [] } }])[0]).toMatch(/^authority "pki": ca\.roots: give at least one root/);
    const tuf = { mirror: 'https://tuf.example/', root: '/root.json', cacheDir: '/var/cache/tuf' };
    const fromTuf = configOf([{ name: 'ci', kind: 'keyless', issuer: ISSUER, subject: SUBJECT, trustedRoot: { tuf } }]).authorities[0];
    expect(fromTuf).toMatchObject({ trustedRoot: { tuf: { ...tuf, refresh: 86_400_000, target: 'trusted_root.json' } }, tlogThreshold: 1 });
    expect(problems([{ name: 'ci', kind: 'keyless', issuer: ISSUER, subject: SUBJECT, trustedRoot: { tuf: { ...tuf, mirror: 'ftp://x' } } }])[0]).toMatch(
      /^authority "ci": trustedRoot/,
    );
    // Config check is offline: a TUF source not fetched yet is no error there (serving fetches it before it starts).
    const pinned = file('tuf-root.json', '{}');
    expect(() =>
      loadTrust(configOf([{ name: 'ci', kind: 'keyless', issuer: ISSUER, subject: SUBJECT, trustedRoot: { tuf: { ...tuf, root: pinned, cacheDir: dir } } }]), {
        offline: true,
      }),
    ).not.toThrow();
    expect(() =>
      loadTrust(configOf([{ name: 'ci', kind: 'keyless', issuer: ISSUER, subject: SUBJECT, trustedRoot: { tuf: { ...tuf, root: pinned, cacheDir: dir } } }])),
    ).toThrow(/authority "ci": no trusted root from the TUF repository https:\/\/tuf\.example\/ yet/);
  });

  it('loading names the authority and the file', () => {
    expect(() => loadTrust(configOf([{ name: 'rel', kind: 'key', key: join(dir, 'missing.pub') }]))).toThrow(
      /authority "rel": cannot read key file .*missing\.pub: ENOENT/,
    );
    const weak = generateKeyPairSync('rsa', { modulusLength: 1024 }).publicKey.export({ format: 'pem', type: 'spki' }) as string;
    expect(() => loadTrust(configOf([{ name: 'rel', kind: 'key', key: file('weak.pub', weak) }]))).toThrow(
      /authority "rel": RSA key of 1024 bits is too short/,
    );
    expect(() => loadTrust(configOf([{ name: 'rel', kind: 'key', key: file('junk.pub', 'junk') }]))).toThrow(/authority "rel": .* is not a PEM public key/);
    expect(() =>
      loadTrust(configOf([{ name: 'ci', kind: 'keyless', issuer: ISSUER, subject: SUBJECT, trustedRoot: file('root.json', '{"mediaType":"x"}') }])),
    ).toThrow(/authority "ci": the trusted root has no certificate authorities/);
    expect(() => loadTrust(configOf([{ name: 'n', kind: 'notation', trustStore: [file('empty.pem', 'nothing')], trustedIdentities: ['*'] }]))).toThrow(
      /authority "n": .*holds no X\.509 certificate/,
    );
  });

  it('the trust revision changes with the key file, and only then', () => {
    const path = file('rot.pub', keyPair('P-256').publicKey.export({ format: 'pem', type: 'spki' }));
    const cfg = configOf([{ name: 'rel', kind: 'key', key: path }]);
    const a = loadTrust(cfg);
    expect(loadTrust(cfg).revision).toBe(a.revision);
    expect(trustFilesChanged(a)).toBe(false);
    writeFileSync(path, keyPair('P-256').publicKey.export({ format: 'pem', type: 'spki' }));
    expect(trustFilesChanged(a)).toBe(true);
    expect(loadTrust(cfg).revision).not.toBe(a.revision);
  });

  it('config check: a scope naming an undefined authority, or an unusable key file, is an error naming it', () => {
    const doc = (authorities: unknown[], scopes: unknown[]) =>
      parseConfig(
        JSON.stringify({
          upstreams: [{ name: 'u', registry: '127.0.0.1:5000', url: 'http://127.0.0.1:5000' }],
          policy: { settings: { scopes } },
          signatures: { authorities },
        }),
        'c.yaml',
        {},
      );
    const key = file('ok.pub', keyPair('P-256').publicKey.export({ format: 'pem', type: 'spki' }));
    expect(() =>
      checkSignatureConfig(doc([{ name: 'release', kind: 'key', key }], [{ name: 'prod', images: ['**'], signatures: { authorities: ['release'] } }])),
    ).not.toThrow();
    expect(() =>
      checkSignatureConfig(doc([{ name: 'release', kind: 'key', key }], [{ name: 'prod', images: ['**'], signatures: { authorities: ['release', 'ci'] } }])),
    ).toThrow('policy.settings.scopes: scope "prod" requires signature authority "ci", which signatures.authorities does not define (defined: "release")');
    expect(() => checkSignatureConfig(doc([{ name: 'release', kind: 'key', key: join(dir, 'gone.pub') }], []))).toThrow(
      /authority "release": cannot read key file/,
    );
  });

  it('finds the authorities that scopes require', () => {
    expect(
      requiredAuthorities({ scopes: [{ name: 'prod', signatures: { authorities: ['a', 'b'] } }, { images: ['**'] }, { signatures: { authorities: ['c'] } }] }),
    ).toEqual([
      { scope: 'prod', authority: 'a' },
      { scope: 'prod', authority: 'b' },
      { scope: 'scopes[2]', authority: 'c' },
    ]);
  });
});

describe('cosign, key-based', () => {
  for (const type of ['P-256', 'P-384', 'rsa', 'ed25519'] as const) {
    it(`verifies a legacy simple-signing signature made with ${type}`, async () => {
      const { publicKey, privateKey } = keyPair(type);
      const payload = simpleSigning(DIGEST);
      const [item] = await items('cosign-sig', [
        {
          mediaType: 'application/vnd.dev.cosign.simplesigning.v1+json',
          bytes: payload,
          annotations: { 'dev.cosignproject.cosign/signature': cosignSign(privateKey, payload).toString('base64') },
        },
      ]);
      expect(verifyCosignWithKey(item!, keyAuthority(publicKey), DIGEST)).toEqual({ ok: true, tlog: false });
    });
  }

  it('rejects another key, another digest, and a modified payload', async () => {
    const signer = keyPair('P-256');
    const payload = simpleSigning(DIGEST);
    const sig = cosignSign(signer.privateKey, payload).toString('base64');
    const [item] = await items('cosign-sig', [
      { mediaType: 'application/vnd.dev.cosign.simplesigning.v1+json', bytes: payload, annotations: { 'dev.cosignproject.cosign/signature': sig } },
    ]);
    expectReason(verifyCosignWithKey(item!, keyAuthority(keyPair('P-256').publicKey), DIGEST), 'KEY_MISMATCH', /^key mismatch$/);
    expectReason(verifyCosignWithKey(item!, keyAuthority(signer.publicKey), OTHER), 'DIGEST_MISMATCH', /^digest mismatch \(signed sha256:abab/);
    // Without a certificate or key hint a legacy signature does not name its key: a modified payload reads as
    // "key mismatch" (cosign says "invalid signature" for both, too).
    const tampered = Buffer.from(payload.toString().replace('127.0.0.1:5000/acme/app', '127.0.0.1:5000/acme/evil'));
    const [bad] = await items('cosign-sig', [
      { mediaType: 'application/vnd.dev.cosign.simplesigning.v1+json', bytes: tampered, annotations: { 'dev.cosignproject.cosign/signature': sig } },
    ]);
    expectReason(verifyCosignWithKey(bad!, keyAuthority(signer.publicKey), DIGEST), 'KEY_MISMATCH', /^key mismatch$/);
  });

  it('verifies a key-based Sigstore bundle (cosign 3) and tells a modified payload from a wrong key by its hint', async () => {
    const signer = keyPair('P-384');
    const auth = keyAuthority(signer.publicKey);
    const payload = statement(DIGEST);
    const sig = cosignSign(signer.privateKey, dsse.preAuthEncoding('application/vnd.in-toto+json', payload));
    const bundleFor = (artifact: Buffer) =>
      Buffer.from(JSON.stringify(bundleToJSON(toDSSEBundle({ artifact, artifactType: 'application/vnd.in-toto+json', signature: sig, keyHint: auth.keyId }))));
    const [good] = await items('sigstore-bundle', [{ mediaType: 'application/vnd.dev.sigstore.bundle.v0.3+json', bytes: bundleFor(payload) }]);
    expect(good!.isSignature).toBe(true);
    expect(verifyCosignWithKey(good!, auth, DIGEST)).toEqual({ ok: true, tlog: false });
    expectReason(verifyCosignWithKey(good!, keyAuthority(keyPair('P-384').publicKey), DIGEST), 'KEY_MISMATCH', /^key mismatch$/);
    const [tampered] = await items('sigstore-bundle', [{ mediaType: 'application/vnd.dev.sigstore.bundle.v0.3+json', bytes: bundleFor(statement(OTHER)) }]);
    expectReason(verifyCosignWithKey(tampered!, auth, OTHER), 'INVALID_SIGNATURE', /^invalid signature/);
  });

  it('reads attestations from legacy .att DSSE layers', async () => {
    const signer = keyPair('P-256');
    const payload = statement(DIGEST, 'https://cosign.sigstore.dev/attestation/vuln/v1', { scanner: { uri: 'pkg:github/aquasecurity/trivy@0.50.1' } });
    const env = {
      payloadType: 'application/vnd.in-toto+json',
      payload: payload.toString('base64'),
      signatures: [{ keyid: '', sig: cosignSign(signer.privateKey, dsse.preAuthEncoding('application/vnd.in-toto+json', payload)).toString('base64') }],
    };
    const [att] = await items('cosign-att', [
      {
        mediaType: 'application/vnd.dsse.envelope.v1+json',
        bytes: Buffer.from(JSON.stringify(env)),
        annotations: { predicateType: 'https://cosign.sigstore.dev/attestation/vuln/v1', 'dev.cosignproject.cosign/signature': '' },
      },
    ]);
    expect(att!.isSignature).toBe(false);
    expect(att!.claim).toMatchObject({
      kind: 'in-toto',
      predicateType: 'https://cosign.sigstore.dev/attestation/vuln/v1',
      predicate: { scanner: { uri: 'pkg:github/aquasecurity/trivy@0.50.1' } },
    });
    expect(verifyCosignWithKey(att!, keyAuthority(signer.publicKey), DIGEST).ok).toBe(true);
  });
});

describe('cosign, keyless (local Fulcio and Rekor from @sigstore/mock)', () => {
  let ss: LocalSigstore;
  let other: LocalSigstore;
  beforeAll(async () => {
    [ss, other] = await Promise.all([startLocalSigstore(), startLocalSigstore()]);
  });
  afterAll(async () => {
    await Promise.all([ss?.stop(), other?.stop()]);
  });

  function keyless(extra: Record<string, unknown> = {}, root = ss): KeylessAuthority {
    return loadTrust(configOf([{ name: 'ci', kind: 'keyless', issuer: ISSUER, subject: SUBJECT, trustedRoot: root.trustedRootPath, ...extra }]))
      .authorities[0] as KeylessAuthority;
  }

  async function bundleItem(payload: Buffer, opts: { subject?: string; issuer?: string; tamper?: boolean } = {}): Promise<CosignItem> {
    const token = await ss.token(opts.subject ?? SUBJECT, opts.issuer ?? ISSUER);
    const signer = new FulcioSigner({ identityProvider: { getToken: () => Promise.resolve(token) }, fulcioBaseURL: ss.url });
    const bundle = await new DSSEBundleBuilder({ signer, witnesses: [new RekorWitness({ rekorBaseURL: ss.url, entryType: 'dsse' })] }).create({
      data: payload,
      type: 'application/vnd.in-toto+json',
    });
    const json = bundleToJSON(bundle) as { dsseEnvelope: { payload: string } };
    if (opts.tamper) json.dsseEnvelope.payload = statement(DIGEST, 'https://sigstore.dev/cosign/sign/v1', { evil: true }).toString('base64');
    const [item] = await items('sigstore-bundle', [{ mediaType: 'application/vnd.dev.sigstore.bundle.v0.3+json', bytes: Buffer.from(JSON.stringify(json)) }]);
    return item!;
  }

  it('verifies a bundle offline and reports the identity, the log and the time', async () => {
    // The log's time is the moment of signing: between the two readings of the clock (the log counts in seconds).
    const before = Math.floor(Date.now() / 1000) * 1000;
    const item = await bundleItem(statement(DIGEST));
    const after = Date.now();
    const o = verifyCosignKeyless(item, keyless(), DIGEST);
    expect(o).toMatchObject({ ok: true, tlog: true, identity: { issuer: ISSUER, subject: SUBJECT } });
    const signedAt = Date.parse((o as { signedAt?: string }).signedAt ?? '');
    expect(signedAt).toBeGreaterThanOrEqual(before);
    expect(signedAt).toBeLessThanOrEqual(after);
  });

  it('anchors subject regexes and compares issuer and extensions exactly', async () => {
    const item = await bundleItem(statement(DIGEST));
    expect(verifyCosignKeyless(item, keyless({ subject: undefined, subjectRegExp: 'https://github\\.com/acme/.+@refs/heads/main' }), DIGEST).ok).toBe(true);
    // Unanchored, this would match: the configured pattern is a prefix of the subject.
    expectReason(
      verifyCosignKeyless(item, keyless({ subject: undefined, subjectRegExp: 'https://github\\.com/acme/app' }), DIGEST),
      'IDENTITY_MISMATCH',
      /^identity mismatch \(subject "https:\/\/github\.com\/acme\/app\/\.github/,
    );
    expectReason(verifyCosignKeyless(item, keyless({ subject: 'https://github.com/acme/other' }), DIGEST), 'IDENTITY_MISMATCH', /^identity mismatch/);
    expectReason(
      verifyCosignKeyless(item, keyless({ issuer: 'https://accounts.google.com' }), DIGEST),
      'IDENTITY_MISMATCH',
      /^identity mismatch \(.*issuer "https:\/\/token\.actions\.githubusercontent\.com"\)/,
    );
    expectReason(
      verifyCosignKeyless(item, keyless({ extensions: { '1.3.6.1.4.1.57264.1.12': 'https://github.com/acme/app' } }), DIGEST),
      'IDENTITY_MISMATCH',
      /^identity mismatch \(extension 1\.3\.6\.1\.4\.1\.57264\.1\.12 is null\)/,
    );
    expect(verifyCosignKeyless(item, keyless({ extensions: { '1.3.6.1.4.1.57264.1.8': ISSUER } }), DIGEST).ok).toBe(true);
  });

  it('rejects a certificate from another CA, another digest and a modified payload', async () => {
    const item = await bundleItem(statement(DIGEST));
    expectReason(verifyCosignKeyless(item, keyless({}, other), DIGEST), 'UNTRUSTED_CHAIN', /^untrusted chain$/);
    expectReason(verifyCosignKeyless(item, keyless(), OTHER), 'DIGEST_MISMATCH', /^digest mismatch/);
    expectReason(verifyCosignKeyless(await bundleItem(statement(DIGEST), { tamper: true }), keyless(), DIGEST), 'INVALID_SIGNATURE', /^tampered payload/);
    expectReason(
      verifyCosignKeyless(item, keyless({ subject: undefined, subjectRegExp: '.*', tlogThreshold: 2 }), DIGEST),
      'TLOG_UNVERIFIED',
      /^transparency log verification failed/,
    );
    expectReason(verifyCosignKeyless(item, keyless({ timestampThreshold: 2 }), DIGEST), 'TIMESTAMP_UNVERIFIED', /^no trusted timestamp \(/);
    // Signed and bound, but what was signed is no statement about an image.
    const unbound = await bundleItem(
      Buffer.from(
        JSON.stringify({ _type: 'https://in-toto.io/Statement/v1', subject: [], predicateType: 'https://sigstore.dev/cosign/sign/v1', predicate: {} }),
      ),
    );
    expectReason(verifyCosignKeyless(unbound, keyless(), DIGEST), 'UNUSABLE_PAYLOAD', /^unusable payload: in-toto statement without a sha256 subject$/);
  });

  it('assembles legacy keyless signatures (certificate and Rekor SET annotations) into a bundle', async () => {
    const token = await ss.token(SUBJECT, ISSUER);
    const payload = simpleSigning(DIGEST);
    const signer = new FulcioSigner({ identityProvider: { getToken: () => Promise.resolve(token) }, fulcioBaseURL: ss.url });
    const b = await new MessageSignatureBundleBuilder({ signer, witnesses: [new RekorWitness({ rekorBaseURL: ss.url })] }).create({ data: payload });
    const vm = b.verificationMaterial;
    const certDer = Buffer.from(
      vm.content.$case === 'certificate'
        ? vm.content.certificate.rawBytes
        : vm.content.$case === 'x509CertificateChain'
          ? vm.content.x509CertificateChain.certificates[0]!.rawBytes
          : Buffer.alloc(0),
    );
    const e = vm.tlogEntries[0]!;
    const rekorBundle = {
      SignedEntryTimestamp: Buffer.from(e.inclusionPromise!.signedEntryTimestamp).toString('base64'),
      Payload: {
        body: Buffer.from(e.canonicalizedBody).toString('base64'),
        integratedTime: Number(e.integratedTime),
        logIndex: Number(e.logIndex),
        logID: Buffer.from(e.logId.keyId).toString('hex'),
      },
    };
    const sig = b.content.$case === 'messageSignature' ? Buffer.from(b.content.messageSignature.signature).toString('base64') : '';
    const annotations = {
      'dev.cosignproject.cosign/signature': sig,
      'dev.sigstore.cosign/certificate': `-----BEGIN CERTIFICATE-----\n${certDer.toString('base64').replace(/(.{64})/g, '$1\n')}\n-----END CERTIFICATE-----\n`,
      'dev.sigstore.cosign/bundle': JSON.stringify(rekorBundle),
    };
    const [item] = await items('cosign-sig', [{ mediaType: 'application/vnd.dev.cosign.simplesigning.v1+json', bytes: payload, annotations }]);
    expect(verifyCosignKeyless(item!, keyless(), DIGEST)).toMatchObject({ ok: true, tlog: true, identity: { subject: SUBJECT, issuer: ISSUER } });
    // A signature that does not name a key never verifies as keyless.
    expectReason(verifyCosignKeyless({ ...item!, certificate: undefined }, keyless(), DIGEST), 'WRONG_KIND', /^no certificate/);
    // The SET signs the entry: change its time and it no longer verifies.
    const forged = {
      ...annotations,
      'dev.sigstore.cosign/bundle': JSON.stringify({
        ...rekorBundle,
        Payload: { ...rekorBundle.Payload, integratedTime: rekorBundle.Payload.integratedTime + 1 },
      }),
    };
    const [bad] = await items('cosign-sig', [{ mediaType: 'application/vnd.dev.cosign.simplesigning.v1+json', bytes: payload, annotations: forged }]);
    expectReason(verifyCosignKeyless(bad!, keyless(), DIGEST), 'TLOG_UNVERIFIED', /^transparency log verification failed/);
    // A signing time a day later, when the ten-minute Fulcio certificate had long expired: the chain is checked at
    // that time and fails for expiry, which tells EXPIRED from UNTRUSTED_CHAIN (under another CA: untrusted).
    const late = {
      ...annotations,
      'dev.sigstore.cosign/bundle': JSON.stringify({
        ...rekorBundle,
        Payload: { ...rekorBundle.Payload, integratedTime: rekorBundle.Payload.integratedTime + 86_400 },
      }),
    };
    const [expired] = await items('cosign-sig', [{ mediaType: 'application/vnd.dev.cosign.simplesigning.v1+json', bytes: payload, annotations: late }]);
    expectReason(verifyCosignKeyless(expired!, keyless(), DIGEST), 'EXPIRED', /^expired \(certificate not valid at the signing time\)$/);
    expectReason(verifyCosignKeyless(expired!, keyless({}, other), DIGEST), 'UNTRUSTED_CHAIN', /^untrusted chain$/);
    // Another payload under the same SET: the log entry's hash no longer matches.
    const otherPayload = simpleSigning(OTHER);
    const [swapped] = await items('cosign-sig', [{ mediaType: 'application/vnd.dev.cosign.simplesigning.v1+json', bytes: otherPayload, annotations }]);
    expectReason(verifyCosignKeyless(swapped!, keyless(), OTHER), 'INVALID_SIGNATURE', /^tampered payload/);
  });
});

describe('notation JWS', () => {
  const openssl = (...args: string[]): void => void execFileSync('openssl', args, { stdio: 'pipe' });
  let ca: { cert: string; key: string };
  let rogue: { cert: string; key: string };
  let leafKey: KeyObject;
  let leafCert: string;
  let rogueLeafCert: string;

  function makeCA(name: string): { cert: string; key: string } {
    const key = join(dir, `${name}.key`);
    const cert = join(dir, `${name}.crt`);
    openssl(
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-keyout',
      key,
      '-out',
      cert,
      '-days',
      '30',
      '-subj',
      `/C=US/ST=WA/O=${name}/CN=${name} root`,
      '-addext',
      'basicConstraints=critical,CA:TRUE',
      '-addext',
      'keyUsage=critical,keyCertSign,cRLSign',
    );
    return { cert, key };
  }

  function makeLeaf(name: string, issuer: { cert: string; key: string }, keyPath: string, days = 10): string {
    const csr = join(dir, `${name}.csr`);
    const cert = join(dir, `${name}.crt`);
    const ext = file('leaf.ext', 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=codeSigning\n');
    openssl('req', '-new', '-key', keyPath, '-out', csr, '-subj', `/C=US/ST=WA/L=Seattle/O=acme/CN=${name}`);
    openssl('x509', '-req', '-in', csr, '-CA', issuer.cert, '-CAkey', issuer.key, '-CAcreateserial', '-out', cert, '-days', String(days), '-extfile', ext);
    return cert;
  }

  const der = (pemPath: string): string => execFileSync('openssl', ['x509', '-in', pemPath, '-outform', 'DER']).toString('base64');

  beforeAll(() => {
    ca = makeCA('acme');
    rogue = makeCA('rogue');
    const leafKeyPath = join(dir, 'leaf.key');
    openssl('genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', leafKeyPath);
    leafKey = createPrivateKey(execFileSync('cat', [leafKeyPath]));
    leafCert = makeLeaf('signer', ca, leafKeyPath);
    rogueLeafCert = makeLeaf('rogue-signer', rogue, leafKeyPath);
  });

  const target = { digest: DIGEST, mediaType: 'application/vnd.oci.image.manifest.v1+json', size: 527 };

  async function jws(opts: { target?: object; expiry?: Date; alg?: string; chain?: string[]; tamper?: boolean; signingTime?: Date } = {}): Promise<Buffer> {
    const payload = Buffer.from(JSON.stringify({ targetArtifact: opts.target ?? target }));
    const header: Record<string, unknown> = {
      alg: opts.alg ?? 'ES256',
      cty: 'application/vnd.cncf.notary.payload.v1+json',
      crit: ['io.cncf.notary.signingScheme', ...(opts.expiry ? ['io.cncf.notary.expiry'] : [])],
      'io.cncf.notary.signingScheme': 'notary.x509',
      'io.cncf.notary.signingTime': (opts.signingTime ?? new Date()).toISOString(),
      ...(opts.expiry ? { 'io.cncf.notary.expiry': opts.expiry.toISOString() } : {}),
    };
    const signed = await new FlattenedSign(payload)
      .setProtectedHeader(header)
      .setUnprotectedHeader({ x5c: opts.chain ?? [der(leafCert), der(ca.cert)], 'io.cncf.notary.signingAgent': 'test' })
      .sign(leafKey, { crit: { 'io.cncf.notary.signingScheme': true, 'io.cncf.notary.expiry': true } });
    if (opts.tamper) signed.payload = Buffer.from(JSON.stringify({ targetArtifact: { ...target, size: 528 } })).toString('base64url');
    return Buffer.from(JSON.stringify(signed));
  }

  function authority(extra: Record<string, unknown> = {}): NotationAuthority {
    return loadTrust(
      configOf([{ name: 'notary', kind: 'notation', trustStore: [ca.cert], trustedIdentities: ['x509.subject: C=US, ST=WA, O=acme'], ...extra }]),
    ).authorities[0] as NotationAuthority;
  }

  const check = async (bytes: Buffer, a = authority()): Promise<Outcome> =>
    verifyNotation(parseNotationJws('test', bytes), a, target, { now: new Date(), log: () => {} });

  it('verifies integrity, chain, identity and times', async () => {
    const o = await check(await jws());
    expect(o).toMatchObject({ ok: true, tlog: false, identity: { subject: expect.stringContaining('CN=signer') as unknown } });
    expect((await check(await jws(), authority({ trustedIdentities: ['*'] }))).ok).toBe(true);
    expect((await check(await jws({ expiry: new Date(Date.now() + 60_000) }))).ok).toBe(true);
  });

  it('rejects each failure with its reason', async () => {
    expectReason(await check(await jws({ chain: [der(rogueLeafCert), der(rogue.cert)] })), 'UNTRUSTED_CHAIN', /^untrusted chain$/);
    expectReason(await check(await jws({ chain: [der(leafCert)] })), 'UNTRUSTED_CHAIN', /^untrusted chain$/);
    expectReason(
      await check(await jws(), authority({ trustedIdentities: ['x509.subject: C=US, ST=WA, O=other'] })),
      'IDENTITY_MISMATCH',
      /^identity mismatch \(subject "C=US, ST=WA, L=Seattle, O=acme, CN=signer"\)/,
    );
    expectReason(await check(await jws({ target: { ...target, digest: OTHER } })), 'DIGEST_MISMATCH', /^digest mismatch \(signed sha256:cdcd/);
    expectReason(await check(await jws({ target: { ...target, size: 1 } })), 'DIGEST_MISMATCH', /^digest mismatch \(signed media type/);
    expectReason(await check(await jws({ tamper: true })), 'INVALID_SIGNATURE', /^invalid signature/);
    expectReason(await check(await jws({ expiry: new Date(Date.now() - 1000) })), 'EXPIRED', /^expired \(signature expired at /);
    expect((await check(await jws({ expiry: new Date(Date.now() - 1000) }), authority({ expiry: 'log' }))).ok).toBe(true);
    expectReason(await check(await jws({ signingTime: new Date(Date.now() + 3_600_000) })), 'EXPIRED', /^expired \(signing time .* is in the future\)/);
    expectReason(
      await check(await jws({ signingTime: new Date(Date.now() - 90 * 86_400_000) })),
      'EXPIRED',
      /^expired \(certificate 0 was not valid at the signing time/,
    );
    await expect(jws({ alg: 'ES384' })).rejects.toThrow();
    // A critical header Notation does not define: refused as unsupported before the signature is even checked
    // (notation.ts checkCrit, for JWS and COSE alike; jose would refuse it too).
    const crit = JSON.parse((await jws()).toString()) as { protected: string };
    const header = JSON.parse(Buffer.from(crit.protected, 'base64url').toString()) as { crit: string[] };
    header.crit.push('io.example.unknown');
    const withUnknown = Buffer.from(
      JSON.stringify({ ...crit, protected: Buffer.from(JSON.stringify({ ...header, 'io.example.unknown': 1 })).toString('base64url') }),
    );
    expectReason(await check(withUnknown), 'UNSUPPORTED', /^unsupported critical header "io\.example\.unknown"$/);
  });
});

describe('accessory classification', () => {
  const img = (layers: string[], extra: Record<string, unknown> = {}): ParsedManifest =>
    manifestOf({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: `sha256:${hex('1')}`, size: 2 },
      layers: layers.map((mediaType, i) => ({ mediaType, digest: `sha256:${hex(String(i + 2))}`, size: 3 })),
      ...extra,
    }).parsed;
  const index = (entries: Array<Record<string, unknown>>): ParsedManifest =>
    manifestOf({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: entries.map((e, i) => ({ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: `sha256:${hex(String(i + 5))}`, size: 9, ...e })),
    }).parsed;
  const subject = { subject: { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: DIGEST, size: 1 } };

  it('signatures, attestations and referrers indexes are accessories', () => {
    expect(isAccessory(img(['application/vnd.dev.cosign.simplesigning.v1+json']), `sha256-${hex('ab')}.sig`)).toBe(true);
    expect(isAccessory(img(['application/vnd.dev.cosign.simplesigning.v1+json']), null)).toBe(true);
    expect(
      isAccessory(img(['application/vnd.dev.sigstore.bundle.v0.3+json'], { artifactType: 'application/vnd.dev.sigstore.bundle.v0.3+json', ...subject }), null),
    ).toBe(true);
    expect(isAccessory(img(['application/jose+json'], { artifactType: 'application/vnd.cncf.notary.signature', ...subject }), null)).toBe(true);
    expect(isAccessory(index([{ artifactType: 'application/vnd.cncf.notary.signature' }]), `sha256-${hex('ab')}`)).toBe(true);
  });

  it('nothing runnable is an accessory, whatever its tag, subject or artifact type', () => {
    const runnable = img(['application/vnd.oci.image.layer.v1.tar+gzip'], { artifactType: 'application/vnd.cncf.notary.signature', ...subject });
    expect(isRunnable(runnable)).toBe(true);
    expect(isAccessory(runnable, `sha256-${hex('ab')}.sig`)).toBe(false);
    expect(isAccessory(runnable, null)).toBe(false);
    expect(isAccessory(img(['application/vnd.docker.image.rootfs.diff.tar.gzip']), `sha256-${hex('ab')}.att`)).toBe(false);
    expect(isAccessory(index([{ platform: { os: 'linux', architecture: 'amd64' } }]), `sha256-${hex('ab')}`)).toBe(false);
    // An image by digest with no sign of being a signature is an image.
    expect(isAccessory(img(['application/vnd.example.unknown']), null)).toBe(false);
  });

  it('the gate classifies requests: a root by what it is and how it was asked for; an admitted root re-decided for another identity keeps its accessory kind only when nothing in it can run', () => {
    const sig = img(['application/vnd.example.unknown']);
    expect(rootKind(sig, `sha256-${hex('ab')}.sig`)).toBe('accessory');
    expect(rootKind(sig, null)).toBe('manifest');
    expect(rootKind(img(['application/vnd.oci.image.layer.v1.tar']), `sha256-${hex('ab')}.sig`)).toBe('manifest');
    expect(admittedRootKind(sig)).toBe('accessory');
    expect(admittedRootKind(img(['application/vnd.oci.image.layer.v1.tar']))).toBe('manifest');
  });

  it('a runnable manifest reached through a referrers index gets its own decision', () => {
    const refIndex = index([{ artifactType: 'application/vnd.dev.sigstore.bundle.v0.3+json' }]);
    expect(needsOwnDecision(refIndex, img(['application/vnd.oci.image.layer.v1.tar']))).toBe(true);
    expect(needsOwnDecision(refIndex, img(['application/vnd.dev.sigstore.bundle.v0.3+json']))).toBe(false);
    expect(needsOwnDecision(index([{ platform: { os: 'linux', architecture: 'amd64' } }]), img(['application/vnd.oci.image.layer.v1.tar']))).toBe(false);
  });
});
