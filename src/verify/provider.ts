/**
 * The signature evidence provider: discovery, verification against every configured authority, and the
 * `signatures` / `attestations` parts of the policy input (DESIGN §3–§4).
 *
 * - Never throws: anything unexpected becomes `status: "error"` with the reason.
 * - `status`: `none` when no signature artifact exists, `ok` when some were examined (verified or not), `error`
 *   when discovery failed and nothing verified.
 * - `rejected[]`: one entry per authority without a verified signature and per distinct reason (no signature
 *   found, key mismatch, identity mismatch, digest mismatch, untrusted chain, expired, …); the policy names them.
 * - Results are cached per (upstream, repository, digest, trust revision); verified results for longer than
 *   unverified ones, discovery failures not at all.
 * - Key and trust files are re-read when they change; that is a new trust revision.
 */
import type { Logger } from 'pino';
import type { EvidenceDeps } from '../policy/evidence.js';
import type { EvidenceContext, PolicyInput, SignatureEvidence, SignatureProvider } from '../policy/contract.js';
import type { Metrics } from '../metrics/metrics.js';
import type { Manifest } from '../proxy/manifests.js';
import type { Descriptor } from '../oci/mediatypes.js';
import type { Route } from '../routing/route.js';
import { isAccessory } from './accessory.js';
import { BudgetExceededError, DiscoveryBudget } from './budget.js';
import { EvidenceCache, type CachedEvidence } from './cache.js';
import type { SignaturesConfig } from '../config/signatures.js';
import { cosignItems, type CosignItem, type Outcome } from './cosign.js';
import { verifyCosignKeyless, verifyCosignWithKey } from './cosign-verify.js';
import { Discoverer, errorText, MT, type FoundArtifact } from './discovery.js';
import { parseNotationJws, verifyNotation, type NotationEnvelope } from './notation.js';
import { loadTrust, trustFilesChanged, type Authority, type Trust } from './trust.js';

type Verified = SignatureEvidence['verified'][number];
type Attestation = PolicyInput['attestations'][number];
type Family = 'cosign' | 'notation';

/** One signature-ish thing found for a digest, parsed or not. */
type Candidate =
  | { family: 'cosign'; item: CosignItem }
  | { family: 'notation'; env: NotationEnvelope }
  | { family: Family; where: string; error: string; isSignature: boolean };

const KIND_LABEL = { key: 'cosign-key', keyless: 'cosign-keyless', notation: 'notation' } as const;

export class SignatureEvidenceProvider implements SignatureProvider {
  private trust: Trust;
  private lastCheck = 0;
  private lastReloadError: string | undefined;
  private readonly discoverer: Discoverer;
  private readonly cache: EvidenceCache;
  private readonly flights = new Map<string, Promise<CachedEvidence>>();
  private readonly log: Logger;
  private readonly metrics: Metrics;

  constructor(
    private readonly deps: EvidenceDeps,
    private readonly config: SignaturesConfig,
    private readonly now: () => number = Date.now,
  ) {
    this.trust = loadTrust(config);
    this.log = deps.log.child({ component: 'signatures' });
    this.metrics = deps.metrics;
    this.discoverer = new Discoverer(deps.clientFor, deps.manifests, config.maxSignatures, config.maxBlobSize);
    this.cache = new EvidenceCache(deps.dataDir);
    this.lastCheck = this.now();
  }

  close(): void {
    this.cache.close();
  }

  get trustRevision(): string {
    this.maybeReload();
    return this.trust.revision;
  }

  get authorities(): readonly Authority[] {
    return this.trust.authorities;
  }

  /** Re-reads key and trust files when one changed (checked at most every reloadInterval). */
  private maybeReload(): void {
    const now = this.now();
    if (now - this.lastCheck < this.config.reloadInterval) return;
    this.lastCheck = now;
    if (!trustFilesChanged(this.trust)) return;
    try {
      const next = loadTrust(this.config);
      if (next.revision !== this.trust.revision) this.log.info({ from: this.trust.revision, to: next.revision }, 'signature trust material changed');
      this.trust = next;
      this.lastReloadError = undefined;
    } catch (e) {
      const msg = errorText(e);
      if (msg !== this.lastReloadError) this.log.error({ err: msg }, 'signature trust material could not be reloaded; keeping the previous revision');
      this.lastReloadError = msg;
    }
  }

