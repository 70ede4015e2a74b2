/**
 * Quotas on what costs the upstream: a manifest not in the cache (a GET upstream, which Docker Hub counts as a
 * pull), a blob not in the cache, and a root decision not in the decision cache (signature discovery, scanner
 * jobs). Token buckets per identity and per client address; a warm (cached) pull never takes a token, so the
 * limits only bite a client that makes the proxy fetch.
 *
 * Anonymous requests have no identity: their identity bucket is per address. Metrics count by identity class (the
 * auth method), never by user, so label values stay bounded.
 *
 * With `storage.meta: redis` the buckets live in Redis (`shared`), so the limits hold for the whole central tier, not
 * per replica; while Redis does not answer, each replica limits with its own buckets.
 */
import type { Metrics } from '../metrics/metrics.js';
import type { Identity } from './authenticator.js';
import type { QuotasConfig } from '../config/auth.js';
import { SharedKeyedBuckets, type SharedBuckets } from './rate-limit.js';

export type QuotaKind = 'coldManifests' | 'coldBlobs' | 'decisions';

export type QuotaResult = { ok: true } | { ok: false; retryAfterSeconds: number; scope: 'identity' | 'address' };

export interface QuotaGate {
  /** Takes one token of `kind` for this identity and address, from both buckets (identity first). */
  take(kind: QuotaKind, identity: Identity, ip: string): Promise<QuotaResult>;
}

export interface QuotasOptions {
  metrics?: Metrics | undefined;
  now?: () => number;
  /** Buckets shared by every replica (storage.meta: redis); absent: this replica's own. */
  shared?: SharedBuckets | undefined;
}

const KINDS: QuotaKind[] = ['coldManifests', 'coldBlobs', 'decisions'];

export class Quotas implements QuotaGate {
  private readonly perIdentity = new Map<QuotaKind, SharedKeyedBuckets>();
  private readonly perAddress = new Map<QuotaKind, SharedKeyedBuckets>();
  private readonly metrics: Metrics | undefined;

  constructor(cfg: QuotasConfig, o: QuotasOptions = {}) {
    this.metrics = o.metrics;
    const now = o.now ?? Date.now;
    for (const k of KINDS) {
      const i = cfg.perIdentity[k];
      const spec = (b: { burst: number; perMinute: number }) => ({ burst: b.burst, perSecond: b.perMinute / 60 });
      if (i) this.perIdentity.set(k, new SharedKeyedBuckets({ name: `quota:identity:${k}`, spec: spec(i), now, shared: o.shared }));
      const a = cfg.perAddress[k];
      if (a) this.perAddress.set(k, new SharedKeyedBuckets({ name: `quota:address:${k}`, spec: spec(a), now, shared: o.shared }));
    }
  }

  /** Does any quota apply to `kind`? (Callers skip the cache look-ups that find out whether a request is cold.) */
  limits(kind: QuotaKind): boolean {
    return this.perIdentity.has(kind) || this.perAddress.has(kind);
  }

  async take(kind: QuotaKind, identity: Identity, ip: string): Promise<QuotaResult> {
    const cls = identity.method;
    const who = identity.user === null ? `anonymous@${ip}` : `${identity.method}:${identity.user}`;
    const byIdentity = await this.perIdentity.get(kind)?.take(who);
    if (byIdentity && !byIdentity.ok) {
      this.metrics?.quotaRejections.inc({ class: cls, kind, key: 'identity' });
      return { ok: false, retryAfterSeconds: byIdentity.retryAfterSeconds, scope: 'identity' };
    }
    const byAddress = await this.perAddress.get(kind)?.take(ip);
    if (byAddress && !byAddress.ok) {
      // The identity's token was not used for anything: give it back.
      if (byIdentity) await this.perIdentity.get(kind)?.refund(who);
      this.metrics?.quotaRejections.inc({ class: cls, kind, key: 'address' });
      return { ok: false, retryAfterSeconds: byAddress.retryAfterSeconds, scope: 'address' };
    }
    this.metrics?.quotaTaken.inc({ class: cls, kind });
    return { ok: true };
  }
}
