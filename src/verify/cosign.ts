/**
 * cosign signatures and attestations, in both storage formats, reduced to one shape (a Sigstore bundle plus what
 * was signed).
 *
 * - Legacy (cosign ≤ 2, tag `sha256-<hex>.sig|.att`): one layer per signature. `.sig` layers are simple-signing
 *   payloads with the signature in the `dev.cosignproject.cosign/signature` annotation; `.att` layers are DSSE
 *   envelopes. Keyless ones carry the Fulcio certificate, chain and Rekor SET bundle in annotations; these are
 *   assembled into a bundle so that `@sigstore/verify` checks chain, SCTs and SET exactly as for a native bundle.
 * - Sigstore bundle v0.3 referrers (cosign 3 default): a DSSE envelope holding an in-toto statement whose
 *   predicateType is `https://sigstore.dev/cosign/sign/v1` for a signature, anything else for an attestation.
 *
 * Verification against key and keyless authorities is in cosign-verify.ts.
 */
import { createHash } from 'node:crypto';
import { bundleFromJSON, toDSSEBundle, toMessageSignatureBundle, type Bundle, type TransparencyLogEntry } from '@sigstore/bundle';
import { X509Certificate, dsse } from '@sigstore/core';
import type { Descriptor } from '../oci/mediatypes.js';
import type { SignatureCode } from '../policy/codes.js';
import { BudgetExceededError } from './budget.js';
import { MT, type FoundArtifact } from './discovery.js';
import { errorText } from '../util/error-text.js';

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
  /** Certificates the signature carries beyond the leaf (cosign's `--certificate-chain`): untrusted path-building help. */
  chain: X509Certificate[];
  keyHint: string | undefined;
  claim: Claim;
  /** A signature (simple signing, or the cosign sign predicate) rather than an attestation. */
  isSignature: boolean;
}

export type Outcome =
  | {
      ok: true;
      tlog: boolean;
      signedAt?: string;
      identity?: { issuer?: string; subject?: string };
      /** Epoch ms after which this verification no longer holds (a certificate or the signature expires). */
      validUntil?: number;
    }
  | { ok: false; reason: string; code: SignatureCode };

/** A rejection: its stable code (policy/codes.ts) and the reason for people. */
export function reject(code: SignatureCode, reason: string): Outcome {
  return { ok: false, code, reason };
}

type BlobReader = (d: Descriptor) => Promise<Buffer>;

/** Turns a found cosign artifact into items; problems with one layer become an invalid item, not an exception. */
export async function cosignItems(
  found: FoundArtifact,
  readBlob: BlobReader,
  max: number,
): Promise<Array<CosignItem | { where: string; error: string; isSignature: boolean }>> {
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
      // Past the budget nothing more is read; the evidence says so once (provider.ts).
      if (e instanceof BudgetExceededError) break;
      out.push({ where, error: errorText(e), isSignature: found.kind !== 'cosign-att' });
    }
  }
  return out;
}

function fromBundle(where: string, bytes: Buffer): CosignItem {
  let bundle: Bundle;
  let carried: X509Certificate[];
  try {
    const json = JSON.parse(bytes.toString('utf8')) as unknown;
    carried = liftCertificateChain(json);
    bundle = bundleFromJSON(json);
  } catch (e) {
    throw new Error(`not a valid Sigstore bundle: ${(e as Error).message}`, { cause: e });
  }
  const vm = bundle.verificationMaterial.content;
  const certificate =
    vm.$case === 'certificate'
      ? X509Certificate.parse(Buffer.from(vm.certificate.rawBytes))
      : vm.$case === 'x509CertificateChain' && vm.x509CertificateChain.certificates[0]
        ? X509Certificate.parse(Buffer.from(vm.x509CertificateChain.certificates[0].rawBytes))
        : undefined;
  const chain =
    vm.$case === 'x509CertificateChain' ? vm.x509CertificateChain.certificates.slice(1, 9).map((c) => X509Certificate.parse(Buffer.from(c.rawBytes))) : carried;
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
      chain,
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
    chain,
    keyHint,
    claim: { kind: 'invalid', error: 'message-signature bundle: cosign signs images with DSSE statements' },
    isSignature: true,
  };
}

/**
 * cosign 3 writes `--certificate-chain` signatures as v0.3 bundles with an x509CertificateChain (leaf first), which
 * the v0.3 format does not allow (it has `certificate` only): the leaf becomes the bundle's certificate, and the rest
 * is returned as the chain the signature carries (untrusted path-building help, cosign-pki.ts). In place.
 */
