/**
 * The `scanner` scan source: a Harbor Pluggable Scanner API adapter (harbor.ts), asked to scan a digest on a miss.
 * The digest is then pending; the job is polled in the background (honouring `Refresh-After`), survives restarts in
 * the scan store, and its result or failure is stored. Split from service.ts, which orders the sources.
 */
import type { Logger } from 'pino';
import { readSecret } from '../config/load.js';
import type { Config } from '../config/schema.js';
import type { EvidenceContext } from '../policy/contract.js';
import type { ScanConfig } from '../config/scan.js';
import type { ScanCode } from '../policy/codes.js';
import { HarborClient, ScannerError } from './harbor.js';
import { mergeResults, type ScanResult } from './normalize.js';
import type { ScanMetrics, Outcome, Target } from './service.js';
import type { ScanStore, ScannerRecord } from './store.js';
import { errorText } from '../util/error-text.js';
import { SingleFlight } from '../util/single-flight.js';

export interface ScannerJobsDeps {
  config: Config;
  store: ScanStore;
  log: Logger;
  metrics: ScanMetrics;
  /** The policy clock; timers and retries use the wall clock. */
  now: () => number;
  /** The wall clock: when a job was requested, when to poll next, how long an error stands. */
  wallClock: () => number;
  isStale: (r: ScanResult, now: number) => boolean;
  /** A job for this digest finished or failed: wake up whoever waits for scan evidence. */
  changed: (digest: string) => void;
  /** `scanner.pullThrough`: a token for the scanner to pull this repository@digest through Portcullis (ClientAuth). */
  scannerToken?: ((repository: string, digest: string, ttlMs: number) => Promise<string>) | undefined;
}

export class ScannerJobs {
  private readonly sc: NonNullable<ScanConfig['scanner']>;
  private readonly client: HarborClient;
  private readonly log: Logger;
  private readonly submitting = new SingleFlight<string, void>();
  private readonly pollTimers = new Map<string, NodeJS.Timeout>();
  private readonly pending = new Set<string>();
  private closed = false;

  constructor(
    sc: NonNullable<ScanConfig['scanner']>,
    private readonly deps: ScannerJobsDeps,
  ) {
    this.sc = sc;
    this.log = deps.log;
    const auth = sc.auth;
    this.client = new HarborClient({
      baseUrl: sc.url,
      timeoutMs: sc.requestTimeout,
      authorization: () => {
        if (!auth) return undefined;
        if ('bearer' in auth) return `Bearer ${readSecret(auth.bearer)}`;
        return `Basic ${Buffer.from(`${auth.username}:${readSecret(auth.password)}`).toString('base64')}`;
      },
      observe: (op, seconds, outcome) => deps.metrics.scannerDuration?.observe({ op, outcome }, seconds),
    });
    // Scans requested before a restart are still running at the scanner: keep polling them.
    for (const rec of deps.store.pendingScans()) {
      this.pending.add(rec.digest);
      this.schedulePoll(rec.digest, Math.max(0, (rec.job?.nextPollAt ?? 0) - this.deps.wallClock()));
    }
    this.updatePendingGauge();
  }

  async fromScanner(ctx: EvidenceContext, targets: Target[]): Promise<Outcome> {
    const outcomes = await Promise.all(targets.map((t) => this.scannerTarget(ctx, t)));
    const err = outcomes.find((o) => o.kind === 'error');
    if (err) return err;
    if (outcomes.some((o) => o.kind === 'pending')) return { kind: 'pending', source: 'scanner' };
    const results = outcomes.map((o) => (o as Extract<Outcome, { kind: 'ok' }>).result);
    return { kind: 'ok', source: 'scanner', result: results.length === 1 ? results[0]! : mergeResults(results) };
  }

  private scannerRecord(digest: string): ScannerRecord | undefined {
    return this.deps.store.getScanner(digest);
  }

