/**
 * e2e: required attestations with conditions (issue 15 item 1), with attestations made by the real signers and
 * verified by Portcullis at pull time.
 *
 * Signers: cosign 2.6 (`cosign2 attest`: DSSE envelopes in the legacy `sha256-<hex>.att` tag) and cosign 3.1
 * (`cosign3 attest`: Sigstore bundle v0.3 referrers), key-signed with k1 (authority "release") or k2 (authority
 * "other", configured but not named by the scope). Predicates: `--type slsaprovenance` (SLSA v0.2),
 * `slsaprovenance1` (v1), `spdxjson`, `cyclonedx`.
 *
 * Upstreams, through one proxy: `dist` (CNCF Distribution: no referrers API, so cosign 3 writes the referrers tag
 * schema) and `ref` (the fake upstream WITH the referrers API, holding a copy of the same repositories).
 *
 * The scope requires, from "release": SLSA provenance (v0.2 or v1) whose builder id, source repository, ref and
 * build type match, and an SBOM (SPDX or CycloneDX). Per format, the positives (v0.2 + SPDX, v1 + CycloneDX) are
 * pulled whole; the negatives are denied with the rule and a reason that names the predicate and what failed:
 * the wrong builder, the wrong source repository and ref, no SBOM, provenance signed by an authority not named,
 * an attestation of another digest (copied from another image), and a predicate over the size bound.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DecisionObserver } from '../../src/gate/gate.js';
import { crane, cranePull, expectOk, runTool, skopeoCopy, type ToolResult } from '../harness/clients.js';
import { startFakeUpstream, type FakeUpstream } from '../harness/fake-upstream.js';
import { MANIFEST_ACCEPT, pushImage, pushRaw, sha256, type PushedImage } from '../harness/images.js';
import { startProxy, type RunningProxy } from '../harness/proxy.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';
import { startLocalSigstore, type LocalSigstore } from '../harness/signature-sigstore.js';

const BUILDER = 'https://github.com/slsa-framework/slsa-github-generator/.github/workflows/generator_container_slsa3.yml@refs/tags/v2.0.0';
const BUILD_TYPE_V02 = 'https://github.com/slsa-framework/slsa-github-generator/container@v1';
const BUILD_TYPE_V1 = 'https://slsa-framework.github.io/github-actions-buildtypes/workflow/v1';
const REPO = 'https://github.com/acme/app';
const SLSA_V02 = 'https://slsa.dev/provenance/v0.2';
const SLSA_V1 = 'https://slsa.dev/provenance/v1';
const ISSUER = 'https://token.actions.githubusercontent.com';
const SUBJECT = 'https://github.com/acme/app/.github/workflows/release.yml@refs/heads/main';
/** signatures.maxPredicateSize for this proxy: the oversized provenance is larger. */
const MAX_PREDICATE = 16 * 1024;

type Format = 'legacy' | 'bundle';
const REPOS: Record<Format, string> = { legacy: 'att/legacy', bundle: 'att/bundle' };
const CASES = ['good-v02', 'good-v1', 'wrong-builder', 'wrong-source', 'no-sbom', 'other-key', 'other-digest', 'oversized'] as const;
type Case = (typeof CASES)[number];

/** Keyless: attestations by the local Fulcio's certificates for the CI identity (authority "ci") or another one. */
const KEYLESS_REPOS: Record<Format, string> = { legacy: 'att/keyless-legacy', bundle: 'att/keyless-bundle' };
const KEYLESS_CASES = ['good', 'wrong-identity'] as const;
type KeylessCase = (typeof KEYLESS_CASES)[number];

let ss: LocalSigstore;
let reg: RunningRegistry;
let fake: FakeUpstream;
let proxy: RunningProxy;
let work: string;
let env: NodeJS.ProcessEnv;
const img: Record<string, PushedImage> = {};
const decisions: Array<Parameters<DecisionObserver['onDecision']>[0]> = [];

