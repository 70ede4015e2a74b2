/**
 * Closures with roles and admissions bound to their basis (DESIGN §11), at the gate's level with a scripted
 * decider: what may ride on an admission (and in which role), children decided on their own evidence, inline
 * re-decision after a policy, settings or trust change, tags that do not cut each other off, pruning, bounded caches.
 */
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SqliteMetaStore, type MetaStore } from '../../src/cache/metastore.js';
import { Gate, type GateOptions } from '../../src/gate/gate.js';
import type { Decider, PolicyInput, PolicyResult, SignatureProvider } from '../../src/policy/contract.js';
import { OCI_INDEX, OCI_MANIFEST, parseManifest } from '../../src/oci/mediatypes.js';
import type { Manifest } from '../../src/proxy/manifests.js';
import type { Digest } from '../../src/routing/reference.js';
import { Router, type Route } from '../../src/routing/route.js';
import { cleanupTempDirs, makeConfig, sha256, tempDir } from './helpers.js';

afterAll(cleanupTempDirs);

const router = new Router(
  makeConfig({ upstreams: [{ name: 'dockerhub', registry: 'docker.io', url: 'https://registry-1.docker.io' }], defaultUpstream: 'dockerhub' }),
);
function route(name: string): Route {
  const r = router.resolve(name, undefined);
  if ('code' in r) throw new Error(r.message);
  return r;
}
const R = route('library/app');
const d = (c: string) => `sha256:${c.repeat(64)}` as Digest;
const CLIENT = { ip: '10.0.0.1', user: null, groups: [], method: 'anonymous', userAgent: 'containerd/2' };
const LAYER_TAR = 'application/vnd.oci.image.layer.v1.tar';

const known = new Map<string, Manifest>();
const reads: string[] = [];
const manifests = {
  get: (_r: Route, digest: Digest) => {
    reads.push(digest);
    return known.has(digest) ? Promise.resolve(known.get(digest)!) : Promise.reject(new Error(`unknown ${digest}`));
  },
};

function manifestOf(doc: Record<string, unknown>): Manifest {
  const bytes = Buffer.from(JSON.stringify(doc));
  const parsed = parseManifest(bytes, undefined);
  const m: Manifest = { digest: sha256(bytes), mediaType: parsed.mediaType, bytes, parsed };
  known.set(m.digest, m);
  return m;
}

function image(config: Digest, layers: Array<Digest | { digest: Digest; mediaType: string }>, extra: Record<string, unknown> = {}): Manifest {
  return manifestOf({
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: config, size: 1 },
    layers: layers.map((l) => (typeof l === 'string' ? { mediaType: LAYER_TAR, digest: l, size: 2 } : { ...l, size: 2 })),
    ...extra,
  });
}

function index(entries: Array<{ m: Manifest; platform?: Record<string, unknown>; annotations?: Record<string, string> }>): Manifest {
  return manifestOf({
    schemaVersion: 2,
    mediaType: OCI_INDEX,
    manifests: entries.map((e) => ({
      mediaType: e.m.mediaType,
      digest: e.m.digest,
      size: e.m.bytes.length,
      ...(e.platform ? { platform: e.platform } : {}),
      ...(e.annotations ? { annotations: e.annotations } : {}),
    })),
  });
}

const ALLOW: PolicyResult = { allow: true, deny: [], warn: [], scope: 'all', mode: 'enforce' };
const deny = (message: string, rule = 'test.deny'): PolicyResult => ({ allow: false, deny: [{ rule, message }], warn: [], scope: 'all', mode: 'enforce' });

class ScriptedDecider implements Decider {
  calls: PolicyInput[] = [];
  constructor(
    public revision: string,
    public answer: (input: PolicyInput) => PolicyResult = () => ALLOW,
  ) {}
  evaluate(input: PolicyInput): Promise<PolicyResult> {
    this.calls.push(input);
    return Promise.resolve(this.answer(input));
  }
}

