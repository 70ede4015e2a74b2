/**
 * Required attestations against a hostile or failing upstream (the fake, with hand-made DSSE attestations signed by a
 * P-256 key through node:crypto): an attestation lookup that fails is not "missing" but says why and is not cached;
 * an envelope that cannot be read, and an upstream that lists more attestations than one decision may fetch, deny
 * with their reason. The real signers are exercised in test/e2e/attestations.test.ts.
 */
import { createHash, generateKeyPairSync, sign as cryptoSign, type KeyObject } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bundleToJSON, toDSSEBundle } from '@sigstore/bundle';
import { dsse } from '@sigstore/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DecisionObserver } from '../../src/gate/gate.js';
import { startFakeUpstream, type FakeUpstream } from '../harness/fake-upstream.js';
import { MANIFEST_ACCEPT } from '../harness/images.js';
import { startProxy, type RunningProxy } from '../harness/proxy.js';

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const BUNDLE = 'application/vnd.dev.sigstore.bundle.v0.3+json';
const EMPTY = { mediaType: 'application/vnd.oci.empty.v1+json', digest: 'sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a', size: 2 };
const SPDX = 'https://spdx.dev/Document';
const SBOM_MISSING = 'sbom: no attestation of type "https://cyclonedx.org/bom", "https://spdx.dev/Document" found';

let dir: string;
let keyPath: string;
let release: { publicKey: KeyObject; privateKey: KeyObject };
const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

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

/** A cosign-3-style SPDX attestation referrer for `subject` (or, with `raw`, a layer of exactly those bytes). */
function addAttestation(up: FakeUpstream, repo: string, subject: Img, raw?: Buffer): void {
  const statement = Buffer.from(
    JSON.stringify({
      _type: 'https://in-toto.io/Statement/v1',
      subject: [{ digest: { sha256: subject.digest.slice(7) } }],
      predicateType: SPDX,
      predicate: {},
    }),
  );
  const sig = cryptoSign('sha256', dsse.preAuthEncoding('application/vnd.in-toto+json', statement), release.privateKey);
  const bundle =
    raw ??
    Buffer.from(JSON.stringify(bundleToJSON(toDSSEBundle({ artifact: statement, artifactType: 'application/vnd.in-toto+json', signature: sig, keyHint: '' }))));
  up.addBlob(repo, bundle);
  const bytes = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      artifactType: BUNDLE,
      config: EMPTY,
      layers: [{ mediaType: BUNDLE, digest: sha(bundle), size: bundle.length }],
      subject: { mediaType: OCI_MANIFEST, digest: subject.digest, size: subject.bytes.length },
      annotations: { 'dev.sigstore.bundle.predicateType': SPDX, nonce: String(Math.random()) },
    }),
  );
  up.addManifest(repo, undefined, bytes, OCI_MANIFEST);
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'pc-att-int-'));
  release = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  keyPath = join(dir, 'release.pub');
  await writeFile(keyPath, release.publicKey.export({ format: 'pem', type: 'spki' }) as string);
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function start(
  up: FakeUpstream,
  decisions: Array<Parameters<DecisionObserver['onDecision']>[0]>,
  budget?: Record<string, unknown>,
): Promise<RunningProxy> {
  return startProxy({
    upstreams: [{ name: 'up', registry: up.host, url: up.url }],
    settings: {
      no_match: 'deny',
      scopes: [{ name: 'sbom', images: ['**'], attestations: { required: [{ predicateType: 'sbom', authorities: ['release'] }] } }],
    },
    extra: { signatures: { authorities: [{ name: 'release', kind: 'key', key: keyPath }], ...(budget ? { budget } : {}) } },
    observers: [{ onDecision: (e) => decisions.push(e) }],
  });
}

async function get(p: RunningProxy, up: FakeUpstream, path: string): Promise<Response> {
  return fetch(`${p.url}/v2/${up.host}/${path}`, { headers: { accept: MANIFEST_ACCEPT } });
}

