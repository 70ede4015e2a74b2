import { LRUCache } from 'lru-cache';
import { afterAll, afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { SqliteMetaStore, type MetaStore } from '../../src/cache/metastore.js';
import { Gate, type DecisionObserver, type GateOptions, type RootRequest } from '../../src/gate/gate.js';
import type { Decider, PolicyInput, PolicyResult, ScanProvider, SignatureProvider } from '../../src/policy/contract.js';
import { OCI_INDEX, OCI_MANIFEST, parseManifest } from '../../src/oci/mediatypes.js';
import type { Manifest } from '../../src/proxy/manifests.js';
import type { Digest } from '../../src/routing/reference.js';
import { Router, type Route } from '../../src/routing/route.js';
import { cleanupTempDirs, makeConfig, sha256, tempDir, until } from './helpers.js';

afterAll(cleanupTempDirs);

const config = makeConfig({
  upstreams: [
    { name: 'dockerhub', registry: 'docker.io', url: 'https://registry-1.docker.io' },
    { name: 'ghcr', registry: 'ghcr.io', url: 'https://ghcr.io' },
  ],
  defaultUpstream: 'dockerhub',
});
const router = new Router(config);
function route(name: string, ns?: string): Route {
  const r = router.resolve(name, ns);
  if ('code' in r) throw new Error(r.message);
  return r;
}

const d = (c: string) => `sha256:${c.repeat(64)}` as Digest;
const CONFIG = d('c');
const LAYER1 = d('1');
const LAYER2 = d('2');

function manifestOf(doc: Record<string, unknown>): Manifest {
  const bytes = Buffer.from(JSON.stringify(doc));
  const parsed = parseManifest(bytes, undefined);
  const m: Manifest = { digest: sha256(bytes), mediaType: parsed.mediaType, bytes, parsed };
  known.set(m.digest, m);
  return m;
}

function image(config = CONFIG, layers = [LAYER1, LAYER2]): Manifest {
  return manifestOf({
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: config, size: 1 },
    layers: layers.map((l) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: l, size: 2 })),
  });
}

function index(children: Manifest[]): Manifest {
  return manifestOf({
    schemaVersion: 2,
    mediaType: OCI_INDEX,
    manifests: children.map((c, i) => ({
      mediaType: OCI_MANIFEST,
      digest: c.digest,
      size: c.bytes.length,
      platform: { os: 'linux', architecture: ['amd64', 'arm64'][i % 2] },
    })),
    annotations: { 'org.opencontainers.image.created': '2026-01-01T00:00:00Z' },
  });
}

class FakeDecider implements Decider {
  calls: PolicyInput[] = [];
  /** While set, an evaluation stays in flight until this settles. */
  hold: Promise<void> | undefined;
  constructor(
    public revision: string,
    public answer: PolicyResult | ((input: PolicyInput) => PolicyResult) | Error,
  ) {}
  async evaluate(input: PolicyInput): Promise<PolicyResult> {
    this.calls.push(input);
    if (this.hold) await this.hold;
    if (this.answer instanceof Error) throw this.answer;
    return typeof this.answer === 'function' ? this.answer(input) : this.answer;
  }
}

const ALLOW: PolicyResult = { allow: true, deny: [], warn: [], scope: 'all', mode: 'enforce' };
const denyWith = (mode: PolicyResult['mode'] = 'enforce'): PolicyResult => ({
  allow: false,
  deny: [{ rule: 'tag.denied', message: 'tag "latest" is not allowed' }],
  warn: [],
  scope: 'all',
  mode,
});

const OPTS = { allowTTL: 600_000, denyTTL: 30_000, closureTTL: 3_600_000 };

let meta: MetaStore;
let clock: number;
const now = () => clock;
beforeEach(() => {
  meta = new SqliteMetaStore(tempDir());
  clock = Date.UTC(2026, 5, 1);
});
afterEach(() => meta.close());

function req(r: Route, manifest: Manifest, extra: Partial<RootRequest> = {}): RootRequest {
  return {
    route: r,
    method: 'GET',
    tag: 'latest',
    manifest,
    kind: 'manifest',
    client: { ip: '10.0.0.1', user: null, groups: [], method: 'anonymous', userAgent: 'containerd/2' },
    ...extra,
  };
}

