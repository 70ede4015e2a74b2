/**
 * The admission gate: every manifest a client gets passed it first. A root manifest, asked for by tag or by a digest that no admitted index lists,
 * gets a policy decision. An admission records what the manifest lists, each member in its role (closures.ts):
 * an index's child manifests, an image's config and layers. A runnable child of an admitted index gets a decision
 * of its own when it is first asked for (its own scan, the index's signatures); its config and layers join the
 * closure only when it is allowed. Everything else by digest is refused, which closes the by-digest bypass.
 *
 * Every decision is bound to its basis (policy revision, settings hash, trust revision: basis.ts), and so is every
 * admission. After any change, a child or blob is served only once its root (and child) is decided again under the
 * new basis; that happens inline, on the request, so a change that still allows an image never fails a running pull.
 *
 * Fail closed: an exception anywhere in evidence or policy evaluation becomes a deny whose message carries it.
 */
import { randomUUID } from 'node:crypto';
import type { MetaStore } from '../cache/metastore.js';
import type { EpochSource, SharedState } from '../cache/shared.js';
import { measureUpstreamWait } from '../metrics/upstream-wait.js';
import type { Manifest } from '../proxy/manifests.js';
import { parseManifest } from '../oci/mediatypes.js';
import type { Digest } from '../routing/reference.js';
import type { Route } from '../routing/route.js';
import { basisKey, type Basis } from './basis.js';
import { Closures, type BlobVerdict, type ClosuresOptions } from './closures.js';
import { DecisionCache } from './decision-cache.js';
import { buildInput, errorAdmission, mergeSignatures, NO_EVIDENCE, toAdmission, type Client, type Evidence, type Subject } from './input.js';
import type { Admission, AttestedEvidence, Decider, EvidenceContext, PolicyInput, PolicyResult, ScanProvider, SignatureProvider } from '../policy/contract.js';
import { errorText } from '../util/error-text.js';
import { SingleFlight } from '../util/single-flight.js';

export type { BlobVerdict } from './closures.js';

export interface GateOptions {
  allowTTL: number;
  denyTTL: number;
  /** How long an admission lets its members through without a new root decision (under an unchanged basis). */
  closureTTL: number;
  /** Hash of the operator settings that shape decisions (basis.ts `settingsHash`); '' when there are none. */
  settingsHash?: string;
  /** Manifests by digest, for re-deciding a root inline; by default those the metadata store holds. */
  manifests?: ManifestSource;
  /** How many decisions the in-memory cache keeps (LRU); keys include names clients choose. */
  decisionCacheSize?: number;
  /** At most this many expired rows of each closure table go per prune() (bounded work per run). */
  pruneBatch?: number;
}

/** What a gate is built from (src/server/bootstrap.ts builds it). */
export interface GateDeps {
  decider: Decider;
  meta: MetaStore;
  options: GateOptions;
  /** Evidence providers; absent: the input says `not_configured`. */
  signatures?: SignatureProvider | undefined;
  scan?: ScanProvider | undefined;
  /** Told of every decision, in this order (the decision log first: it may turn an allow into a deny). */
  observers?: DecisionObserver[];
  now?: () => number;
  /**
   * Decisions shared with other replicas (storage.meta: redis): consulted on a local miss, so that a replica reuses a
   * decision another one made for the same digest, client and basis instead of gathering evidence again.
   */
  shared?: SharedState | undefined;
  /** The cluster's invalidation epoch, part of the basis; bumped when a report changes or the policy swaps. */
  epoch?: EpochSource | undefined;
  /** Closure hints and durable admitted manifests shared with other replicas (closures.ts). */
  closures?: Pick<ClosuresOptions, 'hints' | 'durable'>;
}

export interface ManifestSource {
  get(route: Route, digest: Digest): Promise<Manifest>;
}

export interface RootRequest {
  route: Route;
  method: 'GET' | 'HEAD';
  tag: string | null;
  manifest: Manifest;
  kind: 'manifest' | 'accessory';
  client: Client;
}

