/**
 * Closures with roles (what an admitted manifest lists, each member fetchable only in its role), bound to what
 * decided them (basis.ts).
 *
 * An admission (a root decision per tag, or a child decision under its root) records its basis; what the admitted
 * manifest lists is recorded as members in their roles (`child`, `config`, `layer`) with the root and the voucher
 * (the manifest whose admission covers them). A digest asked for as a manifest rides on an admission only as a
 * `child`; a blob only as a `config` or `layer`.
 *
 * Serving a member needs a link whose root, and voucher when that is a child, are admitted under the current basis:
 * one indexed query on the warm path. When the basis changed (a new policy, settings or trust revision), the root is
 * decided again inline from what the store holds (its manifest, the tag it was admitted for) and, if still allowed,
 * the request is served; if not, it is refused with the new decision's reason.
 *
 * Replicas of a central tier (storage.meta: redis and/or storage.blobs: s3) share closure hints: after an admission a
 * replica leaves "member M is listed by voucher V under root R, admitted for tag T" in Redis and in the bucket. A
 * replica with no local link for a member (a round-robin balancer sent it the blob, not the manifest) reads those
 * hints and has its own gate decide each root R under the current basis: a decision another replica shared under
 * the same key (signed, same basis) is reused, otherwise R is decided here from its manifest (this store, the
 * bucket, or the upstream). The admission records R's closure from R's digest-verified manifest, and the member is
 * then served only if a local link vouches for it, as always. A hint admits nothing: it only says which root to ask.
 */
import { LRUCache } from 'lru-cache';
import type { AdmissionRecord, MemberLink, MemberRole, MetaStore, StoredManifest } from '../cache/metastore.js';
import type { HintStore } from '../cache/shared.js';
import type { Manifest } from '../proxy/manifests.js';
import type { Digest } from '../routing/reference.js';
import type { Route } from '../routing/route.js';
import { isRunnable } from '../oci/artifacts.js';
import { admittedRootKind, needsOwnDecision, rootKind } from './classify.js';
import type { ChildRequest, DigestRequest, ManifestSource, MemberRequest, RootRequest } from './gate.js';
import { errorAdmission, membersOf, type Subject } from './input.js';
import type { Admission } from '../policy/contract.js';
import { errorText } from '../util/error-text.js';

export type BlobVerdict = { serve: true; root: Digest } | { serve: false; denial: Admission | undefined };

/** What the closures need from the gate: the current basis, and decisions. */
export interface DecisionHooks {
  basis(): string;
  admitRoot(r: RootRequest): Promise<Admission>;
  admitChild(r: ChildRequest): Promise<Admission>;
}

const CHILD_ROLES: readonly MemberRole[] = ['child'];
const BLOB_ROLES: readonly MemberRole[] = ['config', 'layer'];
/** A layer shared by many images has many links; at most this many are tried for one request. */
const MAX_LINKS = 8;
/** At most this many earlier admissions (tags) of one root are decided again for one request. */
const MAX_REDECIDE = 2;
/** Nested indexes deeper than this are not followed. */
const MAX_DEPTH = 4;
/** At most this many shared hints are tried for one request (each may cost a manifest read and a decision). */
const MAX_HINT_TRIES = 8;

/** What is left of one request's hint tries, shared down the nested lookups it starts. */
type Budget = { tries: number };

type Vouch = { link: MemberLink } | { link?: undefined; denial: Admission | undefined };
type Reaffirmed = { serve: true } | { serve: false; denial: Admission | undefined };

export interface ClosuresOptions {
  meta: MetaStore;
  /** Manifests by digest, for following an index to its children. */
  manifests: ManifestSource;
  /** How long an admission lets its members through without a new root decision. */
  closureTTL: number;
  /** At most this many expired rows of each table go per prune(). */
  pruneBatch: number;
  now: () => number;
  /** The gate's decisions, for members that need one of their own. */
  gate: DecisionHooks;
  /** Closure hints other replicas left (storage.meta: redis, storage.blobs: s3); absent on a lone instance. */
  hints?: HintStore | undefined;
  /** Where admitted manifests are kept durably (the bucket), so that any replica can decide their roots again. */
  durable?: { putManifest(upstream: string, repository: string, m: StoredManifest): void } | undefined;
}

export class Closures {
  /**
   * When each admission was last written, so that warm requests, which re-assert their admission from the decision
   * cache, cost a SQLite write only once per half closure TTL instead of on every manifest request.
   */
  private readonly writes = new LRUCache<string, number>({ max: 100_000 });

