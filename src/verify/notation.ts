/**
 * Notation (Notary Project) signatures, JWS (`application/jose+json`, notation-jws.ts) and COSE (`application/cose`,
 * notation-cose.ts) envelopes alike, verified as the Notary Project trust policy (trust-store-trust-policy.md) does:
 *
 *   integrity           the envelope signature verifies with the leaf certificate's key, with the algorithm the key
 *                       dictates; every critical header is one Notation defines, and the ones it requires are
 *                       critical; the payload's targetArtifact digest, media type and size are this manifest's;
 *   authenticity        the chain (leaf first, root present) verifies link by link, its root is in the authority's
 *                       trust store, CA certificates are CAs, and the leaf subject holds a trusted identity's RDNs;
 *   expiry              `io.cncf.notary.expiry` is in the future (enforce, or only log);
 *   authentic timestamp notary.x509.signingAuthority: the authentic signing time lies within every certificate's
 *                       validity. notary.x509: with a `tsa` trust store (and `verifyTimestamp: always`, or
 *                       `afterCertExpiry` once a certificate has expired) the RFC 3161 countersignature must verify
 *                       against it (notation-timestamp.ts) and its whole time range lie within every certificate's
 *                       validity, so a signature outlives its certificate; otherwise every certificate must be
 *                       valid now (enforce, or only log: the `signingTime` setting);
 *   revocation          OCSP, then CRL, for every certificate but the root (revocation.ts): revoked or unknown
 *                       fails (enforce, log, or skip the check: the `revocation` setting).
 *
 * Also, beyond Notation: the signer's own signingTime claim must not be in the future nor outside the certificates'
 * validity (notation always writes the time of signing).
 */
import { X509Certificate as NodeX509, type KeyObject } from 'node:crypto';
import { X509Certificate as SigstoreX509 } from '@sigstore/core';
import type { Digest } from '../routing/reference.js';
import type { SignatureCode } from '../policy/codes.js';
import type { Outcome } from './cosign.js';
import type { NotationAuthority } from './trust.js';
import type { RevocationChecker } from './revocation.js';
import { TimestampError, verifyTimestamp, type TimestampRange } from './notation-timestamp.js';
import { errorText } from '../util/error-text.js';

export const NOTATION_PAYLOAD_TYPE = 'application/vnd.cncf.notary.payload.v1+json';
/** The critical headers Notation defines; any other is refused. */
export const NOTARY_CRIT = {
  'io.cncf.notary.signingScheme': true,
  'io.cncf.notary.expiry': true,
  'io.cncf.notary.authenticSigningTime': true,
} as const;
/** Clock skew tolerated for a signing time in the future. */
const SKEW_MS = 5 * 60_000;

type Rejection = Extract<Outcome, { ok: false }>;

export function refuse(code: SignatureCode, reason: string): Rejection {
  return { ok: false, code, reason };
}

/** The signed attributes both envelope formats carry, decoded. */
export interface SignedHeader {
  /** As a JWS name (ES256, PS384, …); COSE ids are mapped. */
  alg: string | undefined;
  cty: unknown;
  scheme: unknown;
  signingTime: Date | undefined;
  authenticSigningTime: Date | undefined;
  expiry: Date | undefined;
  crit: unknown[] | undefined;
  /** Whether the protected header holds this label. */
  present(label: unknown): boolean;
}

export interface NotationEnvelope {
  where: string;
  format: 'notation-jws' | 'notation-cose';
  chain: NodeX509[];
  header: SignedHeader;
  /** The raw signature bytes: what a timestamp countersigns. */
  signature: Buffer;
  /** The RFC 3161 TimeStampToken from the unsigned attributes, when there is one. */
  timestamp: Buffer | undefined;
  /** Checks the envelope signature with the leaf key and algorithm: the payload, or a rejection. */
  verifySignature(key: KeyObject, alg: string): Promise<{ payload: Buffer } | Rejection>;
}

export interface Subject {
  digest: Digest;
  mediaType: string;
  size: number;
}

export interface NotationContext {
  now: Date;
  log: (msg: string) => void;
  /** Absent: revocation is not checked (an authority with `revocation: skip`, or a unit test). */
  revocation?: RevocationChecker;
}