  private async scannerTarget(ctx: EvidenceContext, t: Target): Promise<Outcome> {
    const sc = this.sc;
    let rec = this.scannerRecord(t.digest);
    const wall = this.deps.wallClock();
    const result = rec?.result ?? null;
    const fresh = result !== null && !this.deps.isStale(result, this.deps.now());
    if (fresh) return { kind: 'ok', source: 'scanner', result };
    // A stale result stands while its rescan runs or after the rescan failed.
    const orStale = (o: Outcome): Outcome => (result ? { kind: 'ok', source: 'scanner', result } : o);
    if (rec?.job) {
      if (wall - rec.job.requestedAt > sc.scanTimeout) {
        rec = this.failJob(rec, 'SCAN_TIMEOUT', `scan did not finish within ${Math.round(sc.scanTimeout / 1000)}s`);
        return orStale(errorOutcome(rec));
      }
      if (!this.pollTimers.has(t.digest)) this.schedulePoll(t.digest, 0);
      return orStale({ kind: 'pending', source: 'scanner' });
    }
    if (rec?.error && wall - rec.error.at < sc.retryAfterError) return orStale(errorOutcome(rec));
    await this.submit(ctx, t);
    const after = this.scannerRecord(t.digest);
    if (after?.job) return orStale({ kind: 'pending', source: 'scanner' });
    if (after?.error) return orStale(errorOutcome(after));
    if (after?.result) return { kind: 'ok', source: 'scanner', result: after.result };
    return orStale({ kind: 'error', source: 'scanner', code: 'SCANNER_ERROR', message: 'scan request failed' });
  }

  /** One scan request per digest at a time; concurrent lookups share it. */
  private submit(ctx: Pick<EvidenceContext, 'upstream' | 'repository'>, t: Target, requestedAt?: number): Promise<void> {
    return this.submitting.run(t.digest, () => this.doSubmit(ctx, t, requestedAt));
  }

  private async doSubmit(ctx: Pick<EvidenceContext, 'upstream' | 'repository'>, t: Target, requestedAt?: number): Promise<void> {
    if (this.closed) return;
    const sc = this.sc;
    const rec: ScannerRecord = this.scannerRecord(t.digest) ?? { digest: t.digest, result: null, job: null, error: null };
    if (rec.job && requestedAt === undefined) return;
    const upstream = this.deps.config.upstreams.find((u) => u.name === ctx.upstream);
    const reg = sc.registries[ctx.upstream];
    try {
      if (!upstream) throw new ScannerError(`no upstream ${ctx.upstream}`);
      let registryUrl = reg?.url ?? upstream.url;
      let repository = ctx.repository;
      let authorization = reg?.authorization ? readSecret(reg.authorization) : undefined;
      if (sc.pullThrough) {
        // Through Portcullis by its path prefix, with a token for this job only: the scanner holds no upstream
        // credential, and its token cannot pull anything but this image.
        if (!this.deps.scannerToken) throw new ScannerError('scanner.pullThrough needs the token issuer (client authentication)');
        registryUrl = sc.pullThrough.url;
        repository = `${upstream.registry}/${ctx.repository}`;
        authorization = `Bearer ${await this.deps.scannerToken(repository, t.digest, sc.scanTimeout)}`;
      }
      const id = await this.client.requestScan({
        registryUrl,
        ...(authorization ? { authorization } : {}),
        repository,
        digest: t.digest,
        mimeType: t.mediaType,
      });
      if (this.closed) return;
      const now = this.deps.wallClock();
      rec.job = { id, requestedAt: requestedAt ?? now, nextPollAt: now, upstream: ctx.upstream, repository: ctx.repository, mimeType: t.mediaType };
      rec.error = null;
      this.deps.store.putScanner(rec);
      this.pending.add(t.digest);
      this.updatePendingGauge();
      this.log.info({ digest: t.digest, repository: ctx.repository, scanId: id }, 'scan requested');
      // A fast scanner may be done at once: poll right away, then as the scanner asks.
      this.schedulePoll(t.digest, 0);
    } catch (e) {
      if (this.closed) return;
      const message = errorText(e);
      this.log.warn({ digest: t.digest, err: message }, 'scan request failed');
      rec.job = null;
      // Whatever failed on the way (the scanner, or the pull token for it), the scan request did not go out.
      rec.error = { message, at: this.deps.wallClock(), code: 'SCANNER_ERROR' };
      this.deps.store.putScanner(rec);
      this.pending.delete(t.digest);
      this.updatePendingGauge();
      this.deps.changed(t.digest);
    }
  }