/** A runnable manifest listed by an admitted index, asked for by digest. */
export interface ChildRequest {
  route: Route;
  method: 'GET' | 'HEAD';
  client: Client;
  manifest: Manifest;
  parent: Manifest;
  root: { manifest: Manifest; tag: string | null };
}

/** A manifest asked for by digest: a child of an admitted index, or else a root of its own. */
export interface DigestRequest {
  route: Route;
  method: 'GET' | 'HEAD';
  client: Client;
  manifest: Manifest;
}

export interface MemberRequest {
  route: Route;
  method: 'GET' | 'HEAD';
  client: Client;
  digest: Digest;
}

export interface RepositoryRequest {
  route: Route;
  method: 'GET' | 'HEAD';
  client: Client;
  kind: 'tags' | 'referrers';
}

/**
 * What the handlers need of the gate (the implementation, Gate, follows): every manifest, blob, tag list and
 * referrers list is decided here before anything of it is served.
 */
export interface AdmissionGate {
  /** A root manifest (by tag, or by a digest no admitted index lists). */
  admitRoot(req: RootRequest): Promise<Admission>;
  /** A manifest by digest: the child of an admitted index (in that role only), or a root of its own. */
  admitByDigest(req: DigestRequest): Promise<Admission>;
  /** A blob: served only as the config or a layer of an admitted manifest whose admission holds now. */
  admitBlob(req: MemberRequest): Promise<BlobVerdict>;
  /** Repository-level rules for a tag list or a referrers list. */
  admitRepository(req: RepositoryRequest): Promise<Admission>;
  /** Would admitRoot answer from the decision cache (no evidence gathering, no upstream work)? For quotas. */
  hasCachedDecision(req: RootRequest): boolean;
  /** The root whose admission vouches for `digest` in this role right now, without deciding anything. */
  vouchedBy(route: Route, digest: Digest, as: 'manifest' | 'blob'): Digest | undefined;
}

/**
 * Observers get every decision for logging and metrics; they must not throw. An observer that returns a promise
 * holds the decision until it settles, and a rejection fails it closed: the decision log with `onFull: block`
 * refuses to let an image through that it could not record.
 */
export interface DecisionObserver {
  onDecision(event: {
    admission: Admission;
    input: PolicyInput;
    result: PolicyResult | undefined;
    revision: string;
    /** The policy revision, settings hash and trust revision the decision was made under. */
    basis?: string;
    /** Policy evaluation alone. */
    evalMs: number;
    /** Evidence gathering plus evaluation, upstream round trips included. */
    totalMs: number;
    /**
     * Of totalMs, the time spent waiting on upstream requests (signature discovery and downloads) and on a pending
     * scan (`on_pending: wait`); totalMs minus this is the decision
     * overhead the proxy itself adds (what `npm run bench` reports).
     */
    waitMs?: number;
    route: Route;
    // Typed void so that any callback fits; a returned promise holds the decision (see above).
  }): void;
  /** A root decision answered from the decision cache. */
  onCacheHit?(route: Route): void;
}

const notConfiguredSignatures: SignatureProvider = {
  trustRevision: 'none',
  signatures: () => Promise.resolve({ signatures: { status: 'not_configured', verified: [], rejected: [] }, attestations: [] }),
};
const notConfiguredScan: ScanProvider = { scan: () => Promise.resolve({ status: 'not_configured', code: 'NOT_CONFIGURED' }) };

export class Gate implements AdmissionGate {
  private readonly decisions: DecisionCache<{ admission: Admission; expiresAt: number }>;
  private readonly flights = new SingleFlight<string, Admission>();
  /** Decisions made while the scan was pending or missing: not cached, so a result counts as soon as it arrives. */
  private readonly transient = new WeakSet<Admission>();
  private readonly closures: Closures;

  private readonly decider: Decider;
  private readonly meta: MetaStore;
  private readonly opts: GateOptions;
  private readonly signatures: SignatureProvider;
  private readonly scan: ScanProvider;
  private readonly observers: DecisionObserver[];
  private readonly now: () => number;
  private readonly shared: SharedState | undefined;
  private readonly epoch: EpochSource | undefined;

