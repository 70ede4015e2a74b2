/**
 * OPA-compatible decision log events (DESIGN §3) for every root decision, to stdout, a file or an HTTP collector.
 * The HTTP sink batches, gzips and retries with backoff; its queue is bounded and drops (counted) rather than
 * ever making a pull wait for the log collector.
 */
import { createWriteStream, type WriteStream } from 'node:fs';
import { hostname } from 'node:os';
import { gzipSync } from 'node:zlib';
import { randomUUID } from 'node:crypto';
import { request } from 'undici';
import type { Logger } from 'pino';
import type { Config } from '../config/schema.js';
import type { Metrics } from '../metrics/metrics.js';
import type { DecisionObserver } from './gate.js';
import type { PolicyInput } from './types.js';
import { ENTRYPOINT } from '../policy/wasm.js';

export interface DecisionEvent {
  labels: { app: string; id: string; version: string; hostname: string };
  decision_id: string;
  path: string;
  input: unknown;
  result: unknown;
  timestamp: string;
  bundles: Record<string, { revision: string }>;
  metrics: { timer_rego_query_eval_ns: number };
  masked?: string[];
  /** Portcullis additions: what the proxy did with the result. */
  outcome: string;
  upstream: string;
}

const INSTANCE_ID = randomUUID();

/** Replaces the values at JSON pointers under /input; returns the pointers that existed. */
export function maskInput(input: PolicyInput, pointers: string[]): { input: unknown; masked: string[] } {
  if (pointers.length === 0) return { input, masked: [] };
  const copy = structuredClone(input) as unknown as Record<string, unknown>;
  const masked: string[] = [];
  for (const p of pointers) {
    const segs = p.split('/').slice(2).map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
    let node: unknown = copy;
    for (let i = 0; i < segs.length - 1 && node && typeof node === 'object'; i++) node = (node as Record<string, unknown>)[segs[i]!];
    const last = segs[segs.length - 1]!;
    if (node && typeof node === 'object' && last in (node as object)) {
      (node as Record<string, unknown>)[last] = '**masked**';
      masked.push(p);
    }
  }
  return { input: copy, masked };
}

export class DecisionLog implements DecisionObserver {
  private queue: DecisionEvent[] = [];
  private file: WriteStream | undefined;
  private timer: NodeJS.Timeout | undefined;
  private flushing: Promise<void> | undefined;
  private backoffUntil = 0;
  private failures = 0;

  constructor(
    private readonly cfg: Config['decisionLog'],
    private readonly metrics: Metrics,
    private readonly log: Logger,
    private readonly write: (line: string) => void = (l) => process.stdout.write(l),
  ) {
    if (cfg.sink === 'file') this.file = createWriteStream(cfg.file as string, { flags: 'a' });
    if (cfg.sink === 'http') {
      this.timer = setInterval(() => void this.flush(), cfg.flushInterval);
      this.timer.unref();
    }
  }

  onDecision(e: Parameters<DecisionObserver['onDecision']>[0]): void {
    if (this.cfg.sink === 'none') return;
    const { input, masked } = maskInput(e.input, this.cfg.mask);
    const ev: DecisionEvent = {
      labels: { app: 'portcullis', id: INSTANCE_ID, version: '0.1.0', hostname: hostname() },
      decision_id: e.admission.decisionId,
      path: ENTRYPOINT,
      input,
      result: e.result ?? { allow: false, deny: e.admission.violations, warn: [] },
      timestamp: new Date().toISOString(),
      bundles: { portcullis: { revision: e.revision } },
      metrics: { timer_rego_query_eval_ns: Math.round(e.evalMs * 1e6) },
      outcome: e.admission.outcome,
      upstream: e.route.upstream.name,
    };
    if (masked.length) ev.masked = masked;
    if (this.cfg.sink === 'stdout') {
      this.write(`${JSON.stringify({ decision_log: ev })}\n`);
      this.metrics.decisionLogSent.inc();
    } else if (this.cfg.sink === 'file') {
      this.file?.write(`${JSON.stringify(ev)}\n`);
      this.metrics.decisionLogSent.inc();
    } else {
      if (this.queue.length >= this.cfg.maxQueue) {
        this.metrics.decisionLogDropped.inc();
        return;
      }
      this.queue.push(ev);
      if (this.queue.length >= this.cfg.batchSize) void this.flush();
    }
  }

  /** Sends queued events in batches; on failure they go back to the front of the queue and we back off. */
  flush(): Promise<void> {
    if (this.cfg.sink !== 'http' || this.flushing || this.queue.length === 0 || Date.now() < this.backoffUntil) return this.flushing ?? Promise.resolve();
    this.flushing = (async () => {
      while (this.queue.length > 0) {
        const batch = this.queue.splice(0, this.cfg.batchSize);
        try {
          const res = await request(this.cfg.url as string, {
            method: 'POST',
            headers: { 'content-type': 'application/json', 'content-encoding': 'gzip' },
            body: gzipSync(JSON.stringify(batch)),
            headersTimeout: 10_000,
            bodyTimeout: 10_000,
          });
          res.body.resume();
          if (res.statusCode < 200 || res.statusCode >= 300) throw new Error(`HTTP ${res.statusCode}`);
          this.metrics.decisionLogSent.inc(batch.length);
          this.failures = 0;
        } catch (e) {
          // Requeue what fits; the rest is dropped and counted, never blocking pulls.
          const room = this.cfg.maxQueue - this.queue.length;
          const keep = batch.slice(0, Math.max(0, room));
          this.metrics.decisionLogDropped.inc(batch.length - keep.length);
          this.queue.unshift(...keep);
          this.failures++;
          const delay = Math.min(60_000, 500 * 2 ** Math.min(this.failures, 7)) * (0.5 + Math.random() / 2);
          this.backoffUntil = Date.now() + delay;
          this.log.warn({ error: e instanceof Error ? e.message : String(e), queued: this.queue.length, retryInMs: Math.round(delay) }, 'decision log delivery failed');
          break;
        }
      }
    })().finally(() => (this.flushing = undefined));
    return this.flushing;
  }

  get queued(): number {
    return this.queue.length;
  }

  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.backoffUntil = 0;
    await this.flush();
    await new Promise<void>((r) => (this.file ? this.file.end(r) : r()));
  }
}

/** Counts decisions for /metrics. */
export class DecisionMetrics implements DecisionObserver {
  constructor(private readonly metrics: Metrics) {}

  onDecision(e: Parameters<DecisionObserver['onDecision']>[0]): void {
    const a = e.admission;
    const rule = a.violations[0]?.rule ?? (a.outcome === 'allow' ? 'none' : 'unknown');
    this.metrics.decisions.inc({ outcome: a.outcome, rule, upstream: e.route.upstream.name, mode: a.mode });
    this.metrics.policyEvalDuration.observe(e.evalMs / 1000);
    this.metrics.decisionDuration.observe(e.totalMs / 1000);
    this.metrics.decisionOverhead.observe(Math.max(0, e.totalMs - (e.waitMs ?? 0)) / 1000);
    this.metrics.decisionCache.inc({ result: 'miss' });
  }

  onCacheHit(): void {
    this.metrics.decisionCache.inc({ result: 'hit' });
  }
}
