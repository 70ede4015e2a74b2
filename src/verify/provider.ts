/**
 * The signature evidence provider: discovery, verification against every configured authority, and the
 * `signatures` / `attestations` parts of the policy input
 * (policies/README.md).
 *
 * - Never throws: anything unexpected becomes `status: "error"` with the reason.
 * - `status`: `none` when no signature artifact exists, `ok` when some were examined (verified or not), `error`
 *   when discovery failed and nothing verified.
 * - `rejected[]`: one entry per authority without a verified signature and per distinct reason (no signature
 *   found, key mismatch, identity mismatch, digest mismatch, untrusted chain, expired, …), each with its stable
 *   `code` (policy/codes.ts); the policy names the reasons, and anything that decides uses the codes.
 * - A bundle or layer is a signature only when its payload is one (simple signing, or the cosign sign predicate,
 *   cosign.ts): an attestation never counts, whatever artifact type or annotation its manifest claims.
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
import { isAccessory } from '../oci/artifacts.js';
import { BudgetExceededError, DiscoveryBudget } from './budget.js';
import { EvidenceCache, type CachedEvidence } from './cache.js';
import type { SignaturesConfig } from '../config/signatures.js';
import type { SignatureCode } from '../policy/codes.js';
import { cosignItems, reject, type CosignItem, type Outcome } from './cosign.js';
import { verifyCosignKeyless, verifyCosignWithKey } from './cosign-verify.js';
import { verifyCosignPki } from './cosign-pki.js';
import { Discoverer, MT, type FoundArtifact } from './discovery.js';
import { errorText } from '../util/error-text.js';
import { parseNotationJws, verifyNotation, type NotationEnvelope } from './notation.js';
import { loadTrust, trustFilesChanged, type Authority, type Trust } from './trust.js';
import type { TufTrustedRoot } from './tuf.js';
import { SingleFlight } from '../util/single-flight.js';

type Verified = SignatureEvidence['verified'][number];
type Attestation = PolicyInput['attestations'][number];
type Family = 'cosign' | 'notation';
type Rejected = SignatureEvidence['rejected'][number];

/** One signature-ish thing found for a digest, parsed or not. */
type Candidate =
  | { family: 'cosign'; item: CosignItem }
  | { family: 'notation'; env: NotationEnvelope }
  | { family: Family; where: string; error: string; code: SignatureCode; isSignature: boolean };

const KIND_LABEL = { key: 'cosign-key', keyless: 'cosign-keyless', notation: 'notation' } as const;

export class SignatureEvidenceProvider implements SignatureProvider {
  private trust: Trust;
  private lastCheck = 0;
  private lastReloadError: string | undefined;
  private readonly discoverer: Discoverer;
  private readonly cache: EvidenceCache;
  private readonly flights = new SingleFlight<string, CachedEvidence>();
  private readonly log: Logger;
  private readonly metrics: Metrics;

  private readonly now: () => number;
  private readonly tuf: readonly TufTrustedRoot[];

  constructor(
    private readonly deps: EvidenceDeps,
    private readonly config: SignaturesConfig,
    opts: { now?: () => number; tuf?: readonly TufTrustedRoot[] } = {},
  ) {
    this.now = opts.now ?? Date.now;
    this.tuf = opts.tuf ?? [];
    this.trust = loadTrust(config);
    this.log = deps.log.child({ component: 'signatures' });
    this.metrics = deps.metrics;
    this.discoverer = new Discoverer({
      clientFor: deps.clientFor,
      manifests: deps.manifests,
      maxSignatures: config.maxSignatures,
      maxBlobSize: config.maxBlobSize,
    });
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

  /**
   * Starts the TUF refreshes that are due (in the background: a request never waits on a mirror); one that brings
   * a new trusted root makes the next read reload at once.
   */
  private refreshDue(): void {
    for (const source of this.tuf) {
      void source.refreshIfDue()?.then((r) => {
        if (r === 'updated') this.lastCheck = Number.NEGATIVE_INFINITY;
      });
    }
  }

  /** Re-reads key and trust files when one changed (checked at most every reloadInterval). */
  private maybeReload(): void {
    this.refreshDue();
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
      // A caller that joins a running check is neither a hit nor a new miss.
      if (!this.flights.has(key)) this.metrics.signatureCache.inc({ result: 'miss' });
      return await this.flights.run(key, () => this.compute(ctx, key));
    } catch (e) {
      return errorEvidence('CHECK_FAILED', `signature check failed: ${errorText(e)}`);
    }
  }

