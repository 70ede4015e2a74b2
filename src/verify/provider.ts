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
 * - Attestations (evaluateAttestations): every in-toto statement that is not a signature, verified per cosign
 *   authority like a signature (envelope and subject digest); `attestations[]` holds the verified ones (predicates
 *   over maxPredicateSize as null with `oversized`, SLSA provenance facts from provenance.ts), and
 *   `attestations_rejected[]` why the others did not count, so that a required attestation (policies/attestations.rego)
 *   is denied as missing, unverified or failing a condition.
 * - Results are cached per (upstream, repository, digest, trust revision); verified results for longer than
 *   unverified ones, discovery failures not at all.
 * - Key and trust files are re-read when they change; that is a new trust revision.
 */
import type { Logger } from 'pino';
import type { EvidenceDeps } from '../policy/evidence.js';
import type { EvidenceContext, PolicyInput, RejectedAttestation, SignatureEvidence, SignatureProvider } from '../policy/contract.js';
import type { Metrics } from '../metrics/metrics.js';
import type { Manifest } from '../proxy/manifests.js';
import type { Descriptor } from '../oci/mediatypes.js';
import { isAccessory } from '../oci/artifacts.js';
import { BudgetExceededError, DiscoveryBudget } from './budget.js';
import { EvidenceCache, type CachedEvidence, type DurableEvidence } from './cache.js';
import type { SignaturesConfig } from '../config/signatures.js';
import type { SignatureCode } from '../policy/codes.js';
import { cosignItems, reject, type CosignItem, type Outcome } from './cosign.js';
import { verifyCosignKeyless, verifyCosignWithKey } from './cosign-verify.js';
import { verifyCosignPki } from './cosign-pki.js';
import { Discoverer, MT, type FoundArtifact } from './discovery.js';
import { errorText } from '../util/error-text.js';
import { verifyNotation, type NotationEnvelope } from './notation.js';
import { parseNotationCose } from './notation-cose.js';
import { parseNotationJws } from './notation-jws.js';
import { provenanceFacts } from './provenance.js';
import { Revocation } from './revocation.js';
import { loadTrust, trustFilesChanged, type Authority, type Trust } from './trust.js';
import type { TufTrustedRoot } from './tuf.js';
import { SingleFlight } from '../util/single-flight.js';

type Verified = SignatureEvidence['verified'][number];
type Attestation = PolicyInput['attestations'][number];