  constructor(deps: GateDeps) {
    this.shared = deps.shared;
    this.epoch = deps.epoch;
    // A new epoch makes every cached decision unreachable (its key holds the basis): free them at once.
    deps.epoch?.onChange(() => this.decisions.clear());
    this.decider = deps.decider;
    const meta = (this.meta = deps.meta);
    const opts = (this.opts = deps.options);
    this.signatures = deps.signatures ?? notConfiguredSignatures;
    this.scan = deps.scan ?? notConfiguredScan;
    this.observers = deps.observers ?? [];
    const now = (this.now = deps.now ?? Date.now);
    this.decisions = new DecisionCache(opts.decisionCacheSize ?? 20_000);
    const manifests: ManifestSource = opts.manifests ?? { get: (route, digest) => Promise.resolve(this.storedManifest(route, digest)) };
    this.closures = new Closures({
      meta,
      manifests,
      closureTTL: opts.closureTTL,
      pruneBatch: opts.pruneBatch ?? 2_000,
      now,
      ...deps.closures,
      gate: {
        basis: () => this.basis(),
        admitRoot: (r) => this.admitRoot(r),
        admitChild: (r) => this.admitChild(r),
      },
    });
  }

  get policyRevision(): string {
    return this.decider.revision;
  }

  /** The basis decisions are made under right now. */
  basis(): string {
    return basisKey(this.basisParts());
  }

  private basisParts(): Basis {
    return { policy: this.decider.revision, settings: this.opts.settingsHash ?? '', trust: this.signatures.trustRevision, epoch: this.epoch?.token() };
  }

  /**
   * A new policy revision is in use (PolicyManager's onSwap). Cached decisions are keyed by revision and admissions
   * carry their basis, so nothing is served on the old policy's strength either way; this frees the cache at once.
   */
  policyChanged(): void {
    this.decisions.clear();
    // Other replicas swap when their own poll sees the new revision; the bump makes them decide again now.
    this.epoch?.bump('policy swapped');
  }

  /** How many decisions the in-memory cache holds (bounded by decisionCacheSize). */
  get cachedDecisions(): number {
    return this.decisions.size;
  }

  /**
   * Forgets what was decided about an image because the evidence behind it changed (a scan report pushed or
   * deleted for `digest`, which may be a root or, for an index, one of its platform manifests): the cached decisions
   * for every root that is or contains it, in every repository, and those roots' admissions and closures. The next
   * pull then decides afresh, and until it does, nothing of those images is served by digest. Returns how many
   * cached decisions were dropped.
   */
  forgetDigest(digest: Digest): number {
    const roots = new Set<string>([digest, ...this.meta.rootsContaining(digest)]);
    const n = this.decisions.forget(roots);
    for (const root of roots) this.meta.dropRoot(root as Digest);
    this.closures.forget();
    // The other replicas hold their own decisions about it: the epoch bump makes them all decide again.
    this.epoch?.bump(`evidence for ${digest} changed`);
    return n;
  }

  /** Decides for a root manifest; concurrent identical requests share one evaluation. */
  admitRoot(req: RootRequest): Promise<Admission> {
    return this.decideCached({ ...req, parent: undefined, root: undefined });
  }

  /** Decides for a runnable child of an admitted index, with its own evidence and the index's signatures. */
  admitChild(req: ChildRequest): Promise<Admission> {
    return this.decideCached({
      route: req.route,
      method: req.method,
      client: req.client,
      kind: 'manifest',
      tag: null,
      manifest: req.manifest,
      parent: req.parent,
      root: req.root,
    });
  }

  /** Repository-level rules for a tag list or a referrers list: may this repository be listed at all? */
  admitRepository(req: RepositoryRequest): Promise<Admission> {
    return this.decideCached({ route: req.route, method: req.method, client: req.client, kind: req.kind, tag: null });
  }

  /** A manifest asked for by digest: the child of an admitted index (in that role only), or a root of its own. */
  admitByDigest(req: DigestRequest): Promise<Admission> {
    return this.closures.admitByDigest(req);
  }

