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
 */
import { LRUCache } from 'lru-cache';
import type { AdmissionRecord, MemberLink, MemberRole, MetaStore } from '../cache/metastore.js';
import type { Manifest } from '../proxy/manifests.js';
import type { Digest } from '../routing/reference.js';
import type { Route } from '../routing/route.js';
import { isRunnable } from '../oci/artifacts.js';
import { needsOwnDecision, rootKind } from './classify.js';
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

  constructor(o: ClosuresOptions) {
    this.meta = o.meta;
    this.manifests = o.manifests;
    this.opts = { closureTTL: o.closureTTL, pruneBatch: o.pruneBatch };
    this.now = o.now;
    this.gate = o.gate;
  }

  /** Records a decision about a manifest and, for an allow, what it vouches for. Repository-level ones are not kept. */
  record(s: Subject, admission: Admission, basis: string): void {
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
    if (admission.serve) this.meta.putMembers(upstream.name, repository, under || s.manifest.digest, s.manifest.digest, membersOf(s.manifest), expiresAt);
  }

  /** A cached allow was reused: keep its admission and members alive (at most one write per half closure TTL). */
  reassert(s: Subject, admission: Admission, basis: string): void {
    if (!s.manifest) return;
    const at = this.writes.get(writeKey(s.route, s.manifest.digest, s.root?.manifest.digest ?? '', s.tag ?? ''));
    if (at !== undefined && this.now() - at < this.opts.closureTTL / 2) return;
    this.record(s, admission, basis);
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
    const v = await this.vouch(req, req.digest, BLOB_ROLES);
    return v.link ? { serve: true, root: v.link.root } : { serve: false, denial: v.denial };
  }

  async admitByDigest(req: DigestRequest): Promise<Admission> {
    const { route, manifest } = req;
    const asRoot = (): Promise<Admission> =>
      this.gate.admitRoot({ route, method: req.method, client: req.client, tag: null, manifest, kind: rootKind(manifest.parsed, null) });
    const v = await this.vouch(req, manifest.digest, CHILD_ROLES);
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
  private async vouch(req: MemberRequest | DigestRequest, member: Digest, roles: readonly MemberRole[]): Promise<Vouch> {
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
