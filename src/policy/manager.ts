/**
 * Holds the policy in use and replaces it when a new bundle arrives, from a watched file or an HTTP bundle server
 * (ETag polling). A new bundle is fully loaded and checked before the swap, so a broken one is logged, counted,
 * and ignored: the last good revision keeps deciding. The swap is a single reference assignment, so a decision in
 * progress always finishes on the policy it started with.
 */
import { readFile, stat } from 'node:fs/promises';
import type { Logger } from 'pino';
import { request } from 'undici';
import type { Decider, PolicyInput, PolicyResult } from './contract.js';
import type { Metrics } from '../metrics/metrics.js';
import { readCapped } from '../util/capped-body.js';
import { BundleError, DEFAULT_MAX_BUNDLE, readBundle } from './bundle.js';
import { OpaRestDecider } from './opa-rest.js';
import { BundleVerifier, type BundleSigningConfig } from './signature.js';
import { WasmDecider } from './wasm.js';
import { redactUrl } from '../util/redact-url.js';
import { errorText } from '../util/error-text.js';

/** How bundles are accepted, whatever their source. */
export interface BundleRules {
  /** Largest compressed bundle (default 64 MiB); a bundle server sending more is cut off at this size. */
  maxBytes?: number;
  /** Every bundle must carry a valid `.signatures.json` by this key. */
  signing?: BundleSigningConfig | undefined;
  /** Plain-http bundle servers and external OPAs; refused unless set (the config check refuses them first). */
  allowInsecureHttp?: boolean;
}

export type PolicySource = ({ kind: 'file'; path: string } | { kind: 'url'; url: string } | { kind: 'opa'; url: string; timeoutMs: number }) & BundleRules;

export interface ReloadStatus {
  ok: boolean;
  at: string;
  revision: string | undefined;
  error?: string;
  /** Why the last bundle was rejected (BundleFailure, or 'fetch' when it could not be read). */
  reason?: string;
}

export interface PolicyManagerOptions {
  source: PolicySource;
  /** Rule settings, injected as data.portcullis.config (`policy.settings`). */
  settings: Record<string, unknown>;
  metrics: Metrics;
  log: Logger;
  /** How often the bundle file, bundle server or external OPA is checked for a new revision. */
  pollIntervalMs: number;
}

export class PolicyManager implements Decider {
  private readonly source: PolicySource;
  private readonly settings: Record<string, unknown>;
  private readonly metrics: Metrics;
  private readonly log: Logger;
  private readonly pollIntervalMs: number;
  /** Told of every revision put in use (subscribed with onSwap). */
  private readonly swapListeners = new Set<(revision: string) => void>();
  private current: Decider | undefined;
  private timer: NodeJS.Timeout | undefined;
  private fileStamp = '';
  private etag = '';
  private polling: Promise<void> | undefined;
  private verifier: BundleVerifier | undefined;
  /** The bytes of the bundle in use (impact reports that change only the settings); undefined for an external OPA. */
  private bundleBytes: Buffer | undefined;
  last: ReloadStatus | undefined;

  constructor(o: PolicyManagerOptions) {
    this.source = o.source;
    this.settings = o.settings;
    this.metrics = o.metrics;
    this.log = o.log;
    this.pollIntervalMs = o.pollIntervalMs;
  }

  /**
   * Subscribes to policy swaps: `fn` hears each revision put in use (the gate frees its decision cache), the first
   * load included. Returns the unsubscribe function.
   */
  onSwap(fn: (revision: string) => void): () => void {
    this.swapListeners.add(fn);
    return () => this.swapListeners.delete(fn);
  }

  private swapped(revision: string): void {
    for (const fn of this.swapListeners) fn(revision);
  }

  get revision(): string {
    return this.current?.revision ?? 'none';
  }

  get loaded(): boolean {
    return this.current !== undefined;
  }

  evaluate(input: PolicyInput): Promise<PolicyResult> {
    const d = this.current;
    if (!d) return Promise.reject(new Error('no policy loaded'));
    return d.evaluate(input);
  }