  private readonly meta: MetaStore;
  private readonly manifests: ManifestSource;
  private readonly opts: { closureTTL: number; pruneBatch: number };
  private readonly now: () => number;
  private readonly gate: DecisionHooks;
  private readonly hints: HintStore | undefined;
  private readonly durable: ClosuresOptions['durable'];

  constructor(o: ClosuresOptions) {
    this.hints = o.hints;
    this.durable = o.durable;
    this.meta = o.meta;
    this.manifests = o.manifests;
    this.opts = { closureTTL: o.closureTTL, pruneBatch: o.pruneBatch };
    this.now = o.now;
    this.gate = o.gate;
  }

  /**
   * Records a decision about a manifest and, for an allow, what it vouches for. Repository-level ones are not kept.
   * Resolves once the other replicas can see the closure hints (bounded by the Redis command timeout).
   */
  async record(s: Subject, admission: Admission, basis: string): Promise<void> {
    if (!s.manifest) return;
    const { upstream, repository } = s.route;
    const now = this.now();
    const under = s.root?.manifest.digest ?? '';
    const tag = s.tag ?? '';
    const expiresAt = now + this.opts.closureTTL;
    this.meta.putAdmission(upstream.name, repository, {
      digest: s.manifest.digest,
      under,
      tag,
      kind: s.kind === 'accessory' ? 'accessory' : 'manifest',
      basis,
      serve: admission.serve,
      decisionId: admission.decisionId,
      reason: admission.serve ? '' : admission.message.replace(/\s+/g, ' ').slice(0, 500),
      decidedAt: now,
      expiresAt,
    });
    this.writes.set(writeKey(s.route, s.manifest.digest, under, tag), now);
    if (!admission.serve) return;
    const members = membersOf(s.manifest);
    this.meta.putMembers(upstream.name, repository, under || s.manifest.digest, s.manifest.digest, members, expiresAt);
    await this.share(s.route, { root: under || s.manifest.digest, voucher: s.manifest.digest, tag: s.root ? (s.root.tag ?? '') : tag }, s.manifest, expiresAt);
  }

  /** Tells the other replicas (hints) and the bucket (the manifest) what this admission vouches for. */
  private async share(route: Route, link: { root: Digest; voucher: Digest; tag: string }, voucher: Manifest, expiresAt: number): Promise<void> {
    this.durable?.putManifest(route.upstream.name, route.repository, voucher);
    await this.hints?.putHints(route.upstream.name, route.repository, link, membersOf(voucher), expiresAt);
  }

  /** A cached allow was reused: keep its admission and members alive (at most one write per half closure TTL). */
  reassert(s: Subject, admission: Admission, basis: string): void {
    if (!s.manifest) return;
    const at = this.writes.get(writeKey(s.route, s.manifest.digest, s.root?.manifest.digest ?? '', s.tag ?? ''));
    if (at !== undefined && this.now() - at < this.opts.closureTTL / 2) return;
    void this.record(s, admission, basis);
  }

  forget(): void {
    this.writes.clear();
  }

  prune(): { admissions: number; members: number } {
    return this.meta.pruneExpired(this.now(), this.opts.pruneBatch);
  }

  validRoot(route: Route, digest: Digest, as: 'manifest' | 'blob'): Digest | undefined {
    return this.meta.validLink(route.upstream.name, route.repository, digest, as === 'manifest' ? CHILD_ROLES : BLOB_ROLES, this.gate.basis(), this.now())
      ?.root;
  }

  async admitBlob(req: MemberRequest): Promise<BlobVerdict> {
    const v = await this.vouch(req, req.digest, BLOB_ROLES, { tries: MAX_HINT_TRIES }, 0);
    return v.link ? { serve: true, root: v.link.root } : { serve: false, denial: v.denial };
  }

  admitByDigest(req: DigestRequest): Promise<Admission> {
    return this.byDigest(req, { tries: MAX_HINT_TRIES }, 0);
  }

  private async byDigest(req: DigestRequest, budget: Budget, depth: number): Promise<Admission> {
    const { route, manifest } = req;
    const asRoot = (): Promise<Admission> =>
      this.gate.admitRoot({ route, method: req.method, client: req.client, tag: null, manifest, kind: rootKind(manifest.parsed, null) });
    const v = await this.vouch(req, manifest.digest, CHILD_ROLES, budget, depth);
    // Listed by no index admitted now (or only as a blob): a root of its own, with a decision of its own.
    if (!v.link) return asRoot();
    const { root, voucher } = v.link;
    const rootManifest = await this.manifests.get(route, root);
    const parent = voucher === root ? rootManifest : await this.manifests.get(route, voucher);
    // A runnable image listed by an artifact index (a referrers index) is not vouched for by that lighter decision.
    if (needsOwnDecision(parent.parsed, manifest.parsed)) return asRoot();
    if (isRunnable(manifest.parsed)) {
      return this.gate.admitChild({
        route,
        method: req.method,
        client: req.client,
        manifest,
        parent,
        root: { manifest: rootManifest, tag: this.rootTag(route, root) },
      });
    }
    // Nothing in it can run (an attestation manifest, a signature): covered by the index that lists it.
    this.coverChild(route, root, voucher, manifest);
    return this.voucherAdmission(route, root, voucher);
  }

