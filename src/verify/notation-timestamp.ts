/**
 * The Notary Project timestamp countersignature: an RFC 3161 TimeStampToken (CMS SignedData over a TSTInfo) in the
 * envelope's unsigned `io.cncf.notary.timestampSignature`, whose message imprint is the hash of the envelope's
 * signature bytes. Verified as notation-go and tspclient-go do (trust-store-trust-policy.md, "Steps"):
 *
 *   - the TSTInfo is version 1 and its messageImprint is SHA-256/384/512 of exactly the signature bytes;
 *   - the CMS signature verifies (signed attributes, messageDigest over the TSTInfo) with the certificate the
 *     signed SigningCertificateV2 attribute names by hash (no other certificate with the same key will do);
 *   - that certificate chains to a root of the authority's `tsa` trust store, checked at the timestamp's time;
 *   - its extended key usage is timeStamping only, and marked critical (RFC 3161 2.3);
 *   - the result is a time range: genTime ± accuracy (1 s when the baseline policy gives no accuracy).
 *
 * ASN.1 and CMS are parsed and checked with pkijs (PeculiarVentures); nothing is decoded by hand.
 */
import { createHash, X509Certificate as NodeX509 } from 'node:crypto';
import * as asn1js from 'asn1js';
import * as pkijs from 'pkijs';

/** A verified timestamp: the earliest and latest instants the TSA vouches for. */
export interface TimestampRange {
  from: Date;
  to: Date;
  /** The TSA certificate's subject, for messages. */
  tsa: string;
  /** The TSA certificate up to the trusted root: what the revocation check is asked about. */
  chain: NodeX509[];
}

const OID = {
  signedData: '1.2.840.113549.1.7.2',
  tstInfo: '1.2.840.113549.1.9.16.1.4',
  signingCertificateV2: '1.2.840.113549.1.9.16.2.47',
  extKeyUsage: '2.5.29.37',
  timeStamping: '1.3.6.1.5.5.7.3.8',
  baselinePolicy: '0.4.0.2023.1.1',
} as const;

const HASHES: Record<string, string> = {
  '2.16.840.1.101.3.4.2.1': 'sha256',
  '2.16.840.1.101.3.4.2.2': 'sha384',
  '2.16.840.1.101.3.4.2.3': 'sha512',
};

/** Thrown with a short reason the caller puts into the rejection. */
export class TimestampError extends Error {}

function fromBer<T>(bytes: ArrayBuffer | Uint8Array, make: (schema: asn1js.AsnType) => T, what: string): T {
  const parsed = asn1js.fromBER(bytes instanceof Uint8Array ? new Uint8Array(bytes).buffer : bytes);
  if (parsed.offset === -1) throw new TimestampError(`${what} is not DER`);
  try {
    return make(parsed.result);
  } catch (e) {
    throw new TimestampError(`${what} does not parse (${(e as Error).message})`, { cause: e });
  }
}

const der = (c: pkijs.Certificate): Buffer => Buffer.from(c.toSchema().toBER(false));

/**
 * Verifies `token` as a countersignature over `signature` with the TSA roots; resolves with the time range, or
 * throws a TimestampError saying why not.
 */
export async function verifyTimestamp(token: Buffer, signature: Buffer, roots: readonly NodeX509[]): Promise<TimestampRange> {
  const content = fromBer(token, (s) => new pkijs.ContentInfo({ schema: s }), 'timestamp token');
  if (content.contentType !== OID.signedData) throw new TimestampError('timestamp token is not CMS SignedData');
  const inner = (content.content as asn1js.BaseBlock).toBER(false);
  const signed = fromBer(inner, (s) => new pkijs.SignedData({ schema: s }), 'timestamp token');
  if (signed.encapContentInfo.eContentType !== OID.tstInfo) throw new TimestampError('timestamp token does not hold a TSTInfo');
  const eContent = signed.encapContentInfo.eContent;
  if (!eContent) throw new TimestampError('timestamp token without its TSTInfo');
  const info = fromBer(eContent.getValue(), (s) => new pkijs.TSTInfo({ schema: s }), 'TSTInfo');
  if (info.version !== 1) throw new TimestampError(`TSTInfo version ${info.version} (want 1)`);

  // 1. The token is over exactly these signature bytes.
  const hash = HASHES[info.messageImprint.hashAlgorithm.algorithmId];
  if (!hash) throw new TimestampError(`timestamp hash algorithm ${info.messageImprint.hashAlgorithm.algorithmId} not allowed`);
  const imprint = Buffer.from(info.messageImprint.hashedMessage.valueBlock.valueHexView);
  if (!imprint.equals(createHash(hash).update(signature).digest())) throw new TimestampError('the timestamp is over other bytes than this signature');

  // 2. The CMS signature, by the certificate its SigningCertificateV2 attribute names.
  if (signed.signerInfos.length !== 1) throw new TimestampError(`timestamp token with ${signed.signerInfos.length} signers (want 1)`);
  const certs = (signed.certificates ?? []).filter((c): c is pkijs.Certificate => c instanceof pkijs.Certificate);
  const signerCert = signingCertificate(signed.signerInfos[0]!, certs);
  let verified: boolean;
  try {
    // pkijs checks the TSTInfo's imprint over `data` again, then the signed attributes and the signature.
    const data = new Uint8Array(signature).buffer;
    const r = await signed.verify({ signer: 0, data, checkChain: false, extendedMode: true });
    verified = r.signatureVerified === true && !!r.signerCertificate && der(r.signerCertificate).equals(der(signerCert));
  } catch (e) {
    const message = typeof e === 'object' && e !== null && 'message' in e ? String(e.message) : String(e);
    throw new TimestampError(`timestamp signature does not verify (${message})`, { cause: e });
  }
  if (!verified) throw new TimestampError('timestamp signature does not verify');

  // 3. RFC 3161 2.3: timeStamping is the only extended key usage, and the extension is critical.
  const eku = signerCert.extensions?.find((x) => x.extnID === OID.extKeyUsage);
  const usages = (eku?.parsedValue as pkijs.ExtKeyUsage | undefined)?.keyPurposes ?? [];
  if (!eku?.critical || usages.length !== 1 || usages[0] !== OID.timeStamping)
    throw new TimestampError('the TSA certificate must have timeStamping as its only, critical, extended key usage');

  // 4. The range, then the TSA chain at the timestamp's time.
  const accuracyMs = accuracyOf(info);
  const range = { from: new Date(info.genTime.getTime() - accuracyMs), to: new Date(info.genTime.getTime() + accuracyMs) };
  const leaf = new NodeX509(der(signerCert));
  const chain = chainToRoot(
    leaf,
    certs.map((c) => new NodeX509(der(c))),
    roots,
    info.genTime,
  );
  return { ...range, tsa: leaf.subject.replace(/\n/g, ', '), chain };
}

