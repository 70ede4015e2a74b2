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
import type { App } from './app.js';

export interface OperationsOptions {
  config: Config;
  log: Logger;
  policy: PolicyManager;
  source: PolicySource;
  app: () => App | undefined;
  now?: () => number;
}

export class Operations {
  readonly recent = new RecentDecisions();
  readonly api: AdminApi;
  schedule: ReevalSchedule | undefined;

  constructor(private readonly o: OperationsOptions) {
    const now = o.now ?? Date.now;
    this.api = new AdminApi({
      config: o.config,
      log: o.log,
      target: () => {
        const app = o.app();
        return app && { ...warmTarget(app, o.config, now), gate: app.gate, meta: app.meta };
      },
      active: o.policy,
      candidates: { rules: o.source, activeSettings: o.config.policy.settings, activeBundle: () => o.policy.activeBundle() },
      recent: this.recent,
      lastRun: () => this.schedule?.last,
      now,
    });
  }

  /** Starts the schedule (when `reevaluate.interval` is set) for the app, on `scheduler` (default: timers). */
  start(app: App, scheduler?: Scheduler): void {
    const { config, log } = this.o;
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
    if (this.schedule.start(scheduler)) log.info({ intervalMs: config.reevaluate.interval, purge: config.reevaluate.purge }, 're-evaluation of cached images scheduled');
  }

  stop(): void {
    this.schedule?.stop();
  }
}

function warmTarget(app: App, config: Config, now: () => number) {
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
