/**
 * The policy input (its fields: policies/README.md) for the three kinds of subject the gate decides: a root manifest, a child manifest of
 * an admitted index (decided with its own evidence, plus the signatures of the index that admitted it), and a
 * repository (tag lists and referrers, where there is no digest and no evidence). Also the members an admitted
 * manifest vouches for, each in its role, and the mapping from a policy result to an Admission.
 */
import type { ClosureMember } from '../cache/metastore.js';
import type { Manifest } from '../proxy/manifests.js';
import type { Descriptor } from '../oci/mediatypes.js';
import type { Route } from '../routing/route.js';
import { isRunnable } from '../oci/artifacts.js';
import type { Admission, PlatformInfo, PolicyInput, PolicyResult, ScanEvidence, SignatureEvidence, Violation } from '../policy/contract.js';

export interface Client {
  ip: string;
  user: string | null;
  /** The groups the authenticated identity belongs to (empty for anonymous clients). */
  groups: string[];
  /** How the client authenticated: basic, token, mtls, oidc, anonymous. */
  method: string;
  userAgent: string | null;
  /** The chained node the request came through (src/auth/forwarded.ts); user, groups and method are its client's. */
  via?: { user: string | null; groups: string[]; method: string } | undefined;
}

/** Whom the decision is about: a manifest (root or child), or, without one, the repository. */
export interface Subject {
  route: Route;
  method: 'GET' | 'HEAD';
  client: Client;
  kind: PolicyInput['request']['kind'];
  tag: string | null;
  manifest?: Manifest;
  /** For a child: the index that lists it, and the admitted root (the same manifest for one level of nesting). */
  parent?: Manifest;
  root?: { manifest: Manifest; tag: string | null };
}

export interface Evidence {
  signatures: SignatureEvidence;
  attestations: PolicyInput['attestations'];
  attestations_rejected?: PolicyInput['attestations_rejected'];
  scan: ScanEvidence;
}

/** At most this many platform entries reach the input: an index may list hundreds, the decision log keeps them. */
const MAX_PLATFORM_DETAILS = 64;

export function buildInput(s: Subject, ev: Evidence, now: number): PolicyInput {
  const { route, manifest } = s;
  return {
    version: 1,
    now: new Date(now).toISOString(),
    request: {
      kind: s.kind,
      method: s.method,
      client: {
        ip: s.client.ip,
        user: s.client.user,
        groups: s.client.groups,
        method: s.client.method,
        user_agent: s.client.userAgent,
        ...(s.client.via ? { via: { user: s.client.via.user, groups: s.client.via.groups, method: s.client.via.method } } : {}),
      },
      routing: route.routing,
    },
    image: {
      registry: route.registry,
      repository: route.repository,
      tag: s.tag,
      digest: manifest?.digest ?? null,
      media_type: manifest?.mediaType ?? null,
      platforms: manifest ? platformInfos(manifest.parsed.manifests).map((p) => [p.os, p.architecture, p.variant].filter(Boolean).join('/')) : [],
      labels: manifest?.parsed.annotations ?? {},
      created: manifest?.parsed.annotations?.['org.opencontainers.image.created'] ?? null,
      ...(manifest ? describe(manifest) : {}),
      ...(manifest && s.parent ? childContext(manifest, s.parent, s.root) : {}),
    },
    upstream: { name: route.upstream.name, url: route.upstream.url },
    signatures: ev.signatures,
    attestations: ev.attestations,
    attestations_rejected: ev.attestations_rejected ?? [],
    scan: ev.scan,
  };
}

/** What a manifest is, so that scopes can treat Helm charts and other artifacts apart from images. */
function describe(m: Manifest): Partial<PolicyInput['image']> {
  const p = m.parsed;
  return {
    manifest_kind: p.kind,
    artifact_type: p.artifactType ?? null,
    config_media_type: p.config?.mediaType ?? null,
    runnable: isRunnable(p),
    ...(p.kind === 'index' ? { platform_details: platformInfos(p.manifests).slice(0, MAX_PLATFORM_DETAILS) } : {}),
  };
}

