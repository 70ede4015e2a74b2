/**
 * The scan evidence provider (the policy input's `scan` section). For one root digest it consults the configured sources in order:
 *
 * 1. `attestations`: cosign vuln predicates among the verified attestations, from trusted authorities;
 * 2. `reports`: reports CI pushed for the digest (server/scan-api.ts);
 * 3. `scanner`: a Harbor Pluggable Scanner API adapter, asked to scan on a miss (scanner-jobs.ts). The digest is then
 *    pending; the scan is polled in the background (honouring `Refresh-After`) and its result stored.
 *
 * The first fresh result wins. Otherwise the answer is, in this order: a stale result (older than `staleAfter`;
 * the scanner is asked to rescan meanwhile), pending, error, missing. Indexes: attestations and reports are looked
 * up for the index digest (then, for reports, for every platform manifest); scanners scan each platform manifest,
 * and the results are merged. Nothing here throws into the gate: failures become `status: "error"` evidence.
 */
import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import { LRUCache } from 'lru-cache';
import type { EvidenceDeps } from '../policy/evidence.js';
import type { EvidenceContext, PolicyInput, ScanEvidence, ScanProvider } from '../policy/contract.js';
import type { ScanCode } from '../policy/codes.js';
import { INDEX_TYPES } from '../oci/mediatypes.js';
import { sourceOrder, type ScanConfig, type SourceName } from '../config/scan.js';
import { parseVulnPredicate, ReportFormatError } from './formats.js';
import { SCANNABLE } from './harbor.js';
import { ScannerJobs } from './scanner-jobs.js';
import { mergeResults, summarize, type ScanResult } from './normalize.js';
import type { ReportMirror } from './mirror.js';
import { ScanStore, type StoredReport } from './store.js';
import { errorText } from '../util/error-text.js';

type Source = NonNullable<ScanEvidence['source']>;

/** How far in the future a scan time may be when `scan.reports.maxClockSkew` is not configured. */
const DEFAULT_SKEW_MS = 300_000;

/** Is the bucket's report newer than the local one (scan time, then push time)? */
function newer(remote: { scannedAt: string; uploadedAt: number }, local: { scannedAt: string; uploadedAt: number }): boolean {
  const a = Date.parse(remote.scannedAt);
  const b = Date.parse(local.scannedAt);
  return a !== b ? a > b : remote.uploadedAt > local.uploadedAt;
}

/** What one source says about one root digest. */
export type Outcome =
  | { kind: 'ok'; source: Source; result: ScanResult }
  | { kind: 'pending'; source: Source }
  | { kind: 'error'; source: Source; code: ScanCode; message: string }
  | { kind: 'missing'; source: Source };

const SOURCE_LABEL: Record<SourceName, Source> = { attestations: 'attestation', reports: 'report', scanner: 'scanner' };

export interface Target {
  digest: string;
  mediaType: string;
}

export interface ScanServiceOptions {
  /** The policy clock (age and staleness); timers and retries use the wall clock. */
  now?: () => number;
  /** The wall clock for deadlines, retry windows and the poll schedule (default Date.now; tests inject one). */
  wallClock?: () => number;
  /** Issues the scanner's per-job pull token (`scanner.pullThrough`). */
  scannerToken?: ((repository: string, digest: string, ttlMs: number) => Promise<string>) | undefined;
  /** Pushed reports in the bucket (storage.blobs: s3), read by every replica's decisions (mirror.ts). */
  mirror?: ReportMirror | undefined;
}

/** The metrics this capability reports (optional so the service also runs without them, e.g. in unit tests). */
export interface ScanMetrics {
  scanLookups?: { inc(labels: { source: string; status: string }): void };
  scannerDuration?: { observe(labels: { op: string; outcome: string }, seconds: number): void };
  scanPending?: { set(n: number): void };
}

