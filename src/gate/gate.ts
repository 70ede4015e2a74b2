/**
 * The admission gate (DESIGN §1). A root manifest, asked for by tag or by a digest that no admitted closure holds,
 * gets a policy decision; on admission the gate records the root's closure (child manifests, config, layers) so
 * that those, and only those, can then be fetched by digest in the same repository. Everything else by digest is
 * refused, which is what closes the by-digest bypass.
 *
 * Fail closed: an exception anywhere in evidence or policy evaluation becomes a deny whose message carries it.
 */
import { randomUUID } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import { measureUpstreamWait } from '../metrics/upstream-wait.js';
import type { MetaStore, ClosureMember } from '../cache/metastore.js';
import type { Manifest } from '../proxy/manifests.js';
import type { Digest } from '../routing/reference.js';
import type { Route } from '../routing/route.js';
import type { Admission, Decider, EvidenceContext, PolicyInput, PolicyResult, ScanProvider, SignatureProvider, Violation } from './types.js';

export interface GateOptions {
  allowTTL: number;
  denyTTL: number;
  /** How long an admitted closure lets its members through without a new root decision. */
  closureTTL: number;
}

export interface RootRequest {
  route: Route;
  method: 'GET' | 'HEAD';
  tag: string | null;
  manifest: Manifest;
  kind: 'manifest' | 'accessory';
  client: { ip: string; user: string | null; groups: string[]; method: string; userAgent: string | null };
}

/** Observers get every decision for logging and metrics; they must not throw. */
export interface DecisionObserver {
  onDecision(event: {
    admission: Admission;
    input: PolicyInput;
    result: PolicyResult | undefined;
    revision: string;
    /** Policy evaluation alone. */
    evalMs: number;
    /** Evidence gathering plus evaluation, upstream round trips included. */
    totalMs: number;
    /**
     * Of totalMs, the time spent waiting on upstream requests (signature discovery and downloads) and on a pending
     * scan (`on_pending: wait`); totalMs minus this is the decision overhead of DESIGN §10.
     */
    waitMs?: number;
    route: Route;
  }): void;
  /** A root decision answered from the decision cache. */
  onCacheHit?(route: Route): void;
}

const notConfiguredSignatures: SignatureProvider = {
  trustRevision: 'none',
  signatures: () => Promise.resolve({ signatures: { status: 'not_configured', verified: [], rejected: [] }, attestations: [] }),
};
const notConfiguredScan: ScanProvider = { scan: () => Promise.resolve({ status: 'not_configured' }) };

export class Gate {
  private readonly decisions: LRUCache<string, { admission: Admission; expiresAt: number }>;
  /**
   * When each closure (root, or root + child) was last written, so that warm requests, which all re-assert their
   * closure, cost a SQLite write only once per half closure TTL instead of on every manifest request.
   */
  private readonly closureWrites = new LRUCache<string, number>({ max: 100_000 });
  private readonly flights = new Map<string, Promise<Admission>>();
  /** Decisions made while the scan was pending or missing: not cached, so a result counts as soon as it arrives. */
  private readonly transient = new WeakSet<Admission>();

  constructor(
    private decider: Decider,
    private readonly meta: MetaStore,
    private readonly opts: GateOptions,
    private readonly signatures: SignatureProvider = notConfiguredSignatures,
    private readonly scan: ScanProvider = notConfiguredScan,
    private readonly observers: DecisionObserver[] = [],
    private readonly now: () => number = Date.now,
  ) {
    this.decisions = new LRUCache({ max: 50_000 });
  }

  get policyRevision(): string {
    return this.decider.revision;
  }

  /** Swaps the policy (hot reload). Cached decisions are keyed by revision, so they lapse on their own. */
  setDecider(d: Decider): void {
    this.decider = d;
  }

  /**
   * Forgets what was decided about an image because the evidence behind it changed (a scan report pushed or
   * deleted for `digest`, which may be a root or, for an index, one of its platform manifests): the cached decisions
   * for every root that is or contains it, in every repository, and those roots' closures. The next pull then
   * decides afresh, and until it does, nothing of those images is served by digest. So an image a new report shows
   * to be vulnerable is not served for the rest of allowTTL, and one denied for a missing report passes as soon as
   * the report is in. Returns how many decisions were dropped.
   */
  forgetDigest(digest: Digest): number {
    const roots = new Set<string>([digest, ...this.meta.rootsContaining(digest)]);
    let n = 0;
    for (const key of [...this.decisions.keys()]) {
      if (roots.has(key.split('\n', 3)[2] ?? '')) {
        this.decisions.delete(key);
        n++;
      }
    }
    for (const key of [...this.closureWrites.keys()]) if (roots.has(key.split('\n', 3)[2] ?? '')) this.closureWrites.delete(key);
    for (const root of roots) this.meta.dropClosuresOfRoot(root as Digest);
    return n;
  }

