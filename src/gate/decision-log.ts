/**
 * OPA-compatible decision log events (the policy input and result, as OPA logs them) for every root decision, to stdout, a file or an HTTP collector.
 * The HTTP sink batches, gzips and retries with backoff, from a bounded queue (decision-queue.ts: in memory, or an
 * on-disk spool that survives restarts). When the queue is full:
 *
 * - `onFull: drop` (default): the event is dropped and counted; pulls never wait for the collector.
 * - `onFull: block`: the decision waits for room, up to `blockTimeout`. Then it fails closed: the pull is denied
 *   with "decision log unavailable" (the gate turns the rejected promise into that deny), because an operator who
 *   chose `block` wants no image served without a record of why.
 *
 * Upstream URLs lose any userinfo before they are written (defence in depth: config load refuses them).
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
import type { PolicyInput } from '../policy/contract.js';
import { ENTRYPOINT } from '../policy/wasm.js';
import { redactUrl } from '../util/redact-url.js';
import { MemoryQueue, SpoolQueue, type EventQueue } from './decision-queue.js';
import { errorText } from '../util/error-text.js';

/** The settings this file reads; `onFull` and `blockTimeout` default as in the schema. */
export type DecisionLogConfig = Omit<Config['decisionLog'], 'onFull' | 'blockTimeout'> & Partial<Pick<Config['decisionLog'], 'onFull' | 'blockTimeout'>>;

/** The decision log could not take an event within `blockTimeout` (`onFull: block`): the decision must fail closed. */
export class DecisionLogUnavailableError extends Error {
  override name = 'DecisionLogUnavailableError';
  constructor() {
    super('decision log unavailable');
  }
}

interface Waiter {
  json: string;
  resolve: () => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

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
    const segs = p
      .split('/')
      .slice(2)
      .map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
    let node: unknown = copy;
    for (let i = 0; i < segs.length - 1 && node && typeof node === 'object'; i++) node = (node as Record<string, unknown>)[segs[i]!];
    const last = segs[segs.length - 1]!;
    if (node && typeof node === 'object' && last in node) {
      (node as Record<string, unknown>)[last] = '**masked**';
      masked.push(p);
    }
  }
  return { input: copy, masked };
}

/** The input as logged: masked, and with the upstream URL stripped of userinfo. */
function loggedInput(input: PolicyInput, pointers: string[]): { input: unknown; masked: string[] } {
  const url = redactUrl(input.upstream.url);
  const clean = url === input.upstream.url ? input : { ...input, upstream: { ...input.upstream, url } };
  return maskInput(clean, pointers);
}

export interface DecisionLogOptions {
  config: DecisionLogConfig;
  metrics: Metrics;
  log: Logger;
  /** Where the stdout sink writes (tests capture it). */
  write?: (line: string) => void;
  /** Holds the on-disk spool (`decisionLog.spool`). */
  dataDir?: string;
  /** The clock of the retry backoff (tests move it). */
  now?: () => number;
}

export class DecisionLog implements DecisionObserver {
  private readonly cfg: DecisionLogConfig;
  private readonly metrics: Metrics;
  private readonly log: Logger;
  private readonly write: (line: string) => void;
  private readonly queue: EventQueue | undefined;
  /** Decisions waiting for room (`onFull: block`), oldest first; while any waits, new events queue behind it. */
  private readonly waiters: Waiter[] = [];
  private file: WriteStream | undefined;
  private timer: NodeJS.Timeout | undefined;
  private flushing: Promise<void> | undefined;
  private backoffUntil = 0;
  private failures = 0;
  /** The clock of the retry backoff (tests move it). */
  private readonly now: () => number;

  constructor(opts: DecisionLogOptions) {
    const cfg = (this.cfg = opts.config);
    this.metrics = opts.metrics;
    this.log = opts.log;
    this.write = opts.write ?? ((l) => process.stdout.write(l));
    this.now = opts.now ?? Date.now;
    if (cfg.sink === 'file') this.file = createWriteStream(cfg.file as string, { flags: 'a' });
    if (cfg.sink === 'http') {
      if (cfg.spool) {
        if (!opts.dataDir) throw new Error('decisionLog.spool needs a data directory');
        this.queue = new SpoolQueue(opts.dataDir, cfg.spool.maxSize);
      } else this.queue = new MemoryQueue(cfg.maxQueue);
      this.timer = setInterval(() => void this.flush(), cfg.flushInterval);
      this.timer.unref();
      // A spool left by the previous process is sent at once.
      if (this.queue.length > 0) void this.flush();
    }
  }

