/**
 * The composition root: builds a running proxy from a validated Config, every service in one place and in
 * dependency order (policy, decision log, client auth, storage, upstream clients, manifests, evidence, gate,
 * handlers, API, App), each from an options object. Shared by `portcullis serve`, `check` and `report`, so all run
 * the same pipeline.
 */
import type { IncomingMessage } from 'node:http';
import { resolve } from 'node:path';
import { pino, type Logger } from 'pino';
import { ClientAuth } from '../auth/client-auth.js';
import { ForwardSigner } from '../auth/forwarded.js';
import { Quotas } from '../auth/quota.js';
import { LOG_REDACT } from '../auth/redact.js';
import type { BlobStore } from '../cache/blobstore.js';
import { openBlobStore } from '../cache/open-store.js';
import { openShared } from '../cache/open-shared.js';
import { unwrittenDownloadBytes } from '../cache/download.js';
import { DownloadManager } from '../cache/download-manager.js';
import { SqliteMetaStore, type MetaStore } from '../cache/metastore.js';
import { authSchema } from '../config/auth.js';
import { loadConfig, onSecretError, readSecret } from '../config/load.js';
import type { ClusterConfig } from '../config/cluster.js';
import { Membership } from '../cluster/membership.js';
import { OwnerSource } from '../cluster/owner-source.js';
import { PeerClient } from '../cluster/peer-client.js';
import { ClusterKey } from '../cluster/cluster-key.js';
import { InternalApi } from './internal-api.js';
import type { Config } from '../config/schema.js';
import { settingsHash } from '../gate/basis.js';
import { DecisionLog, DecisionMetrics } from '../gate/decision-log.js';
import { Gate, type DecisionObserver } from '../gate/gate.js';
import { Metrics } from '../metrics/metrics.js';
import type { EvidenceDeps } from '../policy/evidence.js';
import { PolicyManager, type PolicySource } from '../policy/manager.js';
import { ProxyBlobService } from '../proxy/blobs.js';
import { ProxyManifestService } from '../proxy/manifests.js';
import { ProxyReferrersService } from '../proxy/referrers.js';
import { ProxyTagService } from '../proxy/tags.js';
import { Router } from '../routing/route.js';
import { createScanService } from '../scan/index.js';
import { ReportMirror } from '../scan/mirror.js';
import { UpstreamClient } from '../upstream/client.js';
import { errorText } from '../util/error-text.js';
import { checkSignatureConfig, createSignatureProvider } from '../verify/index.js';
import { App } from './app.js';
import { RegistryHandlers, type WarmCheck } from './handlers.js';
import { CentralCheck } from '../proxy/chain.js';
import { ScanApi, type ApiHandler } from './scan-api.js';
import { UiHandler } from '../ui/handler.js';
import { DecisionRing } from '../ui/ring.js';
import { uiTarget } from './ui.js';
import { Operations } from './operations.js';
import { RecentDecisions } from '../gate/impact.js';
import type { Scheduler } from '../gate/reeval-schedule.js';

export const DEFAULT_BUNDLE = 'policies/bundle.tar.gz';

export interface Proxy {
  app: App;
  policy: PolicyManager;
  decisionLog: DecisionLog;
  /** Re-evaluation schedule, impact and warming (operations.ts). */
  operations: Operations;
  close(): Promise<void>;
}

export function policySource(config: Config): PolicySource {
  const p = config.policy;
  const rules = { maxBytes: p.maxBundleSize, signing: p.signing, allowInsecureHttp: p.allowInsecureHttp };
  if (p.opaUrl) return { kind: 'opa', url: p.opaUrl, timeoutMs: p.opaTimeout, ...rules };
  if (p.bundleUrl) return { kind: 'url', url: p.bundleUrl, ...rules };
  return { kind: 'file', path: resolve(p.bundleFile ?? DEFAULT_BUNDLE), ...rules };
}

