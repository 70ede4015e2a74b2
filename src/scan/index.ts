/**
 * The scan capability: the evidence provider (src/scan/service.ts) and its HTTP API (src/scan/api.ts), built from
 * the `scan:` config section with the shared evidence deps.
 *
 * `scanCapability()` gives the App both factories plus a close(); both factories get the same EvidenceDeps object
 * from the App, and share one ScanService (one SQLite file, one set of pollers). With no source configured there is
 * no provider (the policy input then says `not_configured`).
 */
import type { ApiHandler, EvidenceDeps } from '../gate/evidence.js';
import type { ScanProvider } from '../gate/types.js';
import { ScanApi } from './api.js';
import { sourceOrder } from './config.js';
import type { ReevalTarget } from './reeval.js';
import { ScanService, type ScanServiceOptions } from './service.js';

export interface ScanCapability {
  provider: (deps: EvidenceDeps) => ScanProvider | undefined;
  api: (deps: EvidenceDeps) => ApiHandler[];
  /** The service, once built (undefined when no source is configured). */
  service(): ScanService | undefined;
  close(): void;
}

export function scanCapability(
  opts: { now?: () => number; target?: () => ReevalTarget | undefined; scannerToken?: ScanServiceOptions['scannerToken'] } = {},
): ScanCapability {
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
    api: (deps) => {
      const service = serviceFor(deps);
      const cfg = deps.config.scan;
      if (!service && !cfg?.admin) return [];
      return [new ScanApi({ service, deps, target: opts.target ?? (() => undefined), now: opts.now ?? Date.now })];
    },
    service: () => built?.service,
    close: () => built?.service?.close(),
  };
}