  /** Decides for a root manifest; concurrent identical requests share one evaluation. */
  private keyOf(req: RootRequest): string {
    // The identity is part of the key: a decision for one client (policy `clients` rules) is never another's.
    const who = `${req.client.method}:${req.client.user ?? ''}:${req.client.groups.join(',')}`;
    return [req.route.upstream.name, req.route.repository, req.manifest.digest, req.tag ?? '', req.kind, this.decider.revision, this.signatures.trustRevision, who].join('\n');
  }

  /** Would admitRoot answer from the decision cache (no evidence gathering, no upstream work)? For quotas. */
  hasCachedDecision(req: RootRequest): boolean {
    const hit = this.decisions.get(this.keyOf(req));
    return hit !== undefined && hit.expiresAt > this.now();
  }

  async admitRoot(req: RootRequest): Promise<Admission> {
    const key = this.keyOf(req);
    const hit = this.decisions.get(key);
    if (hit && hit.expiresAt > this.now()) {
      for (const o of this.observers) {
        try {
          o.onCacheHit?.(req.route);
        } catch {
          // Metrics must never change a decision.
        }
      }
      // The closure may have lapsed (TTLs differ, restarts); re-record it so members stay reachable.
      if (hit.admission.serve) this.recordClosure(req.route, req.manifest);
      return { ...hit.admission, cached: true };
    }
    let p = this.flights.get(key);
    if (!p) {
      p = this.decide(req).then((admission) => {
        const ttl = admission.outcome === 'allow' ? this.opts.allowTTL : this.opts.denyTTL;
        if (!this.transient.has(admission)) this.decisions.set(key, { admission, expiresAt: this.now() + ttl });
        return admission;
      });
      p.finally(() => this.flights.delete(key)).catch(() => {});
      this.flights.set(key, p);
    }
    return p;
  }

  private async decide(req: RootRequest): Promise<Admission> {
    const decisionStarted = performance.now();
    const decisionId = randomUUID();
    const ctx = evidenceContext(req);
    const built = await measureUpstreamWait(() => this.buildInput(req, ctx));
    let input = built.value;
    let waitMs = built.waitedMs;
    let started = performance.now();
    let { result, admission } = await this.evaluateInput(decisionId, input);
    // `on_pending: wait`: the policy asks for a bounded wait when a pending scan is all that blocks the image. Wait
    // for the scan once, then decide once more; still pending means a deny ("scan pending").
    if (result?.wait_seconds && input.scan.status === 'pending' && this.scan.awaitResult) {
      const waitStarted = performance.now();
      const scan = await this.scan.awaitResult(ctx, input.attestations, result.wait_seconds * 1000).catch(() => ({ status: 'error' as const }));
      input = { ...input, now: new Date(this.now()).toISOString(), scan: { ...scan, waited_seconds: Math.round((performance.now() - waitStarted) / 100) / 10 } };
      waitMs += performance.now() - waitStarted;
      started = performance.now();
      ({ result, admission } = await this.evaluateInput(decisionId, input));
    }
    if (input.scan.status === 'pending' || input.scan.status === 'missing') this.transient.add(admission);
    const evalMs = performance.now() - started;
    if (admission.serve) this.recordClosure(req.route, req.manifest);
    else this.dropClosure(req.route, req.manifest.digest);
    for (const o of this.observers) {
      try {
        o.onDecision({ admission, input, result, revision: this.decider.revision, evalMs, totalMs: performance.now() - decisionStarted, waitMs, route: req.route });
      } catch {
        // Logging must never change a decision.
      }
    }
    return admission;
  }

  private async evaluateInput(decisionId: string, input: PolicyInput): Promise<{ result: PolicyResult | undefined; admission: Admission }> {
    try {
      const result = await this.decider.evaluate(input);
      return { result, admission: toAdmission(decisionId, result) };
    } catch (e) {
      const reason = e instanceof Error ? e.message : String(e);
      const v: Violation = { rule: 'policy.error', message: `policy evaluation failed: ${reason}` };
      return { result: undefined, admission: { decisionId, serve: false, outcome: 'deny', message: formatViolations([v]), violations: [v], warnings: [], mode: 'enforce', cached: false } };
    }
  }

  /**
   * The decision the current policy and evidence give for a root, without waiting for pending scans, caching,
   * recording a closure or notifying observers (re-evaluation of cached images).
   */
  async evaluate(req: RootRequest): Promise<{ input: PolicyInput; result: PolicyResult | undefined; admission: Admission }> {
    const input = await this.buildInput(req, evidenceContext(req));
    return { input, ...(await this.evaluateInput(randomUUID(), input)) };
  }