export async function verifyNotation(env: NotationEnvelope, a: NotationAuthority, subject: Subject, ctx: NotationContext): Promise<Outcome> {
  const h = env.header;
  const { now } = ctx;
  if (h.cty !== NOTATION_PAYLOAD_TYPE) return refuse('UNUSABLE_PAYLOAD', `unusable payload: content type ${JSON.stringify(h.cty)}`);
  const scheme = h.scheme;
  if (scheme !== 'notary.x509' && scheme !== 'notary.x509.signingAuthority')
    return refuse('UNSUPPORTED', `unsupported signing scheme ${JSON.stringify(scheme)}`);
  const critProblem = checkCrit(h, scheme);
  if (critProblem) return critProblem;

  // Authenticity first: which key the signature must verify with depends on a trusted chain.
  const chainProblem = checkChain(env.chain, a);
  if (chainProblem) return refuse('UNTRUSTED_CHAIN', chainProblem);
  const leaf = env.chain[0]!;

  const alg = expectedAlgorithm(leaf);
  if (!alg) return refuse('UNTRUSTED_CHAIN', 'untrusted chain (leaf key type or size not allowed by Notation)');
  if (h.alg !== alg) return refuse('INVALID_SIGNATURE', `invalid signature (alg ${JSON.stringify(h.alg)} does not match the ${alg} certificate key)`);
  const verified = await env.verifySignature(leaf.publicKey, alg);
  if ('ok' in verified) return verified;

  let target: { digest?: unknown; mediaType?: unknown; size?: unknown } | undefined;
  try {
    target = (JSON.parse(verified.payload.toString('utf8')) as { targetArtifact?: typeof target }).targetArtifact;
  } catch {
    return refuse('UNUSABLE_PAYLOAD', 'unusable payload: not JSON');
  }
  if (!target || typeof target.digest !== 'string') return refuse('UNUSABLE_PAYLOAD', 'unusable payload: no targetArtifact digest');
  if (target.digest !== subject.digest) return refuse('DIGEST_MISMATCH', `digest mismatch (signed ${target.digest.slice(0, 19)}…)`);
  if (target.mediaType !== subject.mediaType || target.size !== subject.size) {
    return refuse('DIGEST_MISMATCH', `digest mismatch (signed media type ${JSON.stringify(target.mediaType)} and size ${JSON.stringify(target.size)})`);
  }

  const subjectDn = dnOf(leaf.subject);
  if (a.identities !== '*' && !a.identities.some((id) => [...id].every(([k, v]) => subjectDn.get(k) === v))) {
    return refuse('IDENTITY_MISMATCH', `identity mismatch (subject "${leaf.subject.replace(/\n/g, ', ')}")`);
  }

  if (h.expiry && !(now < h.expiry)) {
    const reason = `expired (signature expired at ${iso(h.expiry)})`;
    if (a.expiry === 'enforce') return refuse('EXPIRED', reason);
    ctx.log(`${a.name}: ${reason}; allowed by expiry: log`);
  }

  const authentic = scheme === 'notary.x509.signingAuthority';
  const signingTime = authentic ? h.authenticSigningTime : h.signingTime;
  const timeProblem = claimedTimeProblem(env.chain, signingTime, now) ?? (authentic ? undefined : await timestampProblem(env, a, ctx));
  // How long this verification holds: until the signature expires, and, when the chain was judged at "now" rather
  // than at a trusted timestamp, until its first certificate expires (the cache must not outlive either).
  let validUntil = h.expiry && a.expiry === 'enforce' ? h.expiry.getTime() : Infinity;
  if (!authentic && !timestampUsed(env, a, now) && a.signingTime === 'enforce')
    validUntil = Math.min(validUntil, ...env.chain.map((c) => new Date(c.validTo).getTime()));
  if (timeProblem) {
    if (a.signingTime === 'enforce') return timeProblem;
    ctx.log(`${a.name}: ${timeProblem.reason}; allowed by signingTime: log`);
  }

  if (a.revocation !== 'skip' && ctx.revocation) {
    const r = await ctx.revocation.check(env.chain, authentic ? h.authenticSigningTime : undefined);
    if (!r.ok) {
      if (a.revocation === 'enforce') return refuse(r.code, r.reason);
      ctx.log(`${a.name}: ${r.reason}; allowed by revocation: log`);
    }
  }
  return {
    ok: true,
    tlog: false,
    identity: { subject: leaf.subject.replace(/\n/g, ', '), issuer: leaf.issuer.replace(/\n/g, ', ') },
    ...(signingTime ? { signedAt: iso(signingTime) } : {}),
    ...(Number.isFinite(validUntil) ? { validUntil } : {}),
  };
}

