/**
 * e2e: signatures made by the real signers, verified by Portcullis at pull time, pulled by real clients.
 *
 * Signers (scripts/install-tools.sh): cosign 2.6 (`cosign2`, legacy `.sig`/`.att` tags), cosign 3.1 (`cosign3`,
 * Sigstore bundle v0.3 referrers), notation 1.3 (JWS referrers). Keyless signing goes to a local Fulcio and Rekor
 * (test/harness/signature-sigstore.ts, built on @sigstore/mock) with `--fulcio-url --rekor-url --identity-token`;
 * the proxy verifies with a trusted_root.json made from that instance's keys, offline.
 *
 * Two upstreams, both through one proxy:
 *   dist  CNCF Distribution 2.8: no referrers API, so cosign 3 and notation push the referrers tag schema
 *         (`sha256-<hex>` index) and Portcullis falls back to it;
 *   ref   the fake upstream WITH the referrers API, holding a copy of what the signers pushed to Distribution
 *         (tag-schema indexes left out, so referrers are found through the API only).
 *
 * Repositories and the authorities their policy scope requires:
 *   key/*      "release" (cosign key k1)       keyless/*  "ci" (keyless: issuer + anchored subject regexp)
 *   notary/*   "notary" (Notation trust store, subject DN)
 *
 * Denied, each with its reason in the client's error: unsigned (no signature found); another key (key mismatch);
 * keyless with another subject or issuer (identity mismatch); a certificate from another Fulcio (untrusted
 * chain); a payload changed after signing (tampered payload); a valid signature or bundle of another image
 * (digest mismatch); a Notation certificate outside the trust store (untrusted chain); an expired Notation
 * signature (expired). Each rejection also carries its stable code in the policy input (KEY_MISMATCH, DIGEST_MISMATCH,
 * IDENTITY_MISMATCH, UNTRUSTED_CHAIN, INVALID_SIGNATURE, EXPIRED). A cosign 3 attestation by the trusted key, dressed
 * as a signature (signature artifact type, predicateType annotation cosign/sign/v1), is not one. Admitted images are pulled whole with skopeo (dist) and crane (ref), and `cosign verify`,
 * `cosign verify-attestation` (2 and 3) and `notation verify` pointed at the proxy succeed for them.
 *
 * A docker reference cannot carry a port inside its path, so the upstreams get port-less aliases for the prefix
 * routing: `<proxy>/dist.e2e/<repo>` and `<proxy>/ref.e2e/<repo>`.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DecisionObserver } from '../../src/gate/gate.js';
import type { SignatureCode } from '../../src/policy/codes.js';
import { crane, cranePull, expectOk, runTool, skopeoCopy, type ToolResult } from '../harness/clients.js';
import { startFakeUpstream, type FakeUpstream } from '../harness/fake-upstream.js';
import { MANIFEST_ACCEPT, pushBlob, pushImage, pushRaw, sha256, type PushedImage } from '../harness/images.js';
import { startProxy, type RunningProxy } from '../harness/proxy.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';
import { startLocalSigstore, type LocalSigstore } from '../harness/signature-sigstore.js';

const ISSUER = 'https://token.actions.githubusercontent.com';
const SUBJECT = 'https://github.com/acme/app/.github/workflows/release.yml@refs/heads/main';
const VULN = 'https://cosign.sigstore.dev/attestation/vuln/v1';

let reg: RunningRegistry;
let fake: FakeUpstream;
let ss: LocalSigstore;
let rogue: LocalSigstore;
let proxy: RunningProxy;
let work: string;
let env: NodeJS.ProcessEnv;
const img: Record<string, PushedImage> = {};
const decisions: Array<Parameters<DecisionObserver['onDecision']>[0]> = [];
/** When the notation signature of notary/app:expired expires. */
let expiresAt = 0;

const at = (name: string): string => `${reg.host}/${name}@${img[name]!.digest}`;
const viaProxy = (upstream: 'dist' | 'ref', name: string, tag: string): string =>
  `${proxy.host}/${upstream}.e2e/${name.slice(0, name.lastIndexOf(':'))}:${tag}`;

async function tool(cmd: string, args: string[], what = `${cmd} ${args[0]}`, extraEnv: NodeJS.ProcessEnv = {}): Promise<ToolResult> {
  return expectOk(await runTool(cmd, args, { env: { ...env, ...extraEnv }, cwd: work, timeoutMs: 60_000 }), what);
}

