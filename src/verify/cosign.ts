/**
 * cosign signatures and attestations, in both storage formats, reduced to one shape (a Sigstore bundle plus what
 * was signed) and verified against key and keyless authorities.
 *
 * - Legacy (cosign ≤ 2, tag `sha256-<hex>.sig|.att`): one layer per signature. `.sig` layers are simple-signing
 *   payloads with the signature in the `dev.cosignproject.cosign/signature` annotation; `.att` layers are DSSE
 *   envelopes. Keyless ones carry the Fulcio certificate, chain and Rekor SET bundle in annotations; these are
 *   assembled into a bundle so that `@sigstore/verify` checks chain, SCTs and SET exactly as for a native bundle.
 * - Sigstore bundle v0.3 referrers (cosign 3 default): a DSSE envelope holding an in-toto statement whose
 *   predicateType is `https://sigstore.dev/cosign/sign/v1` for a signature, anything else for an attestation.
 *
 * Key-based signatures are checked with the configured key directly (node:crypto), with the hash that cosign uses
 * for the key type; `@sigstore/verify` then checks transparency-log entries when the authority requires them.
 * Keyless ones go through `@sigstore/verify` offline, with the authority's trusted_root.json. Either way a
 * signature counts only when what it signs binds this exact digest: the simple-signing `docker-manifest-digest`,
 * or an in-toto subject digest.
 */
import { createHash, verify as cryptoVerify, constants, type KeyObject } from 'node:crypto';
import { bundleFromJSON, toDSSEBundle, toMessageSignatureBundle, type Bundle, type TransparencyLogEntry } from '@sigstore/bundle';
import { ASN1Obj, X509Certificate, dsse } from '@sigstore/core';
import { toSignedEntity, Verifier, VerificationError, type SignedEntity } from '@sigstore/verify';
import type { Descriptor } from '../proxy/mediatypes.js';
import type { Digest } from '../routing/reference.js';
import { MT, type FoundArtifact } from './discovery.js';
import type { KeyAuthority, KeylessAuthority } from './trust.js';

export const COSIGN_SIGN_PREDICATE = 'https://sigstore.dev/cosign/sign/v1';
const SIMPLE_SIGNING_TYPE = 'cosign container image signature';
const INTOTO_PAYLOAD_TYPE = 'application/vnd.in-toto+json';
const ANN = {
  signature: 'dev.cosignproject.cosign/signature',
  certificate: 'dev.sigstore.cosign/certificate',
  chain: 'dev.sigstore.cosign/chain',
  bundle: 'dev.sigstore.cosign/bundle',
  rfc3161: 'dev.sigstore.cosign/rfc3161timestamp',
} as const;

/** What a signature's content claims about the image. */
export type Claim =
  | { kind: 'simple-signing'; digest: string | undefined }
  | { kind: 'in-toto'; subjects: string[]; predicateType: string; predicate: unknown }
  | { kind: 'invalid'; error: string };

export interface CosignItem {
  format: 'sigstore-bundle' | 'cosign-legacy';
  where: string;
  bundle: Bundle;
  /** The simple-signing payload, for message signatures. */
  artifact: Buffer | undefined;
  /** The bytes the signature is over: the payload, or the DSSE pre-authentication encoding. */
  signedBytes: Buffer;
  signature: Buffer;
  certificate: X509Certificate | undefined;
  keyHint: string | undefined;
  claim: Claim;
  /** A signature (simple signing, or the cosign sign predicate) rather than an attestation. */
  isSignature: boolean;
}

export type Outcome =
  | { ok: true; tlog: boolean; signedAt?: string; identity?: { issuer?: string; subject?: string } }
  | { ok: false; reason: string };

type BlobReader = (d: Descriptor) => Promise<Buffer>;

