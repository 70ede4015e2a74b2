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
import { loadConfig, onSecretError } from '../config/load.js';
import { DecisionLog, DecisionMetrics } from '../gate/decision-log.js';
import type { DecisionObserver } from '../gate/gate.js';
import { Metrics } from '../metrics/metrics.js';
import { PolicyManager, type PolicySource } from '../policy/manager.js';
import { App } from './app.js';
import { scanCapability } from '../scan/index.js';
import { ScanApi } from './scan-api.js';
import { checkSignatureConfig, createSignatureProvider } from '../verify/index.js';
import { ForwardSigner } from '../auth/forwarded.js';
import { errorText } from '../util/error-text.js';

export const DEFAULT_BUNDLE = 'policies/bundle.tar.gz';

export interface Proxy {
  app: App;
  policy: PolicyManager;
  decisionLog: DecisionLog;
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
  for (const u of config.upstreams) {
    if (!u.forwardIdentity) continue;
    try {
      new ForwardSigner(u.forwardIdentity);
    } catch (e) {
      throw new Error(`upstream "${u.name}": ${errorText(e)}`);
    }
  }
  return config;
}

export async function buildProxy(config: Config, opts: { logger?: Logger; extraObservers?: DecisionObserver[]; now?: () => number } = {}): Promise<Proxy> {
  const log = opts.logger ?? pino({ level: config.log.level, base: { svc: 'portcullis' }, redact: LOG_REDACT });
  const metrics = new Metrics();
  // The app exists only after the first policy loads; a later swap tells its gate (admissions re-decide on use).
  let built: App | undefined;
  const policy = new PolicyManager(policySource(config), config.policy.settings, metrics, log, config.policy.pollInterval, () => built?.gate.policyChanged());
  await policy.start();
  // Unreadable secrets: the errors say nothing (they reach clients), the log says which file and why.
  const stopSecretLog = onSecretError((detail) => log.warn({ detail }, 'a configured secret cannot be read'));
  const decisionLog = new DecisionLog(config.decisionLog, metrics, log, undefined, { dataDir: config.dataDir });
  const auth = await buildClientAuth(config, { metrics, log, ...(opts.now ? { now: opts.now } : {}) });
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
    observers: [decisionLog, new DecisionMetrics(metrics), ...(opts.extraObservers ?? [])],
    readiness: [() => (policy.loaded ? undefined : 'no policy loaded')],
    signatures: createSignatureProvider,
    scan: scan.provider,
    api: (deps) => {
      const service = scan.serviceFor(deps);
      if (!service && !deps.config.scan?.admin) return [];
      return [new ScanApi({ service, deps, target: () => built, now: opts.now ?? Date.now })];
    },
    ...(auth ? { auth } : {}),
    ...(opts.now ? { now: opts.now } : {}),
  });
  built = app;
  return {
    app,
    policy,
    decisionLog,
    async close() {
      policy.stop();
      await app.close();
      scan.close();
      await decisionLog.close();
      stopSecretLog();
    },
  };
}