  /**
   * Records a decision. Returns a promise only when the decision must wait (`onFull: block` and the queue full):
   * it resolves once the event is queued and rejects with DecisionLogUnavailableError after `blockTimeout`.
   */
  // eslint-disable-next-line @typescript-eslint/no-misused-promises -- the Gate awaits a returned promise; DecisionObserver is typed void only so that any callback fits
  onDecision(e: Parameters<DecisionObserver['onDecision']>[0]): void | Promise<void> {
    if (this.cfg.sink === 'none') return;
    const { input, masked } = loggedInput(e.input, this.cfg.mask);
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
      return this.enqueue(JSON.stringify(ev));
    }
  }

  private enqueue(json: string): void | Promise<void> {
    const queue = this.queue!;
    // Behind a waiting decision, a new event waits too: the log keeps the order of decisions.
    if (this.waiters.length === 0 && queue.offer(json)) {
      if (queue.length >= this.cfg.batchSize) void this.flush();
      return;
    }
    if ((this.cfg.onFull ?? 'drop') === 'drop') {
      this.metrics.decisionLogDropped.inc();
      return;
    }
    void this.flush();
    return new Promise<void>((resolve, reject) => {
      const w: Waiter = {
        json,
        resolve,
        reject,
        timer: setTimeout(() => {
          const i = this.waiters.indexOf(w);
          if (i !== -1) this.waiters.splice(i, 1);
          this.metrics.decisionLogRefused.inc();
          this.log.warn({ queued: queue.length, waiting: this.waiters.length }, 'decision log full: decision denied (decisionLog.onFull: block)');
          reject(new DecisionLogUnavailableError());
        }, this.cfg.blockTimeout ?? 5_000),
      };
      this.waiters.push(w);
    });
  }

  /** Room was made: queue the waiting events in order, as far as they fit. */
  private admitWaiters(): void {
    while (this.waiters.length > 0 && this.queue!.offer(this.waiters[0]!.json)) {
      const w = this.waiters.shift()!;
      clearTimeout(w.timer);
      w.resolve();
    }
  }

  /**
   * Sends queued events in batches, oldest first; an event leaves the queue only once the collector accepted it.
   * On failure, it backs off (exponentially, up to a minute) and tries again later.
   */
  flush(): Promise<void> {
    const queue = this.queue;
    if (!queue || this.flushing || queue.length === 0 || this.now() < this.backoffUntil) return this.flushing ?? Promise.resolve();
    this.flushing = (async () => {
      while (queue.length > 0 && queue.lease()) {
        const { events, token } = queue.peek(this.cfg.batchSize);
        try {
          const res = await request(this.cfg.url as string, {
            method: 'POST',
            headers: { 'content-type': 'application/json', 'content-encoding': 'gzip' },
            // The queue holds each event's JSON: the batch is their array, without parsing them again.
            body: gzipSync(`[${events.join(',')}]`),
            headersTimeout: 10_000,
            bodyTimeout: 10_000,
          });
          res.body.resume();
          if (res.statusCode < 200 || res.statusCode >= 300) throw new Error(`HTTP ${res.statusCode}`);
          queue.ack(token);
          this.metrics.decisionLogSent.inc(events.length);
          this.failures = 0;
          this.admitWaiters();
        } catch (e) {
          this.failures++;
          const delay = Math.min(60_000, 500 * 2 ** Math.min(this.failures, 7)) * (0.5 + Math.random() / 2);
          this.backoffUntil = this.now() + delay;
          this.log.warn(
            { error: errorText(e), url: redactUrl(this.cfg.url as string), queued: queue.length, retryInMs: Math.round(delay) },
            'decision log delivery failed',
          );
          break;
        }
      }
    })().finally(() => (this.flushing = undefined));
    return this.flushing;
  }

  get queued(): number {
    return this.queue?.length ?? 0;
  }

  /** Bytes of event JSON in the spool (0 without one). */
  get spooledBytes(): number {
    return this.queue instanceof SpoolQueue ? this.queue.bytes : 0;
  }

  /** Flushes what it can (ignoring the backoff once); a spool keeps the rest for the next start. */
  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.backoffUntil = 0;
    await this.flush();
    for (const w of this.waiters.splice(0)) {
      clearTimeout(w.timer);
      // Shutting down: the decision is refused rather than left hanging.
      this.metrics.decisionLogRefused.inc();
      w.reject(new DecisionLogUnavailableError());
    }
    this.queue?.close();
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