const OPTS: GateOptions = { allowTTL: 600_000, denyTTL: 30_000, closureTTL: 3_600_000, settingsHash: 's1', manifests };

let meta: MetaStore;
let dir: string;
let clock: number;
const now = () => clock;
beforeEach(() => {
  dir = tempDir();
  meta = new SqliteMetaStore(dir);
  clock = Date.UTC(2026, 5, 1);
  reads.length = 0;
});
afterEach(() => meta.close());

function gate(decider: Decider, extra: Partial<GateOptions> = {}, sig?: SignatureProvider): Gate {
  return new Gate({ decider, meta, options: { ...OPTS, ...extra }, signatures: sig, observers: [], now });
}
const root = (g: Gate, m: Manifest, tag: string | null = 'v1', r = R) =>
  g.admitRoot({ route: r, method: 'GET', tag, manifest: m, kind: 'manifest', client: CLIENT });
const byDigest = (g: Gate, m: Manifest, r = R) => g.admitByDigest({ route: r, method: 'GET', client: CLIENT, manifest: m });
const blob = (g: Gate, digest: Digest, r = R) => g.admitBlob({ route: r, method: 'GET', client: CLIENT, digest });

describe('roles: nothing is laundered through an admission', () => {
  it('a denied manifest listed as a layer of an admitted image is still decided as a manifest, and its layers stay out', async () => {
    const evil = image(d('c'), [d('e')]);
    const clean = image(d('1'), [d('2'), { digest: evil.digest, mediaType: LAYER_TAR }]);
    const decider = new ScriptedDecider('r1', (i) => (i.image.digest === evil.digest ? deny('3 CRITICAL vulnerabilities', 'scan.limit') : ALLOW));
    const g = gate(decider);
    expect((await root(g, evil)).serve).toBe(false);
    expect((await root(g, clean)).serve).toBe(true);
    // As a blob, the clean image's decision covers those bytes; as a manifest, nothing vouches for them.
    expect(g.vouchedBy(R, evil.digest, 'blob')).toBe(clean.digest);
    expect(g.vouchedBy(R, evil.digest, 'manifest')).toBeUndefined();
    const a = await byDigest(g, evil);
    expect(a.serve).toBe(false);
    expect(a.message).toContain('CRITICAL');
    expect(decider.calls.at(-1)!.image).toMatchObject({ digest: evil.digest, tag: null });
    expect(decider.calls.at(-1)!.image.parent).toBeUndefined();
    expect(await blob(g, d('e'))).toEqual({ serve: false, denial: undefined });
    expect(await blob(g, d('c'))).toEqual({ serve: false, denial: undefined });
  });

  it('a child manifest and the root never vouch for a blob request', async () => {
    const amd = image(d('a'), [d('b')]);
    const idx = index([{ m: amd, platform: { os: 'linux', architecture: 'amd64' } }]);
    const g = gate(new ScriptedDecider('r1'));
    await root(g, idx);
    expect((await blob(g, amd.digest)).serve).toBe(false);
    expect((await blob(g, idx.digest)).serve).toBe(false);
  });
});