  /** A blob: served only as the config or a layer of an admitted manifest whose admission holds now. */
  admitBlob(req: MemberRequest): Promise<BlobVerdict> {
    return this.closures.admitBlob(req);
  }

  /** The root whose admission vouches for `digest` in this role right now, without deciding anything (diagnostics). */
  vouchedBy(route: Route, digest: Digest, as: 'manifest' | 'blob'): Digest | undefined {
    return this.closures.validRoot(route, digest, as);
  }

  /** Deletes expired admission and closure rows, a bounded number per call; the server calls it on a timer. */
  prune(): { admissions: number; members: number } {
    return this.closures.prune();
  }

  /**
   * The decision cache key. The identity is part of it: a decision for one client (policy `clients` rules) is never
   * another's. The basis comes last (closures re-assert admissions under it).
   */
  private keyOf(s: Subject): string {
    const under = s.root?.manifest.digest ?? '';
    const via = s.client.via ? `@${s.client.via.method}:${s.client.via.user ?? ''}:${s.client.via.groups.join(',')}` : '';
    const who = `${s.client.method}:${s.client.user ?? ''}:${s.client.groups.join(',')}${via}`;
    return [s.route.upstream.name, s.route.repository, s.manifest?.digest ?? '', under, s.tag ?? '', s.kind, who, this.basis()].join('\n');
  }

  /** Would admitRoot answer from the decision cache (no evidence gathering, no upstream work)? For quotas. */
  hasCachedDecision(req: RootRequest): boolean {
    const hit = this.decisions.get(this.keyOf({ ...req, parent: undefined, root: undefined }));
    return hit !== undefined && hit.expiresAt > this.now();
  }

  private decideCached(s: Subject): Promise<Admission> {
    const key = this.keyOf(s);
    const hit = this.decisions.get(key);
    if (hit && hit.expiresAt > this.now()) {
      for (const o of this.observers) {
        try {
          o.onCacheHit?.(s.route);
        } catch {
          // Metrics must never change a decision.
        }
      }
      // The admission may have lapsed (TTLs differ, restarts); re-record it so members stay reachable.
      if (hit.admission.serve) this.closures.reassert(s, hit.admission, this.basis());
      return Promise.resolve({ ...hit.admission, cached: true });
    }
    return this.flights.run(key, async () => {
      const reused = await this.sharedDecision(s, key);
      if (reused) return reused;
      const admission = await this.decide(s);
      const ttl = admission.outcome === 'allow' ? this.opts.allowTTL : this.opts.denyTTL;
      if (!this.transient.has(admission)) {
        const entry = { admission, expiresAt: this.now() + ttl };
        this.decisions.set(key, entry, namedDigests(s));
        this.shared?.putDecision(key, { admission: { ...admission, cached: false }, expiresAt: entry.expiresAt });
      }
      return admission;
    });
  }

  /**
   * A decision another replica made under the same key (digest, root, tag, kind, client identity and basis, the
   * epoch included), still unexpired: reused as this replica's cached decision, and recorded in its own store (an
   * allow's closure) so that the blobs it admits are served from the local warm path. Anything malformed is a miss.
   */
  private async sharedDecision(s: Subject, key: string): Promise<Admission | undefined> {
    if (!this.shared?.healthy) return undefined;
    const d = await this.shared.getDecision(key);
    const now = this.now();
    if (!d || d.expiresAt <= now || !isAdmission(d.admission)) return undefined;
    // The basis may have moved while Redis answered (an epoch bump): then the entry's key is no longer ours.
    if (this.keyOf(s) !== key) return undefined;
    const admission = d.admission;
    this.decisions.set(key, { admission, expiresAt: d.expiresAt }, namedDigests(s));
    if (admission.serve) await this.closures.record(s, admission, this.basis());
    for (const o of this.observers) {
      try {
        o.onCacheHit?.(s.route);
      } catch {
        // Metrics must never change a decision.
      }
    }
    return { ...admission, cached: true };
  }