describe('required attestations against a failing or hostile upstream', () => {
  it('admits an image with its verified SBOM (the baseline the cases below break)', async () => {
    const up = await startFakeUpstream({ referrers: true });
    const decisions: Array<Parameters<DecisionObserver['onDecision']>[0]> = [];
    const p = await start(up, decisions);
    try {
      addAttestation(up, 'app', addImage(up, 'app', 'v1'));
      const res = await get(p, up, 'app/manifests/v1');
      expect(res.status, await res.text()).toBe(200);
      expect(decisions.at(-1)!.input.attestations).toEqual([expect.objectContaining({ predicate_type: SPDX, authority: 'release' })]);
    } finally {
      await p.stop();
      await up.stop();
    }
  });

  it('a failed lookup says so rather than "missing", and its evidence is not cached: the attestation counts once the upstream answers', async () => {
    const up = await startFakeUpstream({ referrers: true });
    const decisions: Array<Parameters<DecisionObserver['onDecision']>[0]> = [];
    const p = await start(up, decisions);
    try {
      const image = addImage(up, 'app', 'v1');
      addAttestation(up, 'app', image);
      up.setFault({ pathRegex: /\/referrers\// }, { kind: 'status', status: 503 });
      const denied = await get(p, up, 'app/manifests/v1');
      expect(denied.status).toBe(403);
      const message = ((await denied.json()) as { errors: Array<{ message: string }> }).errors[0]!.message;
      expect(message).toContain(`${SBOM_MISSING} (discovery failed: referrers:`);
      expect(message).toContain('[attestation.missing]');
      expect(decisions.at(-1)!.input.attestations_rejected).toContainEqual(expect.objectContaining({ predicate_type: null, code: 'DISCOVERY_FAILED' }));
      up.clearFaults();
      // Pulled by digest (a new decision): the upstream is back, and nothing of the failed evidence was cached.
      expect((await get(p, up, `app/manifests/${image.digest}`)).status).toBe(200);
    } finally {
      await p.stop();
      await up.stop();
    }
  });

  it('an attestation whose bundle cannot be read denies with the reason, not as merely missing', async () => {
    const up = await startFakeUpstream({ referrers: true });
    const decisions: Array<Parameters<DecisionObserver['onDecision']>[0]> = [];
    const p = await start(up, decisions);
    try {
      addAttestation(up, 'app', addImage(up, 'app', 'v1'), Buffer.from('{"mediaType": "not a bundle"'));
      const res = await get(p, up, 'app/manifests/v1');
      expect(res.status).toBe(403);
      const d = decisions.at(-1)!;
      expect(d.admission.violations).toEqual([
        { rule: 'attestation.missing', message: expect.stringContaining(`${SBOM_MISSING} (unusable signature (`) as unknown },
      ]);
    } finally {
      await p.stop();
      await up.stop();
    }
  });

  it('more attestations than one decision may fetch: denied naming the budget, nothing past it fetched', async () => {
    const up = await startFakeUpstream({ referrers: true });
    const decisions: Array<Parameters<DecisionObserver['onDecision']>[0]> = [];
    const p = await start(up, decisions, { artifacts: 4 });
    try {
      const image = addImage(up, 'app', 'v1');
      for (let i = 0; i < 6; i++) addAttestation(up, 'app', image);
      const res = await get(p, up, 'app/manifests/v1');
      expect(res.status).toBe(403);
      const d = decisions.at(-1)!;
      expect(d.admission.violations).toEqual([
        {
          rule: 'attestation.missing',
          message: expect.stringContaining(`${SBOM_MISSING} (signature discovery budget exceeded: more than 4 signature artifacts`) as unknown,
        },
      ]);
      expect(d.input.attestations).toEqual([]);
      expect(up.requests().filter((r) => r.path.includes('/blobs/'))).toEqual([]);
    } finally {
      await p.stop();
      await up.stop();
    }
  });
});