/** Client authentication when the config asks for it (an `auth` section, or client certificates on the listener). */
async function buildClientAuth(config: Config, o: { metrics?: Metrics; log?: Logger; now?: () => number } = {}): Promise<ClientAuth | undefined> {
  // The scanner's pull-through tokens are verified by ClientAuth too, even on an otherwise anonymous listener.
  if (!config.auth && !config.tls?.clientCA && !config.scan?.scanner?.pullThrough) return undefined;
  const { metrics, log, now } = o;
  const auth = await ClientAuth.create(config.auth ?? authSchema.parse({}), {
    clientCertificates: Boolean(config.tls?.clientCA),
    ...(metrics ? { onOutcome: (method, r) => metrics.clientAuth.inc({ method: r.ok ? r.identity.method : method, result: r.ok ? 'ok' : r.code }) } : {}),
    ...(now ? { now } : {}),
  });
  if (auth.skippedUsers.length) log?.warn({ users: auth.skippedUsers.slice(0, 20) }, 'htpasswd entries that are not bcrypt were ignored');
  return auth;
}

/**
 * `portcullis config check`: everything `serve` would refuse at start, without starting anything. The schema
 * (src/config/schema.ts) holds every field and cross-field rule; what it cannot judge needs the files the config
 * names, so the same loaders `serve` uses run here: signature keys and trust roots, the client-authentication
 * material (htpasswd, token key, OIDC key sets, forwarded-identity keys) and the keys that sign forwarded identities.
 * Throws a ConfigError, or an error naming the field or authority.
 */
export async function checkConfigFile(file: string, env: NodeJS.ProcessEnv = process.env): Promise<Config> {
  const config = loadConfig(file, env);
  checkSignatureConfig(config);
  const auth = await buildClientAuth(config);
  await auth?.close();
  if (config.cluster) clusterKey(config.cluster, env);
  for (const u of config.upstreams) {
    if (!u.forwardIdentity) continue;
    try {
      new ForwardSigner(u.forwardIdentity);
    } catch (e) {
      throw new Error(`upstream "${u.name}": ${errorText(e)}`, { cause: e });
    }
  }
  return config;
}

export interface BuildOptions {
  logger?: Logger;
  /** Told of every decision after the decision log and the metrics (`portcullis check` captures the last one). */
  extraObservers?: DecisionObserver[];
  /** The policy clock (TTLs, ages); tests move it. */
  now?: () => number;
  /** What runs the scheduled re-evaluation (default: timers); false for one-shot commands (check, report, impact). */
  scheduler?: Scheduler | false;
}

