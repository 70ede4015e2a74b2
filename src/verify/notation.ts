/**
 * Notation (Notary Project) signatures in the JWS envelope (`application/jose+json`), verified as the Notary
 * Project trust policy's `strict` level does, minus revocation and TSA countersignatures:
 *
 *   integrity     the JWS verifies with the leaf certificate's key, with the algorithm the key dictates (jose);
 *                 the payload's targetArtifact digest, media type and size are this manifest's;
 *   authenticity  the x5c chain (leaf first, root present) verifies link by link, its root is in the authority's
 *                 trust store, CA certificates are CAs, and the leaf subject holds a trusted identity's RDNs;
 *   expiry        `io.cncf.notary.expiry` is in the future (enforce, or only log);
 *   signing time  the signing time lies within every certificate's validity, and, with no authentic timestamp,
 *                 every certificate is valid now (enforce, or only log).
 *
 * COSE envelopes (`application/cose`) are reported as unsupported: no maintained CBOR/COSE library here is clean
 * enough to be worth the dependency, and Notation writes JWS by default.
 */
import { X509Certificate as NodeX509 } from 'node:crypto';
import { X509Certificate as SigstoreX509 } from '@sigstore/core';
import { errors as joseErrors, flattenedVerify, type FlattenedJWSInput } from 'jose';
import type { Digest } from '../routing/reference.js';
import { reject, type Outcome } from './cosign.js';
import type { NotationAuthority } from './trust.js';
import { errorText } from '../util/error-text.js';

export const NOTATION_PAYLOAD_TYPE = 'application/vnd.cncf.notary.payload.v1+json';
const CRIT = {
  'io.cncf.notary.signingScheme': true,
  'io.cncf.notary.expiry': true,
  'io.cncf.notary.authenticSigningTime': true,
} as const;
/** Clock skew tolerated for a signing time in the future. */
const SKEW_MS = 5 * 60_000;

export interface NotationEnvelope {
  where: string;
  jws: FlattenedJWSInput & { header?: Record<string, unknown> };
  protectedHeader: Record<string, unknown>;
  chain: NodeX509[];
}

export interface Subject {
  digest: Digest;
  mediaType: string;
  size: number;
}

/** Parses a JWS envelope; throws with a short reason when it is not one. */
export function parseNotationJws(where: string, bytes: Buffer): NotationEnvelope {
  let jws: Record<string, unknown>;
  try {
    jws = JSON.parse(bytes.toString('utf8')) as Record<string, unknown>;
  } catch {
    throw new Error('JWS envelope is not JSON');
  }
  if (typeof jws.payload !== 'string' || typeof jws.protected !== 'string' || typeof jws.signature !== 'string') {
    throw new Error('not a flattened JWS (payload, protected, signature)');
  }
  let protectedHeader: Record<string, unknown>;
  try {
    protectedHeader = JSON.parse(Buffer.from(jws.protected, 'base64url').toString('utf8')) as Record<string, unknown>;
  } catch {
    throw new Error('JWS protected header is not JSON');
  }
  const header = (typeof jws.header === 'object' && jws.header !== null ? jws.header : {}) as Record<string, unknown>;
  const x5c = header.x5c;
  if (!Array.isArray(x5c) || x5c.length === 0 || !x5c.every((c) => typeof c === 'string')) throw new Error('JWS without an x5c certificate chain');
  let chain: NodeX509[];
  try {
    chain = x5c.map((c) => new NodeX509(Buffer.from(c, 'base64')));
  } catch (e) {
    throw new Error(`unparsable x5c certificate: ${(e as Error).message}`, { cause: e });
  }
  return {
    where,
    jws: { payload: jws.payload, protected: jws.protected, signature: jws.signature, header },
    protectedHeader,
    chain,
  };
}

