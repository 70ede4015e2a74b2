/**
 * Builds the scan evidence provider from the config; undefined when no source is configured (the policy input
 * then says `not_configured`).
 */
import type { ScanProvider } from '../gate/types.js';
import type { EvidenceDeps } from '../gate/evidence.js';

export function createScanProvider(deps: EvidenceDeps): ScanProvider | undefined {
  if (!deps.config.scan || Object.keys(deps.config.scan).length === 0) return undefined;
  throw new Error('scan: scan sources are not implemented yet');
}
