/**
 * Reads an OPA bundle (tar.gz from `opa build -t wasm`): `/policy.wasm`, `/data.json` and `/.manifest`. The bundle
 * is fully validated (its signature too, when policy.signing is set) before anything uses it, so a broken or
 * unsigned file can be rejected while the last good one stays.
 */
import { createHash } from 'node:crypto';
import { gunzipSync } from 'node:zlib';
import { Readable } from 'node:stream';
import { extract } from 'tar-stream';
import { BundleSignatureError, type BundleVerifier, type SignatureFailure } from './signature.js';

export interface PolicyBundle {
  wasm: Buffer;
  data: Record<string, unknown>;
  manifest: { revision: string; roots?: string[]; wasm?: Array<{ entrypoint: string; module: string }> };
  /** The manifest's revision, or a content hash when it has none. */
  revision: string;
}

export const DEFAULT_MAX_BUNDLE = 64 * 1024 * 1024;

/** Why a bundle was rejected: a stable code for metrics and logs. */
export type BundleFailure = 'too_large' | 'malformed' | SignatureFailure;

export class BundleError extends Error {
  constructor(
    message: string,
    readonly code: BundleFailure = 'malformed',
  ) {
    super(message);
    this.name = 'BundleError';
  }
}

export interface ReadBundleOptions {
  /** Largest compressed bundle accepted; the uncompressed tar may be 4 times that. */
  maxBytes?: number;
  /** Verifies `.signatures.json` before anything in the bundle is used. */
  verifier?: BundleVerifier | undefined;
}

export async function readBundle(gz: Buffer, opts: ReadBundleOptions = {}): Promise<PolicyBundle> {
  const max = opts.maxBytes ?? DEFAULT_MAX_BUNDLE;
  if (gz.length > max) throw new BundleError(`bundle is ${gz.length} bytes, over the ${max}-byte limit`, 'too_large');
  let tar: Buffer;
  try {
    tar = gunzipSync(gz, { maxOutputLength: max * 4 });
  } catch (e) {
    throw new BundleError(`not a gzip file: ${(e as Error).message}`);
  }
  const files = new Map<string, Buffer>();
  const ex = extract();
  const done = new Promise<void>((resolve, reject) => {
    ex.on('entry', (header, stream, next) => {
      const chunks: Buffer[] = [];
      stream.on('data', (c: unknown) => chunks.push(c as Buffer));
      stream.on('end', () => {
        const path = `/${header.name.replace(/^\/+/, '')}`;
        // Two entries for one path: which one counts would depend on the reader, so neither does.
        if (header.type === 'file' && files.has(path)) {
          reject(new BundleError(`bundle has ${path} twice`));
          return;
        }
        if (header.type === 'file') files.set(path, Buffer.concat(chunks));
        next();
      });
      stream.on('error', reject);
    });
    ex.on('finish', resolve);
    ex.on('error', (e: Error) => reject(new BundleError(`not a tar archive: ${e.message}`)));
  });
  Readable.from([tar]).pipe(ex);
  await done;
  if (opts.verifier) {
    try {
      await opts.verifier.verify(files);
    } catch (e) {
      if (e instanceof BundleSignatureError) throw new BundleError(e.message, e.code);
      throw e;
    }
  }
  const wasm = files.get('/policy.wasm');
  if (!wasm) throw new BundleError('bundle has no /policy.wasm (build it with `opa build -t wasm`)');
  let data: Record<string, unknown> = {};
  const dataJson = files.get('/data.json');
  if (dataJson) {
    try {
      data = JSON.parse(dataJson.toString('utf8')) as Record<string, unknown>;
    } catch (e) {
      throw new BundleError(`/data.json is not JSON: ${(e as Error).message}`);
    }
  }
  let manifest: PolicyBundle['manifest'] = { revision: '' };
  const m = files.get('/.manifest');
  if (m) {
    try {
      manifest = JSON.parse(m.toString('utf8')) as PolicyBundle['manifest'];
    } catch (e) {
      throw new BundleError(`/.manifest is not JSON: ${(e as Error).message}`);
    }
  }
  // Without a declared revision, the content is the revision: data.json too, since a data-only change is a new policy.
  const revision =
    manifest.revision ||
    `sha256:${createHash('sha256')
      .update(wasm)
      .update(dataJson ?? '')
      .digest('hex')
      .slice(0, 16)}`;
  return { wasm, data, manifest, revision };
}