/** The manifests the gate may read back to decide a root again (the server gives it the manifest service). */
const known = new Map<string, Manifest>();
const manifests = {
  get: (_r: Route, digest: Digest) => (known.has(digest) ? Promise.resolve(known.get(digest)!) : Promise.reject(new Error(`unknown ${digest}`))),
};
const CLIENT = { ip: '10.0.0.1', user: null, groups: [], method: 'anonymous', userAgent: 'containerd/2' };

function gate(decider: Decider, observers: DecisionObserver[] = [], sig?: SignatureProvider, scan?: ScanProvider, extra: Partial<GateOptions> = {}): Gate {
  return new Gate({ decider, meta, options: { ...OPTS, manifests, ...extra }, signatures: sig, scan, observers, now });
}

function byDigest(g: Gate, r: Route, manifest: Manifest) {
  return g.admitByDigest({ route: r, method: 'GET', client: CLIENT, manifest });
}

describe('Gate: closures', () => {
  it('an allow records the closure of an image: config and layers as blobs, in that repository only', async () => {
    const g = gate(new FakeDecider('r1', ALLOW));
    const nginx = route('library/nginx');
    const img = image();
    const a = await g.admitRoot(req(nginx, img));
    expect(a).toMatchObject({ serve: true, outcome: 'allow', cached: false, violations: [] });
    for (const m of [CONFIG, LAYER1, LAYER2]) expect(g.vouchedBy(nginx, m, 'blob')).toBe(img.digest);
    // Roles: the root is no blob, and its layers are no manifests.
    expect(g.vouchedBy(nginx, img.digest, 'blob')).toBeUndefined();
    expect(g.vouchedBy(nginx, LAYER1, 'manifest')).toBeUndefined();
    expect(g.vouchedBy(nginx, d('9'), 'blob')).toBeUndefined();
    expect(g.vouchedBy(route('library/redis'), LAYER1, 'blob')).toBeUndefined();
    expect(g.vouchedBy(route('ghcr.io/library/nginx'), LAYER1, 'blob')).toBeUndefined();
  });

  it('an allowed index lists its children as manifests; a child’s blobs join once the child is admitted on its own decision', async () => {
    const decider = new FakeDecider('r1', ALLOW);
    const g = gate(decider);
    const r = route('library/nginx');
    const amd = image(d('a'), [d('b')]);
    const arm = image(d('e'), [d('f')]);
    const idx = index([amd, arm]);
    await g.admitRoot(req(r, idx));
    expect(g.vouchedBy(r, amd.digest, 'manifest')).toBe(idx.digest);
    expect(g.vouchedBy(r, arm.digest, 'manifest')).toBe(idx.digest);
    expect(g.vouchedBy(r, amd.digest, 'blob')).toBeUndefined();
    expect(g.vouchedBy(r, d('b'), 'blob')).toBeUndefined(); // blobs of a child are not known until the child is admitted
    expect((await byDigest(g, r, amd)).serve).toBe(true);
    expect(decider.calls).toHaveLength(2);
    expect(decider.calls[1]!.image).toMatchObject({
      digest: amd.digest,
      tag: null,
      parent: { digest: idx.digest },
      root: { digest: idx.digest, tag: 'latest' },
      platform: { os: 'linux', architecture: 'amd64' },
    });
    expect(g.vouchedBy(r, d('a'), 'blob')).toBe(idx.digest);
    expect(g.vouchedBy(r, d('b'), 'blob')).toBe(idx.digest);
    expect(g.vouchedBy(r, d('f'), 'blob')).toBeUndefined();
  });

  it("a child's input holds its own attestations and its index's, each with the digest its statement is about", async () => {
    const decider = new FakeDecider('r1', ALLOW);
    const sbom = { predicate_type: 'https://spdx.dev/Document', authority: 'release', predicate: {} };
    const provenance = { predicate_type: 'https://slsa.dev/provenance/v1', authority: 'release', predicate: {} };
    const r = route('library/nginx');
    const amd = image(d('a'), [d('b')]);
    const idx = index([amd, image(d('e'), [d('f')])]);
    const sig: SignatureProvider = {
      trustRevision: 't1',
      signatures: (ctx) =>
        Promise.resolve({
          signatures: { status: 'none', verified: [], rejected: [] },
          attestations: ctx.digest === idx.digest ? [provenance] : [sbom],
          attestations_rejected: [{ predicate_type: null, reason: `from ${ctx.digest.slice(7, 10)}`, code: 'UNUSABLE_SIGNATURE' }],
        }),
    };
    const g = gate(decider, [], sig);
    await g.admitRoot(req(r, idx));
    expect(decider.calls[0]!.attestations).toEqual([{ ...provenance, subject_digest: idx.digest }]);
    await byDigest(g, r, amd);
    const child = decider.calls[1]!;
    expect(child.attestations).toEqual([
      { ...sbom, subject_digest: amd.digest },
      { ...provenance, subject_digest: idx.digest },
    ]);
    expect(child.attestations_rejected?.map((x) => x.reason)).toEqual([`from ${amd.digest.slice(7, 10)}`, `from ${idx.digest.slice(7, 10)}`]);
  });

  it('forgetDigest drops the decisions and closures of every root that is or holds the digest, in every repository', async () => {
    const decider = new FakeDecider('r1', ALLOW);
    const g = gate(decider);
    const a = route('library/nginx');
    const b = route('team/nginx-copy');
    const amd = image(d('a'), [d('b')]);
    const arm = image(d('e'), [d('f')]);
    const idx = index([amd, arm]);
    const other = image(d('7'), [d('8')]);
    for (const r of [a, b]) await g.admitRoot(req(r, idx));
    await byDigest(g, a, amd);
    await g.admitRoot(req(a, other));
    expect(decider.calls).toHaveLength(4);
    expect((await g.admitRoot(req(a, idx))).cached).toBe(true);

    // A report for one platform manifest changes the evidence of the index that holds it: the index in both
    // repositories, and the platform's own decision under it.
    expect(g.forgetDigest(amd.digest)).toBe(3);
    for (const r of [a, b]) for (const m of [amd.digest, arm.digest]) expect(g.vouchedBy(r, m, 'manifest')).toBeUndefined();
    expect(g.vouchedBy(a, d('b'), 'blob')).toBeUndefined();
    // Unrelated images keep their decision and closure.
    expect(g.vouchedBy(a, d('8'), 'blob')).toBe(other.digest);
    expect((await g.admitRoot(req(a, other))).cached).toBe(true);
    // The next pull of the index decides afresh, and admits it again.
    expect((await g.admitRoot(req(a, idx))).cached).toBe(false);
    expect(decider.calls).toHaveLength(5);
    expect(g.vouchedBy(a, amd.digest, 'manifest')).toBe(idx.digest);
    expect(g.forgetDigest(d('9'))).toBe(0);
  });

  it('forgetDigest and forgetRoot never walk every cached decision (they look the digest up: issue 16)', async () => {
    const decider = new FakeDecider('r1', ALLOW);
    const g = gate(decider);
    const r = route('library/nginx');
    const target = image(d('a'), [d('b')]);
    await g.admitRoot(req(r, target));
    const other = image(d('7'), [d('8')]);
    for (let i = 0; i < 200; i++) await g.admitRoot(req(route(`many/r${i}`), other));
    const walks = (['keys', 'rkeys', 'entries', 'rentries', 'values', 'rvalues', 'forEach', 'rforEach', 'dump'] as const).map((m) =>
      vi.spyOn(LRUCache.prototype, m),
    );
    try {
      expect(g.forgetDigest(target.digest)).toBe(1);
      g.forgetRoot(other.digest);
      for (const w of walks) expect(w).not.toHaveBeenCalled();
    } finally {
      for (const w of walks) w.mockRestore();
    }
    expect(g.cachedDecisions).toBe(0);
  });

  it('closures expire after closureTTL', async () => {
    const g = gate(new FakeDecider('r1', ALLOW));
    const r = route('library/nginx');
    await g.admitRoot(req(r, image()));
    clock += OPTS.closureTTL - 1;
    expect(g.vouchedBy(r, LAYER1, 'blob')).toBeDefined();
    clock += 2;
    expect(g.vouchedBy(r, LAYER1, 'blob')).toBeUndefined();
  });

  it('a deny records nothing, and drops the closure of an earlier allow', async () => {
    const r = route('library/nginx');
    const img = image();
    const denier = new FakeDecider('r1', denyWith());
    const g = gate(denier);
    const a = await g.admitRoot(req(r, img));
    expect(a).toMatchObject({ serve: false, outcome: 'deny', mode: 'enforce' });
    expect(a.message).toContain('tag "latest" is not allowed');
    expect(a.message).toContain('tag.denied');
    expect(g.vouchedBy(r, LAYER1, 'blob')).toBeUndefined();

    // A policy swap as the PolicyManager does it: the decider answers on a new revision and tells the gate.
    denier.revision = 'r2';
    denier.answer = ALLOW;
    g.policyChanged();
    await g.admitRoot(req(r, img));
    expect(g.vouchedBy(r, LAYER1, 'blob')).toBe(img.digest);
    denier.revision = 'r3';
    denier.answer = denyWith();
    g.policyChanged();
    expect((await g.admitRoot(req(r, img))).serve).toBe(false);
    expect(g.vouchedBy(r, LAYER1, 'blob')).toBeUndefined();
    expect(g.vouchedBy(r, img.digest, 'blob')).toBeUndefined();
  });

  it('allow: false with no deny entries is still a deny', async () => {
    const g = gate(new FakeDecider('r1', { allow: false, deny: [], warn: [], scope: null, mode: 'enforce' }));
    const a = await g.admitRoot(req(route('library/nginx'), image()));
    expect(a).toMatchObject({ serve: false, outcome: 'deny' });
  });

  it('allow: true with deny entries is a deny', async () => {
    const g = gate(new FakeDecider('r1', { ...denyWith(), allow: true }));
    expect((await g.admitRoot(req(route('library/nginx'), image()))).serve).toBe(false);
  });
});