  /** Loads the first policy; throws when it cannot, because starting without one would deny everything silently. */
  async start(): Promise<void> {
    if (this.source.kind !== 'file' && new URL(this.source.url).protocol === 'http:' && !this.source.allowInsecureHttp) {
      throw new Error(`refusing plain-http policy source ${new URL(this.source.url).origin}: set policy.allowInsecureHttp to allow it`);
    }
    if (this.source.signing) this.verifier = await BundleVerifier.create(this.source.signing);
    if (this.source.kind === 'opa') {
      const opa = new OpaRestDecider(this.source.url, this.source.timeoutMs);
      this.install(opa, 'opa');
      // OPA swaps bundles on its own: ask for its revisions on the poll interval, so that admissions made under an
      // earlier bundle are decided again before their children and blobs are served.
      let seen = opa.revision;
      this.timer = setInterval(() => {
        if (this.polling) return;
        this.polling = opa
          .refresh()
          .then(() => {
            if (opa.revision === seen) return;
            this.log.info({ source: this.describe(), revision: opa.revision, previous: seen }, 'external OPA serves a new bundle revision');
            seen = opa.revision;
            this.metrics.policyRevision.reset();
            this.metrics.policyRevision.set({ revision: opa.revision, source: 'opa' }, 1);
            this.swapped(opa.revision);
          })
          .catch((e: unknown) => this.log.warn({ source: this.describe(), err: errorText(e) }, 'could not read the external OPA bundle revision'))
          .finally(() => (this.polling = undefined));
      }, this.pollIntervalMs);
      this.timer.unref();
      return;
    }
    await this.poll(true);
    if (!this.current) throw new Error(`no policy could be loaded from ${this.describe()}: ${this.last?.error ?? 'unknown error'}`);
    this.timer = setInterval(() => {
      if (!this.polling) this.polling = this.poll(false).finally(() => (this.polling = undefined));
    }, this.pollIntervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Checks the source once; exposed so tests and the CLI need not wait for the timer. */
  async poll(force = false): Promise<void> {
    try {
      const bytes = this.source.kind === 'file' ? await this.readFileIfChanged(force) : await this.fetchIfChanged();
      if (!bytes) return;
      const bundle = await readBundle(bytes, { maxBytes: this.maxBytes, verifier: this.verifier });
      let decider: WasmDecider;
      try {
        decider = await WasmDecider.create(bundle, this.settings);
      } catch (e) {
        throw new BundleError(`policy.wasm does not load: ${errorText(e)}`);
      }
      this.install(decider, this.source.kind);
      this.bundleBytes = bytes;
    } catch (e) {
      const error = errorText(e);
      const reason = e instanceof BundleError ? e.code : 'fetch';
      this.last = { ok: false, at: new Date().toISOString(), revision: this.current?.revision, error, reason };
      this.metrics.policyReloads.inc({ result: 'error' });
      this.metrics.policyBundleRejected.inc({ reason });
      this.metrics.policyLastReloadOk.set(0);
      this.log.error(
        { source: this.describe(), error, reason, keeping: this.current?.revision ?? null },
        'policy bundle rejected; keeping the last good revision',
      );
    }
  }

  private install(d: Decider, source: string): void {
    const previous = this.current?.revision;
    this.current = d;
    this.metrics.policyRevision.reset();
    this.metrics.policyRevision.set({ revision: d.revision, source }, 1);
    this.metrics.policyReloads.inc({ result: 'ok' });
    this.metrics.policyLastReloadOk.set(1);
    this.last = { ok: true, at: new Date().toISOString(), revision: d.revision };
    if (previous !== d.revision) {
      this.log.info({ source: this.describe(), revision: d.revision, previous: previous ?? null }, 'policy loaded');
      this.swapped(d.revision);
    }
  }

  private async readFileIfChanged(force: boolean): Promise<Buffer | undefined> {
    const path = (this.source as { path: string }).path;
    const st = await stat(path);
    const stamp = `${st.mtimeMs}:${st.size}:${st.ino}`;
    if (!force && stamp === this.fileStamp) return undefined;
    if (st.size > this.maxBytes) {
      this.fileStamp = stamp;
      throw new BundleError(`bundle file is ${st.size} bytes, over the ${this.maxBytes}-byte limit (policy.maxBundleSize)`, 'too_large');
    }
    const bytes = await readFile(path);
    // Record the stamp only after reading, so a file replaced mid-read is looked at again next time.
    this.fileStamp = stamp;
    return bytes;
  }

  private async fetchIfChanged(): Promise<Buffer | undefined> {
    const url = (this.source as { url: string }).url;
    const headers: Record<string, string> = {};
    if (this.etag) headers['if-none-match'] = this.etag;
    const res = await request(url, { method: 'GET', headers, headersTimeout: 10_000, bodyTimeout: 30_000 });
    if (res.statusCode === 304) {
      res.body.resume();
      return undefined;
    }
    if (res.statusCode !== 200) {
      res.body.resume();
      throw new Error(`bundle server answered HTTP ${res.statusCode}`);
    }
    // Cut off at the limit: a broken or hostile server must not make the proxy buffer without bound.
    const bytes = await readCapped(
      res.body,
      this.maxBytes,
      () => new BundleError(`bundle server sent more than ${this.maxBytes} bytes (policy.maxBundleSize)`, 'too_large'),
    );
    const etag = res.headers.etag;
    // A broken bundle under the same ETag will not get better, so it is not fetched again until the ETag changes.
    this.etag = typeof etag === 'string' ? etag : '';
    return bytes;
  }

  /** The bytes of the bundle in use; undefined for an external OPA. */
  activeBundle(): Buffer | undefined {
    return this.bundleBytes;
  }

  private get maxBytes(): number {
    return this.source.maxBytes ?? DEFAULT_MAX_BUNDLE;
  }

  private describe(): string {
    // Logged: a URL never carries its userinfo into the log.
    return this.source.kind === 'file' ? `file ${this.source.path}` : `${this.source.kind} ${redactUrl(this.source.url)}`;
  }
}