export class ScanService implements ScanProvider {
  readonly store: ScanStore;
  readonly config: ScanConfig;
  private readonly order: SourceName[];
  /** The `scanner` source, when one is configured. */
  private readonly scanner: ScannerJobs | undefined;
  private readonly log: Logger;
  private readonly metrics: ScanMetrics;
  private readonly now: () => number;
  private readonly wallClock: () => number;
  private readonly events = new EventEmitter();
  /** Parsed per-digest lookups of reports and scanner results (`report\n<digest>`, `scanner\n<digest>`). */
  private readonly cache: LRUCache<string, { value: ScanResult | null }>;
  private closed = false;
  private readonly mirror: ReportMirror | undefined;

  constructor(
    private readonly deps: Pick<EvidenceDeps, 'config' | 'log' | 'dataDir'> & { metrics?: unknown },
    opts: ScanServiceOptions = {},
  ) {
    const cfg = deps.config.scan;
    if (!cfg) throw new Error('scan: no scan section');
    this.config = cfg;
    this.order = sourceOrder(cfg);
    this.log = deps.log.child({ component: 'scan' });
    this.metrics = deps.metrics ?? {};
    this.now = opts.now ?? Date.now;
    this.mirror = opts.mirror;
    this.wallClock = opts.wallClock ?? Date.now;
    this.cache = new LRUCache({ max: 10_000, ttl: Math.max(1, cfg.cacheTTL), ttlAutopurge: false });
    this.events.setMaxListeners(0);
    this.store = new ScanStore(deps.dataDir);
    if (cfg.scanner) {
      this.scanner = new ScannerJobs(cfg.scanner, {
        config: deps.config,
        store: this.store,
        log: this.log,
        metrics: this.metrics,
        now: this.now,
        wallClock: this.wallClock,
        isStale: (r, now) => this.isStale(r, now),
        changed: (digest) => this.events.emit('changed', digest),
        scannerToken: opts.scannerToken,
      });
    }
  }

  /** Evidence for a root manifest; never throws. */
  async scan(ctx: EvidenceContext, attestations: PolicyInput['attestations']): Promise<ScanEvidence> {
    try {
      return await this.lookup(ctx, attestations, true);
    } catch (e) {
      this.log.warn({ err: String(e), digest: ctx.digest }, 'scan lookup failed');
      return { status: 'error', code: 'LOOKUP_FAILED', error: `scan lookup failed: ${errorText(e)}` };
    }
  }

  /**
   * For `on_pending: wait`: the evidence once no longer pending, or the pending evidence when `timeoutMs` (capped at
   * `scan.maxWait`) runs out. Wakes up when a scan result or a report arrives, and at least once a second.
   */
  async awaitResult(ctx: EvidenceContext, attestations: PolicyInput['attestations'], timeoutMs: number): Promise<ScanEvidence> {
    const deadline = this.wallClock() + Math.max(0, Math.min(timeoutMs, this.config.maxWait));
    let ev = await this.scan(ctx, attestations);
    while (ev.status === 'pending' && !this.closed) {
      const left = deadline - this.wallClock();
      if (left <= 0) break;
      await new Promise<void>((resolve) => {
        const done = (): void => {
          clearTimeout(timer);
          this.events.off('changed', done);
          resolve();
        };
        const timer = setTimeout(done, Math.min(left, 1_000));
        this.events.on('changed', done);
      });
      ev = await this.lookup(ctx, attestations, false).catch((e: unknown) => ({ status: 'error' as const, code: 'LOOKUP_FAILED' as const, error: String(e) }));
    }
    return ev;
  }