describe('Gate: fail closed', () => {
  it('a decider that throws gives a deny with rule policy.error', async () => {
    const g = gate(new FakeDecider('r1', new Error('wasm trap: unreachable')));
    const r = route('library/nginx');
    const a = await g.admitRoot(req(r, image()));
    expect(a.serve).toBe(false);
    expect(a.outcome).toBe('deny');
    expect(a.mode).toBe('enforce');
    expect(a.violations).toEqual([{ rule: 'policy.error', message: expect.stringContaining('wasm trap: unreachable') as string }]);
    expect(g.vouchedBy(r, LAYER1, 'blob')).toBeUndefined();
  });

  it('a decider that rejects with a non-Error, or returns garbage, also denies', async () => {
    // eslint-disable-next-line @typescript-eslint/prefer-promise-reject-errors -- a misbehaving decider is the point
    const weird: Decider = { revision: 'w', evaluate: () => Promise.reject('just a string') };
    expect((await gate(weird).admitRoot(req(route('library/nginx'), image()))).violations[0]?.rule).toBe('policy.error');
    const garbage: Decider = { revision: 'g', evaluate: () => Promise.resolve({ allow: true } as unknown as PolicyResult) };
    const a = await gate(garbage).admitRoot(req(route('library/redis'), image()));
    expect(a.serve).toBe(false);
    expect(a.violations[0]?.rule).toBe('policy.error');
  });

  it('failing evidence providers become error evidence, never an exception', async () => {
    const decider = new FakeDecider('r1', ALLOW);
    const sig: SignatureProvider = { trustRevision: 't', signatures: () => Promise.reject(new Error('rekor down')) };
    const scan: ScanProvider = { scan: () => Promise.reject(new Error('scanner down')) };
    await gate(decider, [], sig, scan).admitRoot(req(route('library/nginx'), image()));
    const input = decider.calls[0]!;
    expect(input.signatures.status).toBe('error');
    expect(input.signatures.rejected[0]?.reason).toContain('rekor down');
    expect(input.scan.status).toBe('error');
  });
});

