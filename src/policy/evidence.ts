/**
 * What evidence providers (signatures, scans) get to do their work: the upstream clients (discovery goes through
 * the same authenticated, rate-limited client as pulls), the verified manifest service, the metadata store for
 * caching, metrics and the logger.
 */
import type { Logger } from 'pino';
import type { MetaStore } from '../cache/metastore.js';
import type { Config } from '../config/schema.js';
import type { Metrics } from '../metrics/metrics.js';
import type { ManifestService } from '../proxy/manifests.js';
import type { Router } from '../routing/route.js';
import type { UpstreamClient } from '../upstream/client.js';

export interface EvidenceDeps {
  config: Config;
  clientFor: (upstream: string) => UpstreamClient;
  manifests: ManifestService;
  router: Router;
  meta: MetaStore;
  metrics: Metrics;
  log: Logger;
  dataDir: string;
}