/** cosign's overrides of the TUF-provided keys, for one local Sigstore instance. */
const sigstoreEnv = (s: LocalSigstore): NodeJS.ProcessEnv => ({
  SIGSTORE_CT_LOG_PUBLIC_KEY_FILE: s.files.ctlogKey,
  SIGSTORE_ROOT_FILE: s.files.fulcioRoot,
  SIGSTORE_REKOR_PUBLIC_KEY: s.files.rekorKey,
});

const insecure = ['--allow-insecure-registry', '--allow-http-registry'];

/** cosign 2: legacy `.sig` manifest; by key without Rekor, or keyless through the local Fulcio/Rekor. */
async function cosign2Sign(name: string, opts: { key?: string; subject?: string; issuer?: string; sigstore?: LocalSigstore } = {}): Promise<void> {
  const target = at(name);
  if (opts.key) {
    await tool('cosign2', ['sign', '--key', opts.key, '--tlog-upload=false', ...insecure, '-y', target]);
    return;
  }
  const s = opts.sigstore ?? ss;
  const token = await s.token(opts.subject ?? SUBJECT, opts.issuer ?? ISSUER);
  await tool(
    'cosign2',
    ['sign', '--fulcio-url', s.url, '--rekor-url', s.url, '--identity-token', token, ...insecure, '-y', target],
    `cosign2 keyless sign ${name}`,
    sigstoreEnv(s),
  );
}

/**
 * cosign 3: a Sigstore bundle v0.3 referrer holding a DSSE in-toto statement (predicate cosign/sign/v1). No TUF here,
 * so no signing config: by key without Rekor, or keyless through the local Fulcio/Rekor with its trusted root.
 */
async function cosign3Sign(name: string, opts: { key?: string } = {}): Promise<void> {
  const target = at(name);
  if (opts.key) {
    await tool('cosign3', ['sign', '--key', opts.key, '--use-signing-config=false', '--tlog-upload=false', ...insecure, '-y', target]);
    return;
  }
  const token = await ss.token(SUBJECT, ISSUER);
  await tool(
    'cosign3',
    [
      'sign',
      '--use-signing-config=false',
      '--fulcio-url',
      ss.url,
      '--rekor-url',
      ss.url,
      '--identity-token',
      token,
      '--trusted-root',
      ss.trustedRootPath,
      ...insecure,
      '-y',
      target,
    ],
    `cosign3 keyless sign ${name}`,
  );
}

/** Every manifest and blob of a repository, from Distribution into the fake (minus the referrers tag-schema tags). */
async function mirror(repo: string): Promise<void> {
  const tags = ((await (await fetch(`${reg.url}/v2/${repo}/tags/list`)).json()) as { tags: string[] }).tags;
  const seen = new Set<string>();
  const copy = async (ref: string, tag: string | undefined): Promise<void> => {
    const res = await fetch(`${reg.url}/v2/${repo}/manifests/${ref}`, { headers: { accept: MANIFEST_ACCEPT } });
    if (res.status !== 200) throw new Error(`mirror ${repo}:${ref}: HTTP ${res.status}`);
    const bytes = Buffer.from(await res.arrayBuffer());
    const digest = fake.addManifest(repo, tag, bytes, res.headers.get('content-type')!);
    if (seen.has(digest)) return;
    seen.add(digest);
    const doc = JSON.parse(bytes.toString()) as { manifests?: Array<{ digest: string }>; config?: { digest: string }; layers?: Array<{ digest: string }> };
    for (const m of doc.manifests ?? []) await copy(m.digest, undefined);
    for (const b of [...(doc.config ? [doc.config] : []), ...(doc.layers ?? [])]) {
      const blob = await fetch(`${reg.url}/v2/${repo}/blobs/${b.digest}`);
      fake.addBlob(repo, Buffer.from(await blob.arrayBuffer()));
    }
  };
  for (const t of tags) await copy(t, /^sha256-[0-9a-f]{64}$/.test(t) ? undefined : t);
}

/** The manifest a tag names on Distribution. */
async function manifestAt(repo: string, ref: string): Promise<{ bytes: Buffer; type: string; doc: Record<string, unknown> }> {
  const res = await fetch(`${reg.url}/v2/${repo}/manifests/${ref}`, { headers: { accept: MANIFEST_ACCEPT } });
  if (res.status !== 200) throw new Error(`${repo}:${ref}: HTTP ${res.status}`);
  const bytes = Buffer.from(await res.arrayBuffer());
  return { bytes, type: res.headers.get('content-type')!, doc: JSON.parse(bytes.toString()) as Record<string, unknown> };
}

