/**
 * OPA bundle signatures: `.signatures.json` as `opa build --signing-key … --bundle` writes it, verified the way OPA
 * itself does (v1/bundle/verify.go): exactly one JWT, signed by the configured key with the configured algorithm,
 * whose `files` list names every other file of the bundle with its hash, and no file more. JSON documents
 * (data.json, .manifest) are hashed in OPA's canonical form (keys sorted, no whitespace, numbers as written), so
 * the signature does not depend on formatting.
 *
 * Without this, whoever can write to the bundle server (or sit on an http path to it) decides what is admitted.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { compactVerify, decodeProtectedHeader, importSPKI, importX509, type CryptoKey, type KeyObject } from 'jose';

export interface BundleSigningConfig {
  /** PEM file: a public key (SPKI) or a certificate. */
  publicKey: string;
  keyId: string;
  algorithm: string;
  scope?: string | undefined;
}

export type SignatureFailure = 'signature_missing' | 'signature_invalid' | 'signature_mismatch';

export class BundleSignatureError extends Error {
  constructor(
    readonly code: SignatureFailure,
    message: string,
  ) {
    super(message);
    this.name = 'BundleSignatureError';
  }
}

export const SIGNATURES_FILE = '/.signatures.json';

/** Hash algorithms OPA names; MD5 and SHA-1 are refused (a collision would let a signed file be swapped). */
const HASHES: Record<string, string> = {
  'SHA-224': 'sha224',
  'SHA-256': 'sha256',
  'SHA-384': 'sha384',
  'SHA-512': 'sha512',
  'SHA-512-224': 'sha512-224',
  'SHA-512-256': 'sha512-256',
};

/** Files whose hash is taken over their canonical JSON form (OPA's IsStructuredDoc). */
const STRUCTURED = new Set(['data.json', 'data.yaml', '.manifest', '.signatures.json']);

interface SignedFile {
  name: string;
  hash: string;
  algorithm: string;
}

export class BundleVerifier {
  private constructor(
    private readonly key: CryptoKey | KeyObject,
    private readonly cfg: BundleSigningConfig,
  ) {}

  static async create(cfg: BundleSigningConfig): Promise<BundleVerifier> {
    const pem = await readFile(cfg.publicKey, 'utf8');
    const key = pem.includes('BEGIN CERTIFICATE') ? await importX509(pem, cfg.algorithm) : await importSPKI(pem, cfg.algorithm);
    return new BundleVerifier(key, cfg);
  }

  /** Throws BundleSignatureError unless `files` (path → bytes, paths starting with /) carry a valid signature. */
  async verify(files: ReadonlyMap<string, Buffer>): Promise<void> {
    const raw = files.get(SIGNATURES_FILE);
    if (!raw)
      throw new BundleSignatureError(
        'signature_missing',
        `bundle has no ${SIGNATURES_FILE} (sign it with opa build --signing-key), and policy.signing requires one`,
      );
    let doc: { signatures?: unknown };
    try {
      doc = JSON.parse(raw.toString('utf8')) as { signatures?: unknown };
    } catch {
      throw new BundleSignatureError('signature_invalid', `${SIGNATURES_FILE} is not JSON`);
    }
    const sigs = doc.signatures;
    if (!Array.isArray(sigs) || sigs.length !== 1 || typeof sigs[0] !== 'string') {
      throw new BundleSignatureError('signature_invalid', `${SIGNATURES_FILE} must hold exactly one JWT`);
    }
    const jwt = sigs[0];
    const payload = await this.verifyJwt(jwt);
    this.checkFiles(files, payload.files);
  }