export async function buildProxy(config: Config, opts: BuildOptions = {}): Promise<Proxy> {
  const log = opts.logger ?? pino({ level: config.log.level, base: { svc: 'portcullis' }, redact: LOG_REDACT });
  const metrics = new Metrics();
  const now = opts.now;
  const clock = now ? { now } : {};
  // The first policy loads before anything serves; the gate subscribes to later swaps once it exists.
  const policy = new PolicyManager({
    source: policySource(config),
    settings: config.policy.settings,
    metrics,
    log,
    pollIntervalMs: config.policy.pollInterval,
  });
  await policy.start();
  // Unreadable secrets: the errors say nothing (they reach clients), the log says which file and why.
  const stopSecretLog = onSecretError((detail) => log.warn({ detail }, 'a configured secret cannot be read'));
  const decisionLog = new DecisionLog({ config: config.decisionLog, metrics, log, dataDir: config.dataDir });
  const auth = await buildClientAuth(config, { metrics, log, ...clock });

  // Storage and the upstream side.
  const meta = new SqliteMetaStore(config.dataDir);
  // storage.meta: redis: decisions and tag mappings shared across replicas, and the invalidation epoch.
  const sharedState = await openShared(config, {
    ...clock,
    onError: (what, err) => log.warn({ err: errorText(err), what }, 'redis unavailable; serving from the local store'),
  });
  const { shared, epoch, documents, buckets, durable, hints } = sharedState;
  const blobStore = await openBlobStore(
    config,
    {
      onEvict: () => metrics.cacheEvictions.inc(),
      onSizeChange: (bytes, entries) => {
        metrics.cacheBytes.set(bytes);
        metrics.cacheEntries.set(entries);
      },
      onError: (what, err) => log.warn({ err: errorText(err), what }, 'blob store background work failed'),
    },
    now,
  );
  metrics.cacheBytes.set(blobStore.totalBytes);
  metrics.cacheEntries.set(blobStore.entries);
  const downloads = new DownloadManager(blobStore);
  metrics.trackDownloads({ active: () => downloads.active, unwrittenBytes: unwrittenDownloadBytes });
  const router = new Router(config);
  const clients = new Map<string, UpstreamClient>();
  for (const u of config.upstreams) {
    const onCredentialError = (message: string): void => log.warn({ upstream: u.name, err: message }, 'credential provider failed');
    clients.set(u.name, new UpstreamClient(u, { metrics, log, onCredentialError, ...clock }));
  }
  const clientFor = (name: string): UpstreamClient => {
    const c = clients.get(name);
    if (!c) throw new Error(`no client for upstream ${name}`);
    return c;
  };
  const manifests = new ProxyManifestService({ config, meta, clientFor, metrics, shared, durable, ...clock });

  // Evidence: one scan service for the provider and the report API, the signature provider.
  const evidenceDeps: EvidenceDeps = { config, clientFor, manifests, router, meta, metrics, log, dataDir: config.dataDir };
  const scan = createScanService(evidenceDeps, {
    ...clock,
    // storage.blobs: s3: pushed reports go to the bucket too, and every replica's decisions read them there.
    mirror: documents ? new ReportMirror(documents) : undefined,
    ...(auth ? { scannerToken: (repository: string, digest: string, ttl: number) => auth.scannerToken(repository, digest, ttl) } : {}),
  });
  // The decision explorer (src/ui): recent decisions in memory, read back from the decision-log file at start.
  const ring = config.ui.enabled ? new DecisionRing(config.ui.recentDecisions, now) : undefined;
  if (ring && config.decisionLog.sink === 'file' && config.decisionLog.file) ring.loadLogFile(config.decisionLog.file);

  const signatures = await createSignatureProvider(evidenceDeps, { ...clock, durable });
  // The decisions a candidate policy's impact replays (operations.ts).
  const recent = new RecentDecisions();

  const gate = new Gate({
    decider: policy,
    meta,
    options: {
      allowTTL: config.gate.allowTTL,
      denyTTL: config.gate.denyTTL,
      closureTTL: config.gate.closureTTL,
      // What shapes decisions besides the bundle and the trust material: a restart with other settings re-decides.
      settingsHash: settingsHash({
        policy: config.policy.settings,
        scan: config.scan ?? null,
        upstreams: config.upstreams.map((u) => [u.name, u.registry, u.url]),
      }),
      manifests,
    },
    signatures,
    scan,
    // The decision log first: with onFull: block it may turn the decision into a deny, which the others then see.
    observers: [decisionLog, new DecisionMetrics(metrics), recent, ...(ring ? [ring] : []), ...(opts.extraObservers ?? [])],
    // Without the bucket, pushed reports live in each replica's own scan store: an allow decided without a report
    // another replica holds must not be reused there, so decisions are shared only when every replica reads the same
    // reports (in the bucket) or there are none.
    shared: config.scan?.reports && !documents ? undefined : shared,
    epoch,
    // Closure hints name roots for this gate to decide (never a decision): shared whatever the reports' location.
    closures: { hints, durable },
    ...clock,
  });
  // Another replica's report push or delete bumped the epoch: read reports again (from the bucket) before deciding.
  const stopEpochEvents = epoch?.onChange(() => scan?.forgetReports());
  // A new policy revision (bundle pushed, external OPA's bundle changed): admissions re-decide on use.
  const stopPolicyEvents = policy.onSwap(() => gate.policyChanged());

  const cluster = config.cluster ? buildCluster(config.cluster, log, now, blobStore) : undefined;
  const blobs = new ProxyBlobService({
    store: blobStore,
    downloads,
    clientFor,
    metrics,
    redirect: config.storage.redirect,
    ...(cluster ? { cluster: cluster.source } : {}),
  });
  // With storage.meta: redis the buckets are shared: a client spreading requests over replicas gets the rate once.
  const quotas = config.quotas ? new Quotas(config.quotas, { metrics, ...clock, shared: buckets }) : undefined;
  const handlers = new RegistryHandlers({
    router,
    manifests,
    blobs,
    tags: new ProxyTagService(clientFor),
    referrers: new ProxyReferrersService(clientFor, manifests),
    gate,
    metrics,
    identityChecks: auth?.hasMethods ?? false,
    ...(auth?.hasMethods ? { challenge: (req: IncomingMessage, repository: string) => auth.challenge(req, repository) } : {}),
    ...(quotas ? { quotas, warm: warmCheck(config, { meta, blobStore, downloads }, now ?? Date.now) } : {}),
    // A node chained to a central tier re-asks it, by digest, before serving from its cache (proxy/chain.ts).
    ...(config.upstreams.some((u) => u.kind === 'portcullis')
      ? { central: new CentralCheck({ clientFor, maxManifestSize: config.limits.maxManifestSize, ...clock }) }
      : {}),
  });
  const api: ApiHandler[] =
    scan || config.scan?.admin ? [new ScanApi({ service: scan, deps: evidenceDeps, target: { gate, meta, manifests, router }, now: now ?? Date.now })] : [];
  const target = uiTarget({ metrics, blobStore, gate, meta, manifests, router }, policy);
  const ui = ring ? new UiHandler({ config, ring, log, target: () => target }) : undefined;
  if (ui) api.push(ui);
  if (cluster) api.push(new InternalApi({ key: cluster.key, tokenTTL: cluster.tokenTTL, now: now ?? Date.now, blobs, upstreams: config.upstreams }));
  // Re-evaluation on a schedule, policy impact and warming: the admin API and the schedule share the services.
  const operations = new Operations({
    config,
    log,
    policy,
    source: policySource(config),
    recent,
    services: { router, manifests, gate, blobs, blobStore, downloads, quotas, metrics, meta },
    ...clock,
  });
  api.push(operations.api);

  const app = new App({
    config,
    log,
    metrics,
    meta,
    blobStore,
    downloads,
    router,
    manifests,
    gate,
    handlers,
    clients: [...clients.values()],
    signatures,
    api,
    readiness: [() => (policy.loaded ? undefined : 'no policy loaded')],
    degraded: epoch ? [() => epoch.degraded(), () => epoch.storeDegraded()] : [],
    auth,
    ...clock,
  });
  if (opts.scheduler !== false) operations.start(opts.scheduler);
  if (cluster && opts.scheduler !== false) cluster.membership.start(config.cluster!.probeInterval);
  return {
    app,
    policy,
    decisionLog,
    operations,
    async close() {
      stopPolicyEvents();
      stopEpochEvents?.();
      operations.stop();
      policy.stop();
      ui?.close();
      cluster?.membership.stop();
      await app.close();
      await cluster?.client.close();
      await sharedState.close();
      scan?.close();
      await decisionLog.close();
      stopSecretLog();
    },
  };
}

