/**
 * cosign signatures whose certificate comes from your own PKI (`cosign sign --key … --certificate … --certificate-chain …`)
 * rather than from Fulcio: a keyless authority with `ca` (config/signatures.ts).
 *
 * 1. `@sigstore/verify` checks what does not depend on the CA: the signature with the leaf's key, the RFC 3161
 *    timestamps against the trusted root's TSAs, the transparency-log entries, and the thresholds. (Its own chain
 *    check is Fulcio's: only the trusted root's CAs, and no check at all without a timestamp; so the leaf goes in
 *    as a key here, and the chain is checked below.)
 * 2. The chain: a path from the leaf to one of the configured roots, through the configured intermediates and the
 *    ones the signature carries (untrusted: they only help build the path; trust comes from the roots). Every
 *    issuer is a CA within its path length; the leaf is an end-entity certificate for code signing.
 * 3. Time: every certificate of the path is valid at each verified timestamp (a signature made while the leaf was
 *    valid stays valid after it expires, as cosign has it). With no verified timestamp there is no signing time
 *    to trust, so the path must be valid now (the injected clock).
 * 4. Identity as for Fulcio: SAN (email or URI) exactly or by anchored regexp; the issuer extension when the
 *    authority names an issuer; extensions by OID.
 */
import { X509Certificate as NodeX509, createPublicKey } from 'node:crypto';
import type { X509Certificate } from '@sigstore/core';
import { toSignedEntity, Verifier, type SignedEntity } from '@sigstore/verify';
import type { Digest } from '../routing/reference.js';
import { reject, type CosignItem, type Outcome } from './cosign.js';
import { bindingProblem, identityProblem, verificationFailure } from './cosign-verify.js';
import type { KeylessAuthority } from './trust.js';

const CODE_SIGNING = '1.3.6.1.5.5.7.3.3';
/** Paths longer than this (leaf to root) are not built. */
const MAX_DEPTH = 6;
/**
 * Path-building steps per signature. The signer chooses the carried certificates: same-named CAs sharing a key
 * would otherwise make the paths (and signature checks) grow exponentially with their number.
 */
const MAX_STEPS = 256;

type PkiAuthority = KeylessAuthority & { ca: NonNullable<KeylessAuthority['ca']> };

export function verifyCosignPki(item: CosignItem, a: PkiAuthority, digest: Digest, now: Date): Outcome {
  const leaf = item.certificate;
  if (!leaf) return reject('WRONG_KIND', 'no certificate (a key-based signature)');
  let entity: SignedEntity;
  try {
    entity = toSignedEntity(item.bundle, item.artifact);
  } catch (e) {
    return verificationFailure(e);
  }
  const leafKey = createPublicKey({ key: leaf.publicKey, format: 'der', type: 'spki' });
  const trust = { ...a.trust, certificateAuthorities: [], ctlogs: [], publicKey: () => ({ publicKey: leafKey, validFor: () => true }) };
  try {
    new Verifier(trust, { tlogThreshold: a.tlogThreshold, ctlogThreshold: 0, timestampThreshold: a.timestampThreshold }).verify({
      ...entity,
      key: { $case: 'public-key', hint: '' },
    });
  } catch (e) {
    return verificationFailure(e);
  }
  // Every timestamp left is a verified one (the verifier throws on any that is not).
  const tsa = entity.timestamps.filter((t) => t.$case === 'timestamp-authority').map((t) => t.timestamp.signingTime);
  if (tsa.length < a.tsaThreshold) return reject('TIMESTAMP_UNVERIFIED', `no trusted timestamp (expected ${a.tsaThreshold} from a TSA, got ${tsa.length})`);
  // Only an entry with an inclusion promise (Rekor v1) attests a time; a Rekor v2 entry proves inclusion only.
  const tlogTimes = entity.tlogEntries.filter((e) => e.inclusionPromise && Number(e.integratedTime) > 0).map((e) => new Date(Number(e.integratedTime) * 1000));
  const times = [...tsa, ...tlogTimes];

  const paths = buildPaths(leaf, a.ca, item.chain);
  if (paths.length === 0) return reject('UNTRUSTED_CHAIN', 'untrusted chain (no path to a configured root)');
  const at = times.length ? times : [now];
  if (!paths.some((p) => at.every((t) => p.every((c) => c.validForDate(t))))) {
    return reject('EXPIRED', `expired (certificate not valid at ${times.length ? 'the signing time' : `${now.toISOString()}, and no trusted timestamp`})`);
  }
  const eku = new NodeX509(leaf.root.toDER()).keyUsage;
  if (leaf.isCA || (eku !== undefined && !eku.includes(CODE_SIGNING)))
    return reject('UNTRUSTED_CHAIN', 'untrusted chain (the leaf is not a code-signing certificate)');

  const id = identityProblem(item, a);
  if (id.problem) return id.problem;
  const problem = bindingProblem(item.claim, digest);
  if (problem) return problem;
  const signedAt = times.length ? new Date(Math.min(...times.map((t) => t.getTime()))).toISOString() : undefined;
  return {
    ok: true,
    tlog: entity.tlogEntries.length > 0,
    identity: { ...(id.issuer !== undefined ? { issuer: id.issuer } : {}), ...(id.subject !== undefined ? { subject: id.subject } : {}) },
    ...(signedAt ? { signedAt } : {}),
  };
}

/**
 * Every path (leaf first, root last) from the leaf to a configured root; bounded by MAX_DEPTH, no certificate
 * twice. An issuer must have signed the certificate below it, be a CA, and allow the intermediates below it.
 */
function buildPaths(leaf: X509Certificate, ca: PkiAuthority['ca'], carried: X509Certificate[]): X509Certificate[][] {
  const isRoot = (c: X509Certificate): boolean => ca.roots.some((r) => r.equals(c));
  const pool = [...ca.roots, ...ca.intermediates, ...carried.filter((c) => !isRoot(c))];
  const out: X509Certificate[][] = [];
  let steps = 0;
  const walk = (path: X509Certificate[]): void => {
    if (++steps > MAX_STEPS) return;
    const cert = path[path.length - 1]!;
    if (path.length > 1 && isRoot(cert)) {
      out.push(path);
      return;
    }
    if (path.length >= MAX_DEPTH) return;
    for (const issuer of pool) {
      if (path.some((c) => c.equals(issuer)) || !issuer.subject.equals(cert.issuer) || !issuer.isCA) continue;
      // Intermediates below this issuer: those on the path after the leaf.
      const pathLen = issuer.extBasicConstraints?.pathLenConstraint;
      if (pathLen !== undefined && path.length - 1 > pathLen) continue;
      if (signedBy(cert, issuer)) walk([...path, issuer]);
    }
  };
  walk([leaf]);
  return out;
}

function signedBy(cert: X509Certificate, issuer: X509Certificate): boolean {
  try {
    return cert.verify(issuer);
  } catch {
    return false;
  }
}