describe('Gate: modes', () => {
  it('warn serves with outcome warn; dry-run serves with outcome dry-run-deny; both record the closure', async () => {
    const r = route('library/nginx');
    const warnImg = image(d('3'), [d('4')]);
    const warnGate = gate(new FakeDecider('w', denyWith('warn')));
    const warn = await warnGate.admitRoot(req(r, warnImg));
    expect(warn).toMatchObject({ serve: true, outcome: 'warn', mode: 'warn' });
    expect(warn.message).toContain('tag.denied');
    const g = gate(new FakeDecider('d', denyWith('dry-run')));
    const dry = await g.admitRoot(req(r, image()));
    expect(dry).toMatchObject({ serve: true, outcome: 'dry-run-deny', mode: 'dry-run' });
    expect(g.vouchedBy(r, LAYER1, 'blob')).toBeDefined();
    expect(warnGate.vouchedBy(r, d('4'), 'blob')).toBeDefined();
  });

  it('an allow in warn mode is a plain allow carrying the warnings', async () => {
    const a = await gate(new FakeDecider('w', { ...ALLOW, mode: 'warn', warn: [{ rule: 'scan.pending', message: 'scan pending' }] })).admitRoot(
      req(route('library/nginx'), image()),
    );
    expect(a).toMatchObject({ serve: true, outcome: 'allow', warnings: [{ rule: 'scan.pending', message: 'scan pending' }] });
    expect(a.message).toContain('scan pending');
  });
});

