/**
 * Verification of cosign items (cosign.ts) against the configured authorities.
 *
 * Key-based signatures are checked with the configured key directly (node:crypto), with the hash that cosign uses
 * for the key type; `@sigstore/verify` then checks transparency-log entries when the authority requires them.
 * Keyless ones go through `@sigstore/verify` offline, with the authority's trusted_root.json. Either way a
 * signature counts only when what it signs binds this exact digest: the simple-signing `docker-manifest-digest`,
 * or an in-toto subject digest.
 */
import { createHash, verify as cryptoVerify, constants, type KeyObject } from 'node:crypto';
import { ASN1Obj, X509Certificate } from '@sigstore/core';
import { toSignedEntity, Verifier, VerificationError, type SignedEntity, type TrustMaterial } from '@sigstore/verify';
import type { Digest } from '../routing/reference.js';
import { reject, type Claim, type CosignItem, type Outcome } from './cosign.js';
import type { KeyAuthority, KeylessAuthority } from './trust.js';
import { errorText } from '../util/error-text.js';

/** Does the signed content bind this digest? undefined when it does, else the rejection. */
export function bindingProblem(claim: Claim, digest: Digest): Outcome | undefined {
  if (claim.kind === 'invalid') return reject('UNUSABLE_PAYLOAD', `unusable payload: ${claim.error}`);
  if (claim.kind === 'simple-signing') {
    if (claim.digest === undefined) return reject('UNUSABLE_PAYLOAD', 'unusable payload: no docker-manifest-digest');
    return claim.digest.toLowerCase() === digest ? undefined : reject('DIGEST_MISMATCH', `digest mismatch (signed ${shortDigest(claim.digest)})`);
  }
  const hex = digest.slice(digest.indexOf(':') + 1);
  if (claim.subjects.includes(hex)) return undefined;
  return claim.subjects.length
    ? reject('DIGEST_MISMATCH', `digest mismatch (signed ${shortDigest(`sha256:${claim.subjects[0]}`)})`)
    : reject('UNUSABLE_PAYLOAD', 'unusable payload: in-toto statement without a sha256 subject');
}

function shortDigest(d: string): string {
  return d.length > 19 ? `${d.slice(0, 19)}…` : d;
}

/** Signature check with a configured key, using the hash cosign uses for the key type (and SHA-256, cosign 2's default). */
export function verifyWithKey(key: KeyObject, data: Buffer, sig: Buffer): boolean {
  const t = key.asymmetricKeyType;
  const attempt = (fn: () => boolean): boolean => {
    try {
      return fn();
    } catch {
      return false;
    }
  };
  if (t === 'ed25519') return attempt(() => cryptoVerify(null, data, key, sig));
  if (t === 'ec') {
    const curve = key.asymmetricKeyDetails?.namedCurve;
    const natural = curve === 'secp384r1' ? 'sha384' : curve === 'secp521r1' ? 'sha512' : 'sha256';
    return [...new Set([natural, 'sha256'])].some((h) => attempt(() => cryptoVerify(h, data, key, sig)));
  }
  for (const h of ['sha256', 'sha384', 'sha512']) {
    if (attempt(() => cryptoVerify(h, data, key, sig))) return true;
    if (attempt(() => cryptoVerify(h, data, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: constants.RSA_PSS_SALTLEN_AUTO }, sig))) return true;
  }
  return false;
}

function entityOf(item: CosignItem): SignedEntity {
  return toSignedEntity(item.bundle, item.artifact);
}

/**
 * When it was signed, by a verified time: a Rekor v1 entry's integrated time (its inclusion promise signs it), else
 * the earliest RFC 3161 timestamp. (A Rekor v2 entry attests no time.) Call after verification only.
 */
function integratedTime(item: CosignItem): string | undefined {
  const t = item.bundle.verificationMaterial.tlogEntries.find((e) => e.inclusionPromise)?.integratedTime;
  if (t) return new Date(Number(t) * 1000).toISOString();
  try {
    const tsa = entityOf(item).timestamps.flatMap((x) => (x.$case === 'timestamp-authority' ? [x.timestamp.signingTime.getTime()] : []));
    return tsa.length ? new Date(Math.min(...tsa)).toISOString() : undefined;
  } catch {
    return undefined;
  }
}