  private async decide(s: Subject): Promise<Admission> {
    const decisionStarted = performance.now();
    const decisionId = randomUUID();
    const before = this.basisParts();
    const ctx = s.manifest ? evidenceContext(s.route, s.manifest) : undefined;
    const built = await measureUpstreamWait(() => this.gather(s, ctx));
    let input = buildInput(s, built.value, this.now());
    let waitMs = built.waitedMs;
    let started = performance.now();
    let { result, admission } = await this.evaluateInput(decisionId, input);
    // `on_pending: wait`: the policy asks for a bounded wait when a pending scan is all that blocks the image. Wait
    // for the scan once, then decide once more; still pending means a deny ("scan pending").
    if (ctx && result?.wait_seconds && input.scan.status === 'pending' && this.scan.awaitResult) {
      const waitStarted = performance.now();
      const scan = await this.scan
        .awaitResult(ctx, built.value.ownAttestations, result.wait_seconds * 1000)
        .catch(() => ({ status: 'error' as const, code: 'LOOKUP_FAILED' as const }));
      input = {
        ...input,
        now: new Date(this.now()).toISOString(),
        scan: { ...scan, waited_seconds: Math.round((performance.now() - waitStarted) / 100) / 10 },
      };
      waitMs += performance.now() - waitStarted;
      started = performance.now();
      ({ result, admission } = await this.evaluateInput(decisionId, input));
    }
    if (input.scan.status === 'pending' || input.scan.status === 'missing') this.transient.add(admission);
    const evalMs = performance.now() - started;
    // An external OPA says which bundle revision answered; otherwise the revision in use when the decision began.
    const basis = basisKey(result?.revision ? { ...before, policy: result.revision } : before);
    // In order: an observer that holds the decision is waited for before the next one is told, so observers after
    // the decision log (metrics, captures) see the deny when the log could not record the decision.
    for (const o of this.observers) {
      let held: unknown;
      try {
        held = o.onDecision({
          admission,
          input,
          result,
          revision: result?.revision ?? this.decider.revision,
          basis,
          evalMs,
          totalMs: performance.now() - decisionStarted,
          waitMs,
          route: s.route,
        });
      } catch {
        // Logging must never change a decision (except by holding it, below).
      }
      if (held instanceof Promise) {
        try {
          await held;
        } catch {
          admission = this.unrecorded(decisionId);
        }
      }
    }
    // Recorded only now, so that nothing of an image is served by digest before its decision is on record.
    await this.closures.record(s, admission, basis);
    return admission;
  }

  /** The deny for a decision an observer could not record (not cached: the next pull tries again). */
  private unrecorded(decisionId: string): Admission {
    const a = errorAdmission(decisionId, 'decision_log.unavailable', 'decision log unavailable');
    this.transient.add(a);
    return a;
  }

  private async evaluateInput(decisionId: string, input: PolicyInput): Promise<{ result: PolicyResult | undefined; admission: Admission }> {
    try {
      const result = await this.decider.evaluate(input);
      return { result, admission: toAdmission(decisionId, result) };
    } catch (e) {
      const reason = errorText(e);
      return { result: undefined, admission: errorAdmission(decisionId, 'policy.error', `policy evaluation failed: ${reason}`) };
    }
  }

  /**
   * The decision the current policy and evidence give for a root, without waiting for pending scans, caching,
   * recording a closure or notifying observers (re-evaluation of cached images).
   */
  async evaluate(req: RootRequest): Promise<{ input: PolicyInput; result: PolicyResult | undefined; admission: Admission }> {
    const s: Subject = { ...req };
    const ev = await this.gather(s, evidenceContext(req.route, req.manifest));
    const input = buildInput(s, ev, this.now());
    return { input, ...(await this.evaluateInput(randomUUID(), input)) };
  }

  /**
   * Forgets one root (re-evaluation's purge): its cached decisions, and its admissions and closure members, but not
   * those of other roots that list it (forgetDigest drops those too, which would cut their running pulls).
   */
  forgetRoot(root: Digest): void {
    this.decisions.forget([root]);
    this.meta.dropRoot(root);
    this.closures.forget();
  }