const nameOf = (f: Format, c: Case): string => `${REPOS[f]}:${c}`;
const at = (f: Format, c: Case): string => `${reg.host}/${REPOS[f]}@${img[nameOf(f, c)]!.digest}`;
const viaProxy = (upstream: 'dist' | 'ref', f: Format, c: Case): string => `${proxy.host}/${upstream}.e2e/${REPOS[f]}:${c}`;

async function tool(cmd: string, args: string[], what = `${cmd} ${args[0]}`, extraEnv: NodeJS.ProcessEnv = {}): Promise<ToolResult> {
  return expectOk(await runTool(cmd, args, { env: { ...env, ...extraEnv }, cwd: work, timeoutMs: 60_000 }), what);
}

/** `cosign attest` keyless, through the local Fulcio and Rekor, with an identity token for `subject`. */
async function attestKeyless(f: Format, c: KeylessCase, type: string, predicate: unknown, subject: string): Promise<void> {
  const file = path.join(work, `keyless-${f}-${c}-${type}.json`);
  await writeFile(file, JSON.stringify(predicate));
  const target = `${reg.host}/${KEYLESS_REPOS[f]}@${img[`${KEYLESS_REPOS[f]}:${c}`]!.digest}`;
  const token = await ss.token(subject, ISSUER);
  const common = ['attest', '--type', type, '--predicate', file, '--fulcio-url', ss.url, '--rekor-url', ss.url, '--identity-token', token, ...insecure, '-y'];
  if (f === 'legacy') {
    const sigstoreEnv = {
      SIGSTORE_CT_LOG_PUBLIC_KEY_FILE: ss.files.ctlogKey,
      SIGSTORE_ROOT_FILE: ss.files.fulcioRoot,
      SIGSTORE_REKOR_PUBLIC_KEY: ss.files.rekorKey,
    };
    await tool('cosign2', [...common, target], `cosign2 keyless attest ${type} ${c}`, sigstoreEnv);
  } else {
    await tool('cosign3', [...common, '--use-signing-config=false', '--trusted-root', ss.trustedRootPath, target], `cosign3 keyless attest ${type} ${c}`);
  }
}

const insecure = ['--allow-insecure-registry', '--allow-http-registry'];

/** One `cosign attest` by key, without a transparency log: cosign 2 writes the `.att` tag, cosign 3 a bundle referrer. */
async function attest(f: Format, c: Case, type: string, predicate: unknown, key = 'k1.key'): Promise<void> {
  const file = path.join(work, `${f}-${c}-${type}.json`);
  await writeFile(file, JSON.stringify(predicate));
  const common = ['attest', '--key', key, '--type', type, '--predicate', file, '--tlog-upload=false', ...insecure, '-y', at(f, c)];
  if (f === 'legacy') await tool('cosign2', common, `cosign2 attest ${type} ${c}`);
  else await tool('cosign3', [...common.slice(0, -1), '--use-signing-config=false', at(f, c)], `cosign3 attest ${type} ${c}`);
}

function provenanceV02(o: { builder?: string; repo?: string; ref?: string; pad?: number } = {}): unknown {
  return {
    builder: { id: o.builder ?? BUILDER },
    buildType: BUILD_TYPE_V02,
    invocation: {
      configSource: {
        uri: `git+${o.repo ?? REPO}@${o.ref ?? 'refs/heads/main'}`,
        digest: { sha1: 'b'.repeat(40) },
        entryPoint: '.github/workflows/release.yml',
      },
      parameters: o.pad ? { padding: 'x'.repeat(o.pad) } : {},
    },
    materials: [{ uri: `git+${o.repo ?? REPO}@${o.ref ?? 'refs/heads/main'}`, digest: { sha1: 'b'.repeat(40) } }],
  };
}

function provenanceV1(o: { builder?: string; repo?: string; ref?: string; pad?: number } = {}): unknown {
  return {
    buildDefinition: {
      buildType: BUILD_TYPE_V1,
      externalParameters: {
        workflow: { ref: o.ref ?? 'refs/heads/main', repository: o.repo ?? REPO, path: '.github/workflows/release.yml' },
        ...(o.pad ? { padding: 'x'.repeat(o.pad) } : {}),
      },
      resolvedDependencies: [{ uri: `git+${o.repo ?? REPO}@${o.ref ?? 'refs/heads/main'}`, digest: { gitCommit: 'b'.repeat(40) } }],
    },
    runDetails: { builder: { id: o.builder ?? BUILDER }, metadata: { invocationId: 'https://github.com/acme/app/actions/runs/1/attempts/1' } },
  };
}

