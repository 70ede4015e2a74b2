/**
 * Builds the signature evidence provider from the config; undefined when no authority is configured (the policy
 * input then says `not_configured`).
 */
import type { SignatureProvider } from '../gate/types.js';
import type { EvidenceDeps } from '../gate/evidence.js';

export function createSignatureProvider(deps: EvidenceDeps): SignatureProvider | undefined {
  if (!deps.config.signatures || deps.config.signatures.authorities.length === 0) return undefined;
  throw new Error('signatures.authorities: signature verification is not implemented yet');
}
