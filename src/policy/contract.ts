/**
 * The seams of the admission gate: the policy input and output (documented for
 * policy authors in policies/README.md), the evidence providers that feed it,
 * and what the server needs back. Providers never throw into the gate; they return evidence with a status, and
 * the policy decides.
 */
import type { Manifest } from '../proxy/manifests.js';
import type { Digest } from '../routing/reference.js';
import type { Route } from '../routing/route.js';
import type { ScanCode, SignatureCode } from './codes.js';

export interface PolicyInput {
  version: 1;
  now: string;
  request: {
    /**
     * `tags` and `referrers` are repository-level requests (a tag list, a referrers list): no digest, no evidence;
     * the policy answers whether the repository may be listed at all.
     */
    kind: 'manifest' | 'accessory' | 'tags' | 'referrers';
    method: 'GET' | 'HEAD';
    /** `method`: basic, token, mtls, oidc or anonymous (src/auth); `groups` sorted. */
    client: {
      ip: string;
      user: string | null;
      groups: string[];
      method: string;
      user_agent: string | null;
      /** Present when a chained node forwarded this client's identity: the node's own (verified) identity. */
      via?: { user: string | null; groups: string[]; method: string };
    };
    routing: 'ns' | 'prefix' | 'default';
  };
  image: {
    registry: string;
    repository: string;
    tag: string | null;
    /** Null for repository-level requests (tags, referrers). */
    digest: Digest | null;
    media_type: string | null;
    platforms: string[];
    labels: Record<string, string>;
    created: string | null;
    /** What the manifest is: `index` or `image`, its `artifactType`, its config's media type, and whether it can run. */
    manifest_kind?: 'index' | 'image';
    artifact_type?: string | null;
    config_media_type?: string | null;
    runnable?: boolean;
    /** For a manifest an index lists: its platform as that index declares it (`os_version` for Windows images). */
    platform?: PlatformInfo | null;
    /** For an index: the platform of each entry, `os_version` included (at most 64). */
    platform_details?: PlatformInfo[];
    /** For a child decided under an admitted index: the index that lists it, and the admitted root. */
    parent?: { digest: Digest; media_type: string } | null;
    root?: { digest: Digest; tag: string | null } | null;
  };
  upstream: { name: string; url: string };
  signatures: SignatureEvidence;
  attestations: VerifiedAttestation[];
  /** Attestations found that an authority did not verify for this digest (at most 16), with why (policies/README.md). */
  attestations_rejected?: RejectedAttestation[];
  scan: ScanEvidence;
}

/**
 * An attestation (DSSE envelope with an in-toto statement) that verified against `authority` and whose subject is
 * the digest (`subject_digest`: the image's own, or for a child that of the index that admitted it). One entry per
 * authority that verified it.
 */
export interface VerifiedAttestation {
  predicate_type: string;
  authority: string;
  /** The predicate as signed, or null when it is larger than `signatures.maxPredicateSize` (then `oversized`). */
  predicate: unknown;
  oversized?: boolean;
  /** For SLSA provenance v0.2 and v1: the facts conditions are put on (src/verify/provenance.ts). */
  provenance?: ProvenanceFacts;
  subject_digest?: string;
}

export interface RejectedAttestation {
  /** What the (unverified) statement says it is; null when the envelope could not be read. */
  predicate_type: string | null;
  authority?: string;
  reason: string;
  code: SignatureCode;
}

/** The SLSA provenance facts (v0.2 and v1 read alike); null where the predicate does not say. */
export interface ProvenanceFacts {
  version: 'v0.2' | 'v1';
  builder_id: string | null;
  build_type: string | null;
  source_repository: string | null;
  source_ref: string | null;
}

export interface PlatformInfo {
  os: string;
  architecture: string;
  variant?: string;
  os_version?: string;
  os_features?: string[];
}

export interface SignatureEvidence {
  status: 'ok' | 'none' | 'error' | 'not_configured';
  verified: Array<{
    authority: string;
    kind: 'cosign-key' | 'cosign-keyless' | 'notation';
    format: 'sigstore-bundle' | 'cosign-legacy' | 'notation-jws' | 'notation-cose';
    identity?: { issuer?: string; subject?: string };
    tlog?: boolean;
    signed_at?: string;
    /** The digest the signature covers: the image's own, or (for a child) that of the index that admitted it. */
    signed_digest?: string;
  }>;
  /** `code`: why, as a stable code (codes.ts); `reason`: the same for people. */
  rejected: Array<{ authority?: string; reason: string; code: SignatureCode }>;
}