const sigTag = (digest: string): string => `sha256-${digest.slice(7)}.sig`;

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'pc-sig-e2e-'));
  env = {
    ...process.env,
    HOME: work,
    TUF_ROOT: path.join(work, 'tuf'),
    COSIGN_PASSWORD: '',
    XDG_CONFIG_HOME: path.join(work, 'config'),
    DOCKER_CONFIG: path.join(work, 'docker'),
  };
  [reg, fake, ss, rogue] = await Promise.all([
    startRegistry(),
    startFakeUpstream({ referrers: true, strictAccept: true }),
    startLocalSigstore(),
    startLocalSigstore(),
  ]);

  await tool('cosign2', ['generate-key-pair', '--output-key-prefix', 'k1']);
  await tool('cosign2', ['generate-key-pair', '--output-key-prefix', 'k2']);

  const names = [
    'key/app:signed',
    'key/app:unsigned',
    'key/app:otherkey',
    'key/app:copied',
    'keyless/app:signed',
    'keyless/app:wrongid',
    'keyless/app:wrongiss',
    'keyless/app:untrusted',
    'keyless/app:tampered',
    'key/bundle:signed',
    'key/bundle:otherkey',
    'key/bundle:copied',
    'key/bundle:attonly',
    'keyless/bundle:signed',
    'notary/app:signed',
    'notary/app:untrusted',
    'notary/app:expired',
  ];
  for (const n of names) {
    const [repo, tag] = n.split(':') as [string, string];
    img[n] = await pushImage(reg.url, repo, tag);
  }

  // cosign 2, legacy format.
  await cosign2Sign('key/app:signed', { key: 'k1.key' });
  await tool('cosign2', [
    'attest',
    '--key',
    'k1.key',
    '--type',
    'vuln',
    '--predicate',
    await writeVulnPredicate(),
    '--tlog-upload=false',
    ...insecure,
    '-y',
    at('key/app:signed'),
  ]);
  await cosign2Sign('key/app:otherkey', { key: 'k2.key' });
  await cosign2Sign('keyless/app:signed');
  await cosign2Sign('keyless/app:wrongid', { subject: 'https://github.com/evil/app/.github/workflows/release.yml@refs/heads/main' });
  await cosign2Sign('keyless/app:wrongiss', { issuer: 'https://accounts.google.com' });
  await cosign2Sign('keyless/app:untrusted', { sigstore: rogue });
  await cosign2Sign('keyless/app:tampered');

  // A valid signature of key/app:signed, copied to key/app:copied's signature tag.
  const signedSig = await manifestAt('key/app', sigTag(img['key/app:signed']!.digest));
  await pushRaw(reg.url, 'key/app', sigTag(img['key/app:copied']!.digest), signedSig.bytes, signedSig.type);

  // keyless/app:tampered: the payload is changed after signing (same signature, certificate and Rekor bundle).
  const t = await manifestAt('keyless/app', sigTag(img['keyless/app:tampered']!.digest));
  const layer = (t.doc.layers as Array<{ digest: string; size: number }>)[0]!;
  const payload = Buffer.from(await (await fetch(`${reg.url}/v2/keyless/app/blobs/${layer.digest}`)).arrayBuffer());
  const changed = Buffer.from(payload.toString().replace('"optional":null', '"optional":{"tampered":"yes"}'));
  expect(changed.equals(payload)).toBe(false);
  const blob = await pushBlob(reg.url, 'keyless/app', changed);
  Object.assign(layer, blob);
  await pushRaw(reg.url, 'keyless/app', sigTag(img['keyless/app:tampered']!.digest), Buffer.from(JSON.stringify(t.doc)), t.type);

  // cosign 3, Sigstore bundles as referrers (Distribution keeps them in the sha256-<hex> tag-schema index).
  await cosign3Sign('key/bundle:signed', { key: 'k1.key' });
  await tool('cosign3', [
    'attest',
    '--key',
    'k1.key',
    '--type',
    'vuln',
    '--predicate',
    await writeVulnPredicate(),
    '--use-signing-config=false',
    '--tlog-upload=false',
    ...insecure,
    '-y',
    at('key/bundle:signed'),
  ]);
  await cosign3Sign('key/bundle:otherkey', { key: 'k2.key' });
  await cosign3Sign('keyless/bundle:signed');
  // key/bundle:signed's signature bundle, attached to key/bundle:copied (a referrer whose subject is copied, whose
  // signed statement names signed), and listed in copied's tag-schema index.
  const signedIndex = await manifestAt('key/bundle', `sha256-${img['key/bundle:signed']!.digest.slice(7)}`);
  const sigEntries = await Promise.all(
    (signedIndex.doc.manifests as Array<{ digest: string }>).map(async (d) => ({ d, m: await manifestAt('key/bundle', d.digest) })),
  );
  const signature = sigEntries.find(
    (e) => (e.m.doc.annotations as Record<string, string>)['dev.sigstore.bundle.predicateType'] === 'https://sigstore.dev/cosign/sign/v1',
  )!;
  const copied = img['key/bundle:copied']!;
  const moved = Buffer.from(
    JSON.stringify({ ...signature.m.doc, subject: { mediaType: copied.manifestMediaType, digest: copied.digest, size: copied.manifest.length } }),
  );
  const movedDigest = await pushRaw(reg.url, 'key/bundle', sha256(moved), moved, signature.m.type);
  const copiedIndex = {
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.index.v1+json',
    manifests: [{ mediaType: signature.m.type, digest: movedDigest, size: moved.length, artifactType: 'application/vnd.dev.sigstore.bundle.v0.3+json' }],
  };
  await pushRaw(reg.url, 'key/bundle', `sha256-${copied.digest.slice(7)}`, Buffer.from(JSON.stringify(copiedIndex)), 'application/vnd.oci.image.index.v1+json');

  // key/bundle:attonly: only an attestation, by the trusted key, dressed as a signature: its referrer manifest and
  // index entry carry the signature's artifact type and say predicateType cosign/sign/v1. Its payload does not.
  await tool('cosign3', [
    'attest',
    '--key',
    'k1.key',
    '--type',
    'vuln',
    '--predicate',
    await writeVulnPredicate(),
    '--use-signing-config=false',
    '--tlog-upload=false',
    ...insecure,
    '-y',
    at('key/bundle:attonly'),
  ]);
  const attonly = img['key/bundle:attonly']!;
  const attIndex = await manifestAt('key/bundle', `sha256-${attonly.digest.slice(7)}`);
  const attEntries = attIndex.doc.manifests as Array<{ digest: string }>;
  expect(attEntries).toHaveLength(1);
  const att = await manifestAt('key/bundle', attEntries[0]!.digest);
  expect((att.doc.annotations as Record<string, string>)['dev.sigstore.bundle.predicateType']).toBe(VULN);
  const signAnnotations = { ...(att.doc.annotations as Record<string, string>), 'dev.sigstore.bundle.predicateType': 'https://sigstore.dev/cosign/sign/v1' };
  const dressed = Buffer.from(JSON.stringify({ ...att.doc, artifactType: 'application/vnd.dev.sigstore.bundle.v0.3+json', annotations: signAnnotations }));
  const dressedDigest = await pushRaw(reg.url, 'key/bundle', sha256(dressed), dressed, att.type);
  const dressedIndex = {
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.index.v1+json',
    manifests: [
      {
        mediaType: att.type,
        digest: dressedDigest,
        size: dressed.length,
        artifactType: 'application/vnd.dev.sigstore.bundle.v0.3+json',
        annotations: signAnnotations,
      },
    ],
  };
  await pushRaw(
    reg.url,
    'key/bundle',
    `sha256-${attonly.digest.slice(7)}`,
    Buffer.from(JSON.stringify(dressedIndex)),
    'application/vnd.oci.image.index.v1+json',
  );

  // notation: JWS referrers (tag schema on Distribution). `acme` is trusted; `rogue` is a test certificate the proxy
  // does not trust; the third signature expires two seconds after signing.
  await tool('notation', ['cert', 'generate-test', '--default', 'acme']);
  await tool('notation', ['cert', 'generate-test', 'rogue']);
  await tool('notation', ['sign', '--insecure-registry', at('notary/app:signed')]);
  await tool('notation', ['sign', '--insecure-registry', '--key', 'rogue', at('notary/app:untrusted')]);
  await tool('notation', ['sign', '--insecure-registry', '--expiry', '2s', at('notary/app:expired')]);
  expiresAt = Date.now() + 2_000;
  // notation 1.3 reads trustpolicy.json (later releases also trustpolicy.oci.json).
  const trustPolicy = JSON.stringify({
    version: '1.0',
    trustPolicies: [{ name: 'acme', registryScopes: ['*'], signatureVerification: { level: 'strict' }, trustStores: ['ca:acme'], trustedIdentities: ['*'] }],
  });
  for (const f of ['trustpolicy.json', 'trustpolicy.oci.json']) await writeFile(path.join(work, 'config/notation', f), trustPolicy);

  for (const repo of ['key/app', 'keyless/app', 'key/bundle', 'keyless/bundle', 'notary/app']) await mirror(repo);

  proxy = await startProxy({
    upstreams: [
      { name: 'dist', registry: reg.host, url: reg.url, aliases: ['dist.e2e'] },
      { name: 'ref', registry: fake.host, url: fake.url, aliases: ['ref.e2e'] },
    ],
    settings: {
      no_match: 'deny',
      scopes: [
        { name: 'key', images: ['*/key/**'], signatures: { authorities: ['release'] } },
        { name: 'keyless', images: ['*/keyless/**'], signatures: { authorities: ['ci'] } },
        { name: 'notary', images: ['*/notary/**'], signatures: { authorities: ['notary'] } },
        { name: 'open', images: ['**'] },
      ],
    },
    extra: {
      signatures: {
        authorities: [
          { name: 'release', kind: 'key', key: path.join(work, 'k1.pub') },
          {
            name: 'ci',
            kind: 'keyless',
            issuer: ISSUER,
            subjectRegExp: 'https://github\\.com/acme/[^/]+/\\.github/workflows/.+',
            trustedRoot: ss.trustedRootPath,
          },
          {
            name: 'notary',
            kind: 'notation',
            trustStore: [path.join(work, 'config/notation/localkeys/acme.crt')],
            trustedIdentities: ['x509.subject: C=US, ST=WA, L=Seattle, O=Notary, CN=acme'],
          },
        ],
      },
    },
    observers: [{ onDecision: (e) => decisions.push(e) }],
  });
}, 240_000);