/** What the cache already holds, for quotas (only consulted when a quota applies). */
function warmCheck(config: Config, s: { meta: MetaStore; blobStore: BlobStore; downloads: DownloadManager }, now: () => number): WarmCheck {
  return {
    tag: (route, tag) => {
      const t = s.meta.getTag(route.upstream.name, route.repository, tag);
      return t !== undefined && now() - t.checkedAt < config.cache.tagTTL;
    },
    manifest: (route, digest) => s.meta.getManifest(route.upstream.name, route.repository, digest) !== undefined,
    // A download in progress is joined, not repeated: it costs the upstream nothing more.
    blob: (digest) => s.blobStore.has(digest) || s.downloads.get(digest) !== undefined,
  };
}

/** How long a cluster key read is used before the secret is read again (a rotation is picked up within this). */
const CLUSTER_KEY_REFRESH_MS = 30_000;

/** The cluster's HMAC key, read now: a missing, unreadable or short secret stops `serve` and `config check`. */
function clusterKey(c: ClusterConfig, env: NodeJS.ProcessEnv = process.env, now: () => number = Date.now, log?: Logger): ClusterKey {
  try {
    return new ClusterKey({
      read: () => readSecret(c.secret, env),
      refresh: CLUSTER_KEY_REFRESH_MS,
      now,
      onRefused: (reason) => log?.error({ err: reason }, 'cluster.secret: the new key is refused; the last good key stays in use'),
    });
  } catch (e) {
    throw new Error(`cluster.secret: ${errorText(e)}`, { cause: e });
  }
}