/** Turns a found cosign artifact into items; problems with one layer become an invalid item, not an exception. */
export async function cosignItems(found: FoundArtifact, readBlob: BlobReader, max: number): Promise<Array<CosignItem | { where: string; error: string; isSignature: boolean }>> {
  const m = found.manifest;
  const layers = m.parsed.blobs.slice(1, 1 + max);
  const short = m.digest.slice(7, 19);
  const out: Array<CosignItem | { where: string; error: string; isSignature: boolean }> = [];
  for (const [i, layer] of layers.entries()) {
    const where = `${found.via} ${short} layer ${i}`;
    try {
      if (found.kind === 'sigstore-bundle' && layer.mediaType.startsWith(MT.sigstoreBundlePrefix)) {
        out.push(fromBundle(where, await readBlob(layer)));
      } else if ((found.kind === 'cosign-sig' || found.kind === 'cosign-att') && layer.mediaType === MT.simpleSigning) {
        out.push(fromLegacy(where, layer, await readBlob(layer), 'message'));
      } else if ((found.kind === 'cosign-sig' || found.kind === 'cosign-att') && layer.mediaType === MT.dsseEnvelope) {
        out.push(fromLegacy(where, layer, await readBlob(layer), 'dsse'));
      }
    } catch (e) {
      out.push({ where, error: e instanceof Error ? e.message : String(e), isSignature: found.kind !== 'cosign-att' });
    }
  }
  return out;
}

function fromBundle(where: string, bytes: Buffer): CosignItem {
  let bundle: Bundle;
  try {
    bundle = bundleFromJSON(JSON.parse(bytes.toString('utf8')));
  } catch (e) {
    throw new Error(`not a valid Sigstore bundle: ${(e as Error).message}`);
  }
  const vm = bundle.verificationMaterial.content;
  const certificate =
    vm.$case === 'certificate'
      ? X509Certificate.parse(Buffer.from(vm.certificate.rawBytes))
      : vm.$case === 'x509CertificateChain' && vm.x509CertificateChain.certificates[0]
        ? X509Certificate.parse(Buffer.from(vm.x509CertificateChain.certificates[0].rawBytes))
        : undefined;
  const keyHint = vm.$case === 'publicKey' ? vm.publicKey.hint : undefined;
  if (bundle.content.$case === 'dsseEnvelope') {
    const env = bundle.content.dsseEnvelope;
    const claim = parseEnvelopePayload(env.payloadType, env.payload);
    return {
      format: 'sigstore-bundle',
      where,
      bundle,
      artifact: undefined,
      signedBytes: dsse.preAuthEncoding(env.payloadType, env.payload),
      signature: env.signatures[0]?.sig ?? Buffer.alloc(0),
      certificate,
      keyHint: keyHint || env.signatures[0]?.keyid || undefined,
      claim,
      isSignature: claim.kind !== 'in-toto' || claim.predicateType === COSIGN_SIGN_PREDICATE,
    };
  }
  // A message signature over an image would sign the manifest bytes; cosign never stores images' signatures so.
  return {
    format: 'sigstore-bundle',
    where,
    bundle,
    artifact: undefined,
    signedBytes: Buffer.alloc(0),
    signature: bundle.content.messageSignature.signature,
    certificate,
    keyHint,
    claim: { kind: 'invalid', error: 'message-signature bundle: cosign signs images with DSSE statements' },
    isSignature: true,
  };
}