const SPDX = {
  spdxVersion: 'SPDX-2.3',
  dataLicense: 'CC0-1.0',
  SPDXID: 'SPDXRef-DOCUMENT',
  name: 'app',
  documentNamespace: 'https://acme.example/spdx/app-1',
  creationInfo: { created: '2026-01-01T00:00:00Z', creators: ['Tool: syft'] },
  packages: [{ name: 'libfoo', SPDXID: 'SPDXRef-libfoo', versionInfo: '1.0', downloadLocation: 'NOASSERTION' }],
};
const CYCLONEDX = { bomFormat: 'CycloneDX', specVersion: '1.5', version: 1, components: [{ type: 'library', name: 'libfoo', version: '1.0' }] };

/** Every manifest and blob of a repository, from Distribution into the fake (tag-schema indexes untagged). */
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

async function manifestAt(repo: string, ref: string): Promise<{ bytes: Buffer; type: string; doc: Record<string, unknown> }> {
  const res = await fetch(`${reg.url}/v2/${repo}/manifests/${ref}`, { headers: { accept: MANIFEST_ACCEPT } });
  if (res.status !== 200) throw new Error(`${repo}:${ref}: HTTP ${res.status}`);
  const bytes = Buffer.from(await res.arrayBuffer());
  return { bytes, type: res.headers.get('content-type')!, doc: JSON.parse(bytes.toString()) as Record<string, unknown> };
}

