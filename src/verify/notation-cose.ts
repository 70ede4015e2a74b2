/**
 * Notation COSE envelopes (`application/cose`): a tagged COSE_Sign1 (RFC 9052) as `notation sign
 * --signature-format cose` writes it (signature-envelope-cose.md):
 *
 *   protected    alg (1), crit (2), content type (3), io.cncf.notary.signingScheme, io.cncf.notary.signingTime or
 *                io.cncf.notary.authenticSigningTime (tag 1 epoch times), io.cncf.notary.expiry;
 *   unprotected  x5chain (33, leaf first), io.cncf.notary.signingAgent, io.cncf.notary.timestampSignature;
 *   payload      the Notary payload (JSON, embedded);
 *   signature    over Sig_structure ["Signature1", protected, h'', payload]; ECDSA as r||s, RSA as PSS.
 *
 * CBOR is decoded and the Sig_structure encoded with cbor2; the signature is checked with node:crypto.
 */
import { constants, verify as cryptoVerify, X509Certificate as NodeX509, type KeyObject } from 'node:crypto';
import { decode, encode, Tag } from 'cbor2';
import { refuse, type NotationEnvelope, type SignedHeader } from './notation.js';

const COSE_SIGN1_TAG = 18;
const LABEL = { alg: 1, crit: 2, cty: 3, x5chain: 33 } as const;
/** COSE algorithm ids (IANA) as the JWS names the common rules use. */
const ALGS: Record<number, string> = { [-7]: 'ES256', [-35]: 'ES384', [-36]: 'ES512', [-37]: 'PS256', [-38]: 'PS384', [-39]: 'PS512' };
const HASH: Record<string, string> = { 256: 'sha256', 384: 'sha384', 512: 'sha512' };
/** A Notation envelope is a few kilobytes; nothing in it nests deeply. */
const DECODE = { preferMap: true, rejectDuplicateKeys: true, maxDepth: 8 } as const;

type HeaderMap = Map<unknown, unknown>;

const bytesOf = (v: unknown): Buffer | undefined => (v instanceof Uint8Array ? Buffer.from(v.buffer, v.byteOffset, v.byteLength) : undefined);
const dateOf = (v: unknown): Date | undefined => (v instanceof Date && !Number.isNaN(v.getTime()) ? v : undefined);

/** Parses a COSE_Sign1 Notation envelope; throws with a short reason when it is not one. */
export function parseNotationCose(where: string, bytes: Buffer): NotationEnvelope {
  let top: unknown;
  try {
    top = decode(bytes, DECODE);
  } catch (e) {
    throw new Error(`COSE envelope is not CBOR (${(e as Error).message})`, { cause: e });
  }
  if (!(top instanceof Tag) || Number(top.tag) !== COSE_SIGN1_TAG || !Array.isArray(top.contents) || top.contents.length !== 4)
    throw new Error('not a tagged COSE_Sign1 (tag 18, four elements)');
  const [protectedRaw, unprotected, payloadRaw, signatureRaw] = top.contents as unknown[];
  const protectedBytes = bytesOf(protectedRaw);
  const payload = bytesOf(payloadRaw);
  const signature = bytesOf(signatureRaw);
  if (!protectedBytes || protectedBytes.length === 0 || !payload || !signature || !(unprotected instanceof Map))
    throw new Error('COSE_Sign1 without protected header bytes, unprotected map, embedded payload or signature');
  let ph: unknown;
  try {
    ph = decode(protectedBytes, DECODE);
  } catch (e) {
    throw new Error(`COSE protected header is not CBOR (${(e as Error).message})`, { cause: e });
  }
  if (!(ph instanceof Map)) throw new Error('COSE protected header is not a map');
  const map = ph as HeaderMap;
  const chain = x5chain(unprotected.get(LABEL.x5chain));
  const alg: unknown = map.get(LABEL.alg);
  const crit: unknown = map.get(LABEL.crit);
  const header: SignedHeader = {
    alg: typeof alg === 'number' ? (ALGS[alg] ?? `COSE ${alg}`) : undefined,
    cty: map.get(LABEL.cty),
    scheme: map.get('io.cncf.notary.signingScheme'),
    signingTime: dateOf(map.get('io.cncf.notary.signingTime')),
    authenticSigningTime: dateOf(map.get('io.cncf.notary.authenticSigningTime')),
    expiry: dateOf(map.get('io.cncf.notary.expiry')),
    crit: Array.isArray(crit) ? (crit as unknown[]) : undefined,
    present: (label) => map.has(label),
  };
  const timestamp = bytesOf(unprotected.get('io.cncf.notary.timestampSignature'));
  return {
    where,
    format: 'notation-cose',
    chain,
    header,
    signature,
    timestamp,
    verifySignature: (key, jwsAlg) => Promise.resolve(verifySign1(protectedBytes, payload, signature, key, jwsAlg)),
  };
}

/** x5chain: one certificate as a byte string, or several in an array (RFC 9360). */
function x5chain(v: unknown): NodeX509[] {
  const list = Array.isArray(v) ? (v as unknown[]) : v === undefined ? [] : [v];
  const ders = list.map(bytesOf);
  if (ders.length === 0 || ders.some((d) => !d)) throw new Error('COSE envelope without an x5chain certificate chain');
  try {
    return ders.map((d) => new NodeX509(d!));
  } catch (e) {
    throw new Error(`unparsable x5chain certificate: ${(e as Error).message}`, { cause: e });
  }
}

function verifySign1(protectedBytes: Buffer, payload: Buffer, signature: Buffer, key: KeyObject, alg: string): { payload: Buffer } | ReturnType<typeof refuse> {
  // Plain Uint8Arrays: cbor2 encodes a Node Buffer as an object, not as a byte string.
  const toBeSigned = Buffer.from(encode(['Signature1', new Uint8Array(protectedBytes), new Uint8Array(0), new Uint8Array(payload)]));
  const hash = HASH[alg.slice(2)];
  if (!hash) return refuse('UNSUPPORTED', `unsupported algorithm ${alg}`);
  const ok = alg.startsWith('ES')
    ? cryptoVerify(hash, toBeSigned, { key, dsaEncoding: 'ieee-p1363' }, signature)
    : cryptoVerify(hash, toBeSigned, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: Number(alg.slice(2)) / 8 }, signature);
  return ok ? { payload } : refuse('INVALID_SIGNATURE', 'invalid signature (tampered payload or signature)');
}
