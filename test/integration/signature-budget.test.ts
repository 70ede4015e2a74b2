/**
 * One budget per digest for signature discovery (issue 10, item 4; src/verify/budget.ts), against a hostile fake
 * upstream that lists many signature referrers with many layers each and a legacy `.sig` tag with many layers: the
 * upstream requests one decision causes are counted, and the budget's limit is what the evidence names.
 */
import { createHash, generateKeyPairSync, sign as cryptoSign, type KeyObject } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bundleToJSON, toDSSEBundle } from '@sigstore/bundle';
import { dsse } from '@sigstore/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { PolicyInput } from '../../src/policy/contract.js';
import { startFakeUpstream, type FakeUpstream } from '../harness/fake-upstream.js';
import { MANIFEST_ACCEPT } from '../harness/images.js';
import { startProxy, type RunningProxy } from '../harness/proxy.js';

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const BUNDLE = 'application/vnd.dev.sigstore.bundle.v0.3+json';
const SIMPLE_SIGNING = 'application/vnd.dev.cosign.simplesigning.v1+json';
const EMPTY = { mediaType: 'application/vnd.oci.empty.v1+json', digest: 'sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a', size: 2 };
const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

let dir: string;
let keyPath: string;
let release: { publicKey: KeyObject; privateKey: KeyObject };

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'pc-sig-budget-'));
  release = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  keyPath = join(dir, 'release.pub');
  await writeFile(keyPath, release.publicKey.export({ format: 'pem', type: 'spki' }) as string);
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

interface Img {
  digest: string;
  bytes: Buffer;
}

function addImage(up: FakeUpstream, repo: string, tag: string): Img {
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] }, nonce: Math.random() }));
  const layer = Buffer.from(`layer ${Math.random()}`);
  up.addBlob(repo, config);
  up.addBlob(repo, layer);
  up.addBlob(repo, Buffer.from('{}'));
  const bytes = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha(config), size: config.length },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: sha(layer), size: layer.length }],
    }),
  );
  return { digest: up.addManifest(repo, tag, bytes, OCI_MANIFEST), bytes };
}

/** A cosign-3 style bundle blob signed by `key` over `subject` (padded to `pad` bytes of JSON when asked). */
function bundleBlob(subject: Img, key: KeyObject, pad = 0): Buffer {
  const statement = Buffer.from(
    JSON.stringify({
      _type: 'https://in-toto.io/Statement/v1',
      subject: [{ digest: { sha256: subject.digest.slice(7) } }],
      predicateType: 'https://sigstore.dev/cosign/sign/v1',
      predicate: { pad: 'x'.repeat(pad) },
    }),
  );
  const sig = cryptoSign('sha256', dsse.preAuthEncoding('application/vnd.in-toto+json', statement), key);
  return Buffer.from(
    JSON.stringify(bundleToJSON(toDSSEBundle({ artifact: statement, artifactType: 'application/vnd.in-toto+json', signature: sig, keyHint: '' }))),
  );
}

/** A bundle referrer of `subject` whose manifest lists `layers` bundle blobs (distinct, so each is a download). */
function addReferrer(up: FakeUpstream, repo: string, subject: Img, layers: number, key: KeyObject): void {
  const blobs = Array.from({ length: layers }, () => bundleBlob(subject, key, Math.floor(Math.random() * 50)));
  for (const b of blobs) up.addBlob(repo, b);
  const bytes = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      artifactType: BUNDLE,
      config: EMPTY,
      layers: blobs.map((b) => ({ mediaType: BUNDLE, digest: sha(b), size: b.length })),
      subject: { mediaType: OCI_MANIFEST, digest: subject.digest, size: subject.bytes.length },
      annotations: { nonce: String(Math.random()) },
    }),
  );
  up.addManifest(repo, undefined, bytes, OCI_MANIFEST);
}

/** A legacy `.sig` tag with `layers` simple-signing layers (unsigned junk: each still costs a download). */
function addSigTag(up: FakeUpstream, repo: string, subject: Img, layers: number): void {
  const blobs = Array.from({ length: layers }, (_, i) =>
    Buffer.from(
      JSON.stringify({ critical: { type: 'cosign container image signature', image: { 'docker-manifest-digest': subject.digest } }, optional: { i } }),
    ),
  );
  for (const b of blobs) up.addBlob(repo, b);
  const bytes = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: EMPTY,
      layers: blobs.map((b) => ({ mediaType: SIMPLE_SIGNING, digest: sha(b), size: b.length, annotations: { 'dev.cosignproject.cosign/signature': 'AAAA' } })),
    }),
  );
  up.addManifest(repo, `sha256-${subject.digest.slice(7)}.sig`, bytes, OCI_MANIFEST);
}

const settings = { no_match: 'deny', scopes: [{ name: 'signed', images: ['**'], signatures: { authorities: ['release'] } }] };