describe('children are decided with their own evidence', () => {
  it('a denied child is refused and named; its siblings are served; the child’s layers stay out', async () => {
    const amd = image(d('a'), [d('b')]);
    const arm = image(d('e'), [d('f')]);
    const idx = index([
      { m: amd, platform: { os: 'linux', architecture: 'amd64' } },
      { m: arm, platform: { os: 'linux', architecture: 'arm64' } },
    ]);
    const decider = new ScriptedDecider('r1', (i) =>
      i.image.digest === arm.digest ? deny('1 CRITICAL vulnerability (CVE-2026-7777) exceeds limit 0', 'scan.limit') : ALLOW,
    );
    const g = gate(decider);
    expect((await root(g, idx)).serve).toBe(true);
    const bad = await byDigest(g, arm);
    expect(bad.serve).toBe(false);
    expect(bad.message).toContain('CVE-2026-7777');
    expect((await byDigest(g, amd)).serve).toBe(true);
    expect((await blob(g, d('b'))).serve).toBe(true);
    expect((await blob(g, d('f'))).serve).toBe(false);
    // Decided once each, lazily: the index, then each child when asked for.
    expect(decider.calls.map((c) => c.image.digest)).toEqual([idx.digest, arm.digest, amd.digest]);
  });

  it('an attestation-annotated runnable child and a nested index are decided, whatever their annotations', async () => {
    const smuggled = image(d('a'), [d('b')]);
    const inner = image(d('5'), [d('6')]);
    const nested = index([{ m: inner, platform: { os: 'windows', architecture: 'amd64', 'os.version': '10.0.20348.2113' } }]);
    const idx = index([
      {
        m: smuggled,
        platform: { os: 'unknown', architecture: 'unknown' },
        annotations: { 'vnd.docker.reference.type': 'attestation-manifest', 'vnd.docker.reference.digest': d('0') },
      },
      { m: nested },
    ]);
    const decider = new ScriptedDecider('r1', (i) => (i.image.digest === smuggled.digest || i.image.digest === inner.digest ? deny('denied child') : ALLOW));
    const g = gate(decider);
    await root(g, idx);
    expect((await byDigest(g, smuggled)).serve).toBe(false);
    expect((await byDigest(g, nested)).serve).toBe(true);
    expect((await byDigest(g, inner)).serve).toBe(false);
    const innerInput = decider.calls.find((c) => c.image.digest === inner.digest)!;
    expect(innerInput.image).toMatchObject({
      parent: { digest: nested.digest },
      root: { digest: idx.digest, tag: 'v1' },
      platform: { os: 'windows', os_version: '10.0.20348.2113' },
      runnable: true,
      manifest_kind: 'image',
    });
    expect((await blob(g, d('6'))).serve).toBe(false);
  });

  it('a child that cannot run (an attestation manifest) rides on its index without a decision of its own', async () => {
    const att = image(d('a'), [{ digest: d('b'), mediaType: 'application/vnd.in-toto+json' }]);
    const amd = image(d('c'), [d('e')]);
    const idx = index([
      { m: amd, platform: { os: 'linux', architecture: 'amd64' } },
      { m: att, annotations: { 'vnd.docker.reference.type': 'attestation-manifest' } },
    ]);
    const decider = new ScriptedDecider('r1');
    const g = gate(decider);
    await root(g, idx);
    expect((await byDigest(g, att)).serve).toBe(true);
    expect(decider.calls).toHaveLength(1);
    expect((await blob(g, d('b'))).serve).toBe(true);
  });

  it('a child’s signature evidence includes what was verified for the index that admitted it', async () => {
    const amd = image(d('a'), [d('b')]);
    const idx = index([{ m: amd, platform: { os: 'linux', architecture: 'amd64' } }]);
    const verified = { authority: 'release-team', kind: 'cosign-key' as const, format: 'cosign-legacy' as const };
    const sig: SignatureProvider = {
      trustRevision: 't1',
      signatures: (ctx) =>
        Promise.resolve({
          signatures:
            ctx.digest === idx.digest
              ? { status: 'ok', verified: [verified], rejected: [] }
              : { status: 'none', verified: [], rejected: [{ authority: 'release-team', reason: 'no signature found', code: 'NO_SIGNATURE' as const }] },
          attestations: [],
        }),
    };
    const decider = new ScriptedDecider('r1', (i) =>
      i.signatures.verified.some((v) => v.authority === 'release-team') ? ALLOW : deny('signature required', 'signature.required'),
    );
    const g = gate(decider, {}, sig);
    await root(g, idx);
    expect((await byDigest(g, amd)).serve).toBe(true);
    expect(decider.calls[1]!.signatures).toMatchObject({ status: 'ok', verified: [{ ...verified, signed_digest: idx.digest }] });
    // The same child asked for on its own (no admitted index lists it in this repository) has only its own.
    expect((await byDigest(g, amd, route('library/other'))).serve).toBe(false);
  });

  it('the policy input says what a manifest is', async () => {
    const chart = image(d('a'), [{ digest: d('b'), mediaType: 'application/vnd.cncf.helm.chart.content.v1.tar+gzip' }], {
      artifactType: 'application/vnd.cncf.helm.config.v1+json',
    });
    const decider = new ScriptedDecider('r1');
    await root(gate(decider), chart);
    expect(decider.calls[0]!.image).toMatchObject({
      manifest_kind: 'image',
      artifact_type: 'application/vnd.cncf.helm.config.v1+json',
      config_media_type: 'application/vnd.oci.image.config.v1+json',
      runnable: false,
    });
  });
});

