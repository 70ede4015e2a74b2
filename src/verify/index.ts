/**
 * Builds the signature evidence provider from the config; undefined when no authority is configured (the policy
 * input then says `not_configured`, and a scope that requires signatures denies).
 *
 * Startup fails, naming the authority, when a key or trust file cannot be used. (A policy scope that requires an
 * authority `signatures.authorities` does not define is refused by the config schema, src/config/schema.ts.)
 */
import type { SignatureProvider } from '../policy/contract.js';
import type { EvidenceDeps } from '../policy/evidence.js';
import type { Config } from '../config/schema.js';
import { SignatureEvidenceProvider } from './provider.js';
import { loadTrust } from './trust.js';

export function createSignatureProvider(deps: EvidenceDeps, now: () => number = Date.now): SignatureProvider | undefined {
  const cfg = deps.config.signatures;
  if (!cfg || cfg.authorities.length === 0) return undefined;
  return new SignatureEvidenceProvider(deps, cfg, now);
}

/**
 * What `portcullis config check` adds to schema validation: every key and trust file loads. Throws an error naming
 * the authority; a no-op without signature authorities.
 */
export function checkSignatureConfig(config: Config): void {
  const cfg = config.signatures;
  if (!cfg || cfg.authorities.length === 0) return;
  loadTrust(cfg);
}