  private async lookup(ctx: EvidenceContext, attestations: PolicyInput['attestations'], count: boolean): Promise<ScanEvidence> {
    const now = this.now();
    let stale: { source: Source; result: ScanResult } | undefined;
    let pending: Outcome | undefined;
    let error: Extract<Outcome, { kind: 'error' }> | undefined;
    let targets: Target[] | undefined;
    const platforms = (): Promise<Target[]> => Promise.resolve((targets ??= this.platformTargets(ctx)));
    for (const name of this.order) {
      let o: Outcome;
      try {
        if (name === 'attestations') o = this.fromAttestations(ctx, attestations);
        else if (name === 'reports') o = await this.fromReports(ctx, platforms);
        else o = this.scanner ? await this.scanner.fromScanner(ctx, await platforms()) : { kind: 'missing', source: 'scanner' };
      } catch (e) {
        // Scanner failures are caught and coded where they happen (scanner-jobs.ts); what reaches here is the lookup's.
        o = { kind: 'error', source: SOURCE_LABEL[name], code: 'LOOKUP_FAILED', message: errorText(e) };
      }
      const isStale = o.kind === 'ok' && this.isStale(o.result, now);
      if (count) this.metrics.scanLookups?.inc({ source: o.source, status: o.kind === 'ok' ? (isStale ? 'stale' : 'ok') : o.kind });
      if (o.kind === 'ok') {
        if (!isStale) return this.evidence(o.result, o.source, 'ok', now);
        stale ??= { source: o.source, result: o.result };
      } else if (o.kind === 'pending') pending ??= o;
      else if (o.kind === 'error') error ??= o;
    }
    if (stale) return { ...this.evidence(stale.result, stale.source, 'stale', now), code: this.inFuture(stale.result, now) ? 'FUTURE_SCAN_TIME' : 'STALE' };
    if (pending) return { status: 'pending', source: pending.source, code: 'PENDING' };
    if (error) return { status: 'error', source: error.source, error: error.message, code: error.code };
    return { status: 'missing', code: 'NOT_SCANNED' };
  }

  private evidence(r: ScanResult, source: Source, status: 'ok' | 'stale', now: number): ScanEvidence {
    return summarize(r, { status, source, now, maxVulnerabilities: this.config.maxVulnerabilities });
  }

  /**
   * Older than staleAfter, or dated in the future beyond the clock skew allowed for reports: a result from "2999"
   * would otherwise never go stale (the report API refuses such reports; attestations and scanners are caught here).
   */
  private isStale(r: ScanResult, now: number): boolean {
    const t = Date.parse(r.scannedAt);
    return !Number.isFinite(t) || now - t > this.config.staleAfter || this.inFuture(r, now);
  }

  /** Dated later than the clock skew allows: stale, but for another reason than age. */
  private inFuture(r: ScanResult, now: number): boolean {
    return Date.parse(r.scannedAt) - now > this.maxSkew;
  }

  private get maxSkew(): number {
    return this.config.reports?.maxClockSkew ?? DEFAULT_SKEW_MS;
  }

  /** The platform manifests of an index (attestation manifests left out), or the image itself. */
  private platformTargets(ctx: EvidenceContext): Target[] {
    if (!INDEX_TYPES.has(ctx.mediaType)) return [{ digest: ctx.digest, mediaType: ctx.mediaType }];
    // The index as the gate has it (verified and parsed once), not looked up again.
    const children = ctx.manifest.parsed.manifests.filter(
      (d) => d.platform?.os !== 'unknown' && d.annotations?.['vnd.docker.reference.type'] !== 'attestation-manifest' && SCANNABLE.includes(d.mediaType),
    );
    if (children.length === 0) throw new Error('index has no platform manifest to scan');
    return children.map((d) => ({ digest: d.digest, mediaType: d.mediaType }));
  }

  // --- attestations

