/**
 * The signature provider inside the proxy, against fake upstreams holding hand-made signatures (a P-256 key,
 * node:crypto): discovery through the referrers API and through the tag schema, discovery failures as evidence,
 * the verification cache and trust revisions, metrics, and the accessory rules (signature manifests fetched by
 * digest are accessories; a runnable image smuggled into a referrers index is not).
 *
 * The real signers are exercised in test/e2e/signatures.test.ts.
 */
import { createHash, generateKeyPairSync, sign as cryptoSign, type KeyObject } from 'node:crypto';
import { readdirSync, readlinkSync } from 'node:fs';
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
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
const BUNDLE = 'application/vnd.dev.sigstore.bundle.v0.3+json';
const EMPTY = { mediaType: 'application/vnd.oci.empty.v1+json', digest: 'sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a', size: 2 };

let dir: string;
let keyPath: string;
let release: { publicKey: KeyObject; privateKey: KeyObject };
const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

interface Img {
  digest: string;
  bytes: Buffer;
}

/** A one-layer runnable image. */
function addImage(up: FakeUpstream, repo: string, tag: string | undefined): Img {
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

/** A cosign-3-style key-based bundle referrer for `subject`, signed by `key`, claiming `claimed`. */
function addBundle(up: FakeUpstream, repo: string, subject: Img, key: KeyObject, claimed = subject.digest): Img {
  const statement = Buffer.from(
    JSON.stringify({
      _type: 'https://in-toto.io/Statement/v1',
      subject: [{ digest: { sha256: claimed.slice(7) } }],
      predicateType: 'https://sigstore.dev/cosign/sign/v1',
      predicate: {},
    }),
  );
  const sig = cryptoSign('sha256', dsse.preAuthEncoding('application/vnd.in-toto+json', statement), key);
  const bundle = Buffer.from(
    JSON.stringify(bundleToJSON(toDSSEBundle({ artifact: statement, artifactType: 'application/vnd.in-toto+json', signature: sig, keyHint: '' }))),
  );
  up.addBlob(repo, bundle);
  const bytes = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      artifactType: BUNDLE,
      config: EMPTY,
      layers: [{ mediaType: BUNDLE, digest: sha(bundle), size: bundle.length }],
      subject: { mediaType: OCI_MANIFEST, digest: subject.digest, size: subject.bytes.length },
      annotations: { 'dev.sigstore.bundle.content': 'dsse-envelope', 'dev.sigstore.bundle.predicateType': 'https://sigstore.dev/cosign/sign/v1' },
    }),
  );
  return { digest: up.addManifest(repo, undefined, bytes, OCI_MANIFEST), bytes };
}

/** The referrers tag schema: an index at `sha256-<hex>` listing the referrers. */
function addTagSchemaIndex(up: FakeUpstream, repo: string, subject: Img, referrers: Array<Img & { artifactType: string }>): void {
  const bytes = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_INDEX,
      manifests: referrers.map((r) => ({ mediaType: OCI_MANIFEST, digest: r.digest, size: r.bytes.length, artifactType: r.artifactType })),
    }),
  );
  up.addManifest(repo, `sha256-${subject.digest.slice(7)}`, bytes, OCI_INDEX);
}

const settings = {
  no_match: 'deny',
  scopes: [
    { name: 'signed', images: ['*/signed/**'], signatures: { authorities: ['release'] } },
    { name: 'open', images: ['**'] },
  ],
};

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'pc-sig-int-'));
  release = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  keyPath = join(dir, 'release.pub');
  await writeFile(keyPath, release.publicKey.export({ format: 'pem', type: 'spki' }) as string);
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function start(
  up: FakeUpstream,
  extraSignatures: Record<string, unknown> = {},
  decisions?: Array<Parameters<DecisionObserver['onDecision']>[0]>,
): Promise<RunningProxy> {
  return startProxy({
    upstreams: [{ name: 'up', registry: up.host, url: up.url }],
    settings,
    extra: { signatures: { authorities: [{ name: 'release', kind: 'key', key: keyPath }], ...extraSignatures } },
    ...(decisions ? { observers: [{ onDecision: (e) => decisions.push(e) }] } : {}),
  });
}

/** Files under `dir` that this process has open (Linux /proc). */
function openFilesUnder(dir: string): string[] {
  const out: string[] = [];
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      const target = readlinkSync(`/proc/self/fd/${fd}`);
      if (target.startsWith(dir)) out.push(target);
    } catch {
      // closed meanwhile
    }
  }
  return out;
}

async function get(p: RunningProxy, up: FakeUpstream, path: string): Promise<Response> {
  return fetch(`${p.url}/v2/${up.host}/${path}`, { headers: { accept: MANIFEST_ACCEPT } });
}

async function denial(res: Response): Promise<string> {
  expect(res.status).toBe(403);
  return ((await res.json()) as { errors: Array<{ message: string }> }).errors[0]!.message;
}

