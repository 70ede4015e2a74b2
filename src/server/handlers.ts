/**
 * The registry endpoints. Each handler validates its input, routes to an upstream, asks the gate, and serves.
 * Order matters for security: nothing is fetched for a name that does not route to a configured upstream, and
 * nothing by digest is served outside an admitted closure.
 */
import type { Client } from '../gate/input.js';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Identity } from '../auth/authenticator.js';
import type { QuotaKind, Quotas } from '../auth/quota.js';
import type { AdmissionGate } from '../gate/gate.js';
import type { Admission } from '../policy/contract.js';
import type { Metrics } from '../metrics/metrics.js';
import type { BlobService } from '../proxy/blobs.js';
import type { CentralConfirmation } from '../proxy/chain.js';
import type { Manifest, ManifestService } from '../proxy/manifests.js';
import { accepts } from '../oci/mediatypes.js';
import type { ReferrersService } from '../proxy/referrers.js';
import type { TagService } from '../proxy/tags.js';
import { isDigest, looksLikeDigest, parseReference, type Digest } from '../routing/reference.js';
import type { Route, Router } from '../routing/route.js';
import { admittedRootKind, rootKind, type RootKind } from '../gate/classify.js';
import { errors, printableAscii, RegistryError } from './errors.js';
import type { Endpoint } from './paths.js';
import { parseRange, sendJson } from './respond.js';

export interface HandlerDeps {
  router: Router;
  manifests: ManifestService;
  blobs: BlobService;
  tags: TagService;
  referrers: ReferrersService;
  gate: AdmissionGate;
  metrics: Metrics;
  /**
   * Clients authenticate on this listener: a blob or child manifest is then served only to an identity the policy
   * admits for its root, not to anyone once another identity admitted it.
   */
  identityChecks?: boolean;
  /**
   * The 401 challenge for a repository. An anonymous client that the policy's client rules refuse gets it instead
   * of the 403: clients send credentials (a kubelet's imagePullSecrets among them) only after a 401.
   */
  challenge?: (req: IncomingMessage, repository: string) => string;
  /** Token buckets on upstream-costly requests (src/auth/quota.ts), and how to tell a cold request from a warm one. */
  quotas?: Quotas;
  warm?: WarmCheck;
  /** Upstreams that are a central Portcullis: its allow of a digest is re-asked every `recheck` (proxy/chain.ts). */
  central?: CentralConfirmation;
}

/** Is this already in the cache (serving it costs the upstream nothing)? */
export interface WarmCheck {
  tag(route: Route, tag: string): boolean;
  manifest(route: Route, digest: Digest): boolean;
  blob(digest: Digest): boolean;
}

export interface RequestContext {
  req: IncomingMessage;
  res: ServerResponse;
  url: URL;
  method: 'GET' | 'HEAD';
  clientIp: string;
  /** Who is asking (src/auth): every endpoint that returns upstream data decides with it. */
  identity: Identity;
}

export class RegistryHandlers {
  constructor(private readonly d: HandlerDeps) {}

  route(ctx: RequestContext, name: string): Route {
    const ns = ctx.url.searchParams.get('ns') ?? undefined;
    const r = this.d.router.resolve(name, ns);
    if ('code' in r) throw r.code === 'NAME_UNKNOWN' ? errors.nameUnknown(r.message) : errors.nameInvalid(r.message);
    if (r.ns !== undefined) ctx.res.setHeader('oci-namespace', r.ns);
    return r;
  }

  async handle(ctx: RequestContext, ep: Endpoint): Promise<void> {
    if (ctx.identity.method === 'scanner' && ep.kind !== 'base') return this.scannerPull(ctx, ep);
    switch (ep.kind) {
      case 'base':
        sendJson(ctx.res, 200, '{}', ctx.method === 'HEAD');
        return;
      case 'manifest':
        return this.manifest(ctx, this.route(ctx, ep.name), ep.reference);
      case 'blob':
        return this.blob(ctx, this.route(ctx, ep.name), ep.digest);
      case 'tags':
        return this.tagList(ctx, this.route(ctx, ep.name), ep.name);
      case 'referrers':
        return this.referrerList(ctx, this.route(ctx, ep.name), ep.digest);
      case 'catalog':
        throw errors.unsupported('the catalog is not served by this proxy', 404);
      case 'upload':
        throw errors.unsupported('this is a read-only pull-through proxy: pushes are not supported');
    }
  }