function liftCertificateChain(json: unknown): X509Certificate[] {
  if (typeof json !== 'object' || json === null) return [];
  const b = json as { mediaType?: unknown; verificationMaterial?: { x509CertificateChain?: { certificates?: unknown }; certificate?: unknown } };
  const vm = b.verificationMaterial;
  const certs = vm?.x509CertificateChain?.certificates;
  if (typeof b.mediaType !== 'string' || !b.mediaType.endsWith('v0.3+json') || !vm || !Array.isArray(certs) || certs.length === 0) return [];
  const raw = certs.map((c: unknown) => (typeof c === 'object' && c !== null ? (c as { rawBytes?: unknown }).rawBytes : undefined));
  if (!raw.every((r): r is string => typeof r === 'string')) return [];
  delete vm.x509CertificateChain;
  vm.certificate = { rawBytes: raw[0] };
  return raw.slice(1, 9).map((r) => X509Certificate.parse(Buffer.from(r, 'base64')));
}

function fromLegacy(where: string, layer: Descriptor, bytes: Buffer, content: 'message' | 'dsse'): CosignItem {
  const ann: Record<string, string> = layer.annotations ?? {};
  const certPem = ann[ANN.certificate];
  const certificate = certPem ? parsePemCertificate(certPem) : undefined;
  const certDer = certificate ? Buffer.from(certificate.root.toDER()) : undefined;
  const chainPem = ann[ANN.chain];
  const chain = chainPem ? parsePemChain(chainPem) : [];
  let bundle: Bundle;
  let signature: Buffer;
  let signedBytes: Buffer;
  let claim: Claim;
  let artifact: Buffer | undefined;
  if (content === 'message') {
    signature = Buffer.from(ann[ANN.signature] ?? '', 'base64');
    if (signature.length === 0) throw new Error('legacy signature layer without a dev.cosignproject.cosign/signature annotation');
    bundle = toMessageSignatureBundle({
      digest: createHash('sha256').update(bytes).digest(),
      signature,
      ...(certDer ? { certificate: certDer } : { keyHint: '' }),
    });
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
    if (
      typeof env.payloadType !== 'string' ||
      typeof env.payload !== 'string' ||
      !Array.isArray(env.signatures) ||
      typeof env.signatures[0]?.sig !== 'string'
    ) {
      throw new Error('malformed DSSE envelope');
    }
    const payload = Buffer.from(env.payload, 'base64');
    signature = Buffer.from(env.signatures[0].sig, 'base64');
    bundle = toDSSEBundle({
      artifact: payload,
      artifactType: env.payloadType,
      signature,
      ...(certDer ? { certificate: certDer } : { keyHint: typeof env.signatures[0].keyid === 'string' ? env.signatures[0].keyid : '' }),
    });
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
    chain,
    keyHint: undefined,
    claim,
    isSignature: content === 'message' || (claim.kind === 'in-toto' && claim.predicateType === COSIGN_SIGN_PREDICATE),
  };
}

function parsePemCertificate(pem: string): X509Certificate {
  try {
    return X509Certificate.parse(pem);
  } catch (e) {
    throw new Error(`unparsable certificate annotation: ${(e as Error).message}`, { cause: e });
  }
}

/** The `dev.sigstore.cosign/chain` annotation: PEM certificates, parent first (at most 8 are read). */
function parsePemChain(pem: string): X509Certificate[] {
  const blocks = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0) throw new Error('dev.sigstore.cosign/chain annotation holds no certificate');
  return blocks.slice(0, 8).map(parsePemCertificate);
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
  if (
    !rb.SignedEntryTimestamp ||
    !p ||
    typeof p.body !== 'string' ||
    typeof p.integratedTime !== 'number' ||
    typeof p.logIndex !== 'number' ||
    typeof p.logID !== 'string'
  ) {
    throw new Error('malformed dev.sigstore.cosign/bundle annotation');
  }
  const body = Buffer.from(p.body, 'base64');
  let kind: string;
  let version: string;
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
  };
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
  if (typeof type !== 'string' || type.toLowerCase() !== SIMPLE_SIGNING_TYPE)
    return { kind: 'invalid', error: `simple-signing payload of type ${JSON.stringify(type)}` };
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
    ? st.subject
        .map((s: unknown) => member(member(s, 'digest'), 'sha256'))
        .filter((d): d is string => typeof d === 'string')
        .map((d) => d.toLowerCase())
    : [];
  return { kind: 'in-toto', subjects, predicateType: st.predicateType, predicate: st.predicate ?? null };
}
