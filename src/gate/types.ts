/**
 * The seams of the admission gate: the policy input and output of DESIGN §3, the evidence providers that feed it,
 * and what the server needs back. Providers never throw into the gate; they return evidence with a status, and
 * the policy decides.
 */
import type { Digest } from '../routing/reference.js';

export interface PolicyInput {
  version: 1;
  now: string;
  request: {
    kind: 'manifest' | 'accessory';
    method: 'GET' | 'HEAD';
    /** `method`: basic, token, mtls, oidc or anonymous (src/auth); `groups` sorted. */
    client: { ip: string; user: string | null; groups: string[]; method: string; user_agent: string | null };
    routing: 'ns' | 'prefix' | 'default';
  };
  image: {
    registry: string;
    repository: string;
    tag: string | null;
    digest: Digest;
    media_type: string;
    platforms: string[];
    labels: Record<string, string>;
    created: string | null;
  };
  upstream: { name: string; url: string };
  signatures: SignatureEvidence;
  attestations: Array<{ predicate_type: string; authority: string; predicate: unknown }>;
  scan: ScanEvidence;
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
  }>;
  rejected: Array<{ authority?: string; reason: string }>;
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
}

/** Something that evaluates the policy: in-process WASM, or an external OPA server. */
export interface Decider {
  /** Identifies the loaded policy, so cached decisions from an older policy are not reused. */
  readonly revision: string;
  evaluate(input: PolicyInput): Promise<PolicyResult>;
}

/** Evidence about one image digest; implementations must not throw. */
export interface SignatureProvider {
  readonly trustRevision: string;
  signatures(ctx: EvidenceContext): Promise<{ signatures: SignatureEvidence; attestations: PolicyInput['attestations'] }>;
  /** Releases what the provider holds open (its SQLite cache); called once, at shutdown. */
  close?(): void;
}

export interface ScanProvider {
  /** `attestations` are the verified ones from the signature provider (vulnerability attestations among them). */
  scan(ctx: EvidenceContext, attestations: PolicyInput['attestations']): Promise<ScanEvidence>;
  /** Waits (at most timeoutMs, capped by the provider) until the evidence is no longer pending; never throws. */
  awaitResult?(ctx: EvidenceContext, attestations: PolicyInput['attestations'], timeoutMs: number): Promise<ScanEvidence>;
}

export interface EvidenceContext {
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