async function start(up: FakeUpstream, signatures: Record<string, unknown>, inputs: PolicyInput[]): Promise<RunningProxy> {
  return startProxy({
    upstreams: [{ name: 'up', registry: up.host, url: up.url }],
    settings,
    extra: { signatures: { authorities: [{ name: 'release', kind: 'key', key: keyPath }], ...signatures } },
    observers: [{ onDecision: (e) => inputs.push(e.input) }],
  });
}

function upstreamCounts(up: FakeUpstream, repo: string): { manifests: number; blobs: number; total: number } {
  const mine = up.requests().filter((r) => r.path.startsWith(`/v2/${repo}/`));
  return {
    manifests: mine.filter((r) => r.method === 'GET' && /\/manifests\/sha256:/.test(r.path)).length,
    blobs: mine.filter((r) => r.path.includes('/blobs/')).length,
    total: mine.length,
  };
}

describe('signature discovery budget', () => {
  it('stops at the artifact and blob budget of one decision, however many referrers and layers the upstream lists', async () => {
    const up = await startFakeUpstream({ referrers: true });
    const inputs: PolicyInput[] = [];
    // Before the budget, maxSignatures: 8 let this upstream cause 8 referrers × 8 layers + 8 .sig layers = 72 downloads.
    const p = await start(up, { maxSignatures: 8, budget: { artifacts: 4, blobs: 6 } }, inputs);
    try {
      const image = addImage(up, 'hostile/app', 'v1');
      for (let i = 0; i < 20; i++) addReferrer(up, 'hostile/app', image, 10, release.privateKey);
      addSigTag(up, 'hostile/app', image, 10);
      up.clearRequests();
      const res = await fetch(`${p.url}/v2/${up.host}/hostile/app/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT } });
      expect(res.status).toBe(403);
      const sig = inputs.at(-1)!.signatures;
      expect(sig.status).toBe('error');
      expect(sig.rejected[0]!.code).toBe('BUDGET_EXCEEDED');
      expect(sig.rejected[0]!.reason).toMatch(
        /signature discovery budget exceeded: more than (4 signature artifacts|6 signature blobs) for one digest \(signatures\.budget\.(artifacts|blobs)\)/,
      );
      expect(((await res.json()) as { errors: Array<{ message: string }> }).errors[0]!.message).toMatch(/budget/);
      const n = upstreamCounts(up, 'hostile/app');
      // The image's own manifest (tag and digest) plus at most 4 artifacts; at most 6 blobs; the lookups (referrers
      // list, the .sig and .att tags) on top.
      expect(n.manifests).toBeLessThanOrEqual(1 + 4);
      expect(n.blobs).toBeLessThanOrEqual(6);
      expect(n.total).toBeLessThanOrEqual(2 + 4 + 6 + 4);
    } finally {
      await p.stop();
      await up.stop();
    }
  });

  it('counts bytes too, and still verifies an honest signature within the budget', async () => {
    const up = await startFakeUpstream({ referrers: true });
    const inputs: PolicyInput[] = [];
    const p = await start(up, { budget: { bytes: '16KiB' } }, inputs);
    try {
      const honest = addImage(up, 'signed/app', 'v1');
      addReferrer(up, 'signed/app', honest, 1, release.privateKey);
      const ok = await fetch(`${p.url}/v2/${up.host}/signed/app/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT } });
      expect(ok.status, await ok.clone().text()).toBe(200);
      expect(inputs.at(-1)!.signatures.verified.map((v) => v.authority)).toEqual(['release']);

      // A single referrer whose blobs add up to more than 16 KiB (each one well under maxBlobSize).
      const fat = addImage(up, 'signed/fat', 'v1');
      const blobs = Array.from({ length: 4 }, () => bundleBlob(fat, release.privateKey, 6000));
      for (const b of blobs) up.addBlob('signed/fat', b);
      up.addManifest(
        'signed/fat',
        undefined,
        Buffer.from(
          JSON.stringify({
            schemaVersion: 2,
            mediaType: OCI_MANIFEST,
            artifactType: BUNDLE,
            config: EMPTY,
            layers: blobs.map((b) => ({ mediaType: BUNDLE, digest: sha(b), size: b.length })),
            subject: { mediaType: OCI_MANIFEST, digest: fat.digest, size: fat.bytes.length },
          }),
        ),
        OCI_MANIFEST,
      );
      up.clearRequests();
      const res = await fetch(`${p.url}/v2/${up.host}/signed/fat/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT } });
      expect(res.status).toBe(403);
      const sig = inputs.at(-1)!.signatures;
      expect(sig.status).toBe('error');
      expect(sig.rejected[0]!.reason).toContain('more than 16384 bytes for one digest (signatures.budget.bytes)');
      expect(sig.rejected[0]!.code).toBe('BUDGET_EXCEEDED');
      // Whatever verified before the budget ran out, the decision fails closed; and the third blob is never fetched.
      expect(sig.verified).toEqual([]);
      expect(upstreamCounts(up, 'signed/fat').blobs).toBeLessThanOrEqual(2);
    } finally {
      await p.stop();
      await up.stop();
    }
  });
});