  async signatures(ctx: EvidenceContext): Promise<CachedEvidence> {
    try {
      const revision = this.trustRevision;
      const key = [ctx.upstream, ctx.repository, ctx.digest, revision].join('\n');
      const hit = this.cache.get(key, this.now());
      if (hit) {
        this.metrics.signatureCache.inc({ result: 'hit' });
        return hit;
      }
      let p = this.flights.get(key);
      if (!p) {
        this.metrics.signatureCache.inc({ result: 'miss' });
        p = this.compute(ctx, key).finally(() => this.flights.delete(key));
        this.flights.set(key, p);
      }
      return await p;
    } catch (e) {
      return errorEvidence(`signature check failed: ${errorText(e)}`);
    }
  }

  private routeFor(ctx: EvidenceContext): Route {
    const upstream = this.deps.config.upstreams.find((u) => u.name === ctx.upstream);
    if (!upstream) throw new Error(`no upstream named "${ctx.upstream}"`);
    return { upstream, registry: ctx.registry, repository: ctx.repository, routing: 'prefix' };
  }

  private async compute(ctx: EvidenceContext, key: string): Promise<CachedEvidence> {
    const started = performance.now();
    const route = this.routeFor(ctx);
    const manifest = await this.deps.manifests.get(route, ctx.digest);
    // A signature or attestation manifest has no signatures of its own to look for; its decision ignores them.
    if (isAccessory(manifest.parsed, null)) return { signatures: { status: 'none', verified: [], rejected: [] }, attestations: [] };

    const budget = new DiscoveryBudget(this.config.budget);
    const discovery = await this.discoverer.discover(route, ctx.digest, budget);
    const readBlob = (d: Descriptor): Promise<Buffer> => this.discoverer.blob(route, d, budget);
    const candidates = budget.exceeded ? [] : (await Promise.all(discovery.artifacts.map((a) => this.candidatesOf(a, readBlob)))).flat();
    // Fail closed: whatever verified before the budget ran out, the upstream listed more than a decision may fetch.
    const result = budget.exceeded ? errorEvidence(budget.exceeded.message) : await this.evaluate(candidates, manifest, discovery.errors);
    const seconds = (performance.now() - started) / 1000;
    this.metrics.signatureDuration.observe(seconds);
    this.log.debug(
      { digest: ctx.digest, repository: ctx.repository, found: discovery.artifacts.length, fetched: budget.usage, status: result.signatures.status, verified: result.signatures.verified.map((v) => v.authority), ms: Math.round(seconds * 1000) },
      'signature evidence',
    );
    if (discovery.errors.length === 0) {
      const ttl = result.signatures.verified.length ? this.config.cache.verifiedTTL : this.config.cache.unverifiedTTL;
      if (ttl > 0) this.cache.put(key, result, this.now() + ttl, this.now());
    }
    return result;
  }

  private async candidatesOf(found: FoundArtifact, readBlob: (d: Descriptor) => Promise<Buffer>): Promise<Candidate[]> {
    if (found.kind === 'notation') return this.notationCandidates(found, readBlob);
    const items = await cosignItems(found, readBlob, this.config.maxSignatures);
    return items.map((i): Candidate => ('error' in i ? { family: 'cosign', where: i.where, error: i.error, isSignature: i.isSignature } : { family: 'cosign', item: i }));
  }

  private async notationCandidates(found: FoundArtifact, readBlob: (d: Descriptor) => Promise<Buffer>): Promise<Candidate[]> {
    const layers = found.manifest.parsed.blobs.slice(1);
    const where = `${found.via} ${found.manifest.digest.slice(7, 19)}`;
    const layer = layers[0];
    if (layers.length !== 1 || !layer) return [{ family: 'notation', where, error: `signature manifest with ${layers.length} layers (want 1)`, isSignature: true }];
    if (layer.mediaType === MT.cose) return [{ family: 'notation', where, error: 'COSE envelopes (application/cose) are not supported; sign with --signature-format jws', isSignature: true }];
    if (layer.mediaType !== MT.jose) return [{ family: 'notation', where, error: `unknown envelope type ${layer.mediaType}`, isSignature: true }];
    try {
      return [{ family: 'notation', env: parseNotationJws(where, await readBlob(layer)) }];
    } catch (e) {
      if (e instanceof BudgetExceededError) return [];
      return [{ family: 'notation', where, error: errorText(e), isSignature: true }];
    }
  }