describe('Gate: decision cache', () => {
  it('reuses a decision for the same (upstream, repository, digest, tag, kind, revision)', async () => {
    const decider = new FakeDecider('r1', ALLOW);
    const hits: string[] = [];
    const g = gate(decider, [{ onDecision: () => {}, onCacheHit: (rt) => hits.push(rt.repository) }]);
    const r = route('library/nginx');
    const img = image();
    const first = await g.admitRoot(req(r, img));
    const second = await g.admitRoot(req(r, img, { method: 'HEAD' }));
    expect(decider.calls).toHaveLength(1);
    expect(second.cached).toBe(true);
    expect(second.decisionId).toBe(first.decisionId);
    expect(hits).toEqual(['library/nginx']);
    // Anything in the key changes: a new evaluation.
    await g.admitRoot(req(r, img, { tag: '1.27' }));
    await g.admitRoot(req(r, img, { kind: 'accessory' }));
    await g.admitRoot(req(route('library/redis'), img));
    await g.admitRoot(req(route('ghcr.io/library/nginx'), img));
    await g.admitRoot(req(r, image(d('7'))));
    expect(decider.calls).toHaveLength(6);
  });

  it('a new policy revision re-evaluates, whether announced (policyChanged, the PolicyManager swap) or only seen in the decider’s revision', async () => {
    const decider = new FakeDecider('r1', ALLOW);
    const g = gate(decider);
    const rq = req(route('library/nginx'), image());
    await g.admitRoot(rq);
    await g.admitRoot(rq);
    expect(decider.calls).toHaveLength(1);
    decider.revision = 'r2';
    decider.answer = denyWith();
    expect((await g.admitRoot(rq)).serve).toBe(false);
    expect(decider.calls).toHaveLength(2);
    decider.revision = 'r3';
    decider.answer = ALLOW;
    g.policyChanged();
    expect(g.policyRevision).toBe('r3');
    expect((await g.admitRoot(rq)).serve).toBe(true);
    expect(decider.calls).toHaveLength(3);
  });

  it('a new trust revision re-evaluates', async () => {
    const decider = new FakeDecider('r1', ALLOW);
    const sig = {
      trustRevision: 't1',
      signatures: () => Promise.resolve({ signatures: { status: 'none' as const, verified: [], rejected: [] }, attestations: [] }),
    };
    const g = gate(decider, [], sig);
    const rq = req(route('library/nginx'), image());
    await g.admitRoot(rq);
    sig.trustRevision = 't2';
    await g.admitRoot(rq);
    expect(decider.calls).toHaveLength(2);
  });

  it('allows and denies expire after their own TTLs', async () => {
    const decider = new FakeDecider('r1', denyWith());
    const g = gate(decider);
    const rq = req(route('library/nginx'), image());
    await g.admitRoot(rq);
    clock += OPTS.denyTTL - 1;
    expect((await g.admitRoot(rq)).cached).toBe(true);
    clock += 2;
    decider.answer = ALLOW;
    expect((await g.admitRoot(rq)).cached).toBe(false);
    clock += OPTS.denyTTL + 1;
    expect((await g.admitRoot(rq)).cached).toBe(true);
    clock += OPTS.allowTTL;
    expect((await g.admitRoot(rq)).cached).toBe(false);
    expect(decider.calls).toHaveLength(3);
  });

  it('a cached allow re-records a lapsed closure', async () => {
    const g = gate(new FakeDecider('r1', ALLOW), [], undefined, undefined, { closureTTL: 1000 });
    const r = route('library/nginx');
    const rq = req(r, image());
    await g.admitRoot(rq);
    clock += 2000;
    expect(g.vouchedBy(r, LAYER1, 'blob')).toBeUndefined();
    expect((await g.admitRoot(rq)).cached).toBe(true);
    expect(g.vouchedBy(r, LAYER1, 'blob')).toBeDefined();
  });

  it('concurrent identical requests evaluate once and share the answer', async () => {
    const decider = new FakeDecider('r1', ALLOW);
    let release = (): void => {};
    decider.hold = new Promise<void>((r) => (release = r));
    const seen: string[] = [];
    const g = gate(decider, [{ onDecision: (e) => seen.push(e.admission.decisionId) }]);
    const rq = req(route('library/nginx'), image());
    // All 25 are issued before the first evaluation starts, and it does not finish until they have all been.
    const pending = Promise.all(Array.from({ length: 25 }, () => g.admitRoot(rq)));
    await until(() => decider.calls.length > 0, 'the first evaluation');
    release();
    const all = await pending;
    expect(decider.calls).toHaveLength(1);
    expect(new Set(all.map((a) => a.decisionId)).size).toBe(1);
    expect(seen).toHaveLength(1);
  });
});

