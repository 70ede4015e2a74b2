/**
 * Notation JWS envelopes (`application/jose+json`, signature-envelope-jws.md): a flattened JWS whose protected
 * header carries the signed attributes and whose unprotected header carries the x5c chain (leaf first) and the
 * timestamp countersignature (`io.cncf.notary.timestampSignature`, base64 of an RFC 3161 token over the raw
 * signature bytes). The signature is checked with jose.
 */
import { X509Certificate as NodeX509 } from 'node:crypto';
import { errors as joseErrors, flattenedVerify, type FlattenedJWSInput } from 'jose';
import { errorText } from '../util/error-text.js';
import { NOTARY_CRIT, refuse, type NotationEnvelope } from './notation.js';

const dateOf = (v: unknown): Date | undefined => {
  if (typeof v !== 'string') return undefined;
  const d = new Date(v);
  return Number.isNaN(d.getTime()) ? undefined : d;
};

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
  let ph: Record<string, unknown>;
  try {
    ph = JSON.parse(Buffer.from(jws.protected, 'base64url').toString('utf8')) as Record<string, unknown>;
  } catch {
    throw new Error('JWS protected header is not JSON');
  }
  if (typeof ph !== 'object' || ph === null || Array.isArray(ph)) throw new Error('JWS protected header is not an object');
  const header = (typeof jws.header === 'object' && jws.header !== null ? jws.header : {}) as Record<string, unknown>;
  const x5c = header.x5c;
  if (!Array.isArray(x5c) || x5c.length === 0 || !x5c.every((c) => typeof c === 'string')) throw new Error('JWS without an x5c certificate chain');
  let chain: NodeX509[];
  try {
    chain = x5c.map((c) => new NodeX509(Buffer.from(c, 'base64')));
  } catch (e) {
    throw new Error(`unparsable x5c certificate: ${(e as Error).message}`, { cause: e });
  }
  const ts = header['io.cncf.notary.timestampSignature'];
  if (ts !== undefined && typeof ts !== 'string') throw new Error('io.cncf.notary.timestampSignature is not a string');
  const input: FlattenedJWSInput = { payload: jws.payload, protected: jws.protected, signature: jws.signature, header };
  return {
    where,
    format: 'notation-jws',
    chain,
    header: {
      alg: typeof ph.alg === 'string' ? ph.alg : undefined,
      cty: ph.cty,
      scheme: ph['io.cncf.notary.signingScheme'],
      signingTime: dateOf(ph['io.cncf.notary.signingTime']),
      authenticSigningTime: dateOf(ph['io.cncf.notary.authenticSigningTime']),
      expiry: dateOf(ph['io.cncf.notary.expiry']),
      crit: Array.isArray(ph.crit) ? (ph.crit as unknown[]) : undefined,
      present: (label) => typeof label === 'string' && Object.hasOwn(ph, label),
    },
    signature: Buffer.from(jws.signature, 'base64url'),
    timestamp: ts === undefined ? undefined : Buffer.from(ts, 'base64'),
    async verifySignature(key, alg) {
      try {
        const { payload } = await flattenedVerify(input, key, { algorithms: [alg], crit: NOTARY_CRIT });
        return { payload: Buffer.from(payload) };
      } catch (e) {
        // By jose's error class, not its message: an unknown critical header, a malformed JWS, or a bad signature.
        const msg = errorText(e);
        if (e instanceof joseErrors.JOSENotSupported) return refuse('UNSUPPORTED', `unsupported critical header (${msg})`);
        if (e instanceof joseErrors.JWSInvalid) return refuse('UNUSABLE_SIGNATURE', `malformed JWS (${msg})`);
        return refuse('INVALID_SIGNATURE', 'invalid signature (tampered payload or signature)');
      }
    },
  };
}
