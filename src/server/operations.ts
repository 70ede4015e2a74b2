/**
 * Rollout operations wired to a running proxy: the re-evaluation schedule (gate/reeval-schedule.ts) with its
 * purge, the recent decisions that impact reports replay, and the admin API for impact and warming
 * (admin-api.ts). Kept out of bootstrap.ts so that the composition root only creates it, hands over its observer
 * and API handler, and starts and stops it.
 */
import type { Logger } from 'pino';
import type { Config } from '../config/schema.js';
import { RecentDecisions } from '../gate/impact.js';
import { ReevalSchedule, type Scheduler } from '../gate/reeval-schedule.js';
import type { PolicyManager, PolicySource } from '../policy/manager.js';
import { AdminApi } from './admin-api.js';
import type { BlobStore } from '../cache/blobstore.js';
import type { DownloadManager } from '../cache/download-manager.js';
import type { MetaStore } from '../cache/metastore.js';
import type { Gate } from '../gate/gate.js';
import type { Metrics } from '../metrics/metrics.js';
import type { BlobService } from '../proxy/blobs.js';
import type { ManifestService } from '../proxy/manifests.js';
import type { Router } from '../routing/route.js';
import type { Quotas } from '../auth/quota.js';

/** The running proxy's services that re-evaluation, purges and warming work on (built by bootstrap.ts). */
export interface OperationsServices {
  router: Router;
  manifests: ManifestService;
  gate: Gate;
  blobs: BlobService;
  blobStore: BlobStore;
  downloads: DownloadManager;
  quotas: Quotas | undefined;
  metrics: Metrics;
  meta: MetaStore;
}

export interface OperationsOptions {
  config: Config;
  log: Logger;
  policy: PolicyManager;
  source: PolicySource;
  services: OperationsServices;
  /** The gate's observer of recent decisions, which impact replays. */
  recent: RecentDecisions;
  now?: () => number;
}

export class Operations {
  readonly recent: RecentDecisions;
  readonly api: AdminApi;
  schedule: ReevalSchedule | undefined;

  constructor(private readonly o: OperationsOptions) {
    const now = o.now ?? Date.now;
    this.recent = o.recent;
    const target = { ...warmTarget(o.services, o.config, now), gate: o.services.gate, meta: o.services.meta };
    this.api = new AdminApi({
      config: o.config,
      log: o.log,
      target: () => target,
      active: o.policy,
      candidates: { rules: o.source, activeSettings: o.config.policy.settings, activeBundle: () => o.policy.activeBundle() },
      recent: this.recent,
      lastRun: () => this.schedule?.last,
      now,
    });
  }

  /** Starts the schedule (when `reevaluate.interval` is set) for the app, on `scheduler` (default: timers). */
  start(scheduler?: Scheduler): void {
    const { config, log, services: app } = this.o;
    this.schedule = new ReevalSchedule({
      target: app,
      purge: {
        meta: app.meta,
        blobs: app.blobStore,
        downloading: (d) => app.downloads.get(d) !== undefined,
        forgetRoot: (d) => app.gate.forgetRoot(d),
      },
      config: config.reevaluate,
      metrics: app.metrics,
      log,
      ...(this.o.now ? { now: this.o.now } : {}),
    });
    if (this.schedule.start(scheduler))
      log.info({ intervalMs: config.reevaluate.interval, purge: config.reevaluate.purge }, 're-evaluation of cached images scheduled');
  }

  stop(): void {
    this.schedule?.stop();
  }
}

function warmTarget(app: OperationsServices, config: Config, now: () => number) {
  return {
    router: app.router,
    manifests: app.manifests,
    gate: app.gate,
    blobs: app.blobs,
    blobStore: app.blobStore,
    downloads: app.downloads,
    quotas: app.quotas,
    metrics: app.metrics,
    meta: app.meta,
    tagTTL: config.cache.tagTTL,
    now,
  };
}