  /**
   * Portcullis's own scanner, pulling the image of its job (a token from ClientAuth.scannerToken): that one manifest
   * by digest and the blobs it lists, without a policy decision (the scan is evidence for that decision, which waits
   * for it), and nothing else: no tags, no referrers, no other digest. The manifest is digest-verified as always.
   */
  private async scannerPull(ctx: RequestContext, ep: Endpoint): Promise<void> {
    const job = ctx.identity.scanJob;
    const deny = (what: string): RegistryError =>
      errors.denied(
        `portcullis: a scanner token may pull only the image of its scan job, not ${what}`,
        { rule: 'scanner.job_only', reason: 'not the scan job of this token' },
        { reason: 'scanner_job_only' },
      );
    if (!job || !isDigest(job.digest) || (ep.kind !== 'manifest' && ep.kind !== 'blob')) throw deny(ep.kind);
    const jobDigest: Digest = job.digest;
    const route = this.route(ctx, ep.name);
    if (ep.kind === 'manifest') {
      if (ep.reference !== job.digest) throw deny(`${ep.name}:${ep.reference.slice(0, 80)}`);
      return this.sendManifest(ctx, await this.d.manifests.get(route, jobDigest));
    }
    const blob = ep.digest;
    if (!isDigest(blob)) throw errors.digestInvalid(`invalid or unsupported digest "${blob.slice(0, 80)}"`);
    const image = await this.d.manifests.get(route, jobDigest);
    if (!image.parsed.blobs.some((b) => b.digest === blob)) throw deny(`blob ${blob}`);
    return this.sendBlob(ctx, route, blob, false);
  }

  private async manifest(ctx: RequestContext, route: Route, reference: string): Promise<void> {
    const ref = parseReference(reference);
    if (!ref) {
      throw looksLikeDigest(reference)
        ? errors.digestInvalid(`invalid or unsupported digest "${reference.slice(0, 80)}"`)
        : errors.manifestInvalid(`invalid tag "${reference.slice(0, 80)}"`);
    }
    let manifest: Manifest;
    if (ref.kind === 'tag') {
      await this.quota(ctx, 'coldManifests', (w) => !w.tag(route, ref.tag));
      const resolved = await this.d.manifests.resolveTag(route, ref.tag);
      manifest = resolved.manifest;
      if (resolved.stale) addWarning(ctx.res, 'served from cache: upstream unreachable');
      await this.d.central?.confirm(route, manifest.digest, whoOf(ctx));
      await this.admit(ctx, route, manifest, ref.tag);
    } else {
      await this.quota(ctx, 'coldManifests', (w) => !w.manifest(route, ref.digest));
      manifest = await this.d.manifests.get(route, ref.digest);
      await this.d.central?.confirm(route, manifest.digest, whoOf(ctx));
      // A child of an admitted index is decided on its own evidence (its index's signatures included); anything
      // else by digest is a root of its own (src/gate/closures.ts).
      this.applyAdmission(ctx, refOf(route, manifest.digest), await this.d.gate.admitByDigest({ route, method: ctx.method, client: clientOf(ctx), manifest }));
      // Vouched for by an admitted root (a child that cannot run is covered by its index's decision): the root must
      // also be this identity's to have. Only looked up where identities differ, so that the warm path stays one query.
      const root = this.d.identityChecks ? this.d.gate.vouchedBy(route, manifest.digest, 'manifest') : undefined;
      if (root && root !== manifest.digest) await this.identityMayUse(ctx, route, root);
    }
    this.sendManifest(ctx, manifest);
  }

  private sendManifest(ctx: RequestContext, manifest: Manifest): void {
    const res = ctx.res;
    if (!accepts(ctx.req.headers.accept, manifest.mediaType)) {
      throw errors.manifestUnknown(`manifest is ${manifest.mediaType}, which the request's Accept header does not include`);
    }
    res.statusCode = 200;
    res.setHeader('content-type', manifest.mediaType);
    res.setHeader('content-length', manifest.bytes.length);
    res.setHeader('docker-content-digest', manifest.digest);
    res.setHeader('etag', `"${manifest.digest}"`);
    res.end(ctx.method === 'HEAD' ? undefined : manifest.bytes);
  }