/** Makes good-v02's attestations (valid, by the right key) appear as other-digest's, in the format's own place. */
async function copyAttestations(f: Format): Promise<void> {
  const repo = REPOS[f];
  const from = img[nameOf(f, 'good-v02')]!;
  const to = img[nameOf(f, 'other-digest')]!;
  if (f === 'legacy') {
    const att = await manifestAt(repo, `sha256-${from.digest.slice(7)}.att`);
    await pushRaw(reg.url, repo, `sha256-${to.digest.slice(7)}.att`, att.bytes, att.type);
    return;
  }
  // Bundle referrers: each re-pushed with other-digest as its subject, listed in other-digest's tag-schema index.
  const index = await manifestAt(repo, `sha256-${from.digest.slice(7)}`);
  const entries = index.doc.manifests as Array<{ digest: string; artifactType?: string }>;
  const moved = await Promise.all(
    entries.map(async (e) => {
      const m = await manifestAt(repo, e.digest);
      const bytes = Buffer.from(JSON.stringify({ ...m.doc, subject: { mediaType: to.manifestMediaType, digest: to.digest, size: to.manifest.length } }));
      const digest = await pushRaw(reg.url, repo, sha256(bytes), bytes, m.type);
      return { mediaType: m.type, digest, size: bytes.length, ...(e.artifactType ? { artifactType: e.artifactType } : {}) };
    }),
  );
  const toIndex = { schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: moved };
  await pushRaw(reg.url, repo, `sha256-${to.digest.slice(7)}`, Buffer.from(JSON.stringify(toIndex)), 'application/vnd.oci.image.index.v1+json');
}

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'pc-att-e2e-'));
  env = {
    ...process.env,
    HOME: work,
    TUF_ROOT: path.join(work, 'tuf'),
    COSIGN_PASSWORD: '',
    XDG_CONFIG_HOME: path.join(work, 'config'),
    DOCKER_CONFIG: path.join(work, 'docker'),
  };
  [reg, fake, ss] = await Promise.all([startRegistry(), startFakeUpstream({ referrers: true, strictAccept: true }), startLocalSigstore()]);
  await tool('cosign2', ['generate-key-pair', '--output-key-prefix', 'k1']);
  await tool('cosign2', ['generate-key-pair', '--output-key-prefix', 'k2']);

  for (const f of ['legacy', 'bundle'] as const) {
    for (const c of CASES) img[nameOf(f, c)] = await pushImage(reg.url, REPOS[f], c);
    await attest(f, 'good-v02', 'slsaprovenance', provenanceV02());
    await attest(f, 'good-v02', 'spdxjson', SPDX);
    await attest(f, 'good-v1', 'slsaprovenance1', provenanceV1());
    await attest(f, 'good-v1', 'cyclonedx', CYCLONEDX);
    await attest(f, 'wrong-builder', 'slsaprovenance', provenanceV02({ builder: 'https://evil/builder' }));
    await attest(f, 'wrong-builder', 'spdxjson', SPDX);
    await attest(f, 'wrong-source', 'slsaprovenance1', provenanceV1({ repo: 'https://github.com/evil/app', ref: 'refs/heads/dev' }));
    await attest(f, 'wrong-source', 'spdxjson', SPDX);
    await attest(f, 'no-sbom', 'slsaprovenance1', provenanceV1());
    await attest(f, 'other-key', 'slsaprovenance1', provenanceV1(), 'k2.key');
    await attest(f, 'other-key', 'spdxjson', SPDX);
    await attest(f, 'oversized', 'slsaprovenance1', provenanceV1({ pad: MAX_PREDICATE + 1024 }));
    await attest(f, 'oversized', 'spdxjson', SPDX);
    await copyAttestations(f);
    await mirror(REPOS[f]);

    for (const c of KEYLESS_CASES) img[`${KEYLESS_REPOS[f]}:${c}`] = await pushImage(reg.url, KEYLESS_REPOS[f], c);
    await attestKeyless(f, 'good', 'slsaprovenance1', provenanceV1(), SUBJECT);
    await attestKeyless(f, 'good', 'spdxjson', SPDX, SUBJECT);
    await attestKeyless(f, 'wrong-identity', 'slsaprovenance1', provenanceV1(), 'https://github.com/evil/app/.github/workflows/release.yml@refs/heads/main');
    await attestKeyless(f, 'wrong-identity', 'spdxjson', SPDX, SUBJECT);
  }

  const provenance = {
    name: 'build',
    predicateType: 'slsa-provenance',
    authorities: ['release'],
    conditions: {
      builderId: 'https://github.com/slsa-framework/slsa-github-generator/**',
      sourceRepository: { regex: 'https://github\\.com/acme/[a-z0-9-]+' },
      sourceRef: ['refs/heads/main', 'refs/tags/v*'],
      buildType: [BUILD_TYPE_V02, BUILD_TYPE_V1],
    },
  };
  proxy = await startProxy({
    upstreams: [
      { name: 'dist', registry: reg.host, url: reg.url, aliases: ['dist.e2e'] },
      { name: 'ref', registry: fake.host, url: fake.url, aliases: ['ref.e2e'] },
    ],
    settings: {
      no_match: 'deny',
      scopes: [
        {
          name: 'keyless',
          images: ['*/att/keyless-*'],
          attestations: {
            required: [
              { ...provenance, authorities: ['ci'] },
              { predicateType: 'sbom', authorities: ['ci'] },
            ],
          },
        },
        { name: 'att', images: ['*/att/**'], attestations: { required: [provenance, { predicateType: 'sbom', authorities: ['release'] }] } },
      ],
    },
    extra: {
      signatures: {
        maxPredicateSize: MAX_PREDICATE,
        authorities: [
          { name: 'release', kind: 'key', key: path.join(work, 'k1.pub') },
          { name: 'other', kind: 'key', key: path.join(work, 'k2.pub') },
          {
            name: 'ci',
            kind: 'keyless',
            issuer: ISSUER,
            subjectRegExp: 'https://github\\.com/acme/[^/]+/\\.github/workflows/.+',
            trustedRoot: ss.trustedRootPath,
          },
        ],
      },
    },
    observers: [{ onDecision: (e) => decisions.push(e) }],
  });
}, 300_000);

afterAll(async () => {
  await proxy?.stop();
  await Promise.all([reg?.stop(), fake?.stop(), ss?.stop()]);
  if (work) await rm(work, { recursive: true, force: true });
});

