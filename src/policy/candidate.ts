/**
 * A candidate policy for an impact report: a bundle that is not the active one, or the active bundle with other
 * settings, loaded exactly as the manager loads a bundle (size limit, signature check when `policy.signing` is
 * configured, entrypoint check) but never installed.
 */
import { BundleError, DEFAULT_MAX_BUNDLE, readBundle } from './bundle.js';
import type { Decider } from './contract.js';
import { BundleVerifier } from './signature.js';
import type { BundleRules } from './manager.js';
import { WasmDecider } from './wasm.js';

export interface CandidateRequest {
  /** A bundle (tar.gz); default: the active bundle. */
  bundle?: Buffer;
  /** data.portcullis.config for the candidate; default: the active settings. */
  settings?: Record<string, unknown>;
}

export interface CandidateSources {
  rules: BundleRules;
  activeSettings: Record<string, unknown>;
  /** The bytes of the active bundle; undefined when an external OPA decides (it has no bundle here). */
  activeBundle(): Buffer | undefined;
}

/** Throws BundleError (its `code` says why: too_large, malformed, signature_*) when the candidate is unusable. */
export async function loadCandidate(req: CandidateRequest, src: CandidateSources): Promise<Decider> {
  if (!req.bundle && !req.settings) throw new BundleError('give a candidate bundle, candidate settings, or both');
  const bytes = req.bundle ?? src.activeBundle();
  if (!bytes) throw new BundleError('the active policy is an external OPA: give a candidate bundle');
  // The same gate as a bundle that would go live: a candidate that could never be activated is refused here too.
  const verifier = src.rules.signing ? await BundleVerifier.create(src.rules.signing) : undefined;
  const bundle = await readBundle(bytes, { maxBytes: src.rules.maxBytes ?? DEFAULT_MAX_BUNDLE, verifier });
  try {
    return await WasmDecider.create(bundle, req.settings ?? src.activeSettings);
  } catch (e) {
    throw new BundleError(`policy.wasm does not load: ${e instanceof Error ? e.message : String(e)}`);
  }
}