  /**
   * Runs the gate for a root manifest; throws the 403 for an enforced deny, and sets decision headers.
   * Signatures, attestations, SBOMs and referrers indexes (cosign `.sig`/`.att`/`.sbom` tags, the referrers tag
   * schema, manifests with a `subject` or a signature artifact type) are a separate kind of request, but only when
   * nothing in them can run (src/gate/classify.ts).
   */
  private async admit(
    ctx: RequestContext,
    route: Route,
    manifest: Manifest,
    tag: string | null,
    kind: RootKind = rootKind(manifest.parsed, tag),
  ): Promise<Admission> {
    const request = { route, method: ctx.method, tag, manifest, kind, client: clientOf(ctx) } as const;
    await this.quota(ctx, 'decisions', () => !this.d.gate.hasCachedDecision(request));
    const admission = await this.d.gate.admitRoot(request);
    return this.applyAdmission(ctx, refOf(route, manifest.digest), admission);
  }

  /** Throws the 403 for an enforced deny (naming `ref`); sets the decision headers and warnings otherwise. */
  private applyAdmission(ctx: RequestContext, ref: string, admission: Admission): Admission {
    // An anonymous client that the policy's client rules refuse gets a 401 challenge instead of the 403: clients
    // send credentials (a kubelet's imagePullSecrets among them) only after a 401.
    if (!admission.serve && this.d.challenge && ctx.identity.method === 'anonymous' && admission.violations.some((v) => v.rule.startsWith('client.'))) {
      throw errors.unauthorized(`authentication required for ${ref}`, this.d.challenge(ctx.req, nameInPath(ctx.url)));
    }
    const res = ctx.res;
    if (admission.decisionId) res.setHeader('portcullis-decision-id', admission.decisionId);
    if (!admission.serve) {
      const short = oneLine(admission.message, 300);
      const [first, ...more] = admission.violations;
      throw errors.denied(
        `portcullis: denied ${ref}: ${short} [decision ${admission.decisionId}]`,
        {
          rule: first?.rule ?? 'policy',
          reason: first ? `${first.message}${more.length ? ` (and ${more.length} more)` : ''}` : admission.message,
          decisionId: admission.decisionId,
        },
        { decision_id: admission.decisionId, violations: admission.violations },
        { 'portcullis-decision-id': admission.decisionId, 'portcullis-reason': headerSafe(short) },
      );
    }
    if (admission.outcome === 'warn') {
      addWarning(res, `portcullis: would deny ${ref}: ${oneLine(admission.message, 200)}`);
      res.setHeader('portcullis-reason', headerSafe(oneLine(admission.message, 300)));
    } else {
      // Allowed with warnings (a CVE exception on record, a policy's warn rules): on the response too, not only in
      // the decision log, for clients and scripts that show registry warnings (recent containers/image logs them;
      // skopeo 1.9 here does not). A few at most.
      for (const w of admission.warnings.slice(0, 3)) addWarning(res, `portcullis: ${w.rule}: ${oneLine(w.message, 200)}`);
    }
    return admission;
  }

  /**
   * A closure is shared by every client, but a decision is per identity: before serving a member of a closure to an
   * authenticated listener's client, the root is decided (from the decision cache, normally) for this identity.
   */
  private async identityMayUse(ctx: RequestContext, route: Route, root: Digest): Promise<void> {
    if (!this.d.identityChecks) return;
    const rootManifest = await this.d.manifests.get(route, root);
    // The root itself was admitted already (that is how the closure exists); what is asked here is whether this
    // identity may have it. A root that cannot run (a signature asked for by its tag) keeps its accessory kind.
    await this.admit(ctx, route, rootManifest, null, admittedRootKind(rootManifest.parsed));
  }

  /** A 429 TOOMANYREQUESTS when a quota of `kind` applies, the request is cold, and its bucket is empty. */
  private async quota(ctx: RequestContext, kind: QuotaKind, cold: (w: WarmCheck) => boolean): Promise<void> {
    const { quotas, warm } = this.d;
    if (!quotas || !warm || !quotas.limits(kind) || !cold(warm)) return;
    const r = await quotas.take(kind, ctx.identity, ctx.clientIp);
    if (!r.ok) {
      throw errors.tooManyRequests(
        `portcullis: quota for ${kind} per ${r.scope} exceeded; retry in ${r.retryAfterSeconds}s (cached images are not limited)`,
        String(r.retryAfterSeconds),
      );
    }
  }