describe('admissions are bound to their basis', () => {
  it('after a policy change a blob re-decides its root inline: served when still allowed, refused with the reason when not', async () => {
    const img = image(d('c'), [d('1')]);
    const decider = new ScriptedDecider('r1');
    const g = gate(decider);
    await root(g, img, 'prod');
    expect((await blob(g, d('1'))).serve).toBe(true);
    expect(decider.calls).toHaveLength(1);
    decider.revision = 'r2';
    expect(g.vouchedBy(R, d('1'), 'blob')).toBeUndefined();
    expect(await blob(g, d('1'))).toEqual({ serve: true, root: img.digest });
    expect(decider.calls).toHaveLength(2);
    expect(decider.calls[1]!.image).toMatchObject({ digest: img.digest, tag: 'prod' });
    expect((await blob(g, d('c'))).serve).toBe(true);
    expect(decider.calls).toHaveLength(2);
    decider.revision = 'r3';
    decider.answer = () => deny('registry "docker.io" is not allowed', 'registry.not_allowed');
    const v = await blob(g, d('1'));
    expect(v.serve).toBe(false);
    expect(v.serve === false && v.denial?.message).toContain('registry.not_allowed');
    // The deny is on record: later requests get the reason without another decision.
    const again = await blob(g, d('c'));
    expect(again.serve === false && again.denial?.message).toContain('is not allowed');
    expect(decider.calls).toHaveLength(3);
  });

  it('a restart with other settings, or a rotated trust root, re-decides the root and the child before a child’s blob', async () => {
    const amd = image(d('a'), [d('b')]);
    const idx = index([{ m: amd, platform: { os: 'linux', architecture: 'amd64' } }]);
    const sig = {
      trustRevision: 't1',
      signatures: () => Promise.resolve({ signatures: { status: 'none' as const, verified: [], rejected: [] }, attestations: [] }),
    };
    const first = new ScriptedDecider('r1');
    const g1 = gate(first, {}, sig);
    await root(g1, idx);
    await byDigest(g1, amd);
    meta.close();
    meta = new SqliteMetaStore(dir);
    const second = new ScriptedDecider('r1');
    const g2 = gate(second, { settingsHash: 's2' }, sig);
    expect((await blob(g2, d('b'))).serve).toBe(true);
    expect(second.calls.map((c) => [c.image.digest, c.image.tag])).toEqual([
      [idx.digest, 'v1'],
      [amd.digest, null],
    ]);
    expect((await blob(g2, d('b'))).serve).toBe(true);
    expect(second.calls).toHaveLength(2);
    sig.trustRevision = 't2';
    second.answer = (i) => (i.image.digest === amd.digest ? deny('no signature verified', 'signature.required') : ALLOW);
    const v = await blob(g2, d('b'));
    expect(v.serve === false && v.denial?.message).toContain('signature.required');
    expect(second.calls).toHaveLength(4);
  });

  it('the same config and policy after a restart serve without a decision', async () => {
    const img = image(d('c'), [d('1')]);
    await root(gate(new ScriptedDecider('r1')), img);
    meta.close();
    meta = new SqliteMetaStore(dir);
    const decider = new ScriptedDecider('r1');
    expect((await blob(gate(decider), d('1'))).serve).toBe(true);
    expect(decider.calls).toHaveLength(0);
  });
});

