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
 * A docker reference cannot carry a port inside its path, so the upstreams get port-less aliases for the prefix
 * routing: `<proxy>/dist.e2e/<repo>` and `<proxy>/ref.e2e/<repo>`.
 */
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DecisionObserver } from '../../src/gate/gate.js';
import { crane, cranePull, expectOk, runTool, skopeoCopy, type ToolResult } from '../harness/clients.js';
import { startFakeUpstream, type FakeUpstream } from '../harness/fake-upstream.js';
import { MANIFEST_ACCEPT, pushBlob, pushImage, pushRaw, type PushedImage } from '../harness/images.js';
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

const at = (name: string): string => `${reg.host}/${name}@${img[name]!.digest}`;
const viaProxy = (upstream: 'dist' | 'ref', name: string, tag: string): string => `${proxy.host}/${upstream}.e2e/${name.slice(0, name.lastIndexOf(':'))}:${tag}`;

async function tool(cmd: string, args: string[], what = `${cmd} ${args[0]}`, extraEnv: NodeJS.ProcessEnv = {}): Promise<ToolResult> {
  return expectOk(await runTool(cmd, args, { env: { ...env, ...extraEnv }, cwd: work, timeoutMs: 60_000 }), what);
}

/** cosign's overrides of the TUF-provided keys, for one local Sigstore instance. */
const sigstoreEnv = (s: LocalSigstore): NodeJS.ProcessEnv => ({ SIGSTORE_CT_LOG_PUBLIC_KEY_FILE: s.files.ctlogKey, SIGSTORE_ROOT_FILE: s.files.fulcioRoot, SIGSTORE_REKOR_PUBLIC_KEY: s.files.rekorKey });

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
  await tool('cosign2', ['sign', '--fulcio-url', s.url, '--rekor-url', s.url, '--identity-token', token, ...insecure, '-y', target], `cosign2 keyless sign ${name}`, sigstoreEnv(s));
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
  env = { ...process.env, HOME: work, TUF_ROOT: path.join(work, 'tuf'), COSIGN_PASSWORD: '', XDG_CONFIG_HOME: path.join(work, 'config'), DOCKER_CONFIG: path.join(work, 'docker') };
  [reg, fake, ss, rogue] = await Promise.all([startRegistry(), startFakeUpstream({ referrers: true, strictAccept: true }), startLocalSigstore(), startLocalSigstore()]);

  await tool('cosign2', ['generate-key-pair', '--output-key-prefix', 'k1']);
  await tool('cosign2', ['generate-key-pair', '--output-key-prefix', 'k2']);

  const names = ['key/app:signed', 'key/app:unsigned', 'key/app:otherkey', 'key/app:copied', 'keyless/app:signed', 'keyless/app:wrongid', 'keyless/app:wrongiss', 'keyless/app:untrusted', 'keyless/app:tampered'];
  for (const n of names) {
    const [repo, tag] = n.split(':') as [string, string];
    img[n] = await pushImage(reg.url, repo, tag);
  }

  // cosign 2, legacy format.
  await cosign2Sign('key/app:signed', { key: 'k1.key' });
  await tool('cosign2', ['attest', '--key', 'k1.key', '--type', 'vuln', '--predicate', await writeVulnPredicate(), '--tlog-upload=false', ...insecure, '-y', at('key/app:signed')]);
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

  for (const repo of ['key/app', 'keyless/app']) await mirror(repo);

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
        // NOTARY_SCOPE
        { name: 'open', images: ['**'] },
      ],
    },
    extra: {
      signatures: {
        authorities: [
          { name: 'release', kind: 'key', key: path.join(work, 'k1.pub') },
          { name: 'ci', kind: 'keyless', issuer: ISSUER, subjectRegExp: 'https://github\\.com/acme/[^/]+/\\.github/workflows/.+', trustedRoot: ss.trustedRootPath },
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
  await writeFile(p, JSON.stringify({
    invocation: { parameters: null, uri: '', event_id: '', 'builder.id': '' },
    scanner: { uri: 'pkg:github/aquasecurity/trivy@0.50.1', version: '0.50.1', db: { uri: '', version: '' }, result: { SchemaVersion: 2, Results: [] } },
    metadata: { scanStartedOn: now, scanFinishedOn: now },
  }));
  return p;
}

/** The last decision for a digest. */
function decisionFor(digest: string): Parameters<DecisionObserver['onDecision']>[0] | undefined {
  return decisions.filter((d) => d.input.image.digest === digest && d.input.request.kind === 'manifest').at(-1);
}

async function expectAllowed(upstream: 'dist' | 'ref', name: string): Promise<void> {
  const dest = path.join(work, `pull-${upstream}-${name.replace(/[/:]/g, '_')}`);
  const r = await cranePull(viaProxy(upstream, name, name.split(':')[1]!), dest, { format: 'oci' });
  expect(r.code, r.stderr).toBe(0);
  const d = decisionFor(img[name]!.digest);
  expect(d?.admission.outcome).toBe('allow');
}

async function expectDenied(upstream: 'dist' | 'ref', name: string, message: RegExp): Promise<void> {
  const r = await crane(['manifest', '--insecure', viaProxy(upstream, name, name.split(':')[1]!)]);
  expect(r.code, r.stdout).not.toBe(0);
  expect(r.stderr).toMatch(/DENIED/);
  expect(r.stderr).toMatch(message);
}

describe.each(['dist', 'ref'] as const)('cosign 2 legacy signatures through upstream %s', (up) => {
  it('admits the image signed with the required key, and hands its attestation to the policy', async () => {
    await expectAllowed(up, 'key/app:signed');
    const d = decisionFor(img['key/app:signed']!.digest)!;
    expect(d.input.signatures).toMatchObject({ status: 'ok', verified: [{ authority: 'release', kind: 'cosign-key', format: 'cosign-legacy', tlog: false }] });
    expect(d.input.attestations).toEqual([expect.objectContaining({ predicate_type: VULN, authority: 'release', predicate: expect.objectContaining({ scanner: expect.objectContaining({ version: '0.50.1' }) }) })]);
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
    await tool('cosign2', ['verify-attestation', '--key', 'k1.pub', '--type', 'vuln', '--insecure-ignore-tlog', ...insecure, viaProxy(up, 'key/app:signed', 'signed')]);
    const keyless = await tool('cosign2', ['verify', '--trusted-root', ss.trustedRootPath, '--certificate-identity', SUBJECT, '--certificate-oidc-issuer', ISSUER, ...insecure, viaProxy(up, 'keyless/app:signed', 'signed')]);
    expect(keyless.stdout).toContain(img['keyless/app:signed']!.digest);
  });

  it('denies each bad signature with its reason', async () => {
    await expectDenied(up, 'key/app:unsigned', /signature required by authority "release" \(no signature found\)/);
    await expectDenied(up, 'key/app:otherkey', /signature required by authority "release" \(no signature verified: key mismatch\)/);
    await expectDenied(up, 'key/app:copied', /authority "release" \(no signature verified: digest mismatch \(signed sha256:/);
    await expectDenied(up, 'keyless/app:wrongid', /authority "ci" \(no signature verified: identity mismatch \(subject "https:\/\/github\.com\/evil\//);
    await expectDenied(up, 'keyless/app:wrongiss', /authority "ci" \(no signature verified: identity mismatch \(.*issuer "https:\/\/accounts\.google\.com"/);
    await expectDenied(up, 'keyless/app:untrusted', /authority "ci" \(no signature verified: untrusted chain\)/);
    await expectDenied(up, 'keyless/app:tampered', /authority "ci" \(no signature verified: tampered payload/);
  });
});