function fromLegacy(where: string, layer: Descriptor, bytes: Buffer, content: 'message' | 'dsse'): CosignItem {
  const ann: Record<string, string> = layer.annotations ?? {};
  const certPem = ann[ANN.certificate];
  const certificate = certPem ? parsePemCertificate(certPem) : undefined;
  const certDer = certificate ? Buffer.from(certificate.root.toDER()) : undefined;
  let bundle: Bundle;
  let signature: Buffer;
  let signedBytes: Buffer;
  let claim: Claim;
  let artifact: Buffer | undefined;
  if (content === 'message') {
    signature = Buffer.from(ann[ANN.signature] ?? '', 'base64');
    if (signature.length === 0) throw new Error('legacy signature layer without a dev.cosignproject.cosign/signature annotation');
    bundle = toMessageSignatureBundle({ digest: createHash('sha256').update(bytes).digest(), signature, ...(certDer ? { certificate: certDer } : { keyHint: '' }) });
    signedBytes = bytes;
    artifact = bytes;
    claim = parseSimpleSigning(bytes);
  } else {
    let env: { payloadType?: unknown; payload?: unknown; signatures?: Array<{ sig?: unknown; keyid?: unknown }> };
    try {
      env = JSON.parse(bytes.toString('utf8')) as typeof env;
    } catch {
      throw new Error('DSSE envelope is not JSON');
    }
    if (typeof env.payloadType !== 'string' || typeof env.payload !== 'string' || !Array.isArray(env.signatures) || typeof env.signatures[0]?.sig !== 'string') {
      throw new Error('malformed DSSE envelope');
    }
    const payload = Buffer.from(env.payload, 'base64');
    signature = Buffer.from(env.signatures[0].sig as string, 'base64');
    bundle = toDSSEBundle({ artifact: payload, artifactType: env.payloadType, signature, ...(certDer ? { certificate: certDer } : { keyHint: typeof env.signatures[0].keyid === 'string' ? env.signatures[0].keyid : '' }) });
    signedBytes = dsse.preAuthEncoding(env.payloadType, payload);
    claim = parseEnvelopePayload(env.payloadType, payload);
  }
  const rekorBundle = ann[ANN.bundle];
  if (rekorBundle) bundle.verificationMaterial.tlogEntries = [tlogEntryFromRekorBundle(rekorBundle)];
  const rfc3161 = ann[ANN.rfc3161];
  if (rfc3161) {
    try {
      const ts = JSON.parse(rfc3161) as { SignedRFC3161Timestamp?: string };
      if (ts.SignedRFC3161Timestamp) {
        bundle.verificationMaterial.timestampVerificationData = { rfc3161Timestamps: [{ signedTimestamp: Buffer.from(ts.SignedRFC3161Timestamp, 'base64') }] };
      }
    } catch {
      throw new Error('malformed dev.sigstore.cosign/rfc3161timestamp annotation');
    }
  }
  return {
    format: 'cosign-legacy',
    where,
    bundle,
    artifact,
    signedBytes,
    signature,
    certificate,
    keyHint: undefined,
    claim,
    isSignature: content === 'message' || (claim.kind === 'in-toto' && claim.predicateType === COSIGN_SIGN_PREDICATE),
  };
}

function parsePemCertificate(pem: string): X509Certificate {
  try {
    return X509Certificate.parse(pem);
  } catch (e) {
    throw new Error(`unparsable certificate annotation: ${(e as Error).message}`);
  }
}

/** The `dev.sigstore.cosign/bundle` annotation (Rekor SET bundle) as a tlog entry with an inclusion promise. */
function tlogEntryFromRekorBundle(json: string): TransparencyLogEntry {
  let rb: { SignedEntryTimestamp?: string; Payload?: { body?: string; integratedTime?: number; logIndex?: number; logID?: string } };
  try {
    rb = JSON.parse(json) as typeof rb;
  } catch {
    throw new Error('dev.sigstore.cosign/bundle annotation is not JSON');
  }
  const p = rb.Payload;
  if (!rb.SignedEntryTimestamp || !p || typeof p.body !== 'string' || typeof p.integratedTime !== 'number' || typeof p.logIndex !== 'number' || typeof p.logID !== 'string') {
    throw new Error('malformed dev.sigstore.cosign/bundle annotation');
  }
  const body = Buffer.from(p.body, 'base64');
  let kind = '';
  let version = '';
  try {
    const b = JSON.parse(body.toString('utf8')) as { kind?: unknown; apiVersion?: unknown };
    kind = typeof b.kind === 'string' ? b.kind : '';
    version = typeof b.apiVersion === 'string' ? b.apiVersion : '';
  } catch {
    throw new Error('Rekor entry body in dev.sigstore.cosign/bundle is not JSON');
  }
  return {
    logIndex: String(p.logIndex),
    logId: { keyId: Buffer.from(p.logID, 'hex') },
    kindVersion: { kind, version },
    integratedTime: String(p.integratedTime),
    inclusionPromise: { signedEntryTimestamp: Buffer.from(rb.SignedEntryTimestamp, 'base64') },
    inclusionProof: undefined,
    canonicalizedBody: body,
  } as TransparencyLogEntry;
}