describe('one client’s denied tag does not cut off another’s admission of the same bytes', () => {
  it('a deny for tag X of digest D leaves D’s admission for tag Y serving', async () => {
    const img = image(d('c'), [d('1')]);
    const g = gate(new ScriptedDecider('r1', (i) => (i.image.tag === 'latest' ? deny('tag "latest" is not allowed', 'tag.denied') : ALLOW)));
    expect((await root(g, img, '1.0')).serve).toBe(true);
    expect((await root(g, img, 'latest')).serve).toBe(false);
    expect((await blob(g, d('1'))).serve).toBe(true);
  });
});

describe('upgrade', () => {
  it('closures from before admissions had a basis are re-decided on their next request, not served on their own', async () => {
    meta.close();
    const img = image(d('c'), [d('1')]);
    const old = new DatabaseSync(join(dir, 'meta.sqlite'));
    old.exec(`DROP TABLE IF EXISTS admissions; DROP TABLE IF EXISTS closure_members;
      CREATE TABLE closures (upstream TEXT NOT NULL, repository TEXT NOT NULL, member TEXT NOT NULL, root TEXT NOT NULL,
        kind TEXT NOT NULL, expires_at INTEGER NOT NULL, PRIMARY KEY (upstream, repository, member, root)) WITHOUT ROWID;
      PRAGMA user_version = 0; -- a file from before schema versions`);
    const put = old.prepare('INSERT INTO closures VALUES (?, ?, ?, ?, ?, ?)');
    for (const [member, kind] of [
      [img.digest, 'manifest'],
      [d('c'), 'blob'],
      [d('1'), 'blob'],
    ] as const)
      put.run('dockerhub', 'library/app', member, img.digest, kind, clock + 60_000);
    old.close();
    meta = new SqliteMetaStore(dir);
    const decider = new ScriptedDecider('r1');
    const g = gate(decider);
    expect(g.vouchedBy(R, d('1'), 'blob')).toBeUndefined();
    expect((await blob(g, d('1'))).serve).toBe(true);
    expect(decider.calls.map((c) => [c.image.digest, c.image.tag])).toEqual([[img.digest, null]]);
    expect(g.vouchedBy(R, d('c'), 'blob')).toBe(img.digest);
  });
});

describe('bounded state', () => {
  it('prune() removes expired admissions and members, at most pruneBatch of each per run', async () => {
    const g = gate(new ScriptedDecider('r1'), { closureTTL: 1000, pruneBatch: 3 });
    for (let i = 0; i < 4; i++) await root(g, image(d(String(i)), [d('a'), d('b')]));
    expect(g.prune()).toEqual({ admissions: 0, members: 0 });
    clock += 1001;
    // 4 admissions and 12 members (a config and two layers each).
    expect(g.prune()).toEqual({ admissions: 3, members: 3 });
    expect(g.prune()).toEqual({ admissions: 1, members: 3 });
    expect(g.prune()).toEqual({ admissions: 0, members: 3 });
    expect(g.prune()).toEqual({ admissions: 0, members: 3 });
    expect(g.prune()).toEqual({ admissions: 0, members: 0 });
  });

  it('the decision cache stays within its size for names clients invent', async () => {
    const g = gate(new ScriptedDecider('r1'), { decisionCacheSize: 50 });
    for (let i = 0; i < 500; i++) await g.admitRepository({ route: route(`invented/n${i}`), method: 'GET', client: CLIENT, kind: 'tags' });
    expect(g.cachedDecisions).toBe(50);
  });

  it('a repository-level request has no digest and no evidence', async () => {
    const decider = new ScriptedDecider('r1', () => deny('no policy scope covers "docker.io/library/app"', 'scope.no_match'));
    const a = await gate(decider).admitRepository({ route: R, method: 'GET', client: CLIENT, kind: 'referrers' });
    expect(a.serve).toBe(false);
    expect(decider.calls[0]).toMatchObject({
      request: { kind: 'referrers' },
      image: { registry: 'docker.io', repository: 'library/app', digest: null, tag: null },
    });
  });
});