  private schedulePoll(digest: string, delayMs: number): void {
    if (this.closed) return;
    const prev = this.pollTimers.get(digest);
    if (prev) clearTimeout(prev);
    const timer = setTimeout(() => {
      this.pollTimers.delete(digest);
      void this.poll(digest);
    }, delayMs);
    timer.unref();
    this.pollTimers.set(digest, timer);
  }

  private async poll(digest: string): Promise<void> {
    if (this.closed) return;
    const sc = this.sc;
    const rec = this.scannerRecord(digest);
    if (!rec?.job) {
      this.pending.delete(digest);
      this.updatePendingGauge();
      return;
    }
    const job = rec.job;
    if (this.deps.wallClock() - job.requestedAt > sc.scanTimeout) {
      this.failJob(rec, 'SCAN_TIMEOUT', `scan did not finish within ${Math.round(sc.scanTimeout / 1000)}s`);
      return;
    }
    let next: number;
    try {
      const r = await this.client.report(job.id);
      if (this.closed) return;
      if (r.kind === 'done') {
        rec.result = r.result;
        rec.job = null;
        rec.error = null;
        this.deps.store.putScanner(rec);
        this.pending.delete(digest);
        this.updatePendingGauge();
        this.log.info({ digest, scanId: job.id, findings: r.result.findings.length }, 'scan finished');
        this.deps.changed(digest);
        return;
      }
      if (r.kind === 'failed') {
        this.failJob(rec, 'SCAN_FAILED', r.message);
        return;
      }
      if (r.kind === 'unknown') {
        // The scanner forgot the request (it restarted): ask again, keeping the original start for the timeout.
        this.log.warn({ digest, scanId: job.id }, 'scanner lost the scan request; requesting again');
        await this.submit({ upstream: job.upstream, repository: job.repository }, { digest, mediaType: job.mimeType }, job.requestedAt);
        return;
      }
      next = Math.min(60_000, Math.max(sc.pollInterval, r.refreshAfterMs ?? 0));
    } catch (e) {
      if (this.closed) return;
      // Unreachable for a moment: keep the job, try again later; scanTimeout bounds how long.
      this.log.warn({ digest, err: errorText(e) }, 'polling the scanner failed');
      next = Math.min(60_000, sc.pollInterval * 2);
    }
    rec.job = { ...job, nextPollAt: this.deps.wallClock() + next };
    this.deps.store.putScanner(rec);
    this.schedulePoll(digest, next);
  }

  private failJob(rec: ScannerRecord, code: ScanCode, message: string): ScannerRecord {
    this.log.warn({ digest: rec.digest, err: message }, 'scan failed');
    const t = this.pollTimers.get(rec.digest);
    if (t) clearTimeout(t);
    this.pollTimers.delete(rec.digest);
    const updated: ScannerRecord = { ...rec, job: null, error: { message, at: this.deps.wallClock(), code } };
    this.deps.store.putScanner(updated);
    this.pending.delete(rec.digest);
    this.updatePendingGauge();
    this.deps.changed(rec.digest);
    return updated;
  }

  private updatePendingGauge(): void {
    this.deps.metrics.scanPending?.set(this.pending.size);
  }

  /** Scans requested from the scanner and not finished yet. */
  get pendingScans(): number {
    return this.pending.size;
  }

  close(): void {
    this.closed = true;
    for (const t of this.pollTimers.values()) clearTimeout(t);
    this.pollTimers.clear();
  }
}

/** The stored failure of a record as an outcome. */
function errorOutcome(rec: ScannerRecord): Outcome {
  return { kind: 'error', source: 'scanner', code: rec.error?.code ?? 'SCAN_FAILED', message: rec.error?.message ?? 'scan failed' };
}