  /** Finds a link that vouches for `member` in one of `roles`, deciding its root (and child) again if the basis changed. */
  private async vouch(req: MemberRequest | DigestRequest, member: Digest, roles: readonly MemberRole[], budget: Budget, depth: number): Promise<Vouch> {
    const { route } = req;
    const now = this.now();
    const fast = this.meta.validLink(route.upstream.name, route.repository, member, roles, this.gate.basis(), now);
    if (fast) return { link: fast };
    const seen = new Set<string>();
    let denial: Admission | undefined;
    for (const l of this.meta.links(route.upstream.name, route.repository, member, roles, now, MAX_LINKS)) {
      const k = `${l.root}\n${l.voucher}`;
      if (seen.has(k)) continue;
      seen.add(k);
      const r = await this.reaffirm(req, l.root, '', 0);
      if (!r.serve) {
        denial ??= r.denial;
        continue;
      }
      if (l.voucher !== l.root) {
        const c = await this.reaffirm(req, l.voucher, l.root, 0);
        if (!c.serve) {
          denial ??= c.denial;
          continue;
        }
      }
      return { link: l };
    }
    if (!this.hints) return { denial };
    // A root this replica admitted under this basis, asked for by digest (containerd's GET after a tag HEAD): its own
    // decision answers from the cache; the warm path asks nothing of Redis or the bucket.
    if (
      roles === CHILD_ROLES &&
      this.meta.admissions(route.upstream.name, route.repository, member, '', now).some((r) => r.serve && r.basis === this.gate.basis())
    ) {
      return { denial };
    }
    // No local link vouches for it: another replica may have admitted a root that lists it.
    const shared = await this.fromHints(req, member, roles, budget, depth);
    return shared.link ? shared : { denial: denial ?? shared.denial };
  }

  /**
   * The roots other replicas admitted that list `member`, each decided now by this replica's gate (which records its
   * closure from its digest-verified manifest); then a local link must vouch for the member, as for any request.
   * A voucher below the root (a platform manifest of an index) is admitted as a client asking for it by digest would
   * have it admitted. Forged or stale hints cost a decision at most: they cannot make a link the manifests lack.
   */
  private async fromHints(req: MemberRequest | DigestRequest, member: Digest, roles: readonly MemberRole[], budget: Budget, depth: number): Promise<Vouch> {
    if (depth >= MAX_DEPTH) return { denial: undefined };
    const { route } = req;
    const hints = await this.hints!.getHints(route.upstream.name, route.repository, member, MAX_LINKS);
    const seen = new Set<string>();
    let denial: Admission | undefined;
    for (const h of hints) {
      const k = `${h.root}\n${h.voucher}\n${h.tag}`;
      if (!roles.includes(h.role) || seen.has(k)) continue;
      seen.add(k);
      if (budget.tries-- <= 0) break;
      let root: Manifest;
      try {
        root = await this.manifests.get(route, h.root);
      } catch (e) {
        denial ??= errorAdmission('', 'closure.unavailable', `admitted manifest ${h.root} could not be read to decide it: ${errorText(e)}`);
        continue;
      }
      // As it was admitted (its tag, when a signed hint says which); else as a root decided again for another request.
      const kind = h.tag !== null ? rootKind(root.parsed, h.tag || null) : admittedRootKind(root.parsed);
      const a = await this.gate.admitRoot({ route, method: 'GET', client: req.client, tag: h.tag || null, manifest: root, kind });
      if (!a.serve) {
        denial ??= a;
        continue;
      }
      if (h.voucher !== h.root) {
        let voucher: Manifest;
        try {
          voucher = await this.manifests.get(route, h.voucher);
        } catch {
          continue;
        }
        const c = await this.byDigest({ route, method: 'GET', client: req.client, manifest: voucher }, budget, depth + 1);
        if (!c.serve) {
          denial ??= c;
          continue;
        }
      }
      const link = this.meta.validLink(route.upstream.name, route.repository, member, roles, this.gate.basis(), this.now());
      if (link) return { link };
    }
    return { denial };
  }