function childContext(child: Manifest, parent: Manifest, root: Subject['root']): Partial<PolicyInput['image']> {
  const entry = parent.parsed.manifests.find((d) => d.digest === child.digest);
  return {
    platform: entry ? (platformInfo(entry) ?? null) : null,
    parent: { digest: parent.digest, media_type: parent.mediaType },
    root: root ? { digest: root.manifest.digest, tag: root.tag } : null,
  };
}

function platformInfos(ds: Descriptor[]): PlatformInfo[] {
  return ds.map(platformInfo).filter((p): p is PlatformInfo => p !== undefined);
}

function platformInfo(d: Descriptor): PlatformInfo | undefined {
  const p = d.platform as Record<string, unknown> | undefined;
  if (!p || typeof p.os !== 'string') return undefined;
  const out: PlatformInfo = { os: p.os, architecture: typeof p.architecture === 'string' ? p.architecture : '' };
  if (typeof p.variant === 'string') out.variant = p.variant;
  if (typeof p['os.version'] === 'string') out.os_version = p['os.version'];
  if (Array.isArray(p['os.features'])) out.os_features = p['os.features'].filter((f): f is string => typeof f === 'string');
  return out;
}

/**
 * A child's signature evidence: its own, plus what was verified for the index that admitted it (`cosign sign`
 * signs only the index unless `--recursive`, and the index commits to the child's digest). Each verified entry says
 * which digest it covers.
 */
export function mergeSignatures(own: SignatureEvidence, ownDigest: string, inherited: Array<{ digest: string; ev: SignatureEvidence }>): SignatureEvidence {
  const all = [{ digest: ownDigest, ev: own }, ...inherited];
  const verified = all.flatMap(({ digest, ev }) => ev.verified.map((v) => ({ ...v, signed_digest: v.signed_digest ?? digest })));
  const rejected = all.flatMap(({ ev }) => ev.rejected).slice(0, 16);
  const statuses = all.map((a) => a.ev.status);
  const status: SignatureEvidence['status'] = verified.length
    ? 'ok'
    : statuses.includes('not_configured')
      ? 'not_configured'
      : statuses.includes('error')
        ? 'error'
        : statuses.includes('ok')
          ? 'ok'
          : 'none';
  return { status, verified, rejected };
}

/** The evidence of a repository-level request: none is gathered (there is no digest). */
export const NO_EVIDENCE: Evidence = {
  signatures: { status: 'not_configured', verified: [], rejected: [] },
  attestations: [],
  attestations_rejected: [],
  scan: { status: 'not_configured', code: 'NOT_CONFIGURED' },
};

/** What an admitted manifest vouches for: an index its manifests, an image its config and layers. */
export function membersOf(m: Manifest): ClosureMember[] {
  if (m.parsed.kind === 'index') return m.parsed.manifests.map((d) => ({ digest: d.digest, role: 'child' as const }));
  return m.parsed.blobs.map((d, i) => ({ digest: d.digest, role: i === 0 ? ('config' as const) : ('layer' as const) }));
}

export function toAdmission(decisionId: string, r: PolicyResult): Admission {
  const violations = r.deny;
  const denied = !r.allow || violations.length > 0;
  const base = { decisionId, violations, warnings: r.warn, mode: r.mode, cached: false };
  if (!denied) return { ...base, serve: true, outcome: 'allow', message: r.warn.map((w) => w.message).join('; ') };
  const message = violations.length ? formatViolations(violations) : 'denied by policy';
  if (r.mode === 'warn') return { ...base, serve: true, outcome: 'warn', message };
  if (r.mode === 'dry-run') return { ...base, serve: true, outcome: 'dry-run-deny', message };
  return { ...base, serve: false, outcome: 'deny', message };
}

export function errorAdmission(decisionId: string, rule: string, message: string): Admission {
  const v: Violation = { rule, message };
  return { decisionId, serve: false, outcome: 'deny', message: formatViolations([v]), violations: [v], warnings: [], mode: 'enforce', cached: false };
}

/** `message [rule]; message [rule]`: one line that names every failed rule and its evidence. */
export function formatViolations(vs: Violation[]): string {
  return vs.map((v) => `${v.message} [${v.rule}]`).join('; ');
}