describe('discovery', () => {
  it('finds a bundle through the referrers API, and serves it as an accessory', async () => {
    const up = await startFakeUpstream({ referrers: true });
    const p = await start(up);
    let stopped = false;
    try {
      const image = addImage(up, 'signed/app', 'v1');
      const ref = addBundle(up, 'signed/app', image, release.privateKey);
      const res = await get(p, up, 'signed/app/manifests/v1');
      expect(res.status, await res.clone().text()).toBe(200);
      expect(up.requests().some((r) => r.path.startsWith(`/v2/signed/app/referrers/${image.digest}`))).toBe(true);
      // What cosign 3 and notation do after listing referrers: the referrer by digest, then its blob.
      const list = (await (await get(p, up, `signed/app/referrers/${image.digest}`)).json()) as { manifests: Array<{ digest: string; artifactType: string }> };
      expect(list.manifests).toEqual([expect.objectContaining({ digest: ref.digest, artifactType: BUNDLE })]);
      const m = await get(p, up, `signed/app/manifests/${ref.digest}`);
      expect(m.status).toBe(200);
      const layer = ((await m.json()) as { layers: Array<{ digest: string }> }).layers[0]!;
      expect((await get(p, up, `signed/app/blobs/${layer.digest}`)).status).toBe(200);
      // The evidence cache is an SQLite file held open while the proxy runs, and released at shutdown.
      expect(openFilesUnder(p.dataDir).some((f) => f.endsWith('signatures.sqlite'))).toBe(true);
      await p.stop({ keepData: true });
      stopped = true;
      expect(openFilesUnder(p.dataDir)).toEqual([]);
      await rm(p.dataDir, { recursive: true, force: true });
    } finally {
      if (!stopped) await p.stop();
      await up.stop();
    }
  });

  it('falls back to the referrers tag schema when the upstream has no referrers API', async () => {
    const up = await startFakeUpstream({ referrers: false });
    const p = await start(up);
    try {
      const image = addImage(up, 'signed/app', 'v1');
      const ref = addBundle(up, 'signed/app', image, release.privateKey);
      addTagSchemaIndex(up, 'signed/app', image, [{ ...ref, artifactType: BUNDLE }]);
      expect((await get(p, up, 'signed/app/manifests/v1')).status).toBe(200);
      const paths = up.requests().map((r) => `${r.method} ${r.path.split('?')[0]}`);
      expect(paths).toContain(`GET /v2/signed/app/referrers/${image.digest}`);
      expect(paths).toContain(`GET /v2/signed/app/manifests/sha256-${image.digest.slice(7)}`);
    } finally {
      await p.stop();
      await up.stop();
    }
  });

  it('turns a failed discovery into evidence: denied with the upstream error, and not cached', async () => {
    const up = await startFakeUpstream({ referrers: true });
    const decisions: Array<Parameters<DecisionObserver['onDecision']>[0]> = [];
    const p = await start(up, {}, decisions);
    try {
      const image = addImage(up, 'signed/app', 'v1');
      addBundle(up, 'signed/app', image, release.privateKey);
      up.setFault({ pathRegex: /\/referrers\// }, { kind: 'status', status: 503, times: 3 });
      const msg = await denial(await get(p, up, 'signed/app/manifests/v1'));
      expect(msg).toMatch(
        /signature required by authority "release" \(signature verification error: .*signature discovery failed: referrers: upstream "up" answered HTTP 503/,
      );
      const sig = decisions.at(-1)!.input.signatures;
      expect(sig.status).toBe('error');
      expect(sig.rejected.map((r) => [r.authority, r.code])).toEqual([
        [undefined, 'DISCOVERY_FAILED'],
        ['release', 'NO_SIGNATURE'],
      ]);
      // Pulled by digest (a new decision): the upstream is back, and nothing of the failure was cached.
      expect((await get(p, up, `signed/app/manifests/${image.digest}`)).status).toBe(200);
    } finally {
      await p.stop();
      await up.stop();
    }
  });
});

describe('verification', () => {
  it('denies another key and a bundle copied from another image, and says why', async () => {
    const up = await startFakeUpstream({ referrers: true });
    const p = await start(up);
    try {
      const other = generateKeyPairSync('ec', { namedCurve: 'P-256' });
      const a = addImage(up, 'signed/app', 'other-key');
      addBundle(up, 'signed/app', a, other.privateKey);
      expect(await denial(await get(p, up, 'signed/app/manifests/other-key'))).toMatch(
        /signature required by authority "release" \(no signature verified: key mismatch\)/,
      );
      const b = addImage(up, 'signed/app', 'copied');
      const source = addImage(up, 'signed/app', undefined);
      // A valid signature of `source`, attached to `b` (the referrer's subject says b; the signed statement says source).
      addBundle(up, 'signed/app', b, release.privateKey, source.digest);
      expect(await denial(await get(p, up, 'signed/app/manifests/copied'))).toMatch(/\(no signature verified: digest mismatch \(signed sha256:/);
      const c = addImage(up, 'signed/app', 'unsigned');
      void c;
      expect(await denial(await get(p, up, 'signed/app/manifests/unsigned'))).toMatch(/signature required by authority "release" \(no signature found\)/);
    } finally {
      await p.stop();
      await up.stop();
    }
  });

  it('a bundle that does not parse is an unusable signature, with its code in the policy input', async () => {
    const up = await startFakeUpstream({ referrers: true });
    const decisions: Array<Parameters<DecisionObserver['onDecision']>[0]> = [];
    const p = await start(up, {}, decisions);
    try {
      const image = addImage(up, 'signed/app', 'garbled');
      const garbage = Buffer.from('{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json"}');
      up.addBlob('signed/app', garbage);
      up.addManifest(
        'signed/app',
        undefined,
        Buffer.from(
          JSON.stringify({
            schemaVersion: 2,
            mediaType: OCI_MANIFEST,
            artifactType: BUNDLE,
            config: EMPTY,
            layers: [{ mediaType: BUNDLE, digest: sha(garbage), size: garbage.length }],
            subject: { mediaType: OCI_MANIFEST, digest: image.digest, size: image.bytes.length },
          }),
        ),
        OCI_MANIFEST,
      );
      expect(await denial(await get(p, up, 'signed/app/manifests/garbled'))).toMatch(
        /authority "release" \(no signature verified: unusable signature \(not a valid Sigstore bundle: /,
      );
      const sig = decisions.at(-1)!.input.signatures;
      expect(sig.status).toBe('ok');
      expect(sig.rejected).toEqual([expect.objectContaining({ authority: 'release', code: 'UNUSABLE_SIGNATURE' })]);
    } finally {
      await p.stop();
      await up.stop();
    }
  });

  it('caches verified evidence per digest and trust revision; a new key is a new revision', async () => {
    const up = await startFakeUpstream({ referrers: true });
    const p = await start(up, { reloadInterval: 0 });
    try {
      const image = addImage(up, 'signed/app', 'v1');
      addBundle(up, 'signed/app', image, release.privateKey);
      expect((await get(p, up, 'signed/app/manifests/v1')).status).toBe(200);
      up.clearRequests();
      // Same digest by another tag: a new decision, but the verification comes from the cache.
      up.addManifest('signed/app', 'v1-alias', image.bytes, OCI_MANIFEST);
      expect((await get(p, up, 'signed/app/manifests/v1-alias')).status).toBe(200);
      expect(up.requests().filter((r) => /referrers|\.sig|\.att|blobs/.test(r.path))).toEqual([]);
      const metrics = await (await fetch(`${p.url}/metrics`)).text();
      expect(metrics).toMatch(/portcullis_signature_cache_total\{result="hit"\} [1-9]/);
      expect(metrics).toMatch(/portcullis_signature_verifications_total\{kind="cosign-key",result="verified"\} 1/);
      expect(metrics).toMatch(/portcullis_signature_verification_seconds_count [1-9]/);
      // Rotate the key file: the trust revision changes, cached decisions and evidence lapse, and the old
      // signature no longer verifies.
      await writeFile(keyPath, generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ format: 'pem', type: 'spki' }) as string);
      try {
        expect(await denial(await get(p, up, 'signed/app/manifests/v1'))).toMatch(/key mismatch/);
      } finally {
        await writeFile(keyPath, release.publicKey.export({ format: 'pem', type: 'spki' }) as string);
      }
    } finally {
      await p.stop();
      await up.stop();
    }
  });
});

describe('accessories', () => {
  it('a runnable image listed in a referrers index gets its own decision', async () => {
    const up = await startFakeUpstream({ referrers: false });
    const p = await start(up);
    try {
      const image = addImage(up, 'signed/app', 'v1');
      addBundle(up, 'signed/app', image, release.privateKey);
      const smuggled = addImage(up, 'signed/app', undefined);
      addTagSchemaIndex(up, 'signed/app', image, [{ ...smuggled, artifactType: BUNDLE }]);
      // The index itself is an accessory and is served…
      expect((await get(p, up, `signed/app/manifests/sha256-${image.digest.slice(7)}`)).status).toBe(200);
      // …but the unsigned image it lists is decided on its own, and denied.
      expect(await denial(await get(p, up, `signed/app/manifests/${smuggled.digest}`))).toMatch(/\(no signature found\)/);
      // An image at a cosign signature tag is still an image.
      up.addManifest('signed/app', `sha256-${image.digest.slice(7)}.sig`, smuggled.bytes, OCI_MANIFEST);
      expect(await denial(await get(p, up, `signed/app/manifests/sha256-${image.digest.slice(7)}.sig`))).toMatch(/\(no signature found\)/);
    } finally {
      await p.stop();
      await up.stop();
    }
  });
});