  private async buildInput(req: RootRequest, ctx: EvidenceContext): Promise<PolicyInput> {
    const { route, manifest } = req;
    // Scans may come from verified attestations, so signatures go first.
    const sig = await this.signatures.signatures(ctx).catch((e: unknown) => ({
      signatures: { status: 'error' as const, verified: [], rejected: [{ reason: `signature check failed: ${String(e)}` }] },
      attestations: [],
    }));
    const scan = await this.scan.scan(ctx, sig.attestations).catch(() => ({ status: 'error' as const }));
    const platforms = manifest.parsed.manifests
      .map((d) => d.platform)
      .filter((p): p is NonNullable<typeof p> => p !== undefined && typeof p.os === 'string')
      .map((p) => [p.os, p.architecture, p.variant].filter(Boolean).join('/'));
    return {
      version: 1,
      now: new Date(this.now()).toISOString(),
      request: {
        kind: req.kind,
        method: req.method,
        client: { ip: req.client.ip, user: req.client.user, groups: req.client.groups, method: req.client.method, user_agent: req.client.userAgent },
        routing: route.routing,
      },
      image: {
        registry: route.registry,
        repository: route.repository,
        tag: req.tag,
        digest: manifest.digest,
        media_type: manifest.mediaType,
        platforms,
        labels: manifest.parsed.annotations ?? {},
        created: manifest.parsed.annotations?.['org.opencontainers.image.created'] ?? null,
      },
      upstream: { name: route.upstream.name, url: route.upstream.url },
      signatures: sig.signatures,
      attestations: sig.attestations,
      scan,
    };
  }

  private recordClosure(route: Route, m: Manifest): void {
    if (this.recentlyWritten(route, m.digest, '')) return;
    const members: ClosureMember[] = [{ digest: m.digest, kind: 'manifest' }];
    for (const d of m.parsed.manifests) members.push({ digest: d.digest, kind: 'manifest' });
    for (const d of m.parsed.blobs) members.push({ digest: d.digest, kind: 'blob' });
    this.meta.putClosure(route.upstream.name, route.repository, m.digest, members, this.now() + this.opts.closureTTL);
  }

  private dropClosure(route: Route, root: Digest): void {
    const prefix = `${route.upstream.name}\n${route.repository}\n${root}\n`;
    for (const k of this.closureWrites.keys()) if (k.startsWith(prefix)) this.closureWrites.delete(k);
    this.meta.dropClosure(route.upstream.name, route.repository, root);
  }

  /** True when this closure entry was written within half its TTL; otherwise notes that it is being written now. */
  private recentlyWritten(route: Route, root: Digest, child: string): boolean {
    const key = `${route.upstream.name}\n${route.repository}\n${root}\n${child}`;
    const now = this.now();
    const at = this.closureWrites.get(key);
    if (at !== undefined && now - at < this.opts.closureTTL / 2) return true;
    this.closureWrites.set(key, now);
    return false;
  }

  /** The admitted root whose closure holds this digest in this repository. */
  rootOf(route: Route, digest: Digest): Digest | undefined {
    return this.meta.closureRootOf(route.upstream.name, route.repository, digest, this.now())?.root;
  }

  /** A child manifest of an admitted root was served: its own config and layers join the root's closure. */
  extendClosure(route: Route, root: Digest, child: Manifest): void {
    const members: ClosureMember[] = [
      ...child.parsed.manifests.map((d) => ({ digest: d.digest, kind: 'manifest' as const })),
      ...child.parsed.blobs.map((d) => ({ digest: d.digest, kind: 'blob' as const })),
    ];
    if (members.length === 0 || this.recentlyWritten(route, root, child.digest)) return;
    this.meta.putClosure(route.upstream.name, route.repository, root, members, this.now() + this.opts.closureTTL);
  }
}

function evidenceContext(req: RootRequest): EvidenceContext {
  const { route, manifest } = req;
  return { upstream: route.upstream.name, registry: route.registry, repository: route.repository, digest: manifest.digest, mediaType: manifest.mediaType };
}

function toAdmission(decisionId: string, r: PolicyResult): Admission {
  const violations = r.deny;
  const denied = !r.allow || violations.length > 0;
  const base = { decisionId, violations, warnings: r.warn, mode: r.mode, cached: false };
  if (!denied) return { ...base, serve: true, outcome: 'allow', message: r.warn.map((w) => w.message).join('; ') };
  const message = violations.length ? formatViolations(violations) : 'denied by policy';
  if (r.mode === 'warn') return { ...base, serve: true, outcome: 'warn', message };
  if (r.mode === 'dry-run') return { ...base, serve: true, outcome: 'dry-run-deny', message };
  return { ...base, serve: false, outcome: 'deny', message };
}

/** `message [rule]; message [rule]`: one line that names every failed rule and its evidence. */
function formatViolations(vs: Violation[]): string {
  return vs.map((v) => `${v.message} [${v.rule}]`).join('; ');
}