afterAll(async () => {
  await proxy?.stop();
  await Promise.all([reg?.stop(), fake?.stop(), ss?.stop(), rogue?.stop()]);
  if (work) await rm(work, { recursive: true, force: true });
});

async function writeVulnPredicate(): Promise<string> {
  const p = path.join(work, 'vuln.json');
  const now = new Date().toISOString();
  await writeFile(
    p,
    JSON.stringify({
      invocation: { parameters: null, uri: '', event_id: '', 'builder.id': '' },
      scanner: { uri: 'pkg:github/aquasecurity/trivy@0.50.1', version: '0.50.1', db: { uri: '', version: '' }, result: { SchemaVersion: 2, Results: [] } },
      metadata: { scanStartedOn: now, scanFinishedOn: now },
    }),
  );
  return p;
}

/** The last decision for a digest. */
function decisionFor(digest: string): Parameters<DecisionObserver['onDecision']>[0] | undefined {
  return decisions.filter((d) => d.input.image.digest === digest && d.input.request.kind === 'manifest').at(-1);
}

/** A whole pull through the proxy: skopeo from Distribution, crane from the referrers-API upstream. */
async function expectAllowed(upstream: 'dist' | 'ref', name: string): Promise<void> {
  const dest = path.join(work, `pull-${upstream}-${name.replace(/[/:]/g, '_')}`);
  const ref = viaProxy(upstream, name, name.split(':')[1]!);
  const r = upstream === 'dist' ? await skopeoCopy(`docker://${ref}`, dest) : await cranePull(ref, dest, { format: 'oci' });
  expect(r.code, r.stderr).toBe(0);
  const d = decisionFor(img[name]!.digest);
  expect(d?.admission.outcome).toBe('allow');
}

