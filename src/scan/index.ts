/**
 * The scan capability: the evidence provider (src/scan/service.ts), built from the `scan:` config section with the
 * shared evidence deps. The report and admin API (server/scan-api.ts) serves the same ScanService: bootstrap.ts
 * builds it once and hands it to both. With no source configured there is no service (the policy input then says
 * `not_configured`).
 */
import type { EvidenceDeps } from '../policy/evidence.js';
import { sourceOrder } from '../config/scan.js';
import { ScanService, type ScanServiceOptions } from './service.js';

export function createScanService(deps: EvidenceDeps, opts: ScanServiceOptions = {}): ScanService | undefined {
  const cfg = deps.config.scan;
  return cfg && sourceOrder(cfg).length > 0 ? new ScanService(deps, opts) : undefined;
}
