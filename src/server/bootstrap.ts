/**
 * Builds a running proxy from a validated Config: the policy manager (bundle file, bundle URL or external OPA),
 * the decision log, and the App. Shared by `portcullis serve` and `portcullis check`, so both run the same
 * pipeline.
 */
import { resolve } from 'node:path';
import { pino, type Logger } from 'pino';
import { ClientAuth } from '../auth/client-auth.js';
import { authSchema } from '../config/auth.js';
import { LOG_REDACT } from '../auth/redact.js';
import type { Config } from '../config/schema.js';
import { onSecretError } from '../config/load.js';
import { DecisionLog, DecisionMetrics } from '../gate/decision-log.js';
import type { DecisionObserver } from '../gate/gate.js';
import { Metrics } from '../metrics/metrics.js';
import { PolicyManager, type PolicySource } from '../policy/manager.js';
import { App } from './app.js';
import { scanCapability } from '../scan/index.js';
import { ScanApi } from './scan-api.js';
import { Operations } from './operations.js';
import type { Scheduler } from '../gate/reeval-schedule.js';
import { createSignatureProvider } from '../verify/index.js';

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
async function buildClientAuth(config: Config, metrics: Metrics, log: Logger, now?: () => number): Promise<ClientAuth | undefined> {
  // The scanner's pull-through tokens are verified by ClientAuth too, even on an otherwise anonymous listener.
  if (!config.auth && !config.tls?.clientCA && !config.scan?.scanner?.pullThrough) return undefined;
  const auth = await ClientAuth.create(config.auth ?? authSchema.parse({}), {
    clientCertificates: Boolean(config.tls?.clientCA),
    onOutcome: (method, o) => metrics.clientAuth.inc({ method: o.ok ? o.identity.method : method, result: o.ok ? 'ok' : o.code }),
    ...(now ? { now } : {}),
  });
  if (auth.skippedUsers.length) log.warn({ users: auth.skippedUsers.slice(0, 20) }, 'htpasswd entries that are not bcrypt were ignored');
  return auth;
}

export async function buildProxy(config: Config, opts: { logger?: Logger; extraObservers?: DecisionObserver[]; now?: () => number; scheduler?: Scheduler | false } = {}): Promise<Proxy> {
  const log = opts.logger ?? pino({ level: config.log.level, base: { svc: 'portcullis' }, redact: LOG_REDACT });
  const metrics = new Metrics();
  // The app exists only after the first policy loads; a later swap tells its gate (admissions re-decide on use).
  let built: App | undefined;
  const policy = new PolicyManager(policySource(config), config.policy.settings, metrics, log, config.policy.pollInterval, () => built?.gate.policyChanged());
  await policy.start();
  // Unreadable secrets: the errors say nothing (they reach clients), the log says which file and why.
  const stopSecretLog = onSecretError((detail) => log.warn({ detail }, 'a configured secret cannot be read'));
  const decisionLog = new DecisionLog(config.decisionLog, metrics, log, undefined, { dataDir: config.dataDir });
  const auth = await buildClientAuth(config, metrics, log, opts.now);
  const operations = new Operations({ config, log, policy, source: policySource(config), app: () => built, ...(opts.now ? { now: opts.now } : {}) });
  // The scan provider and its report/admin API share one service; re-evaluation needs the app once it exists.
  const scan = scanCapability({
    ...(opts.now ? { now: opts.now } : {}),
    ...(auth ? { scannerToken: (repository: string, digest: string, ttl: number) => auth.scannerToken(repository, digest, ttl) } : {}),
  });
  const app = new App({
    config,
    decider: policy,
    logger: log,
    metrics,
    // The decision log first: with onFull: block it may turn the decision into a deny, which the others then see.
    observers: [decisionLog, new DecisionMetrics(metrics), operations.recent, ...(opts.extraObservers ?? [])],
    readiness: [() => (policy.loaded ? undefined : 'no policy loaded')],
    signatures: createSignatureProvider,
    scan: scan.provider,
    api: (deps) => {
      const service = scan.serviceFor(deps);
      if (!service && !deps.config.scan?.admin) return [operations.api];
      return [new ScanApi({ service, deps, target: () => built, now: opts.now ?? Date.now }), operations.api];
    },
    ...(auth ? { auth } : {}),
    ...(opts.now ? { now: opts.now } : {}),
  });
  built = app;
  // One-shot commands (check, report, impact) pass false: no scheduled re-evaluation (or purge) inside them.
  if (opts.scheduler !== false) operations.start(app, opts.scheduler);
  return {
    app,
    policy,
    decisionLog,
    operations,
    async close() {
      operations.stop();
      policy.stop();
      await app.close();
      scan.close();
      await decisionLog.close();
      stopSecretLog();
    },
  };
}