  private async verifyJwt(jwt: string): Promise<{ files: SignedFile[] }> {
    let kid: unknown;
    try {
      kid = decodeProtectedHeader(jwt).kid;
    } catch {
      throw new BundleSignatureError('signature_invalid', 'the bundle signature is not a JWT');
    }
    let bytes: Uint8Array;
    try {
      bytes = (await compactVerify(jwt, this.key, { algorithms: [this.cfg.algorithm] })).payload;
    } catch (e) {
      throw new BundleSignatureError(
        'signature_invalid',
        `the bundle signature does not verify with policy.signing.publicKey (${this.cfg.algorithm}): ${(e as Error).message}`,
      );
    }
    let claims: { files?: unknown; keyid?: unknown; scope?: unknown };
    try {
      claims = JSON.parse(Buffer.from(bytes).toString('utf8')) as typeof claims;
    } catch {
      throw new BundleSignatureError('signature_invalid', 'the bundle signature payload is not JSON');
    }
    // The key the signer named, if any, must be the one configured: a signature by another key id is another
    // signer's, even if (through key reuse) it verifies.
    const named = typeof kid === 'string' && kid ? kid : typeof claims.keyid === 'string' && claims.keyid ? claims.keyid : undefined;
    if (named !== undefined && named !== this.cfg.keyId) {
      throw new BundleSignatureError('signature_invalid', `the bundle is signed with key id "${named}", policy.signing.keyId is "${this.cfg.keyId}"`);
    }
    if ((claims.scope ?? '') !== (this.cfg.scope ?? '')) {
      throw new BundleSignatureError(
        'signature_invalid',
        `the bundle signature scope "${typeof claims.scope === 'string' ? claims.scope : JSON.stringify(claims.scope ?? '')}" is not "${this.cfg.scope ?? ''}"`,
      );
    }
    if (!Array.isArray(claims.files)) throw new BundleSignatureError('signature_invalid', 'the bundle signature lists no files');
    const files = claims.files.filter(
      (f): f is SignedFile => typeof f === 'object' && f !== null && typeof (f as SignedFile).name === 'string' && typeof (f as SignedFile).hash === 'string',
    );
    if (files.length !== claims.files.length) throw new BundleSignatureError('signature_invalid', 'the bundle signature has a malformed files entry');
    return { files };
  }

  private checkFiles(files: ReadonlyMap<string, Buffer>, signed: SignedFile[]): void {
    const byName = new Map<string, SignedFile>();
    for (const f of signed) byName.set(`/${f.name.replace(/^\/+/, '')}`, f);
    for (const [path, bytes] of files) {
      if (path === SIGNATURES_FILE) continue;
      const entry = byName.get(path);
      if (!entry) throw new BundleSignatureError('signature_mismatch', `${path} is not covered by the bundle signature`);
      byName.delete(path);
      const alg = HASHES[entry.algorithm];
      if (!alg) throw new BundleSignatureError('signature_invalid', `${path}: unsupported hash algorithm ${JSON.stringify(entry.algorithm)}`);
      const base = path.slice(path.lastIndexOf('/') + 1);
      let digest: string;
      try {
        digest = STRUCTURED.has(base) ? canonicalJsonHash(bytes, alg) : createHash(alg).update(bytes).digest('hex');
      } catch {
        throw new BundleSignatureError('signature_mismatch', `${path} is not valid JSON`);
      }
      if (digest !== entry.hash.toLowerCase())
        throw new BundleSignatureError('signature_mismatch', `${path}: digest mismatch (the file was changed after signing)`);
    }
    if (byName.size > 0) throw new BundleSignatureError('signature_mismatch', `signed file(s) missing from the bundle: ${[...byName.keys()].join(', ')}`);
  }
}

/** A JSON number kept as written, as OPA's decoder (UseNumber) keeps it. */
class JsonNumber {
  constructor(readonly source: string) {}
}

type Reviver = (this: unknown, key: string, value: unknown, context?: { source?: string }) => unknown;

/** The hash OPA computes over a structured document (v1/bundle/hash.go `walk`). */
export function canonicalJsonHash(bytes: Buffer, alg: string): string {
  const reviver: Reviver = (_k, v, ctx) => (typeof v === 'number' && ctx?.source !== undefined ? new JsonNumber(ctx.source) : v);
  const value = JSON.parse(bytes.toString('utf8'), reviver as Parameters<typeof JSON.parse>[1]) as unknown;
  const h = createHash(alg);
  walk(value, (s) => h.update(s, 'utf8'));
  return h.digest('hex');
}

function walk(v: unknown, out: (s: string) => void): void {
  if (v instanceof JsonNumber) {
    out(v.source);
  } else if (Array.isArray(v)) {
    out('[');
    v.forEach((e, i) => {
      if (i > 0) out(',');
      walk(e, out);
    });
    out(']');
  } else if (v !== null && typeof v === 'object') {
    out('{');
    // Go sorts keys by their UTF-8 bytes.
    const keys = Object.keys(v).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
    keys.forEach((k, i) => {
      if (i > 0) out(',');
      out(goString(k));
      out(':');
      walk((v as Record<string, unknown>)[k], out);
    });
    out('}');
  } else if (typeof v === 'string') {
    out(goString(v));
  } else {
    out(JSON.stringify(v));
  }
}

/** A string as Go's json.Encoder (SetEscapeHTML(false)) writes it: like JSON.stringify, plus U+2028/U+2029 escaped. */
function goString(s: string): string {
  return JSON.stringify(s)
    .replace(/\u2028/g, '\\u2028')
    .replace(/\u2029/g, '\\u2029');
}