/** Whether the chain is judged at the timestamp's time (a TSA store, and verifyTimestamp says so now). */
function timestampUsed(env: NotationEnvelope, a: NotationAuthority, now: Date): boolean {
  const expiredNow = env.chain.some((c) => now > new Date(c.validTo));
  return a.tsaRoots.length > 0 && (a.verifyTimestamp === 'always' || expiredNow);
}

/**
 * signature-specification: signingScheme is always critical, expiry when present, authenticSigningTime under
 * notary.x509.signingAuthority; a critical label must be one Notation defines, and present.
 */
function checkCrit(h: SignedHeader, scheme: string): Rejection | undefined {
  const crit = h.crit;
  if (!crit || crit.length === 0) return refuse('UNUSABLE_SIGNATURE', 'malformed envelope (no critical headers)');
  for (const label of crit) {
    if (typeof label !== 'string' || !Object.hasOwn(NOTARY_CRIT, label)) return refuse('UNSUPPORTED', `unsupported critical header ${JSON.stringify(label)}`);
    if (!h.present(label)) return refuse('UNUSABLE_SIGNATURE', `malformed envelope (critical header ${label} is missing)`);
  }
  const must = ['io.cncf.notary.signingScheme'];
  if (h.present('io.cncf.notary.expiry')) must.push('io.cncf.notary.expiry');
  if (scheme === 'notary.x509.signingAuthority') must.push('io.cncf.notary.authenticSigningTime');
  const missing = must.filter((m) => !crit.includes(m));
  if (missing.length) return refuse('UNUSABLE_SIGNATURE', `malformed envelope (${missing.join(', ')} must be critical)`);
  return undefined;
}

/** The signer's claimed (or authentic) signing time: present, not in the future, within every certificate's validity. */
function claimedTimeProblem(chain: NodeX509[], signingTime: Date | undefined, now: Date): Rejection | undefined {
  if (!signingTime) return refuse('EXPIRED', 'expired (no valid signing time)');
  if (signingTime.getTime() > now.getTime() + SKEW_MS) return refuse('EXPIRED', `expired (signing time ${iso(signingTime)} is in the future)`);
  for (const [i, c] of chain.entries()) {
    if (signingTime < new Date(c.validFrom) || signingTime > new Date(c.validTo))
      return refuse('EXPIRED', `expired (certificate ${i} was not valid at the signing time ${iso(signingTime)})`);
  }
  return undefined;
}

/**
 * The trust policy's authentic timestamp step for notary.x509 (for signingAuthority the authentic signing time was
 * checked above). With a TSA trust store the timestamp is verified (verifyTimestamp: always; afterCertExpiry only
 * once a certificate has expired), the TSA chain must not be revoked (unless revocation: skip), and the signing
 * chain is judged at the timestamp's time; without one, or when skipped, every certificate must be valid now.
 */
async function timestampProblem(env: NotationEnvelope, a: NotationAuthority, ctx: NotationContext): Promise<Rejection | undefined> {
  const { now } = ctx;
  if (!timestampUsed(env, a, now)) {
    for (const [i, c] of env.chain.entries()) {
      const [from, to] = [new Date(c.validFrom), new Date(c.validTo)];
      if (now < from || now > to) return refuse('EXPIRED', `expired (certificate ${i} is valid ${iso(from)} to ${iso(to)}, and no timestamp is trusted)`);
    }
    return undefined;
  }
  if (!env.timestamp) return refuse('TIMESTAMP_UNVERIFIED', 'no trusted timestamp (the signature has no timestamp countersignature)');
  let range: TimestampRange;
  try {
    range = await verifyTimestamp(env.timestamp, env.signature, a.tsaRoots);
  } catch (e) {
    return refuse('TIMESTAMP_UNVERIFIED', `no trusted timestamp (${e instanceof TimestampError ? e.message : `verification error: ${errorText(e)}`})`);
  }
  // Notation checks the TSA chain's revocation as part of this step: a revoked or unknown TSA certificate fails it.
  if (a.revocation !== 'skip' && ctx.revocation) {
    const r = await ctx.revocation.check(range.chain);
    if (!r.ok) return refuse('TIMESTAMP_UNVERIFIED', `no trusted timestamp (TSA ${r.reason})`);
  }
  for (const [i, c] of env.chain.entries()) {
    const [from, to] = [new Date(c.validFrom), new Date(c.validTo)];
    if (range.from < from || range.to > to)
      return refuse('EXPIRED', `expired (certificate ${i} is valid ${iso(from)} to ${iso(to)}; the timestamp says ${iso(range.from)} to ${iso(range.to)})`);
  }
  return undefined;
}