/**
 * The cluster's parts (src/cluster/): the peer client, the membership with its probes, and the owner-or-upstream
 * source of cold blobs. The secret is read now, so that a missing or short key stops the start, and again every
 * CLUSTER_KEY_REFRESH_MS, so that a rotated key is picked up without a restart.
 */
function buildCluster(c: ClusterConfig, log: Logger, now: (() => number) | undefined, store: BlobStore) {
  const cached = clusterKey(c, process.env, now ?? Date.now, log);
  const key = (): Buffer => cached.get();
  const client = new PeerClient({
    key,
    tokenTTL: c.tokenTTL,
    ownerTimeout: c.ownerTimeout,
    ownerIdleTimeout: c.ownerIdleTimeout,
    probeTimeout: c.probeTimeout,
    ...(c.caFile ? { caFile: c.caFile } : {}),
    ...(now ? { now } : {}),
  });
  const membership = new Membership({
    self: c.self,
    peers: c.peers,
    probe: (peer) => client.probe(peer),
    failuresToDown: c.failuresToDown,
    ...(now ? { now } : {}),
    onChange: (peer, live) => log.warn({ peer, live }, live ? 'cluster peer is back' : 'cluster peer is down: it owns no blobs until it answers again'),
  });
  const source = new OwnerSource({
    membership,
    client,
    onEvent: (e) => {
      if (e.kind === 'owner') log.debug({ peer: e.peer, digest: e.digest }, 'blob from its owner');
      else if (e.kind === 'refused') log.warn({ peer: e.peer, digest: e.digest, status: e.status }, 'blob owner refused; fetching from the upstream');
      else if (e.kind === 'unreachable')
        log.warn({ peer: e.peer, digest: e.digest, err: errorText(e.error) }, 'blob owner unreachable; asking the next replica');
      else {
        log.warn({ peer: e.peer, digest: e.digest, offset: e.offset, err: errorText(e.error) }, 'blob owner stream broke; resuming from the upstream');
        // The owner's multipart upload of this blob will never complete: abort it now (issue 13: a dead owner's
        // 12 GiB of parts must not wait a day for the sweeper). Best effort: the sweeper remains the backstop.
        store
          .abortUploadsOf?.(e.digest, (now ?? Date.now)())
          .then((n) => n > 0 && log.info({ peer: e.peer, digest: e.digest, aborted: n }, "aborted the lost owner's incomplete upload"))
          .catch((err: unknown) => log.warn({ digest: e.digest, err: errorText(err) }, "could not abort the lost owner's upload; the sweeper will"));
      }
    },
  });
  return { key, tokenTTL: c.tokenTTL, client, membership, source };
}