/** The SigningCertificateV2 signed attribute names the signer by certificate hash (RFC 5035); find that one. */
function signingCertificate(signer: pkijs.SignerInfo, certs: pkijs.Certificate[]): pkijs.Certificate {
  const attr = signer.signedAttrs?.attributes.find((a) => a.type === OID.signingCertificateV2);
  const value: unknown = attr?.values[0];
  // SigningCertificateV2 ::= SEQUENCE { certs SEQUENCE OF ESSCertIDv2, … }
  // ESSCertIDv2 ::= SEQUENCE { hashAlgorithm AlgorithmIdentifier DEFAULT sha256, certHash OCTET STRING, … }
  const first = value instanceof asn1js.Sequence ? value.valueBlock.value[0] : undefined;
  const id = first instanceof asn1js.Sequence ? first.valueBlock.value[0] : undefined;
  if (!(id instanceof asn1js.Sequence)) throw new TimestampError('timestamp token without a SigningCertificateV2 attribute');
  const [a, b] = id.valueBlock.value;
  let hash = 'sha256';
  let certHash: asn1js.AsnType | undefined = a;
  if (a instanceof asn1js.Sequence) {
    const alg = new pkijs.AlgorithmIdentifier({ schema: a });
    const h = HASHES[alg.algorithmId];
    if (!h) throw new TimestampError(`SigningCertificateV2 hash algorithm ${alg.algorithmId} not allowed`);
    hash = h;
    certHash = b;
  }
  if (!(certHash instanceof asn1js.OctetString)) throw new TimestampError('malformed SigningCertificateV2 attribute');
  const want = Buffer.from(certHash.valueBlock.valueHexView);
  const cert = certs.find((c) => createHash(hash).update(der(c)).digest().equals(want));
  if (!cert) throw new TimestampError('the TSA signing certificate is not in the timestamp token');
  return cert;
}

function accuracyOf(info: pkijs.TSTInfo): number {
  const a = info.accuracy;
  const ms = a ? (a.seconds ?? 0) * 1000 + (a.millis ?? 0) + (a.micros ?? 0) / 1000 : 0;
  // tspclient-go: the baseline time-stamp policy (ETSI EN 319 421) without an accuracy means one second.
  return ms === 0 && info.policy === OID.baselinePolicy ? 1000 : ms;
}

/** Link by link from the TSA certificate to a trusted root, every certificate valid at `at`; the chain, or a TimestampError. */
function chainToRoot(leaf: NodeX509, pool: NodeX509[], roots: readonly NodeX509[], at: Date): NodeX509[] {
  const chain = [leaf];
  // At most 8 links: a TSA chain is short, and the pool comes from the token.
  for (let cur = leaf; chain.length <= 8;) {
    if (at < new Date(cur.validFrom) || at > new Date(cur.validTo))
      throw new TimestampError(`the TSA certificate "${cur.subject.replace(/\n/g, ', ')}" was not valid at the timestamp's time`);
    if (roots.some((r) => r.raw.equals(cur.raw))) return chain;
    const issuer =
      roots.find((r) => cur.checkIssued(r) && cur.verify(r.publicKey)) ??
      pool.find((c) => !c.raw.equals(cur.raw) && cur.checkIssued(c) && cur.verify(c.publicKey) && c.ca);
    if (!issuer) throw new TimestampError('the timestamp is not from a trusted TSA');
    if (!issuer.ca) throw new TimestampError('the timestamp is not from a trusted TSA (its issuer is not a CA)');
    chain.push(issuer);
    cur = issuer;
  }
  throw new TimestampError('the TSA certificate chain is too long');
}