export async function verifyNotation(env: NotationEnvelope, a: NotationAuthority, subject: Subject, now: Date, log: (msg: string) => void): Promise<Outcome> {
  const ph = env.protectedHeader;
  if (ph.cty !== NOTATION_PAYLOAD_TYPE) return reject('UNUSABLE_PAYLOAD', `unusable payload: content type ${JSON.stringify(ph.cty)}`);
  const scheme = ph['io.cncf.notary.signingScheme'];
  if (scheme !== 'notary.x509' && scheme !== 'notary.x509.signingAuthority')
    return reject('UNSUPPORTED', `unsupported signing scheme ${JSON.stringify(scheme)}`);

  // Authenticity first: which key the signature must verify with depends on a trusted chain.
  const chainProblem = checkChain(env.chain, a);
  if (chainProblem) return reject('UNTRUSTED_CHAIN', chainProblem);
  const leaf = env.chain[0]!;

  const alg = expectedAlgorithm(leaf);
  if (!alg) return reject('UNTRUSTED_CHAIN', 'untrusted chain (leaf key type or size not allowed by Notation)');
  if (ph.alg !== alg) return reject('INVALID_SIGNATURE', `invalid signature (alg ${JSON.stringify(ph.alg)} does not match the ${alg} certificate key)`);
  let payload: Uint8Array;
  try {
    ({ payload } = await flattenedVerify(env.jws, leaf.publicKey, { algorithms: [alg], crit: CRIT }));
  } catch (e) {
    // By jose's error class, not its message: an unknown critical header, a malformed JWS, or a bad signature.
    const msg = errorText(e);
    if (e instanceof joseErrors.JOSENotSupported) return reject('UNSUPPORTED', `unsupported critical header (${msg})`);
    if (e instanceof joseErrors.JWSInvalid) return reject('UNUSABLE_SIGNATURE', `malformed JWS (${msg})`);
    return reject('INVALID_SIGNATURE', 'invalid signature (tampered payload or signature)');
  }

  let target: { digest?: unknown; mediaType?: unknown; size?: unknown } | undefined;
  try {
    target = (JSON.parse(Buffer.from(payload).toString('utf8')) as { targetArtifact?: typeof target }).targetArtifact;
  } catch {
    return reject('UNUSABLE_PAYLOAD', 'unusable payload: not JSON');
  }
  if (!target || typeof target.digest !== 'string') return reject('UNUSABLE_PAYLOAD', 'unusable payload: no targetArtifact digest');
  if (target.digest !== subject.digest) return reject('DIGEST_MISMATCH', `digest mismatch (signed ${target.digest.slice(0, 19)}…)`);
  if (target.mediaType !== subject.mediaType || target.size !== subject.size) {
    return reject('DIGEST_MISMATCH', `digest mismatch (signed media type ${JSON.stringify(target.mediaType)} and size ${JSON.stringify(target.size)})`);
  }

  const subjectDn = dnOf(leaf.subject);
  if (a.identities !== '*' && !a.identities.some((id) => [...id].every(([k, v]) => subjectDn.get(k) === v))) {
    return reject('IDENTITY_MISMATCH', `identity mismatch (subject "${leaf.subject.replace(/\n/g, ', ')}")`);
  }

  const expiry = typeof ph['io.cncf.notary.expiry'] === 'string' ? new Date(ph['io.cncf.notary.expiry']) : undefined;
  if (expiry && !(now < expiry)) {
    const reason = `expired (signature expired at ${iso(expiry)})`;
    if (a.expiry === 'enforce') return reject('EXPIRED', reason);
    log(`${a.name}: ${reason}; allowed by expiry: log`);
  }

  const signingTimeRaw = scheme === 'notary.x509' ? ph['io.cncf.notary.signingTime'] : ph['io.cncf.notary.authenticSigningTime'];
  const signingTime = typeof signingTimeRaw === 'string' ? new Date(signingTimeRaw) : undefined;
  const timeProblem = checkTimes(env.chain, signingTime, now, scheme === 'notary.x509.signingAuthority');
  if (timeProblem) {
    if (a.signingTime === 'enforce') return reject('EXPIRED', timeProblem);
    log(`${a.name}: ${timeProblem}; allowed by signingTime: log`);
  }
  return {
    ok: true,
    tlog: false,
    identity: { subject: leaf.subject.replace(/\n/g, ', '), issuer: leaf.issuer.replace(/\n/g, ', ') },
    ...(signingTime && !Number.isNaN(signingTime.getTime()) ? { signedAt: iso(signingTime) } : {}),
  };
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

function checkTimes(chain: NodeX509[], signingTime: Date | undefined, now: Date, authentic: boolean): string | undefined {
  if (!signingTime || Number.isNaN(signingTime.getTime())) return 'expired (no valid signing time)';
  if (signingTime.getTime() > now.getTime() + SKEW_MS) return `expired (signing time ${iso(signingTime)} is in the future)`;
  for (const [i, c] of chain.entries()) {
    const from = new Date(c.validFrom);
    const to = new Date(c.validTo);
    if (signingTime < from || signingTime > to) return `expired (certificate ${i} was not valid at the signing time ${iso(signingTime)})`;
    // Without a verified timestamp countersignature the signing time is only the signer's claim (notary.x509):
    // every certificate must still be valid now.
    if (!authentic && (now < from || now > to)) return `expired (certificate ${i} is valid ${iso(from)} to ${iso(to)})`;
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