/** Case-insensitive member lookup: Go's JSON decoding, which cosign uses, matches keys that way. */
function member(o: unknown, key: string): unknown {
  if (typeof o !== 'object' || o === null) return undefined;
  const k = Object.keys(o).find((x) => x.toLowerCase() === key);
  return k === undefined ? undefined : (o as Record<string, unknown>)[k];
}

export function parseSimpleSigning(bytes: Buffer): Claim {
  let doc: unknown;
  try {
    doc = JSON.parse(bytes.toString('utf8'));
  } catch {
    return { kind: 'invalid', error: 'simple-signing payload is not JSON' };
  }
  const critical = member(doc, 'critical');
  const type = member(critical, 'type');
  if (typeof type !== 'string' || type.toLowerCase() !== SIMPLE_SIGNING_TYPE) return { kind: 'invalid', error: `simple-signing payload of type ${JSON.stringify(type)}` };
  const digest = member(member(critical, 'image'), 'docker-manifest-digest');
  return { kind: 'simple-signing', digest: typeof digest === 'string' ? digest : undefined };
}

function parseEnvelopePayload(payloadType: string, payload: Buffer): Claim {
  if (payloadType !== INTOTO_PAYLOAD_TYPE) return { kind: 'invalid', error: `DSSE payload type ${payloadType} is not in-toto` };
  let st: { _type?: unknown; subject?: unknown; predicateType?: unknown; predicate?: unknown };
  try {
    st = JSON.parse(payload.toString('utf8')) as typeof st;
  } catch {
    return { kind: 'invalid', error: 'in-toto statement is not JSON' };
  }
  if (typeof st._type !== 'string' || !st._type.startsWith('https://in-toto.io/Statement/')) return { kind: 'invalid', error: 'not an in-toto statement' };
  if (typeof st.predicateType !== 'string') return { kind: 'invalid', error: 'in-toto statement without predicateType' };
  const subjects = Array.isArray(st.subject)
    ? st.subject.map((s: unknown) => member(member(s, 'digest'), 'sha256')).filter((d): d is string => typeof d === 'string').map((d) => d.toLowerCase())
    : [];
  return { kind: 'in-toto', subjects, predicateType: st.predicateType, predicate: st.predicate ?? null };
}