function decisionFor(digest: string): Parameters<DecisionObserver['onDecision']>[0] | undefined {
  return decisions.filter((d) => d.input.image.digest === digest && d.input.request.kind === 'manifest').at(-1);
}

async function expectAllowed(upstream: 'dist' | 'ref', f: Format, c: Case): Promise<Parameters<DecisionObserver['onDecision']>[0]> {
  const dest = path.join(work, `pull-${upstream}-${f}-${c}`);
  const ref = viaProxy(upstream, f, c);
  const r = upstream === 'dist' ? await skopeoCopy(`docker://${ref}`, dest) : await cranePull(ref, dest, { format: 'oci' });
  expect(r.code, r.stderr).toBe(0);
  const d = decisionFor(img[nameOf(f, c)]!.digest)!;
  expect(d.admission.outcome).toBe('allow');
  return d;
}

/** Denied, with exactly these violations (rule and message) in the decision, and each message in the client's error. */
async function expectDenied(upstream: 'dist' | 'ref', f: Format, c: Case, violations: Array<{ rule: string; message: string }>): Promise<void> {
  const r = await crane(['manifest', '--insecure', viaProxy(upstream, f, c)]);
  expect(r.code, r.stdout).not.toBe(0);
  expect(r.stderr).toMatch(/DENIED/);
  const d = decisionFor(img[nameOf(f, c)]!.digest)!;
  expect(d.admission.violations).toEqual(violations);
  for (const v of violations) expect(r.stderr).toContain(`[${v.rule}]`);
}

const formats = [
  ['legacy', 'dist'],
  ['legacy', 'ref'],
  ['bundle', 'dist'],
  ['bundle', 'ref'],
] as const;

describe.each(formats)('%s attestations through upstream %s', (f, up) => {
  it('admits SLSA v0.2 provenance from the right builder and source with an SPDX SBOM; the policy sees both', async () => {
    const d = await expectAllowed(up, f, 'good-v02');
    expect(d.input.attestations).toEqual(
      expect.arrayContaining([
        expect.objectContaining({
          predicate_type: SLSA_V02,
          authority: 'release',
          provenance: { version: 'v0.2', builder_id: BUILDER, build_type: BUILD_TYPE_V02, source_repository: REPO, source_ref: 'refs/heads/main' },
          predicate: expect.objectContaining({ builder: { id: BUILDER } }) as unknown,
        }),
        expect.objectContaining({ predicate_type: 'https://spdx.dev/Document', authority: 'release' }),
      ]),
    );
  });

  it('admits SLSA v1 provenance with a CycloneDX SBOM', async () => {
    const d = await expectAllowed(up, f, 'good-v1');
    expect(d.input.attestations).toEqual(
      expect.arrayContaining([
        expect.objectContaining({
          predicate_type: SLSA_V1,
          provenance: { version: 'v1', builder_id: BUILDER, build_type: BUILD_TYPE_V1, source_repository: REPO, source_ref: 'refs/heads/main' },
        }),
        expect.objectContaining({ predicate_type: 'https://cyclonedx.org/bom', authority: 'release' }),
      ]),
    );
  });

  it('denies provenance from another builder, naming the predicate and the condition', async () => {
    await expectDenied(up, f, 'wrong-builder', [
      {
        rule: 'attestation.condition',
        message: 'build (slsa-provenance): builder.id "https://evil/builder" does not match "https://github.com/slsa-framework/slsa-github-generator/**"',
      },
    ]);
  });

  it('denies provenance from another source repository and ref', async () => {
    await expectDenied(up, f, 'wrong-source', [
      {
        rule: 'attestation.condition',
        message: 'build (slsa-provenance): source ref "refs/heads/dev" does not match "refs/heads/main" or "refs/tags/v*"',
      },
      {
        rule: 'attestation.condition',
        message: 'build (slsa-provenance): source repository "https://github.com/evil/app" does not match regex "https://github\\.com/acme/[a-z0-9-]+"',
      },
    ]);
  });

  it('denies an image without an SBOM', async () => {
    await expectDenied(up, f, 'no-sbom', [
      { rule: 'attestation.missing', message: 'sbom: no attestation of type "https://cyclonedx.org/bom", "https://spdx.dev/Document" found' },
    ]);
  });

  it('denies provenance signed by an authority the requirement does not name', async () => {
    await expectDenied(up, f, 'other-key', [
      { rule: 'attestation.unverified', message: 'build (slsa-provenance): not verified by "release": key mismatch; verified only by authority "other"' },
    ]);
    const d = decisionFor(img[nameOf(f, 'other-key')]!.digest)!;
    expect(d.input.attestations_rejected).toContainEqual({ predicate_type: SLSA_V1, authority: 'release', reason: 'key mismatch', code: 'KEY_MISMATCH' });
  });

  it("denies another image's attestations (their in-toto subject is not this digest)", async () => {
    const signed = `sha256:${img[nameOf(f, 'good-v02')]!.digest.slice(7, 19)}…`;
    // The legacy tag is found and its subject checked; a bundle referrer moved onto this image is the same statement.
    await expectDenied(up, f, 'other-digest', [
      { rule: 'attestation.unverified', message: `build (slsa-provenance): not verified by "release": digest mismatch (signed ${signed})` },
      { rule: 'attestation.unverified', message: `sbom: not verified by "release": digest mismatch (signed ${signed})` },
    ]);
    const d = decisionFor(img[nameOf(f, 'other-digest')]!.digest)!;
    expect(d.input.attestations).toEqual([]);
    expect(d.input.attestations_rejected).toContainEqual(expect.objectContaining({ predicate_type: SLSA_V02, authority: 'release', code: 'DIGEST_MISMATCH' }));
  });

  it('denies provenance whose predicate is over the size bound: its conditions cannot be checked', async () => {
    await expectDenied(
      up,
      f,
      'oversized',
      ['buildType', 'builder.id', 'source ref', 'source repository'].map((field) => ({
        rule: 'attestation.condition',
        message: `build (slsa-provenance): predicate over the size bound (signatures.maxPredicateSize), so ${field} cannot be checked`,
      })),
    );
    const d = decisionFor(img[nameOf(f, 'oversized')]!.digest)!;
    expect(d.input.attestations).toContainEqual(expect.objectContaining({ predicate_type: SLSA_V1, authority: 'release', predicate: null, oversized: true }));
  });
});