/** Key-based: the signature must verify with the authority's key; tlog entries are checked when required. */
export function verifyCosignWithKey(item: CosignItem, a: KeyAuthority, digest: Digest): Outcome {
  if (!verifyWithKey(a.key, item.signedBytes, item.signature)) {
    // Tell a wrong key from a modified payload when the signature names its key (a certificate, or a key hint).
    const signerKeyId = item.certificate ? keyIdOf(item.certificate) : hintKeyId(item.keyHint);
    if (signerKeyId !== undefined && signerKeyId === a.keyId) return reject('INVALID_SIGNATURE', 'invalid signature (tampered payload or signature)');
    return reject('KEY_MISMATCH', 'key mismatch');
  }
  let tlog = false;
  if (a.tlogThreshold > 0) {
    if (!a.trust) return reject('TLOG_UNVERIFIED', 'transparency log required but no trusted root configured');
    try {
      new Verifier(a.trust, { tlogThreshold: a.tlogThreshold, ctlogThreshold: 0, timestampThreshold: 0 }).verify(entityOf(item));
      tlog = true;
    } catch (e) {
      return verificationFailure(e, item, a.trust);
    }
  }
  const problem = bindingProblem(item.claim, digest);
  if (problem) return problem;
  const signedAt = tlog ? integratedTime(item) : undefined;
  return { ok: true, tlog, ...(signedAt ? { signedAt } : {}) };
}

/** Keyless: chain to the trusted root's Fulcio CA, SCTs, Rekor SET and timestamps offline, then identity, then digest. */
export function verifyCosignKeyless(item: CosignItem, a: KeylessAuthority, digest: Digest): Outcome {
  if (!item.certificate) return reject('WRONG_KIND', 'no certificate (a key-based signature)');
  let signer;
  try {
    signer = new Verifier(a.trust, { tlogThreshold: a.tlogThreshold, ctlogThreshold: a.ctlogThreshold, timestampThreshold: a.timestampThreshold }).verify(
      entityOf(item),
    );
  } catch (e) {
    return verificationFailure(e, item, a.trust);
  }
  const tsa = tsaTimestamps(item);
  if (tsa < a.tsaThreshold) return reject('TIMESTAMP_UNVERIFIED', `no trusted timestamp (expected ${a.tsaThreshold} from a TSA, got ${tsa})`);
  const id = identityProblem(item, a, signer.identity?.extensions?.issuer);
  if (id.problem) return id.problem;
  const { issuer, subject } = id;
  const problem = bindingProblem(item.claim, digest);
  if (problem) return problem;
  const signedAt = integratedTime(item);
  // The verifier checks every tlog entry present (whatever the threshold), so any entry here is a verified one.
  return { ok: true, tlog: item.bundle.verificationMaterial.tlogEntries.length > 0, identity: { issuer, subject }, ...(signedAt ? { signedAt } : {}) };
}

/**
 * The certificate's identity against the authority's: SAN (exact or anchored regexp), issuer (exact; not checked
 * when an own-PKI authority names none), extensions by OID.
 */
export function identityProblem(
  item: CosignItem,
  a: KeylessAuthority,
  issuerFromVerifier?: string,
): { problem?: Outcome; issuer: string | undefined; subject: string | undefined } {
  const cert = item.certificate!;
  const subject = cert.subjectAltName ?? otherNameSubject(cert);
  const issuer = issuerFromVerifier ?? extensionValue(cert, '1.3.6.1.4.1.57264.1.8') ?? extensionValue(cert, '1.3.6.1.4.1.57264.1.1');
  const subjectOk = subject !== undefined && ('exact' in a.subject ? subject === a.subject.exact : a.subject.regex.test(subject));
  if (!subjectOk || (a.issuer !== undefined && issuer !== a.issuer)) {
    return {
      problem: reject('IDENTITY_MISMATCH', `identity mismatch (subject ${JSON.stringify(subject ?? null)}, issuer ${JSON.stringify(issuer ?? null)})`),
      issuer,
      subject,
    };
  }
  for (const { oid, value } of a.extensions) {
    const actual = extensionValue(cert, oid);
    if (actual !== value)
      return { problem: reject('IDENTITY_MISMATCH', `identity mismatch (extension ${oid} is ${JSON.stringify(actual ?? null)})`), issuer, subject };
  }
  return { issuer, subject };
}

/**
 * A short, specific rejection from @sigstore/verify's errors, by their `code` and structure, never their message
 * text. `item` and `trust`, when given, tell an expired certificate from an untrusted chain.
 */