/** Does the signed content bind this digest? undefined when it does, else the rejection reason. */
export function bindingProblem(claim: Claim, digest: Digest): string | undefined {
  if (claim.kind === 'invalid') return `unusable payload: ${claim.error}`;
  if (claim.kind === 'simple-signing') {
    if (claim.digest === undefined) return 'unusable payload: no docker-manifest-digest';
    return claim.digest.toLowerCase() === digest ? undefined : `digest mismatch (signed ${shortDigest(claim.digest)})`;
  }
  const hex = digest.slice(digest.indexOf(':') + 1);
  if (claim.subjects.includes(hex)) return undefined;
  return claim.subjects.length ? `digest mismatch (signed ${shortDigest(`sha256:${claim.subjects[0]}`)})` : 'unusable payload: in-toto statement without a sha256 subject';
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

function integratedTime(item: CosignItem): string | undefined {
  const t = item.bundle.verificationMaterial.tlogEntries.find((e) => e.inclusionPromise)?.integratedTime;
  return t ? new Date(Number(t) * 1000).toISOString() : undefined;
}

/** Key-based: the signature must verify with the authority's key; tlog entries are checked when required. */
export function verifyCosignWithKey(item: CosignItem, a: KeyAuthority, digest: Digest): Outcome {
  if (!verifyWithKey(a.key, item.signedBytes, item.signature)) {
    // Tell a wrong key from a modified payload when the signature names its key (a certificate, or a key hint).
    const signerKeyId = item.certificate ? keyIdOf(item.certificate) : hintKeyId(item.keyHint);
    if (signerKeyId !== undefined && signerKeyId === a.keyId) return { ok: false, reason: 'invalid signature (tampered payload or signature)' };
    return { ok: false, reason: 'key mismatch' };
  }
  let tlog = false;
  if (a.tlogThreshold > 0) {
    if (!a.trust) return { ok: false, reason: 'transparency log required but no trusted root configured' };
    try {
      new Verifier(a.trust, { tlogThreshold: a.tlogThreshold, ctlogThreshold: 0, timestampThreshold: 0 }).verify(entityOf(item));
      tlog = true;
    } catch (e) {
      return { ok: false, reason: verificationReason(e) };
    }
  }
  const problem = bindingProblem(item.claim, digest);
  if (problem) return { ok: false, reason: problem };
  const signedAt = tlog ? integratedTime(item) : undefined;
  return { ok: true, tlog, ...(signedAt ? { signedAt } : {}) };
}

/** Keyless: chain to the trusted root's Fulcio CA, SCTs, Rekor SET and timestamps offline, then identity, then digest. */
export function verifyCosignKeyless(item: CosignItem, a: KeylessAuthority, digest: Digest): Outcome {
  if (!item.certificate) return { ok: false, reason: 'no certificate (a key-based signature)' };
  let signer;
  try {
    signer = new Verifier(a.trust, { tlogThreshold: a.tlogThreshold, ctlogThreshold: a.ctlogThreshold, timestampThreshold: a.timestampThreshold }).verify(entityOf(item));
  } catch (e) {
    return { ok: false, reason: verificationReason(e) };
  }
  const subject = item.certificate.subjectAltName ?? otherNameSubject(item.certificate);
  const issuer = signer.identity?.extensions?.issuer;
  const subjectOk = subject !== undefined && ('exact' in a.subject ? subject === a.subject.exact : a.subject.regex.test(subject));
  if (!subjectOk || issuer !== a.issuer) {
    return { ok: false, reason: `identity mismatch (subject ${JSON.stringify(subject ?? null)}, issuer ${JSON.stringify(issuer ?? null)})` };
  }
  for (const { oid, value } of a.extensions) {
    const actual = extensionValue(item.certificate, oid);
    if (actual !== value) return { ok: false, reason: `identity mismatch (extension ${oid} is ${JSON.stringify(actual ?? null)})` };
  }
  const problem = bindingProblem(item.claim, digest);
  if (problem) return { ok: false, reason: problem };
  const signedAt = integratedTime(item);
  // The verifier checks every tlog entry present (whatever the threshold), so any entry here is a verified one.
  return { ok: true, tlog: item.bundle.verificationMaterial.tlogEntries.length > 0, identity: { issuer, subject }, ...(signedAt ? { signedAt } : {}) };
}

/** A short, specific reason from @sigstore/verify's errors. */
export function verificationReason(e: unknown): string {
  if (!(e instanceof VerificationError)) return `verification error: ${e instanceof Error ? e.message : String(e)}`;
  const cause = e.cause instanceof Error ? e.cause.message : '';
  switch (e.code) {
    case 'CERTIFICATE_ERROR':
      if (/expired|not valid/i.test(cause) || /expired|not valid/i.test(e.message)) return 'expired (certificate not valid at the signing time)';
      if (/SCT/.test(e.message)) return `untrusted chain (${e.message})`;
      return 'untrusted chain';
    case 'PUBLIC_KEY_ERROR':
      return 'key mismatch';
    case 'SIGNATURE_ERROR':
      return 'invalid signature (tampered payload or signature)';
    case 'TLOG_BODY_ERROR':
      return `tampered payload (transparency log entry: ${e.message})`;
    case 'TIMESTAMP_ERROR':
      return `no trusted timestamp (${e.message})`;
    default:
      if (e.code.startsWith('TLOG')) return `transparency log verification failed (${e.message})`;
      return `${e.code.toLowerCase().replace(/_/g, ' ')} (${e.message})`;
  }
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