describe.each(['legacy', 'bundle'] as const)('keyless %s attestations (local Fulcio and Rekor)', (f) => {
  const name = (c: KeylessCase): string => `${KEYLESS_REPOS[f]}:${c}`;

  it('admits provenance and SBOM attested by the CI identity', async () => {
    const r = await skopeoCopy(`docker://${proxy.host}/dist.e2e/${name('good')}`, path.join(work, `pull-keyless-${f}`));
    expect(r.code, r.stderr).toBe(0);
    const d = decisionFor(img[name('good')]!.digest)!;
    expect(d.admission.outcome).toBe('allow');
    expect(d.input.attestations).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ predicate_type: SLSA_V1, authority: 'ci', provenance: expect.objectContaining({ builder_id: BUILDER }) as unknown }),
        expect.objectContaining({ predicate_type: 'https://spdx.dev/Document', authority: 'ci' }),
      ]),
    );
  });

  it('denies provenance attested by another identity', async () => {
    const r = await crane(['manifest', '--insecure', `${proxy.host}/dist.e2e/${name('wrong-identity')}`]);
    expect(r.code, r.stdout).not.toBe(0);
    const d = decisionFor(img[name('wrong-identity')]!.digest)!;
    expect(d.admission.violations).toEqual([
      {
        rule: 'attestation.unverified',
        message: expect.stringMatching(
          /^build \(slsa-provenance\): not verified by "ci": identity mismatch \(subject "https:\/\/github\.com\/evil\/app\//,
        ) as unknown,
      },
    ]);
    expect(d.input.attestations_rejected).toContainEqual(expect.objectContaining({ predicate_type: SLSA_V1, authority: 'ci', code: 'IDENTITY_MISMATCH' }));
  });
});
