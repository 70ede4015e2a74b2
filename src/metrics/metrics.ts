/**
 * Every Prometheus metric the proxy exports, defined in one place so that the names and labels stay consistent
 * and the README's table can be checked against a single file. Each server instance owns its own registry, which
 * keeps tests that start several proxies in one process independent.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export class Metrics {
  readonly registry = new Registry();

  readonly requests = new Counter({
    name: 'portcullis_http_requests_total',
    help: 'Client requests by route kind, method and status',
    labelNames: ['kind', 'method', 'status'] as const,
    registers: [this.registry],
  });
  readonly requestDuration = new Histogram({
    name: 'portcullis_http_request_duration_seconds',
    help: 'Time to first response byte for client requests, by route kind',
    labelNames: ['kind', 'method'] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [this.registry],
  });
  readonly upstreamRequests = new Counter({
    name: 'portcullis_upstream_requests_total',
    help: 'Requests sent to upstream registries, by upstream, kind, method and status (error = no response)',
    labelNames: ['upstream', 'kind', 'method', 'status'] as const,
    registers: [this.registry],
  });
  readonly upstreamDuration = new Histogram({
    name: 'portcullis_upstream_request_duration_seconds',
    help: 'Upstream response header latency',
    labelNames: ['upstream', 'kind'] as const,
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [this.registry],
  });
  readonly upstreamRetries = new Counter({
    name: 'portcullis_upstream_retries_total',
    help: 'Upstream requests retried after a connection error or 5xx',
    labelNames: ['upstream', 'reason'] as const,
    registers: [this.registry],
  });
  readonly upstreamInflight = new Gauge({
    name: 'portcullis_upstream_inflight',
    help: 'Upstream requests holding a concurrency slot',
    labelNames: ['upstream'] as const,
    registers: [this.registry],
  });
  readonly upstreamRateLimitRemaining = new Gauge({
    name: 'portcullis_upstream_ratelimit_remaining',
    help: 'Last ratelimit-remaining header seen from the upstream (Docker Hub pull quota)',
    labelNames: ['upstream'] as const,
    registers: [this.registry],
  });
  readonly upstreamRateLimitLimit = new Gauge({
    name: 'portcullis_upstream_ratelimit_limit',
    help: 'Last ratelimit-limit header seen from the upstream (the Docker Hub pull quota per window): remaining / limit is the headroom',
    labelNames: ['upstream'] as const,
    registers: [this.registry],
  });
  readonly tokenFetches = new Counter({
    name: 'portcullis_upstream_token_fetches_total',
    help: 'Bearer token requests to upstream token realms',
    labelNames: ['upstream', 'outcome'] as const,
    registers: [this.registry],
  });
  readonly egressRefused = new Counter({
    name: 'portcullis_upstream_egress_refused_total',
    help: 'Connections refused before connecting because the address is in a range this upstream may not reach (redirects, token realms), by range kind',
    labelNames: ['upstream', 'kind'] as const,
    registers: [this.registry],
  });
  readonly tokenRealmRefused = new Counter({
    name: 'portcullis_upstream_token_realm_refused_total',
    help: 'Token requests sent without credentials because the realm is outside the upstream domain (or plain http)',
    labelNames: ['upstream'] as const,
    registers: [this.registry],
  });
  readonly cacheLookups = new Counter({
    name: 'portcullis_cache_requests_total',
    help: 'Cache lookups by kind (blob, manifest, tag) and result (hit, miss, stale, join)',
    labelNames: ['kind', 'result'] as const,
    registers: [this.registry],
  });
  readonly cacheBytes = new Gauge({
    name: 'portcullis_cache_bytes',
    help: 'Bytes held in the content cache',
    registers: [this.registry],
  });
  readonly cacheEntries = new Gauge({
    name: 'portcullis_cache_entries',
    help: 'Entries held in the content cache',
    registers: [this.registry],
  });
  readonly cacheEvictions = new Counter({
    name: 'portcullis_cache_evictions_total',
    help: 'Entries evicted to stay under the cache size limit',
    registers: [this.registry],
  });
  readonly bytesServed = new Counter({
    name: 'portcullis_served_bytes_total',
    help: 'Bytes sent to clients, by source (cache or upstream stream-through)',
    labelNames: ['source'] as const,
    registers: [this.registry],
  });
  readonly upstreamBytes = new Counter({
    name: 'portcullis_upstream_bytes_total',
    help: 'Blob bytes read from upstreams',
    labelNames: ['upstream'] as const,
    registers: [this.registry],
  });
  readonly singleflightWaiters = new Counter({
    name: 'portcullis_singleflight_joins_total',
    help: 'Requests that joined a download already in progress instead of fetching again',
    labelNames: ['kind'] as const,
    registers: [this.registry],
  });
  readonly digestMismatches = new Counter({
    name: 'portcullis_digest_mismatches_total',
    help: 'Upstream content whose bytes did not hash to the expected digest (discarded)',
    labelNames: ['upstream', 'kind'] as const,
    registers: [this.registry],
  });
  readonly decisions = new Counter({
    name: 'portcullis_decisions_total',
    help: 'Admission decisions by outcome (allow, deny, warn, dry-run-deny), first rule, upstream and mode',
    labelNames: ['outcome', 'rule', 'upstream', 'mode'] as const,
    registers: [this.registry],
  });
  readonly decisionCache = new Counter({
    name: 'portcullis_decision_cache_total',
    help: 'Root manifest decisions served from the decision cache (hit) or evaluated (miss)',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });
  readonly policyEvalDuration = new Histogram({
    name: 'portcullis_policy_evaluation_seconds',
    help: 'Policy evaluation latency (input built, evidence excluded)',
    buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1],
    registers: [this.registry],
  });
  readonly decisionDuration = new Histogram({
    name: 'portcullis_decision_seconds',
    help: 'Whole root decision: evidence gathering plus policy evaluation',
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [this.registry],
  });
  readonly decisionOverhead = new Histogram({
    name: 'portcullis_decision_overhead_seconds',
    help: 'Root decision time beyond waiting on upstream round trips (and on a pending scan): evidence processing, signature verification and policy evaluation',
    buckets: [0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 1],
    registers: [this.registry],
  });
  readonly policyRevision = new Gauge({
    name: 'portcullis_policy_bundle_info',
    help: 'The policy revision in use (value 1), by revision and source',
    labelNames: ['revision', 'source'] as const,
    registers: [this.registry],
  });
  readonly policyReloads = new Counter({
    name: 'portcullis_policy_reloads_total',
    help: 'Policy bundle loads by result (ok, error)',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });
  readonly policyBundleRejected = new Counter({
    name: 'portcullis_policy_bundle_rejected_total',
    help: 'Policy bundles rejected by reason (signature_missing, signature_invalid, signature_mismatch, too_large, insecure, malformed, fetch)',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });
  readonly policyLastReloadOk = new Gauge({
    name: 'portcullis_policy_last_reload_success',
    help: '1 if the last policy load attempt succeeded, 0 if it failed (the previous revision stays in use)',
    registers: [this.registry],
  });
  readonly decisionLogDropped = new Counter({
    name: 'portcullis_decision_log_dropped_total',
    help: 'Decision log events dropped because the sink queue was full or delivery kept failing',
    registers: [this.registry],
  });
  readonly decisionLogRefused = new Counter({
    name: 'portcullis_decision_log_refused_total',
    help: 'Decisions denied because the decision log could not take their event within decisionLog.blockTimeout (onFull: block)',
    registers: [this.registry],
  });
  readonly decisionLogSent = new Counter({
    name: 'portcullis_decision_log_sent_total',
    help: 'Decision log events delivered to the sink',
    registers: [this.registry],
  });

  readonly scanLookups = new Counter({
    name: 'portcullis_scan_lookups_total',
    help: 'Scan evidence lookups by source (attestation, report, scanner) and status (ok, stale, missing, pending, error)',
    labelNames: ['source', 'status'] as const,
    registers: [this.registry],
  });
  readonly scannerDuration = new Histogram({
    name: 'portcullis_scanner_request_duration_seconds',
    help: 'Calls to the Harbor-compatible scanner by operation (metadata, scan, report) and outcome (HTTP status or error)',
    labelNames: ['op', 'outcome'] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [this.registry],
  });
  readonly scanPending = new Gauge({
    name: 'portcullis_scan_pending',
    help: 'Scans requested from the scanner and not finished yet',
    registers: [this.registry],
  });

  readonly signatureVerifications = new Counter({
    name: 'portcullis_signature_verifications_total',
    help: 'Signature and attestation verifications by authority kind (cosign-key, cosign-keyless, notation) and result (verified, rejected, error)',
    labelNames: ['kind', 'result'] as const,
    registers: [this.registry],
  });
  readonly signatureDuration = new Histogram({
    name: 'portcullis_signature_verification_seconds',
    help: 'Signature evidence for one digest on a cache miss: discovery, downloads and verification',
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers: [this.registry],
  });
  readonly trustRefresh = new Counter({
    name: 'portcullis_signature_trust_refresh_total',
    help: 'TUF refreshes of keyless trusted roots by authority and result (updated, unchanged, failed: the last good copy stays in use)',
    labelNames: ['authority', 'result'] as const,
    registers: [this.registry],
  });
  readonly signatureCache = new Counter({
    name: 'portcullis_signature_cache_total',
    help: 'Signature evidence lookups answered from the verification cache (hit) or computed (miss)',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });

  readonly clientAuth = new Counter({
    name: 'portcullis_client_auth_total',
    help: 'Client authentications by method (basic, token, mtls, oidc, anonymous) and result (ok or a failure code such as BAD_CREDENTIALS)',
    labelNames: ['method', 'result'] as const,
    registers: [this.registry],
  });
  readonly quotaRejections = new Counter({
    name: 'portcullis_quota_rejections_total',
    help: 'Requests refused with 429 by a quota, by identity class (the auth method, never the user), quota kind and key (identity or address)',
    labelNames: ['class', 'kind', 'key'] as const,
    registers: [this.registry],
  });
  readonly quotaTaken = new Counter({
    name: 'portcullis_quota_taken_total',
    help: 'Upstream-costly requests that took a quota token, by identity class and quota kind',
    labelNames: ['class', 'kind'] as const,
    registers: [this.registry],
  });

  // Scheduled re-evaluation of cached images (src/gate/reeval-schedule.ts, `reevaluate.interval`).
  readonly cachedImages = new Gauge({
    name: 'portcullis_cached_images',
    help: 'Cached images by what the current policy and evidence say about them at the last re-evaluation (allow, warn, dry_run_deny, deny, error)',
    labelNames: ['verdict'] as const,
    registers: [this.registry],
  });
  readonly reevalDenials = new Gauge({
    name: 'portcullis_reevaluation_denials',
    help: 'Cached images the last re-evaluation would deny, by the rule that denies them (an image with two rules counts under both)',
    labelNames: ['rule'] as const,
    registers: [this.registry],
  });
  readonly reevalRuns = new Counter({
    name: 'portcullis_reevaluation_runs_total',
    help: 'Scheduled re-evaluations by result (ok, error, skipped: the previous run was still going)',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });
  readonly reevalTurnedDenied = new Counter({
    name: 'portcullis_reevaluation_newly_denied_total',
    help: 'Cached images that a re-evaluation found denied after the previous one allowed them',
    registers: [this.registry],
  });
  readonly reevalPurged = new Counter({
    name: 'portcullis_reevaluation_purged_total',
    help: 'What `reevaluate.purge` removed: images (their admissions and closures) and blobs (evicted from the cache)',
    labelNames: ['kind'] as const,
    registers: [this.registry],
  });
  readonly warmed = new Counter({
    name: 'portcullis_warm_images_total',
    help: 'Images asked for by `portcullis warm` (POST /api/v1/admin/warm), by result (admitted, denied, failed)',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });

  private downloads: { active: () => number; unwrittenBytes: () => number } = { active: () => 0, unwrittenBytes: () => 0 };
  readonly downloadsInflight = new Gauge({
    name: 'portcullis_blob_downloads_inflight',
    help: 'Blob downloads from upstreams in progress',
    registers: [this.registry],
    collect: () => {
      this.downloadsInflight.set(this.downloads.active());
    },
  });
  readonly downloadsUnwritten = new Gauge({
    name: 'portcullis_blob_download_unwritten_bytes',
    help: 'Bytes of running downloads received (and served) but not yet in the cache file: the write-behind backlog; near its cap (24 MiB) the disk is holding back the upstream',
    registers: [this.registry],
    collect: () => {
      this.downloadsUnwritten.set(this.downloads.unwrittenBytes());
    },
  });

  /** The gauges read the live figures at scrape time rather than being updated on every download. */
  // The listener (src/server/limits.ts).
  readonly connectionsOpen = new Gauge({
    name: 'portcullis_connections_open',
    help: 'Client connections open (accepted and not yet closed)',
    registers: [this.registry],
  });
  readonly connectionsRefused = new Counter({
    name: 'portcullis_connections_refused_total',
    help: 'Client connections (or, behind a trusted proxy, requests) refused: global_limit, client_limit, proxy_protocol, untrusted_proxy',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });
  readonly connectionsClosed = new Counter({
    name: 'portcullis_connections_closed_total',
    help: 'Client connections the proxy closed: write_stall (the client stopped reading), idle (keep-alive timeout)',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });

  trackDownloads(source: { active: () => number; unwrittenBytes: () => number }): void {
    this.downloads = source;
  }

  constructor(opts: { defaultMetrics?: boolean } = {}) {
    if (opts.defaultMetrics !== false) collectDefaultMetrics({ register: this.registry, prefix: 'portcullis_' });
  }
}