  private async blob(ctx: RequestContext, route: Route, digestStr: string): Promise<void> {
    if (!isDigest(digestStr)) throw errors.digestInvalid(`invalid or unsupported digest "${digestStr.slice(0, 80)}"`);
    const digest: Digest = digestStr;
    const verdict = await this.d.gate.admitBlob({ route, method: ctx.method, client: clientOf(ctx), digest });
    if (!verdict.serve) {
      const ref = refOf(route, digest);
      const d = verdict.denial;
      // The image this blob belongs to was decided again (a new policy, settings or trust) and is now denied.
      if (d) {
        const short = oneLine(`no longer part of an admitted image: ${d.message}`, 300);
        throw errors.denied(
          `portcullis: denied ${ref}: ${short}${d.decisionId ? ` [decision ${d.decisionId}]` : ''}`,
          {
            rule: d.violations[0]?.rule ?? 'admission_denied',
            reason: `no longer admitted: ${d.violations[0]?.message ?? d.message}`,
            ...(d.decisionId ? { decisionId: d.decisionId } : {}),
          },
          { reason: 'admission_denied', decision_id: d.decisionId || null, violations: d.violations },
          { ...(d.decisionId ? { 'portcullis-decision-id': d.decisionId } : {}), 'portcullis-reason': headerSafe(short) },
        );
      }
      throw errors.denied(
        `portcullis: denied ${ref}: not part of an admitted image; pull the image by tag or by its root digest first`,
        // No decision was made for this digest, so there is no decision id to name.
        { rule: 'not_in_admitted_closure', reason: 'not part of an admitted image; pull the image by tag or root digest first' },
        { reason: 'not_in_admitted_closure' },
        { 'portcullis-reason': 'not part of an admitted image' },
      );
    }
    await this.identityMayUse(ctx, route, verdict.root);
    // A chained node: the image the blob belongs to must still be the central tier's to serve (proxy/chain.ts).
    await this.d.central?.confirm(route, verdict.root, whoOf(ctx));
    return this.sendBlob(ctx, route, digest, true);
  }

  /** `quota`: a cold GET takes a coldBlobs token (not for the scanner: its jobs are counted as decisions). */
  private async sendBlob(ctx: RequestContext, route: Route, digest: Digest, quota: boolean): Promise<void> {
    const res = ctx.res;
    if (ctx.method === 'HEAD') {
      const size = await this.d.blobs.size(route, digest);
      res.statusCode = 200;
      res.setHeader('content-length', size);
      res.setHeader('content-type', 'application/octet-stream');
      res.setHeader('docker-content-digest', digest);
      res.setHeader('accept-ranges', 'bytes');
      res.end();
      return;
    }
    if (quota) await this.quota(ctx, 'coldBlobs', (w) => !w.blob(digest));
    const blob = await this.d.blobs.open(route, digest);
    // storage.redirect: a warm blob comes from the store itself, through a URL that expires soon (README).
    const location = await blob.redirectUrl();
    if (location !== undefined) {
      res.statusCode = 307;
      res.setHeader('location', location);
      res.setHeader('docker-content-digest', digest);
      res.setHeader('content-length', 0);
      res.end();
      return;
    }
    const range = parseRange(ctx.req.headers.range, blob.size);
    if (range.kind === 'unsatisfiable') {
      blob.release();
      throw errors.rangeInvalid(`requested range is outside the blob's ${blob.size} bytes`, blob.size);
    }
    const [start, end] = range.kind === 'range' ? [range.start, range.end] : [0, blob.size - 1];
    res.statusCode = range.kind === 'range' ? 206 : 200;
    if (range.kind === 'range') res.setHeader('content-range', `bytes ${start}-${end}/${blob.size}`);
    res.setHeader('content-length', Math.max(0, end - start + 1));
    res.setHeader('content-type', 'application/octet-stream');
    res.setHeader('docker-content-digest', digest);
    res.setHeader('accept-ranges', 'bytes');
    if (blob.size === 0) {
      blob.release();
      res.end();
      return;
    }
    const counter = this.d.metrics.bytesServed.labels({ source: blob.source });
    // Straight to the socket from pooled slabs rather than through a stream (cache/sendfile.ts, cache/download.ts;
    // measured by npm run bench). A failed verification rejects here, and the caller destroys the response, so the
    // client sees a broken transfer rather than a clean end.
    await blob.writeTo(res, start, end, (n) => counter.inc(n));
  }

