/**
 * Continuous re-evaluation (`reevaluate.interval`): every cached image is decided again on a schedule, against the
 * policy in use and the latest evidence (reeval.ts), so that a CVE found after an image was admitted shows up
 * without anyone asking. Each run:
 * - sets `portcullis_cached_images{verdict}` and `portcullis_reevaluation_denials{rule}`;
 * - logs each image that the previous run did not deny and this one does (after a restart every denied image is
 *   logged once, with `previous: "unknown"`);
 * - with `reevaluate.purge: true`, drops what those images were admitted with and evicts their blobs (purge.ts).
 *
 * The timer is injected (Scheduler), so tests drive runs themselves. A run still going when the next is due is not
 * overlapped: the tick is skipped and counted.
 */
import type { Logger } from 'pino';
import type { Metrics } from '../metrics/metrics.js';
import type { ReevaluateConfig } from '../config/reevaluate.js';
import { purge, type PurgeResult, type PurgeTarget } from './purge.js';
import { reevaluate, type ReevalEntry, type ReevalReport, type ReevalTarget } from './reeval.js';

/** Runs a task every `ms`; stop() cancels. The server's is timerScheduler; tests pass one they tick by hand. */
export interface Scheduler {
  every(ms: number, task: () => Promise<void>): { stop(): void };
}

export const timerScheduler: Scheduler = {
  every(ms, task) {
    const t = setInterval(() => void task(), ms);
    t.unref();
    return { stop: () => clearInterval(t) };
  },
};

export interface ReevalRun {
  report: ReevalReport;
  /** Images this run denies that the previous one did not (or that no earlier run of this process saw). */
  newlyDenied: Array<ReevalEntry & { previous: 'allow' | 'unknown' }>;
  purged: PurgeResult | undefined;
}

export interface ReevalScheduleDeps {
  target: ReevalTarget;
  /** Only needed with purge: true. */
  purge?: PurgeTarget;
  config: ReevaluateConfig;
  metrics: Metrics;
  log: Logger;
  now?: () => number;
}

const VERDICTS = ['allow', 'warn', 'dry_run_deny', 'deny', 'error'] as const;
/** Bounded label values: at most this many rules are exported (the policy's rules are few; this caps a bad one). */
const MAX_RULE_LABELS = 100;

export class ReevalSchedule {
  private running: Promise<ReevalRun> | undefined;
  /** Whether each image (by its full reference) was denied at the previous run. */
  private previous = new Map<string, boolean>();
  private timer: { stop(): void } | undefined;
  /** The last completed run, for the operator's views. */
  last: ReevalRun | undefined;

  constructor(private readonly d: ReevalScheduleDeps) {}

  /** Starts the schedule when an interval is configured; returns whether it did. */
  start(scheduler: Scheduler = timerScheduler): boolean {
    if (this.d.config.interval <= 0 || this.timer) return false;
    this.timer = scheduler.every(this.d.config.interval, () => this.tick());
    return true;
  }

  stop(): void {
    this.timer?.stop();
    this.timer = undefined;
  }

  /** One scheduled run: skipped when the previous one is still going; never throws. */
  async tick(): Promise<void> {
    if (this.running) {
      this.d.metrics.reevalRuns.inc({ result: 'skipped' });
      return;
    }
    try {
      await this.run();
    } catch {
      // Counted and logged by run(); a scheduled task has nobody to throw to.
    }
  }

  /** Re-evaluates now (and purges when configured). Concurrent callers share the run in progress. */
  run(): Promise<ReevalRun> {
    this.running ??= this.runOnce().finally(() => (this.running = undefined));
    return this.running;
  }

  private async runOnce(): Promise<ReevalRun> {
    const { metrics, log } = this.d;
    let report: ReevalReport;
    try {
      report = await reevaluate(this.d.target, { all: true, concurrency: this.d.config.concurrency, ...(this.d.now ? { now: this.d.now } : {}) });
    } catch (e) {
      metrics.reevalRuns.inc({ result: 'error' });
      log.warn({ err: e instanceof Error ? e.message : String(e) }, 're-evaluation of cached images failed');
      throw e;
    }
    this.export(report.images);
    const newlyDenied: ReevalRun['newlyDenied'] = [];
    const next = new Map<string, boolean>();
    for (const e of report.images) {
      const denied = e.outcome === 'deny';
      next.set(e.image, denied);
      const before = this.previous.get(e.image);
      if (denied && before !== true) newlyDenied.push({ ...e, previous: before === false ? 'allow' : 'unknown' });
    }
    this.previous = next;
    for (const e of newlyDenied) {
      metrics.reevalTurnedDenied.inc();
      log.warn(
        {
          image: e.image,
          digest: e.digest,
          previous: e.previous,
          policy: report.policy_revision,
          rules: e.deny.map((v) => v.rule),
          reason: e.deny.map((v) => `${v.message} [${v.rule}]`).join('; '),
        },
        'cached image is now denied',
      );
    }
    let purged: PurgeResult | undefined;
    if (this.d.config.purge && this.d.purge) {
      purged = purge(this.d.purge, report.images);
      metrics.reevalPurged.inc({ kind: 'images' }, purged.images.length);
      metrics.reevalPurged.inc({ kind: 'blobs' }, purged.removed.length);
      if (purged.images.length > 0) {
        log.warn(
          { images: purged.images.slice(0, 50), blobsRemoved: purged.removed.length, blobsKept: purged.kept.length },
          'purged denied images from the cache',
        );
      }
    }
    metrics.reevalRuns.inc({ result: 'ok' });
    log.info(
      { policy: report.policy_revision, evaluated: report.evaluated, wouldDeny: report.would_deny, newlyDenied: newlyDenied.length },
      'cached images re-evaluated',
    );
    this.last = { report, newlyDenied, purged };
    return this.last;
  }

  private export(entries: ReevalEntry[]): void {
    const { metrics } = this.d;
    const byVerdict = new Map<string, number>(VERDICTS.map((v) => [v, 0]));
    const byRule = new Map<string, number>();
    for (const e of entries) {
      const v = e.outcome.replace(/-/g, '_');
      byVerdict.set(v, (byVerdict.get(v) ?? 0) + 1);
      if (!e.would_deny) continue;
      const rules = new Set(e.error ? ['error'] : e.deny.map((x) => x.rule));
      for (const r of rules) if (byRule.has(r) || byRule.size < MAX_RULE_LABELS) byRule.set(r, (byRule.get(r) ?? 0) + 1);
    }
    for (const [v, n] of byVerdict) metrics.cachedImages.set({ verdict: v }, n);
    // A rule that no longer denies anything leaves the series rather than staying at its last count.
    metrics.reevalDenials.reset();
    for (const [r, n] of byRule) metrics.reevalDenials.set({ rule: r }, n);
  }
}