export interface ScanEvidence {
  status: 'ok' | 'missing' | 'pending' | 'stale' | 'error' | 'not_configured';
  source?: 'attestation' | 'report' | 'scanner';
  scanned_at?: string;
  age_seconds?: number;
  counts?: Record<string, number>;
  fixable_counts?: Record<string, number>;
  vulnerabilities?: Array<{ id: string; severity: string; package?: string; installed?: string; fixed?: string }>;
  /** Set when `vulnerabilities` was capped: how many there are in all. */
  vulnerabilities_total?: number;
  /** The scanner that produced the result ("Trivy 0.50.1"), when known. */
  scanner?: string;
  /** Why, when status is error. */
  error?: string;
  /** Why the evidence is not a fresh result, as a stable code (codes.ts): set whenever status is not `ok`. */
  code?: ScanCode;
  /** Set after the gate waited for a pending scan (`on_pending: wait`): how long it waited. */
  waited_seconds?: number;
}

export interface Violation {
  rule: string;
  message: string;
}

export type Mode = 'enforce' | 'warn' | 'dry-run';

/** What `data.portcullis.decision` evaluates to. */
export interface PolicyResult {
  allow: boolean;
  deny: Violation[];
  warn: Violation[];
  scope: string | null;
  mode: Mode;
  /** Set when the only blocker is a pending scan and the scope says `on_pending: wait`: how long to wait for it. */
  wait_seconds?: number;
  /** The policy revision that answered, when the decider learns it with the answer (an external OPA's bundles). */
  revision?: string;
}

/** Something that evaluates the policy: in-process WASM, or an external OPA server. */
export interface Decider {
  /** Identifies the loaded policy, so cached decisions and admissions from an older policy are not reused. */
  readonly revision: string;
  evaluate(input: PolicyInput): Promise<PolicyResult>;
}

/** What the signature provider finds for one digest: signatures, and attestations verified or not. */
export interface AttestedEvidence {
  signatures: SignatureEvidence;
  attestations: VerifiedAttestation[];
  attestations_rejected?: RejectedAttestation[];
}

/** Evidence about one image digest; implementations must not throw. */
export interface SignatureProvider {
  readonly trustRevision: string;
  signatures(ctx: EvidenceContext): Promise<AttestedEvidence>;
  /** Releases what the provider holds open (its SQLite cache); called once, at shutdown. */
  close?(): void;
}

export interface ScanProvider {
  /** `attestations` are the verified ones from the signature provider (vulnerability attestations among them). */
  scan(ctx: EvidenceContext, attestations: PolicyInput['attestations']): Promise<ScanEvidence>;
  /** Waits (at most timeoutMs, capped by the provider) until the evidence is no longer pending; never throws. */
  awaitResult?(ctx: EvidenceContext, attestations: PolicyInput['attestations'], timeoutMs: number): Promise<ScanEvidence>;
}

/**
 * The image whose evidence is asked for, as the gate knows it: the route the request resolved to and the manifest,
 * verified against its digest and parsed once where it entered the proxy. Providers use these as they are, rather
 * than rebuilding a route from the upstream's name or looking the manifest up (and parsing it) again. The flat
 * fields are the same facts, for cache keys and logs (the gate builds both from the same route and manifest).
 */
export interface EvidenceContext {
  route: Route;
  manifest: Manifest;
  upstream: string;
  registry: string;
  repository: string;
  digest: Digest;
  mediaType: string;
}

/** The gate's answer for one manifest request. */
export interface Admission {
  decisionId: string;
  /** Serve the content? False only for an enforced deny. */
  serve: boolean;
  outcome: 'allow' | 'deny' | 'warn' | 'dry-run-deny';
  /** One line for the 403 body and for logs. */
  message: string;
  violations: Violation[];
  warnings: Violation[];
  mode: Mode;
  cached: boolean;
}