  private async tagList(ctx: RequestContext, route: Route, clientName: string): Promise<void> {
    // Repository-level rules before anything is fetched: a repository the policy does not allow is not listed.
    this.applyAdmission(
      ctx,
      `${route.registry}/${route.repository} (tag list)`,
      await this.d.gate.admitRepository({ route, method: ctx.method, client: clientOf(ctx), kind: 'tags' }),
    );
    const nRaw = ctx.url.searchParams.get('n');
    const last = ctx.url.searchParams.get('last') ?? undefined;
    let n: number | undefined;
    if (nRaw !== null) {
      n = Number(nRaw);
      if (!Number.isSafeInteger(n) || n < 0) throw errors.unsupported(`invalid n "${nRaw.slice(0, 20)}"`, 400);
      if (n === 0) {
        sendJson(ctx.res, 200, { name: clientName, tags: [] }, ctx.method === 'HEAD');
        return;
      }
    }
    const ns = ctx.url.searchParams.get('ns');
    const list = await this.d.tags.list(route, clientName, { n, last }, ns ? `&ns=${encodeURIComponent(ns)}` : '');
    if (list.link) ctx.res.setHeader('link', list.link);
    sendJson(ctx.res, 200, list.body, ctx.method === 'HEAD');
  }

  private async referrerList(ctx: RequestContext, route: Route, digest: string): Promise<void> {
    if (!isDigest(digest)) throw errors.digestInvalid(`invalid or unsupported digest "${digest.slice(0, 80)}"`);
    this.applyAdmission(
      ctx,
      `${route.registry}/${route.repository} (referrers of ${digest})`,
      await this.d.gate.admitRepository({ route, method: ctx.method, client: clientOf(ctx), kind: 'referrers' }),
    );
    const artifactType = ctx.url.searchParams.get('artifactType') ?? undefined;
    const r = await this.d.referrers.list(route, digest, artifactType);
    if (r.filtersApplied) ctx.res.setHeader('oci-filters-applied', 'artifactType');
    sendJson(ctx.res, 200, r.index, ctx.method === 'HEAD', 'application/vnd.oci.image.index.v1+json');
  }
}

function refOf(route: Route, digest: string): string {
  return `${route.registry}/${route.repository}@${digest}`;
}

/** The repository name as the client wrote it in the path (what a token's scope names). */
function nameInPath(url: URL): string {
  const m = /^\/v2\/(.+)\/(manifests|blobs|tags|referrers)\//.exec(url.pathname);
  return m ? m[1]! : '';
}

function clientOf(ctx: RequestContext): Client {
  const i = ctx.identity;
  return {
    ip: ctx.clientIp,
    user: i.user,
    groups: i.groups,
    method: i.method,
    userAgent: ctx.req.headers['user-agent'] ?? null,
    ...(i.via ? { via: i.via } : {}),
  };
}

/** The identity a central tier decides for (with forwardIdentity): the key of the node's confirmations. */
function whoOf(ctx: RequestContext): string {
  const i = ctx.identity;
  return `${i.method}:${i.user ?? ''}:${i.groups.join(',')}`;
}

function oneLine(s: string, max: number): string {
  const t = s.replace(/\s+/g, ' ').trim();
  return t.length > max ? `${t.slice(0, max - 1)}…` : t;
}

/** Appends an RFC 7234 `Warning: 299` (miscellaneous persistent warning); a response may carry several. */
function addWarning(res: ServerResponse, text: string): void {
  res.appendHeader('warning', `299 - "${headerSafe(text).replace(/"/g, "'")}"`);
}

/** Header values must be latin1 without control characters; ASCII reads the same in every log and client. */
function headerSafe(s: string): string {
  return printableAscii(s);
}