/** At most this many rejected attestations reach the policy input per digest. */
const MAX_REJECTED_ATTESTATIONS = 16;
/** capPredicate's answer for a predicate over the size bound. */
const OVERSIZED = Symbol('oversized');
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
  /** Notation OCSP/CRL answers, shared by every decision (bounded; revocation.ts). */
  private readonly revocation: Revocation;

  private readonly now: () => number;
  private readonly tuf: readonly TufTrustedRoot[];

  constructor(
    private readonly deps: EvidenceDeps,
    private readonly config: SignaturesConfig,
    opts: { now?: () => number; tuf?: readonly TufTrustedRoot[]; durable?: DurableEvidence | undefined } = {},
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
    this.cache = new EvidenceCache(deps.dataDir, opts.durable);
    const r = config.revocation;
    this.revocation = new Revocation({
      now: this.now,
      timeoutMs: r.timeout,
      cacheEntries: r.cacheEntries,
      maxTTL: r.maxTTL,
      maxResponseBytes: r.maxResponseSize,
    });
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
      return await this.flights.run(key, async () => (await this.cache.kept(key, this.now())) ?? this.compute(ctx, key));
    } catch (e) {
      return errorEvidence('CHECK_FAILED', `signature check failed: ${errorText(e)}`);
    }
  }

  private async compute(ctx: EvidenceContext, key: string): Promise<CachedEvidence> {
    const started = performance.now();
    // The gate's route and manifest: verified and parsed where the request brought it in, not looked up again.
    const { route, manifest } = ctx;
    // A signature or attestation manifest has no signatures of its own to look for; its decision ignores them.
    if (isAccessory(manifest.parsed, null)) return { signatures: { status: 'none', verified: [], rejected: [] }, attestations: [], attestations_rejected: [] };

    const budget = new DiscoveryBudget(this.config.budget);
    const readBlob = (d: Descriptor): Promise<Buffer> => this.discoverer.blob(route, d, budget);
    // Each artifact's blobs are fetched as soon as it is found, not after the slowest lookup: a round trip less on
    // a cold decision's critical path (the `.sig` blob does not wait for the referrers API's 404 and its fallback).
    const fetching = new Map<FoundArtifact, Promise<Candidate[]>>();
    const start = (a: FoundArtifact): void => {
      const p = this.candidatesOf(a, readBlob);
      // Awaited below with the others; until then a rejection must not count as unhandled.
      p.catch(() => undefined);
      fetching.set(a, p);
    };
    const discovery = await this.discoverer.discover(route, ctx.digest, budget, start);
    const all = await Promise.all(discovery.artifacts.map((a) => fetching.get(a) ?? this.candidatesOf(a, readBlob)));
    const candidates = budget.exceeded ? [] : all.flat();
    // Fail closed: whatever verified before the budget ran out, the upstream listed more than a decision may fetch.
    const { result, validUntil } = budget.exceeded
      ? { result: errorEvidence('BUDGET_EXCEEDED', budget.exceeded.message), validUntil: Infinity }
      : await this.evaluate(candidates, manifest, discovery.errors);
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
      // Never past the moment a verified signature stops verifying (its certificate or its expiry).
      const until = Math.min(this.now() + ttl, validUntil);
      // Verified evidence goes to the bucket too: a replica deciding this image while the upstream is down needs it.
      if (until > this.now()) this.cache.put(key, result, until, this.now(), result.signatures.verified.length > 0);
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
    const parse = layer.mediaType === MT.cose ? parseNotationCose : layer.mediaType === MT.jose ? parseNotationJws : undefined;
    if (!parse) return [{ family: 'notation', where, error: `unknown envelope type ${layer.mediaType}`, code: 'UNSUPPORTED', isSignature: true }];
    try {
      return [{ family: 'notation', env: parse(where, await readBlob(layer)) }];
    } catch (e) {
      if (e instanceof BudgetExceededError) return [];
      return [{ family: 'notation', where, error: errorText(e), code: 'UNUSABLE_SIGNATURE', isSignature: true }];
    }
  }

  private async evaluate(candidates: Candidate[], manifest: Manifest, discoveryErrors: string[]): Promise<{ result: CachedEvidence; validUntil: number }> {
    const now = new Date(this.now());
    const digest = manifest.digest;
    const subject = { digest, mediaType: manifest.mediaType, size: manifest.bytes.length };
    const verified: Verified[] = [];
    const rejected: Rejected[] = [];
    let validUntil = Infinity;
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
          if (outcome.validUntil !== undefined) validUntil = Math.min(validUntil, outcome.validUntil);
          verified.push({
            authority: a.name,
            kind,
            format: 'item' in c ? c.item.format : c.env.format,
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
    }
    const { attestations, attestationsRejected } = await this.evaluateAttestations(candidates, subject, now);
    // A failed lookup may have hidden an attestation: say so, rather than let it look merely missing.
    if (discoveryErrors.length)
      attestationsRejected.unshift({ predicate_type: null, reason: `discovery failed: ${discoveryErrors.join('; ').slice(0, 300)}`, code: 'DISCOVERY_FAILED' });

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
    const result = {
      signatures: { status, verified, rejected: status === 'none' ? rejected.filter((r) => r.code !== 'NO_SIGNATURE') : rejected },
      attestations,
      attestations_rejected: attestationsRejected,
    };
    return { result, validUntil };
  }

  /**
   * Attestations: DSSE envelopes with an in-toto statement other than cosign's own signature predicate, from the
   * legacy `.att` tag and from Sigstore bundles among the referrers. Each counts, per cosign authority, only when its
   * envelope verifies against that authority and its statement's subject is this digest (verifyOne, as for
   * signatures). Those that do not verify for an authority are listed with the reason (at most
   * MAX_REJECTED_ATTESTATIONS, one per distinct predicate type, authority and reason), so that a policy can tell a
   * missing attestation from an unverified one.
   */
  private async evaluateAttestations(
    candidates: Candidate[],
    subject: { digest: EvidenceContext['digest']; mediaType: string; size: number },
    now: Date,
  ): Promise<{ attestations: Attestation[]; attestationsRejected: RejectedAttestation[] }> {
    const attestations: Attestation[] = [];
    const rejected = new Map<string, RejectedAttestation>();
    const note = (r: RejectedAttestation): void => {
      const key = JSON.stringify([r.predicate_type, r.authority ?? null, r.reason]);
      if (rejected.size < MAX_REJECTED_ATTESTATIONS && !rejected.has(key)) rejected.set(key, r);
    };
    const authorities = this.trust.authorities.filter((a) => a.kind !== 'notation');
    for (const c of candidates) {
      if (c.family !== 'cosign') continue;
      if ('error' in c) {
        // What could not be read may have been an attestation (a malformed bundle says nothing of what it holds).
        note({ predicate_type: null, reason: `unusable ${c.isSignature ? 'signature' : 'attestation'} (${c.error})`, code: c.code });
        continue;
      }
      if (!('item' in c) || c.item.isSignature) continue;
      const claim = c.item.claim;
      if (claim.kind !== 'in-toto') {
        note({
          predicate_type: null,
          reason: `unusable attestation (${claim.kind === 'invalid' ? claim.error : 'not an in-toto statement'})`,
          code: 'UNUSABLE_PAYLOAD',
        });
        continue;
      }
      for (const a of authorities) {
        const outcome = await this.verifyOne(c, a, subject, now);
        this.metrics.signatureVerifications.inc({ kind: KIND_LABEL[a.kind], result: outcome.ok ? 'verified' : 'rejected' });
        if (!outcome.ok) {
          this.log.debug({ authority: a.name, where: c.item.where, reason: outcome.reason }, 'attestation not verified');
          note({ predicate_type: claim.predicateType, authority: a.name, reason: outcome.reason, code: outcome.code });
          continue;
        }
        const predicate = this.capPredicate(claim.predicate, claim.predicateType);
        const facts = predicate === OVERSIZED ? undefined : provenanceFacts(claim.predicateType, predicate);
        attestations.push({
          predicate_type: claim.predicateType,
          authority: a.name,
          predicate: predicate === OVERSIZED ? null : predicate,
          ...(predicate === OVERSIZED ? { oversized: true } : {}),
          ...(facts ? { provenance: facts } : {}),
        });
      }
    }
    return { attestations, attestationsRejected: [...rejected.values()] };
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
        return await verifyNotation(c.env, a, subject, { now, log: (msg) => this.log.warn({ authority: a.name }, msg), revocation: this.revocation });
      }
      return reject('WRONG_KIND', 'not a signature this authority can verify');
    } catch (e) {
      return reject('VERIFICATION_ERROR', `verification error: ${errorText(e)}`);
    }
  }

  /** The predicate, or OVERSIZED when its JSON is larger than maxPredicateSize (it then reaches the policy as null). */
  private capPredicate(predicate: unknown, type: string): unknown {
    let size: number;
    try {
      size = Buffer.byteLength(JSON.stringify(predicate) ?? 'null');
    } catch {
      return OVERSIZED;
    }
    if (size <= this.config.maxPredicateSize) return predicate;
    this.log.warn({ predicateType: type, size, max: this.config.maxPredicateSize }, 'attestation predicate over the size cap; passed to the policy as null');
    return OVERSIZED;
  }
}

function errorEvidence(code: SignatureCode, reason: string): CachedEvidence {
  return {
    signatures: { status: 'error', verified: [], rejected: [{ reason, code }] },
    attestations: [],
    attestations_rejected: [{ predicate_type: null, reason, code }],
  };
}
