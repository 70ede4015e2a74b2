/**
 * The stable codes of the evidence outcomes, declared once: why a signature did not verify for an authority
 * (`signatures.rejected[].code`), and why scan evidence is not a fresh result (`scan.code`). The reason and error
 * texts beside them are for people and may change; the codes do not, so policies, logs and tests match on these
 * (sigstore-js does the same with its `VerificationError.code`).
 *
 * They live here, in the policy contract, because both evidence providers (verify/, scan/) produce them and the
 * policy input carries them; neither provider may import the other.
 */

/** Why an authority has no verified signature, one code per distinct reason the verifiers tell apart. */
export const SIGNATURE_CODES = {
  /** No signature of the authority's family (cosign, Notation) was found for the digest. */
  NO_SIGNATURE: 'no signature of this kind was found',
  /** The signature does not verify with the authority's key (signed with another key). */
  KEY_MISMATCH: 'signed with another key',
  /** A keyless signer's subject, issuer or certificate extension, or a Notation leaf subject, is not a trusted identity. */
  IDENTITY_MISMATCH: 'signed by another identity',
  /** What was signed names another digest (or, for Notation, another media type or size). */
  DIGEST_MISMATCH: 'signature of another image',
  /** The certificate chain does not lead to the authority's trusted root (or its CT proof does not verify). */
  UNTRUSTED_CHAIN: 'certificate chain not trusted',
  /** A certificate was not valid at the signing time, or the signature's own expiry passed. */
  EXPIRED: 'expired certificate or signature',
  /** The right key or certificate, but the signature does not verify: the payload or signature was changed. */
  INVALID_SIGNATURE: 'payload or signature tampered with',
  /** A required transparency log entry is missing or does not verify. */
  TLOG_UNVERIFIED: 'transparency log entry not verified',
  /** A required trusted timestamp is missing or does not verify. */
  TIMESTAMP_UNVERIFIED: 'trusted timestamp not verified',
  /** A certificate of a Notation chain is revoked (OCSP or CRL). */
  REVOKED: 'certificate revoked',
  /** A Notation chain's revocation status could not be established (responder down, bad or stale response). */
  REVOCATION_UNKNOWN: 'revocation status unknown',
  /** The signature verifies but what it signs is not a usable statement about an image. */
  UNUSABLE_PAYLOAD: 'signed payload not usable',
  /** The signature artifact itself could not be read (malformed bundle, envelope or layer). */
  UNUSABLE_SIGNATURE: 'signature artifact malformed',
  /** A format, signing scheme or critical header this proxy does not verify (e.g. COSE envelopes). */
  UNSUPPORTED: 'signature format not supported',
  /** A key-based signature where the authority is keyless, or the other way round. */
  WRONG_KIND: 'not a kind of signature this authority verifies',
  /** The verifier failed unexpectedly on this signature. */
  VERIFICATION_ERROR: 'verification failed unexpectedly',
  /** Finding the signatures failed (an upstream error); nothing verified. */
  DISCOVERY_FAILED: 'signature discovery failed',
  /** The upstream listed more signature artifacts or bytes than one decision may fetch. */
  BUDGET_EXCEEDED: 'signature discovery budget exceeded',
  /** The signature check as a whole failed (no evidence could be gathered). */
  CHECK_FAILED: 'signature check failed',
} as const;

export type SignatureCode = keyof typeof SIGNATURE_CODES;

/** Why scan evidence is not a fresh result; set whenever `scan.status` is not `ok`. */
export const SCAN_CODES = {
  /** No scan source is configured in the proxy. */
  NOT_CONFIGURED: 'no scan source configured',
  /** No source has a result for the digest. */
  NOT_SCANNED: 'no scan result',
  /** A scanner was asked and has not answered yet. */
  PENDING: 'scan pending',
  /** The newest result is older than `scan.staleAfter`. */
  STALE: 'scan result too old',
  /** The newest result is dated in the future beyond the allowed clock skew (it would otherwise never go stale). */
  FUTURE_SCAN_TIME: 'scan time in the future',
  /** A vulnerability attestation or report that cannot be read as one. */
  REPORT_INVALID: 'scan report unreadable',
  /** A vulnerability attestation whose report names another image. */
  DIGEST_MISMATCH: 'scan report of another image',
  /** The scanner could not be asked (unreachable, refused the request, or answered nonsense). */
  SCANNER_ERROR: 'scanner request failed',
  /** The scanner reported that the scan failed. */
  SCAN_FAILED: 'scan failed',
  /** The scan did not finish within `scan.scanner.scanTimeout`. */
  SCAN_TIMEOUT: 'scan timed out',
  /** Looking the evidence up failed (e.g. the index could not be read). */
  LOOKUP_FAILED: 'scan lookup failed',
} as const;

export type ScanCode = keyof typeof SCAN_CODES;