describe('Gate: policy input and observers', () => {
  it('builds input version 1 from the request, the route and the manifest', async () => {
    const decider = new FakeDecider('r1', ALLOW);
    const amd = image(d('a'), [d('b')]);
    const idx = index([amd, image(d('e'), [d('f')])]);
    await gate(decider).admitRoot(req(route('library/nginx', 'docker.io'), idx, { method: 'HEAD', tag: '1.27' }));
    const input = decider.calls[0]!;
    expect(input).toMatchObject({
      version: 1,
      now: '2026-06-01T00:00:00.000Z',
      request: { kind: 'manifest', method: 'HEAD', client: { ip: '10.0.0.1', user: null, user_agent: 'containerd/2' }, routing: 'ns' },
      image: {
        registry: 'docker.io',
        repository: 'library/nginx',
        tag: '1.27',
        digest: idx.digest,
        media_type: OCI_INDEX,
        platforms: ['linux/amd64', 'linux/arm64'],
        created: '2026-01-01T00:00:00Z',
      },
      upstream: { name: 'dockerhub', url: 'https://registry-1.docker.io' },
      signatures: { status: 'not_configured' },
      scan: { status: 'not_configured', code: 'NOT_CONFIGURED' },
    });
  });

  it('tells observers about every evaluated decision; a throwing observer changes nothing', async () => {
    const events: Array<{ outcome: string; revision: string; result: PolicyResult | undefined }> = [];
    const g = gate(new FakeDecider('r9', ALLOW), [
      {
        onDecision: () => {
          throw new Error('log sink exploded');
        },
      },
      { onDecision: (e) => events.push({ outcome: e.admission.outcome, revision: e.revision, result: e.result }) },
    ]);
    const r = route('library/nginx');
    const a = await g.admitRoot(req(r, image()));
    expect(a.serve).toBe(true);
    expect(g.vouchedBy(r, LAYER1, 'blob')).toBeDefined();
    expect(events).toEqual([{ outcome: 'allow', revision: 'r9', result: ALLOW }]);
  });
});