/** Link by link, to a root that the trust store holds; CA certificates must be CAs allowed to sign certificates. */
function checkChain(chain: NodeX509[], a: NotationAuthority): string | undefined {
  for (let i = 0; i + 1 < chain.length; i++) {
    const [c, issuer] = [chain[i]!, chain[i + 1]!];
    if (!c.checkIssued(issuer) || !c.verify(issuer.publicKey)) return `untrusted chain (certificate ${i} is not signed by certificate ${i + 1})`;
  }
  const last = chain[chain.length - 1]!;
  // The chain must end in its root (signature specification), and that root must be in the trust store.
  if (!a.roots.some((r) => r.raw.equals(last.raw))) return 'untrusted chain';
  // Self-signed: subject is issuer and its own key verifies it. (Not checkIssued: OpenSSL also demands keyCertSign,
  // which a Notation test certificate, its own root, does not have.)
  if (last.subject !== last.issuer || !last.verify(last.publicKey)) return 'untrusted chain (the chain does not end in a self-signed root)';
  for (let i = 0; i < chain.length; i++) {
    let c: SigstoreX509;
    try {
      c = SigstoreX509.parse(chain[i]!.raw);
    } catch {
      return `untrusted chain (certificate ${i} does not parse)`;
    }
    if (/sha1/i.test(c.signatureAlgorithm)) return `untrusted chain (certificate ${i} is signed with SHA-1)`;
    if (i === 0) {
      const ku = c.extKeyUsage;
      if (ku && !ku.digitalSignature) return 'untrusted chain (leaf key usage lacks digitalSignature)';
    } else {
      if (!c.isCA) return `untrusted chain (certificate ${i} is not a CA)`;
      const ku = c.extKeyUsage;
      if (ku && !ku.keyCertSign) return `untrusted chain (certificate ${i} may not sign certificates)`;
    }
  }
  return undefined;
}

/** Notation's algorithm for a leaf key: RSA 2048/3072/4096 → PS256/384/512, EC P-256/384/521 → ES256/384/512. */
function expectedAlgorithm(leaf: NodeX509): string | undefined {
  const k = leaf.publicKey;
  const d = k.asymmetricKeyDetails ?? {};
  if (k.asymmetricKeyType === 'rsa' || k.asymmetricKeyType === 'rsa-pss') {
    const bits = d.modulusLength ?? 0;
    return bits >= 4096 ? 'PS512' : bits >= 3072 ? 'PS384' : bits >= 2048 ? 'PS256' : undefined;
  }
  if (k.asymmetricKeyType === 'ec') {
    return { prime256v1: 'ES256', secp384r1: 'ES384', secp521r1: 'ES512' }[d.namedCurve ?? ''];
  }
  return undefined;
}

/** Node prints a subject as `C=US\nST=WA\nO=acme`; multi-valued RDNs are joined with `+`. */
function dnOf(subject: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of subject.split('\n')) {
    for (const part of line.split('+')) {
      const eq = part.indexOf('=');
      if (eq > 0) {
        let k = part.slice(0, eq).trim().toUpperCase();
        if (k === 'S') k = 'ST';
        out.set(k, part.slice(eq + 1).trim());
      }
    }
  }
  return out;
}

function iso(d: Date): string {
  return Number.isNaN(d.getTime()) ? String(d) : d.toISOString();
}