export function verificationFailure(e: unknown, item?: CosignItem, trust?: TrustMaterial): Outcome {
  if (!(e instanceof VerificationError)) return reject('VERIFICATION_ERROR', `verification error: ${errorText(e)}`);
  switch (e.code) {
    case 'CERTIFICATE_ERROR':
      // A chain failure wraps its cause; SCT checks (after the chain verified) throw without one.
      if (e.cause === undefined) return reject('UNTRUSTED_CHAIN', `untrusted chain (${e.message})`);
      if (item?.certificate && trust && issuedByTrustedCA(item.certificate, trust) && !validAtSigning(item.certificate, item)) {
        return reject('EXPIRED', 'expired (certificate not valid at the signing time)');
      }
      return reject('UNTRUSTED_CHAIN', 'untrusted chain');
    case 'PUBLIC_KEY_ERROR':
      return reject('KEY_MISMATCH', 'key mismatch');
    case 'SIGNATURE_ERROR':
      return reject('INVALID_SIGNATURE', 'invalid signature (tampered payload or signature)');
    case 'TLOG_BODY_ERROR':
      return reject('INVALID_SIGNATURE', `tampered payload (transparency log entry: ${e.message})`);
    case 'TIMESTAMP_ERROR':
      return reject('TIMESTAMP_UNVERIFIED', `no trusted timestamp (${e.message})`);
    case 'TLOG_ERROR':
    case 'TLOG_INCLUSION_PROOF_ERROR':
    case 'TLOG_INCLUSION_PROMISE_ERROR':
    case 'TLOG_MISSING_INCLUSION_ERROR':
      return reject('TLOG_UNVERIFIED', `transparency log verification failed (${e.message})`);
    default:
      return reject('VERIFICATION_ERROR', `${e.code.toLowerCase().replace(/_/g, ' ')} (${e.message})`);
  }
}

/** Was the leaf issued by a certificate of one of the trusted CAs? (Else its validity period is beside the point.) */
function issuedByTrustedCA(cert: X509Certificate, trust: TrustMaterial): boolean {
  return trust.certificateAuthorities.some((ca) => ca.certChain.some((c) => cert.issuer.equals(c.subject) && cert.verify(c)));
}

/**
 * Is the signing certificate valid at every time the bundle attests (its RFC 3161 timestamps and transparency-log
 * entries), the times @sigstore/verify checks the chain at? Fulcio certificates live ten minutes: this is what
 * "expired" means. With no time at all, the chain was not checked at a time, so nothing expired.
 */
function validAtSigning(cert: X509Certificate, item: CosignItem): boolean {
  let times: Date[];
  try {
    times = entityOf(item).timestamps.map((t) =>
      t.$case === 'timestamp-authority' ? t.timestamp.signingTime : new Date(Number(t.tlogEntry.integratedTime) * 1000),
    );
  } catch {
    return true;
  }
  return times.filter((d) => !Number.isNaN(d.getTime()) && d.getTime() > 0).every((d) => cert.validForDate(d));
}

/** RFC 3161 timestamps in the bundle; after a successful Verifier.verify each one verified against a trusted TSA. */
function tsaTimestamps(item: CosignItem): number {
  return item.bundle.verificationMaterial.timestampVerificationData?.rfc3161Timestamps.length ?? 0;
}

function keyIdOf(cert: X509Certificate): string {
  return createHash('sha256').update(cert.publicKey).digest('hex');
}

/** Key hints that are a SHA-256 of the SPKI, as hex or base64; anything else identifies nothing we can compare. */
function hintKeyId(hint: string | undefined): string | undefined {
  if (!hint) return undefined;
  if (/^[0-9a-f]{64}$/i.test(hint)) return hint.toLowerCase();
  const b = Buffer.from(hint, 'base64');
  return b.length === 32 ? b.toString('hex') : undefined;
}

function otherNameSubject(cert: X509Certificate): string | undefined {
  try {
    return cert.extSubjectAltName?.otherName('1.3.6.1.4.1.57264.1.7');
  } catch {
    return undefined;
  }
}

/** A Fulcio extension's value: DER UTF8String for the v2 OIDs, raw bytes for the deprecated ones. */
export function extensionValue(cert: X509Certificate, oid: string): string | undefined {
  const ext = cert.extension(oid);
  if (!ext) return undefined;
  const raw = ext.value;
  try {
    const inner = ASN1Obj.parseBuffer(raw as Buffer<ArrayBuffer>);
    if (inner.tag.number === 12 && inner.toDER().length === raw.length) return inner.value.toString('utf8');
  } catch {
    // not DER: a legacy raw value
  }
  return raw.toString('utf8');
}