  /** Signatures (a child's merged with its index's), then the scan, which may come from verified attestations. */
  private async gather(s: Subject, ctx: EvidenceContext | undefined): Promise<Evidence & { ownAttestations: PolicyInput['attestations'] }> {
    if (!ctx || !s.manifest) return { ...NO_EVIDENCE, ownAttestations: [] };
    const own = await this.signaturesOf(ctx);
    const vouchers = [s.root?.manifest, s.parent].filter((m, i, all): m is Manifest => m !== undefined && all.findIndex((x) => x?.digest === m.digest) === i);
    const inherited = await Promise.all(vouchers.map(async (m) => ({ digest: m.digest, ...(await this.signaturesOf(evidenceContext(s.route, m))) })));
    const scan = await this.scan.scan(ctx, own.attestations).catch(() => ({ status: 'error' as const, code: 'LOOKUP_FAILED' as const }));
    return {
      signatures: inherited.length
        ? mergeSignatures(
            own.signatures,
            s.manifest.digest,
            inherited.map((i) => ({ digest: i.digest, ev: i.signatures })),
          )
        : own.signatures,
      // The child's own attestations first: only those describe its content (and only those feed its scan). Each
      // says which digest its statement is about.
      attestations: [...withSubject(own.attestations, s.manifest.digest), ...inherited.flatMap((i) => withSubject(i.attestations, i.digest))],
      attestations_rejected: [...(own.attestations_rejected ?? []), ...inherited.flatMap((i) => i.attestations_rejected ?? [])].slice(0, 16),
      scan,
      ownAttestations: own.attestations,
    };
  }

  private signaturesOf(ctx: EvidenceContext): Promise<AttestedEvidence> {
    return this.signatures.signatures(ctx).catch((e: unknown) => ({
      signatures: { status: 'error' as const, verified: [], rejected: [{ reason: `signature check failed: ${String(e)}`, code: 'CHECK_FAILED' as const }] },
      attestations: [],
      attestations_rejected: [{ predicate_type: null, reason: `signature check failed: ${String(e)}`, code: 'CHECK_FAILED' as const }],
    }));
  }

  private storedManifest(route: Route, digest: Digest): Manifest {
    const m = this.meta.getManifest(route.upstream.name, route.repository, digest);
    if (!m) throw new Error(`manifest ${digest} is not in the metadata store`);
    return { ...m, parsed: parseManifest(m.bytes, m.mediaType) };
  }
}

/** The digests a decision's cache key names (keyOf): the manifest decided and the root it was decided under. */
function namedDigests(s: Subject): string[] {
  return [s.manifest?.digest ?? '', s.root?.manifest.digest ?? ''];
}

function withSubject(list: PolicyInput['attestations'], digest: string): PolicyInput['attestations'] {
  return list.map((a) => ({ ...a, subject_digest: a.subject_digest ?? digest }));
}

/** The shape of an Admission as JSON (a shared decision read back from Redis). */
function isAdmission(a: unknown): a is Admission {
  if (typeof a !== 'object' || a === null) return false;
  const x = a as Record<string, unknown>;
  return (
    typeof x.decisionId === 'string' &&
    typeof x.serve === 'boolean' &&
    (x.outcome === 'allow' || x.outcome === 'deny' || x.outcome === 'warn' || x.outcome === 'dry-run-deny') &&
    typeof x.message === 'string' &&
    Array.isArray(x.violations) &&
    Array.isArray(x.warnings) &&
    (x.mode === 'enforce' || x.mode === 'warn' || x.mode === 'dry-run') &&
    // Only an enforced deny is not served: anything else is no decision this gate makes.
    x.serve === (x.outcome !== 'deny')
  );
}

/** The evidence seam gets what the request knows: the route and the manifest, parsed once where it came in. */
function evidenceContext(route: Route, manifest: Manifest): EvidenceContext {
  return {
    route,
    manifest,
    upstream: route.upstream.name,
    registry: route.registry,
    repository: route.repository,
    digest: manifest.digest,
    mediaType: manifest.mediaType,
  };
}