async function expectDenied(upstream: 'dist' | 'ref', name: string, message: RegExp, code?: { authority: string; code: SignatureCode }): Promise<void> {
  const r = await crane(['manifest', '--insecure', viaProxy(upstream, name, name.split(':')[1]!)]);
  expect(r.code, r.stdout).not.toBe(0);
  expect(r.stderr).toMatch(/DENIED/);
  expect(r.stderr).toMatch(message);
  // The policy input carries the stable code of the rejection beside its reason.
  if (code) expect(decisionFor(img[name]!.digest)?.input.signatures.rejected).toContainEqual(expect.objectContaining(code));
}

describe.each(['dist', 'ref'] as const)('cosign 2 legacy signatures through upstream %s', (up) => {
  it('admits the image signed with the required key, and hands its attestation to the policy', async () => {
    await expectAllowed(up, 'key/app:signed');
    const d = decisionFor(img['key/app:signed']!.digest)!;
    expect(d.input.signatures).toMatchObject({ status: 'ok', verified: [{ authority: 'release', kind: 'cosign-key', format: 'cosign-legacy', tlog: false }] });
    expect(d.input.attestations).toEqual([
      expect.objectContaining({
        predicate_type: VULN,
        authority: 'release',
        predicate: expect.objectContaining({ scanner: expect.objectContaining({ version: '0.50.1' }) as unknown }) as unknown,
      }),
    ]);
  });

  it('admits a keyless signature from the configured identity', async () => {
    await expectAllowed(up, 'keyless/app:signed');
    expect(decisionFor(img['keyless/app:signed']!.digest)!.input.signatures.verified).toEqual([
      expect.objectContaining({ authority: 'ci', kind: 'cosign-keyless', format: 'cosign-legacy', tlog: true, identity: { issuer: ISSUER, subject: SUBJECT } }),
    ]);
  });

  it('cosign 2 verify and verify-attestation pointed at the proxy succeed for the admitted images', async () => {
    const key = await tool('cosign2', ['verify', '--key', 'k1.pub', '--insecure-ignore-tlog', ...insecure, viaProxy(up, 'key/app:signed', 'signed')]);
    expect(key.stdout).toContain(img['key/app:signed']!.digest);
    await tool('cosign2', [
      'verify-attestation',
      '--key',
      'k1.pub',
      '--type',
      'vuln',
      '--insecure-ignore-tlog',
      ...insecure,
      viaProxy(up, 'key/app:signed', 'signed'),
    ]);
    const keyless = await tool('cosign2', [
      'verify',
      '--trusted-root',
      ss.trustedRootPath,
      '--certificate-identity',
      SUBJECT,
      '--certificate-oidc-issuer',
      ISSUER,
      ...insecure,
      viaProxy(up, 'keyless/app:signed', 'signed'),
    ]);
    expect(keyless.stdout).toContain(img['keyless/app:signed']!.digest);
  });

  it('denies each bad signature with its reason', async () => {
    await expectDenied(up, 'key/app:unsigned', /signature required by authority "release" \(no signature found\)/);
    expect(decisionFor(img['key/app:unsigned']!.digest)!.input.signatures).toEqual({ status: 'none', verified: [], rejected: [] });
    const release = (code: SignatureCode) => ({ authority: 'release', code });
    const ci = (code: SignatureCode) => ({ authority: 'ci', code });
    await expectDenied(up, 'key/app:otherkey', /signature required by authority "release" \(no signature verified: key mismatch\)/, release('KEY_MISMATCH'));
    await expectDenied(up, 'key/app:copied', /authority "release" \(no signature verified: digest mismatch \(signed sha256:/, release('DIGEST_MISMATCH'));
    await expectDenied(
      up,
      'keyless/app:wrongid',
      /authority "ci" \(no signature verified: identity mismatch \(subject "https:\/\/github\.com\/evil\//,
      ci('IDENTITY_MISMATCH'),
    );
    await expectDenied(
      up,
      'keyless/app:wrongiss',
      /authority "ci" \(no signature verified: identity mismatch \(.*issuer "https:\/\/accounts\.google\.com"/,
      ci('IDENTITY_MISMATCH'),
    );
    await expectDenied(up, 'keyless/app:untrusted', /authority "ci" \(no signature verified: untrusted chain\)/, ci('UNTRUSTED_CHAIN'));
    await expectDenied(up, 'keyless/app:tampered', /authority "ci" \(no signature verified: tampered payload/, ci('INVALID_SIGNATURE'));
  });
});

describe.each(['dist', 'ref'] as const)('cosign 3 Sigstore bundles through upstream %s', (up) => {
  it('admits the image whose bundle verifies with the required key, with its bundle attestation', async () => {
    await expectAllowed(up, 'key/bundle:signed');
    const d = decisionFor(img['key/bundle:signed']!.digest)!;
    expect(d.input.signatures.verified).toEqual([expect.objectContaining({ authority: 'release', kind: 'cosign-key', format: 'sigstore-bundle' })]);
    expect(d.input.attestations).toEqual([expect.objectContaining({ predicate_type: VULN, authority: 'release' })]);
  });

  it('admits a keyless bundle (Fulcio certificate, SCT and Rekor entry verified offline)', async () => {
    await expectAllowed(up, 'keyless/bundle:signed');
    expect(decisionFor(img['keyless/bundle:signed']!.digest)!.input.signatures.verified).toEqual([
      expect.objectContaining({
        authority: 'ci',
        kind: 'cosign-keyless',
        format: 'sigstore-bundle',
        tlog: true,
        identity: { issuer: ISSUER, subject: SUBJECT },
      }),
    ]);
  });

  it('cosign 3 verify and verify-attestation pointed at the proxy succeed', async () => {
    const key = await tool('cosign3', ['verify', '--key', 'k1.pub', '--insecure-ignore-tlog', ...insecure, viaProxy(up, 'key/bundle:signed', 'signed')]);
    expect(key.stdout).toContain(img['key/bundle:signed']!.digest);
    await tool('cosign3', [
      'verify-attestation',
      '--key',
      'k1.pub',
      '--type',
      'vuln',
      '--insecure-ignore-tlog',
      ...insecure,
      viaProxy(up, 'key/bundle:signed', 'signed'),
    ]);
    const keyless = await tool('cosign3', [
      'verify',
      '--trusted-root',
      ss.trustedRootPath,
      '--certificate-identity',
      SUBJECT,
      '--certificate-oidc-issuer',
      ISSUER,
      ...insecure,
      viaProxy(up, 'keyless/bundle:signed', 'signed'),
    ]);
    expect(keyless.stdout).toContain(img['keyless/bundle:signed']!.digest);
  });

  it('denies another key and a bundle copied from another image', async () => {
    await expectDenied(up, 'key/bundle:otherkey', /signature required by authority "release" \(no signature verified: key mismatch\)/, {
      authority: 'release',
      code: 'KEY_MISMATCH',
    });
    await expectDenied(up, 'key/bundle:copied', /authority "release" \(no signature verified: digest mismatch \(signed sha256:/, {
      authority: 'release',
      code: 'DIGEST_MISMATCH',
    });
  });

  it('an attestation bundle is never a signature, whatever its artifact type and annotations say', async () => {
    // Signed by the required key and bound to this digest: counted as a signature, it would admit the image.
    await expectDenied(up, 'key/bundle:attonly', /signature required by authority "release" \(no signature found\)/);
    const d = decisionFor(img['key/bundle:attonly']!.digest)!;
    // Nothing of the signature kind was found (status none: the NO_SIGNATURE outcome), and the bundle verified as
    // what it is, an attestation.
    expect(d.input.signatures).toEqual({ status: 'none', verified: [], rejected: [] });
    expect(d.input.attestations).toEqual([expect.objectContaining({ predicate_type: VULN, authority: 'release' })]);
  });
});

describe.each(['dist', 'ref'] as const)('notation signatures through upstream %s', (up) => {
  it('admits the image signed by the trusted certificate and identity', async () => {
    await expectAllowed(up, 'notary/app:signed');
    expect(decisionFor(img['notary/app:signed']!.digest)!.input.signatures.verified).toEqual([
      expect.objectContaining({
        authority: 'notary',
        kind: 'notation',
        format: 'notation-jws',
        identity: expect.objectContaining({ subject: 'C=US, ST=WA, L=Seattle, O=Notary, CN=acme' }) as unknown,
      }),
    ]);
  });

  it('notation verify pointed at the proxy succeeds', async () => {
    const r = await tool('notation', ['verify', '--insecure-registry', `${proxy.host}/${up}.e2e/notary/app@${img['notary/app:signed']!.digest}`]);
    expect(r.stdout + r.stderr).toMatch(/Successfully verified signature/);
  });

  it('denies a chain to an untrusted root, and an expired signature', async () => {
    await expectDenied(up, 'notary/app:untrusted', /signature required by authority "notary" \(no signature verified: untrusted chain\)/, {
      authority: 'notary',
      code: 'UNTRUSTED_CHAIN',
    });
    await new Promise((r) => setTimeout(r, Math.max(0, expiresAt + 500 - Date.now())));
    await expectDenied(up, 'notary/app:expired', /signature required by authority "notary" \(no signature verified: expired \(signature expired at /, {
      authority: 'notary',
      code: 'EXPIRED',
    });
  });
});