  private fromAttestations(ctx: EvidenceContext, attestations: PolicyInput['attestations']): Outcome {
    const cfg = this.config.attestations!;
    const any = cfg.authorities.includes('*');
    const candidates = attestations.filter((a) => cfg.predicateTypes.includes(a.predicate_type) && (any || cfg.authorities.includes(a.authority)));
    if (candidates.length === 0) return { kind: 'missing', source: 'attestation' };
    let best: ScanResult | undefined;
    const problems: string[] = [];
    let code: ScanCode | undefined;
    for (const a of candidates) {
      try {
        const { result, namedDigests } = parseVulnPredicate(a.predicate);
        // The verifier checked the in-toto subject; a scanner report inside that names another image is refused.
        if (namedDigests.length && !namedDigests.includes(ctx.digest)) {
          problems.push(`attestation by "${a.authority}" reports on ${namedDigests[0]}, not this digest`);
          code ??= 'DIGEST_MISMATCH';
          continue;
        }
        if (!best || Date.parse(result.scannedAt) > Date.parse(best.scannedAt)) best = result;
      } catch (e) {
        problems.push(`unreadable vuln attestation by "${a.authority}": ${e instanceof ReportFormatError ? e.message : String(e)}`);
        code ??= 'REPORT_INVALID';
      }
    }
    if (best) return { kind: 'ok', source: 'attestation', result: best };
    return { kind: 'error', source: 'attestation', code: code ?? 'REPORT_INVALID', message: problems.slice(0, 2).join('; ') };
  }

  // --- pushed reports

  /**
   * The report in force for a digest: the newest (scan time, then push time) in this replica's store and, with the
   * mirror, in the bucket, where reports pushed to any replica land. A bucket that cannot be read is an error
   * (the policy then decides on `scan.status: error`), never "no report".
   */
  private async reportFor(digest: string): Promise<ScanResult | null> {
    const key = `report\n${digest}`;
    const hit = this.cache.get(key);
    if (hit) return hit.value;
    const r = this.store.latestReport(digest);
    let value: ScanResult | null = r ? { scannedAt: r.scannedAt, findings: r.findings, ...(r.scanner ? { scanner: r.scanner } : {}) } : null;
    const remote = this.mirror ? await this.mirror.latest(digest) : null;
    if (remote && (!r || newer(remote, r))) {
      value = { scannedAt: remote.scannedAt, findings: remote.findings, ...(remote.scanner ? { scanner: remote.scanner } : {}) };
    }
    this.cache.set(key, { value });
    return value;
  }

  private async fromReports(ctx: EvidenceContext, platforms: () => Promise<Target[]>): Promise<Outcome> {
    const own = await this.reportFor(ctx.digest);
    if (own) return { kind: 'ok', source: 'report', result: own };
    if (!INDEX_TYPES.has(ctx.mediaType)) return { kind: 'missing', source: 'report' };
    // An index without a report of its own is covered when every platform manifest has one.
    const results = await Promise.all((await platforms()).map((t) => this.reportFor(t.digest)));
    if (results.some((r) => r === null)) return { kind: 'missing', source: 'report' };
    return { kind: 'ok', source: 'report', result: mergeResults(results as ScanResult[]) };
  }

  /** A pushed report into the bucket too (no-op without one); rejects when the bucket did not take it. */
  async publishReport(r: Omit<StoredReport, 'id' | 'size'>): Promise<void> {
    await this.mirror?.publish(r);
  }

  /** Removes versions of an image from the bucket too (0 without one); returns how many went there. */
  async unpublishReports(
    ref: { registry: string; repository: string; digest: string },
    versions: Array<{ scannedAt: string; uploadedAt: number }> | 'all',
  ): Promise<number> {
    return this.mirror ? this.mirror.remove(ref, versions) : 0;
  }

  /** Another replica's push or delete may have changed any digest's report (an epoch bump): read them again. */
  forgetReports(): void {
    for (const k of [...this.cache.keys()]) if (k.startsWith('report\n')) this.cache.delete(k);
  }

  /** Called by the report API after a push or delete. */
  reportsChanged(digest: string): void {
    this.cache.delete(`report\n${digest}`);
    this.events.emit('changed', digest);
  }

  /** Scans requested from the scanner and not finished yet. */
  get pendingScans(): number {
    return this.scanner?.pendingScans ?? 0;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.scanner?.close();
    this.events.emit('changed', '');
    this.events.removeAllListeners();
    this.store.close();
  }
}