  private async compute(ctx: EvidenceContext, key: string): Promise<CachedEvidence> {
    const started = performance.now();
    // The gate's route and manifest: verified and parsed where the request brought it in, not looked up again.
    const { route, manifest } = ctx;
    // A signature or attestation manifest has no signatures of its own to look for; its decision ignores them.
    if (isAccessory(manifest.parsed, null)) return { signatures: { status: 'none', verified: [], rejected: [] }, attestations: [] };

    const budget = new DiscoveryBudget(this.config.budget);
    const discovery = await this.discoverer.discover(route, ctx.digest, budget);
    const readBlob = (d: Descriptor): Promise<Buffer> => this.discoverer.blob(route, d, budget);
    const candidates = budget.exceeded ? [] : (await Promise.all(discovery.artifacts.map((a) => this.candidatesOf(a, readBlob)))).flat();
    // Fail closed: whatever verified before the budget ran out, the upstream listed more than a decision may fetch.
    const result = budget.exceeded ? errorEvidence('BUDGET_EXCEEDED', budget.exceeded.message) : await this.evaluate(candidates, manifest, discovery.errors);
    const seconds = (performance.now() - started) / 1000;
    this.metrics.signatureDuration.observe(seconds);
    this.log.debug(
      {
        digest: ctx.digest,
        repository: ctx.repository,
        found: discovery.artifacts.length,
        fetched: budget.usage,
        status: result.signatures.status,
        verified: result.signatures.verified.map((v) => v.authority),
        ms: Math.round(seconds * 1000),
      },
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
    return items.map((i): Candidate =>
      'error' in i
        ? { family: 'cosign', where: i.where, error: i.error, code: 'UNUSABLE_SIGNATURE', isSignature: i.isSignature }
        : { family: 'cosign', item: i },
    );
  }

  private async notationCandidates(found: FoundArtifact, readBlob: (d: Descriptor) => Promise<Buffer>): Promise<Candidate[]> {
    const layers = found.manifest.parsed.blobs.slice(1);
    const where = `${found.via} ${found.manifest.digest.slice(7, 19)}`;
    const layer = layers[0];
    if (layers.length !== 1 || !layer)
      return [{ family: 'notation', where, error: `signature manifest with ${layers.length} layers (want 1)`, code: 'UNUSABLE_SIGNATURE', isSignature: true }];
    if (layer.mediaType === MT.cose)
      return [
        {
          family: 'notation',
          where,
          error: 'COSE envelopes (application/cose) are not supported; sign with --signature-format jws',
          code: 'UNSUPPORTED',
          isSignature: true,
        },
      ];
    if (layer.mediaType !== MT.jose)
      return [{ family: 'notation', where, error: `unknown envelope type ${layer.mediaType}`, code: 'UNSUPPORTED', isSignature: true }];
    try {
      return [{ family: 'notation', env: parseNotationJws(where, await readBlob(layer)) }];
    } catch (e) {
      if (e instanceof BudgetExceededError) return [];
      return [{ family: 'notation', where, error: errorText(e), code: 'UNUSABLE_SIGNATURE', isSignature: true }];
    }
  }

  private async evaluate(candidates: Candidate[], manifest: Manifest, discoveryErrors: string[]): Promise<CachedEvidence> {
    const now = new Date(this.now());
    const digest = manifest.digest;
    const subject = { digest, mediaType: manifest.mediaType, size: manifest.bytes.length };
    const verified: Verified[] = [];
    const attestations: Attestation[] = [];
    const rejected: Rejected[] = [];
    const signatureCandidates = candidates.filter((c) => ('item' in c ? c.item.isSignature : 'env' in c ? true : c.isSignature));

    for (const a of this.trust.authorities) {
      const family: Family = a.kind === 'notation' ? 'notation' : 'cosign';
      const kind = KIND_LABEL[a.kind];
      // One entry per distinct reason (reasons differ within a code: "digest mismatch (signed …)").
      const reasons = new Map<string, SignatureCode>();
      let done = false;
      for (const c of signatureCandidates) {
        if (c.family !== family) continue;
        if (done) break;
        if ('error' in c) {
          reasons.set(`unusable signature (${c.error})`, c.code);
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
          reasons.set(outcome.reason, outcome.code);
        }
      }
      if (!done) {
        if (reasons.size === 0) reasons.set(`no ${family === 'cosign' ? 'cosign' : 'Notation'} signature found`, 'NO_SIGNATURE');
        for (const [reason, code] of [...reasons].slice(0, 5)) rejected.push({ authority: a.name, reason, code });
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
          attestations.push({
            predicate_type: c.item.claim.predicateType,
            authority: a.name,
            predicate: this.capPredicate(c.item.claim.predicate, c.item.claim.predicateType),
          });
        }
      }
    }

    let status: SignatureEvidence['status'];
    if (discoveryErrors.length && verified.length === 0) {
      status = 'error';
      rejected.unshift({ reason: `signature discovery failed: ${discoveryErrors.join('; ').slice(0, 300)}`, code: 'DISCOVERY_FAILED' });
    } else if (signatureCandidates.length === 0) {
      status = 'none';
    } else {
      status = 'ok';
    }
    // With nothing found at all, "none" says it; the per-authority NO_SIGNATURE entries would only repeat it.
    return { signatures: { status, verified, rejected: status === 'none' ? rejected.filter((r) => r.code !== 'NO_SIGNATURE') : rejected }, attestations };
  }

  private async verifyOne(
    c: Candidate,
    a: Authority,
    subject: { digest: EvidenceContext['digest']; mediaType: string; size: number },
    now: Date,
  ): Promise<Outcome> {
    try {
      if ('item' in c) {
        if (a.kind === 'key') return verifyCosignWithKey(c.item, a, subject.digest);
        if (a.kind === 'keyless')
          return a.ca ? verifyCosignPki(c.item, { ...a, ca: a.ca }, subject.digest, now) : verifyCosignKeyless(c.item, a, subject.digest);
      } else if ('env' in c && a.kind === 'notation') {
        return await verifyNotation(c.env, a, subject, now, (msg) => this.log.warn({ authority: a.name }, msg));
      }
      return reject('WRONG_KIND', 'not a signature this authority can verify');
    } catch (e) {
      return reject('VERIFICATION_ERROR', `verification error: ${errorText(e)}`);
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

function errorEvidence(code: SignatureCode, reason: string): CachedEvidence {
  return { signatures: { status: 'error', verified: [], rejected: [{ reason, code }] }, attestations: [] };
}