  /**
   * Does `digest` (a root when `under` is '', else a child of root `under`) hold an admission under the current
   * basis? If it was admitted under another one, decide it again now, as it was admitted (same tag, same kind).
   */
  private async reaffirm(req: MemberRequest | DigestRequest, digest: Digest, under: string, depth: number): Promise<Reaffirmed> {
    const { route } = req;
    const basis = this.gate.basis();
    const records = this.meta.admissions(route.upstream.name, route.repository, digest, under, this.now());
    if (records.some((r) => r.serve && r.basis === basis)) return { serve: true };
    const stale = records.filter((r) => r.serve && r.basis !== basis).slice(0, MAX_REDECIDE);
    if (stale.length === 0) {
      const deny = records.find((r) => !r.serve && r.basis === basis);
      return { serve: false, denial: deny ? fromRecord(deny) : undefined };
    }
    let manifest: Manifest;
    try {
      manifest = await this.manifests.get(route, digest);
    } catch (e) {
      return {
        serve: false,
        denial: errorAdmission('', 'closure.unavailable', `admitted manifest ${digest} could not be read to decide it again: ${errorText(e)}`),
      };
    }
    let last: Admission | undefined;
    for (const r of stale) {
      const a =
        under === ''
          ? await this.gate.admitRoot({ route, method: 'GET', client: req.client, tag: r.tag || null, manifest, kind: r.kind })
          : await this.redecideChild(req, under as Digest, manifest, depth);
      if (a.serve) return { serve: true };
      last = a;
    }
    return { serve: false, denial: last };
  }

  private async redecideChild(req: MemberRequest | DigestRequest, root: Digest, child: Manifest, depth: number): Promise<Admission> {
    const { route } = req;
    const link = this.meta.links(route.upstream.name, route.repository, child.digest, CHILD_ROLES, this.now(), MAX_LINKS).find((l) => l.root === root);
    if (!link || depth >= MAX_DEPTH) return errorAdmission('', 'closure.unlisted', `${child.digest} is no longer listed by an admitted index`);
    if (link.voucher !== root) {
      const p = await this.reaffirm(req, link.voucher, root, depth + 1);
      if (!p.serve) return p.denial ?? errorAdmission('', 'closure.unlisted', `index ${link.voucher} is no longer admitted`);
    }
    const rootManifest = await this.manifests.get(route, root);
    const parent = link.voucher === root ? rootManifest : await this.manifests.get(route, link.voucher);
    return this.gate.admitChild({
      route,
      method: 'GET',
      client: req.client,
      manifest: child,
      parent,
      root: { manifest: rootManifest, tag: this.rootTag(route, root) },
    });
  }

  /** The tag the root was admitted for (the newest allowed admission), for the child's policy input. */
  private rootTag(route: Route, root: Digest): string | null {
    return this.meta.admissions(route.upstream.name, route.repository, root, '', this.now()).find((r) => r.serve)?.tag || null;
  }

  private coverChild(route: Route, root: Digest, voucher: Digest, child: Manifest): void {
    const key = writeKey(route, child.digest, root, `covered\n${voucher}`);
    const now = this.now();
    const at = this.writes.get(key);
    if (at !== undefined && now - at < this.opts.closureTTL / 2) return;
    this.writes.set(key, now);
    this.meta.putMembers(route.upstream.name, route.repository, root, voucher, membersOf(child), now + this.opts.closureTTL);
    // Hinted under the child itself, so that another replica admits the child (and so covers it) on its way down.
    void this.share(route, { root, voucher: child.digest, tag: this.rootTag(route, root) ?? '' }, child, now + this.opts.closureTTL);
  }

  /** The admission a covered child is served on (for its decision id). */
  private voucherAdmission(route: Route, root: Digest, voucher: Digest): Admission {
    const basis = this.gate.basis();
    const rec = this.meta
      .admissions(route.upstream.name, route.repository, voucher, voucher === root ? '' : root, this.now())
      .find((r) => r.serve && r.basis === basis);
    return { decisionId: rec?.decisionId ?? '', serve: true, outcome: 'allow', message: '', violations: [], warnings: [], mode: 'enforce', cached: true };
  }
}

function writeKey(route: Route, digest: string, under: string, tag: string): string {
  return `${route.upstream.name}\n${route.repository}\n${digest}\n${under}\n${tag}`;
}

function fromRecord(r: AdmissionRecord): Admission {
  return {
    decisionId: r.decisionId,
    serve: false,
    outcome: 'deny',
    message: r.reason || 'denied by policy',
    violations: [],
    warnings: [],
    mode: 'enforce',
    cached: true,
  };
}