  private async evaluate(candidates: Candidate[], manifest: Manifest, discoveryErrors: string[]): Promise<CachedEvidence> {
    const now = new Date(this.now());
    const digest = manifest.digest;
    const subject = { digest, mediaType: manifest.mediaType, size: manifest.bytes.length };
    const verified: Verified[] = [];
    const attestations: Attestation[] = [];
    const rejected: SignatureEvidence['rejected'] = [];
    const signatureCandidates = candidates.filter((c) => ('item' in c ? c.item.isSignature : 'env' in c ? true : c.isSignature));

    for (const a of this.trust.authorities) {
      const family: Family = a.kind === 'notation' ? 'notation' : 'cosign';
      const kind = KIND_LABEL[a.kind];
      const reasons = new Set<string>();
      let done = false;
      for (const c of signatureCandidates) {
        if (c.family !== family) continue;
        if (done) break;
        if ('error' in c) {
          reasons.add(`unusable signature (${c.error})`);
          this.metrics.signatureVerifications.inc({ kind, result: 'error' });
          continue;
        }
        const outcome = await this.verifyOne(c, a, subject, now);
        this.metrics.signatureVerifications.inc({ kind, result: outcome.ok ? 'verified' : 'rejected' });
        if (outcome.ok) {
          done = true;
          verified.push({
            authority: a.name,
            kind,
            format: 'item' in c ? c.item.format : 'notation-jws',
            ...(outcome.identity ? { identity: outcome.identity } : {}),
            tlog: outcome.tlog,
            ...(outcome.signedAt ? { signed_at: outcome.signedAt } : {}),
          });
        } else {
          reasons.add(outcome.reason);
        }
      }
      if (!done) {
        if (reasons.size === 0) reasons.add(`no ${family === 'cosign' ? 'cosign' : 'Notation'} signature found`);
        for (const reason of [...reasons].slice(0, 5)) rejected.push({ authority: a.name, reason });
      }
      // Attestations: verified DSSE/in-toto statements other than cosign's own signature predicate.
      if (family === 'cosign') {
        for (const c of candidates) {
          if (!('item' in c) || c.item.isSignature || c.item.claim.kind !== 'in-toto') continue;
          const outcome = await this.verifyOne(c, a, subject, now);
          this.metrics.signatureVerifications.inc({ kind, result: outcome.ok ? 'verified' : 'rejected' });
          if (!outcome.ok) {
            this.log.debug({ authority: a.name, where: c.item.where, reason: outcome.reason }, 'attestation not verified');
            continue;
          }
          attestations.push({ predicate_type: c.item.claim.predicateType, authority: a.name, predicate: this.capPredicate(c.item.claim.predicate, c.item.claim.predicateType) });
        }
      }
    }

    let status: SignatureEvidence['status'];
    if (discoveryErrors.length && verified.length === 0) {
      status = 'error';
      rejected.unshift({ reason: `signature discovery failed: ${discoveryErrors.join('; ').slice(0, 300)}` });
    } else if (signatureCandidates.length === 0) {
      status = 'none';
    } else {
      status = 'ok';
    }
    return { signatures: { status, verified, rejected: status === 'none' ? rejected.filter((r) => !/^no (cosign|Notation) signature found$/.test(r.reason)) : rejected }, attestations };
  }

  private async verifyOne(c: Candidate, a: Authority, subject: { digest: EvidenceContext['digest']; mediaType: string; size: number }, now: Date): Promise<Outcome> {
    try {
      if ('item' in c) {
        if (a.kind === 'key') return verifyCosignWithKey(c.item, a, subject.digest);
        if (a.kind === 'keyless') return verifyCosignKeyless(c.item, a, subject.digest);
      } else if ('env' in c && a.kind === 'notation') {
        return await verifyNotation(c.env, a, subject, now, (msg) => this.log.warn({ authority: a.name }, msg));
      }
      return { ok: false, reason: 'not a signature this authority can verify' };
    } catch (e) {
      return { ok: false, reason: `verification error: ${errorText(e)}` };
    }
  }

  private capPredicate(predicate: unknown, type: string): unknown {
    let size: number;
    try {
      size = Buffer.byteLength(JSON.stringify(predicate) ?? 'null');
    } catch {
      return null;
    }
    if (size <= this.config.maxPredicateSize) return predicate;
    this.log.warn({ predicateType: type, size, max: this.config.maxPredicateSize }, 'attestation predicate over the size cap; passed to the policy as null');
    return null;
  }
}

function errorEvidence(reason: string): CachedEvidence {
  return { signatures: { status: 'error', verified: [], rejected: [{ reason }] }, attestations: [] };
}
