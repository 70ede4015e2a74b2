/**
 * The scan capability: the evidence provider (src/scan/service.ts), built from the `scan:` config section with the
 * shared evidence deps. The report and admin API (server/scan-api.ts) serves the same ScanService.
 *
 * The App asks for the provider with its EvidenceDeps, the server's API for the service with the same deps; both get
 * one ScanService (one SQLite file, one set of pollers). With no source configured there is no provider (the policy
 * input then says `not_configured`).
 */
import type { EvidenceDeps } from '../policy/evidence.js';
import type { ScanProvider } from '../policy/contract.js';
import { sourceOrder } from '../config/scan.js';
import { ScanService, type ScanServiceOptions } from './service.js';

export interface ScanCapability {
  provider: (deps: EvidenceDeps) => ScanProvider | undefined;
  /** The service for these deps, built on first use (undefined when no source is configured). */
  serviceFor(deps: EvidenceDeps): ScanService | undefined;
  /** The service, once built. */
  service(): ScanService | undefined;
  close(): void;
}

export function scanCapability(opts: { now?: () => number; scannerToken?: ScanServiceOptions['scannerToken'] } = {}): ScanCapability {
  let built: { deps: EvidenceDeps; service: ScanService | undefined } | undefined;
  const serviceFor = (deps: EvidenceDeps): ScanService | undefined => {
    if (built && built.deps === deps) return built.service;
    if (built) built.service?.close();
    const cfg = deps.config.scan;
    const service = cfg && sourceOrder(cfg).length > 0 ? new ScanService(deps, { ...(opts.now ? { now: opts.now } : {}), scannerToken: opts.scannerToken }) : undefined;
    built = { deps, service };
    return service;
  };
  return {
    provider: (deps) => serviceFor(deps),
    serviceFor,
    service: () => built?.service,
    close: () => built?.service?.close(),
  };
}

export function createScanProvider(deps: EvidenceDeps): ScanProvider | undefined {
  return scanCapability().provider(deps);
}
