/**
 * The HTTP client for one upstream registry: a keep-alive undici Agent, a concurrency limit, authentication,
 * redirects followed by hand (dropping Authorization across hosts), and retries with jittered backoff for
 * connection errors and 5xx on idempotent requests. A 429 is not retried here: it goes back to the client with
 * its Retry-After, because the client's own backoff is the right place to wait.
 */
import { FORWARDED_IDENTITY_HEADER, ForwardSigner } from '../auth/forwarded.js';
import { readFileSync } from 'node:fs';
import type { IncomingHttpHeaders } from 'node:http';
import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import { Agent, buildConnector, EnvHttpProxyAgent, ProxyAgent, request, type Dispatcher } from 'undici';
import type { UpstreamConfig } from '../config/schema.js';
import { readSecret } from '../config/load.js';
import { CredentialProvider } from './credential-provider.js';
import type { Metrics } from '../metrics/metrics.js';
import { upstreamWaitBegin } from '../metrics/upstream-wait.js';
import { Semaphore } from '../util/semaphore.js';
import { Authenticator, AuthError, type Credentials } from './auth.js';
import { EgressGuard, EgressRefusedError, type LookupFunction } from './egress.js';
import { SocketPool } from './socket-pool.js';
import { socketRequest, type SocketResponse } from './socket-request.js';
import { errorText } from '../util/error-text.js';

export type UpstreamKind = 'manifest' | 'blob' | 'tags' | 'referrers' | 'ping';

export interface UpstreamRequest {
  method: 'GET' | 'HEAD';
  /** Path below the upstream base URL, starting with /v2/. */
  path: string;
  kind: UpstreamKind;
  /** Repository for the token scope; omit for /v2/. */
  repository?: string;
  headers?: Record<string, string>;
  signal?: AbortSignal;
  /**
   * A large body the caller takes through ByteSource.pipeTo (blob downloads): sent on a connection whose socket
   * reads into a reused buffer, instead of through undici (socket-request.ts says why).
   */
  bulk?: boolean;
}

export interface UpstreamResponse {
  status: number;
  /** The reason phrase as the upstream sent it ('' when it sent none). */
  statusText: string;
  headers: IncomingHttpHeaders;
  body: Readable;
  /** Where the response finally came from, after redirects. */
  url: string;
}

export class UpstreamUnavailableError extends Error {
  constructor(
    readonly upstream: string,
    reason: unknown,
  ) {
    super(`upstream "${upstream}" unreachable: ${errorText(reason)}`, { cause: reason });
    this.name = 'UpstreamUnavailableError';
  }
}

const RETRY_STATUSES = new Set([500, 502, 503, 504]);
const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308]);
const MAX_REDIRECTS = 5;

export interface UpstreamClientOptions {
  metrics: Metrics;
  /** Base backoff in ms; tests shorten it. */
  backoffMs?: number;
  sleep?: (ms: number) => Promise<void>;
  /** Warnings about the upstream's behaviour (a token realm denied credentials). */
  log?: Logger;
  /** The resolver behind the egress check (egress.ts); tests inject one, dns.lookup otherwise. */
  lookup?: LookupFunction;
  /** Clock for credential and token expiry (credentialProvider, the token cache). */
  now?: () => number;
  /** A credential plugin run failed (logged by the caller). */
  onCredentialError?: (message: string) => void;
}

export class UpstreamClient {
  readonly name: string;
  readonly baseUrl: URL;
  private readonly agent: Agent | ProxyAgent | EnvHttpProxyAgent;
  /** Where an egress proxy comes from, if any: `upstreams[].proxy`, or HTTP(S)_PROXY in the environment. */
  private readonly egressProxy: 'config' | 'env' | undefined;
  /** Keep-alive connections for blob bodies (socket-request.ts). */
  private readonly sockets: SocketPool;
  private readonly limiter: Semaphore;
  private readonly auth: Authenticator;
  /** Short-lived credentials from a kubelet credential provider plugin, when configured. */
  readonly provider: CredentialProvider | undefined;
  private readonly backoffMs: number;
  private readonly sleep: (ms: number) => Promise<void>;
  /** Which addresses this upstream's connections (redirect targets, token realms) may reach. */
  private readonly egress: EgressGuard;
  private readonly guard: { checkHost(hostname: string): void; lookup: LookupFunction };
  /** `forwardIdentity`: this upstream is a central Portcullis that is told who the client is. */
  private readonly forwardSigner: ForwardSigner | undefined;

  constructor(
    readonly config: UpstreamConfig,
    private readonly opts: UpstreamClientOptions,
  ) {
    this.name = config.name;
    this.baseUrl = new URL(config.url);
    this.forwardSigner = config.forwardIdentity ? new ForwardSigner({ ...config.forwardIdentity, ...(opts.now ? { now: opts.now } : {}) }) : undefined;
    const ca = config.ca ? readFileSync(config.ca) : undefined;
    // The node's certificate for a central Portcullis that requires one: to the upstream's own origin only.
    const own = config.clientCertificate ? { cert: readFileSync(config.clientCertificate.cert), key: readFileSync(config.clientCertificate.key) } : undefined;
    this.egress = new EgressGuard({ upstream: this.baseUrl, allow: config.redirects.allow, ...(opts.lookup ? { lookup: opts.lookup } : {}) });
    const guard = (this.guard = this.countingGuard());
    // Each idle connection keeps its 256 KiB read buffer: a few per origin are plenty between two pulls.
    this.sockets = new SocketPool({
      ...(ca ? { ca } : {}),
      rejectUnauthorized: !config.insecure,
      ...(own ? { clientCert: { origin: this.baseUrl.origin, ...own } } : {}),
      maxIdlePerOrigin: Math.min(config.concurrency, 16),
      egress: guard,
    });
    const tls = { rejectUnauthorized: !config.insecure, ...(ca ? { ca } : {}) };
    const pool = { keepAliveTimeout: 30_000, connections: config.concurrency, headersTimeout: config.timeouts.headers, bodyTimeout: config.timeouts.body };
    // Direct connections check their address in the connector (egress.ts): IP literals before connecting, names in
    // the lookup that net.connect uses, so the address checked is the one connected to.
    const direct = buildConnector({ timeout: config.timeouts.connect, ...tls, lookup: guard.lookup });
    const withCert = own ? buildConnector({ timeout: config.timeouts.connect, ...tls, ...own, lookup: guard.lookup }) : undefined;
    const upstreamHost = this.baseUrl.hostname;
    const upstreamPort = this.baseUrl.port || (this.baseUrl.protocol === 'https:' ? '443' : '80');
    const connect: buildConnector.connector = (o, cb) => {
      try {
        guard.checkHost(o.hostname);
      } catch (e) {
        cb(e as Error, null);
        return;
      }
      const toUpstream = o.hostname === upstreamHost && String(o.port || (o.protocol === 'https:' ? '443' : '80')) === upstreamPort;
      (withCert && toUpstream ? withCert : direct)(o, cb);
    };
    // CONNECT for plain-http upstreams too (proxyTunnel): the proxy relays bytes and never sees a request to rewrite.
    const viaProxy = { proxyTunnel: true, requestTls: tls, connectTimeout: config.timeouts.connect, ...pool };
    this.egressProxy = config.proxy ? 'config' : hasEnvProxy(process.env) ? 'env' : undefined;
    this.agent =
      this.egressProxy === 'config'
        ? new ProxyAgent({ uri: config.proxy as string, ...viaProxy })
        : this.egressProxy === 'env'
          ? // HTTP(S)_PROXY and NO_PROXY as the platform sets them for the pod, read once at start (undici would
            // otherwise re-read NO_PROXY per request), and decided per destination, redirect hops too.
            new EnvHttpProxyAgent({ ...viaProxy, connect, ...envProxySettings(process.env) })
          : new Agent({ ...pool, connect });
    this.limiter = new Semaphore(config.concurrency);
    this.backoffMs = opts.backoffMs ?? 200;
    this.sleep = opts.sleep ?? ((ms) => new Promise((r) => setTimeout(r, ms)));
    const cp = config.credentialProvider;
    this.provider = cp
      ? new CredentialProvider({
          command: cp.command,
          args: cp.args,
          env: cp.env,
          image: cp.image ?? `${config.registry}/portcullis`,
          registry: config.registry,
          defaultCacheDuration: cp.defaultCacheDuration,
          timeout: cp.timeout,
          ...(opts.now ? { now: opts.now } : {}),
          ...(opts.onCredentialError ? { onError: opts.onCredentialError } : {}),
        })
      : undefined;
    this.auth = new Authenticator({
      upstreamUrl: this.baseUrl,
      credentials: () => this.credentials(),
      dispatcher: this.agent,
      now: opts.now ?? Date.now,
      onTokenFetch: (outcome) => opts.metrics.tokenFetches.inc({ upstream: this.name, outcome }),
      tokenRealms: config.tokenRealms,
      onRealmRefused: (realm, reason) => {
        opts.metrics.tokenRealmRefused.inc({ upstream: this.name });
        opts.log?.warn({ upstream: this.name, realm, reason }, 'token realm may not receive the upstream credentials; fetching tokens anonymously');
      },
    });
  }

  /** The egress guard, counting each refusal. */
  private countingGuard(): { checkHost(hostname: string): void; lookup: LookupFunction } {
    const count = (e: unknown): unknown => {
      if (e instanceof EgressRefusedError) this.opts.metrics.egressRefused.inc({ upstream: this.name, kind: e.range.kind });
      return e;
    };
    return {
      checkHost: (hostname) => {
        try {
          this.egress.checkHost(hostname);
        } catch (e) {
          throw count(e);
        }
      },
      lookup: (hostname, options, callback) =>
        this.egress.lookup(hostname, options, (err, address, family) => callback(err ? (count(err) as NodeJS.ErrnoException) : null, address, family)),
    };
  }

  private credentials(): Credentials | undefined {
    if (this.provider) return this.provider.current();
    const c = this.config.credentials;
    if (!c) return undefined;
    const username = c.username ?? readSecret(c.usernameFrom!);
    return { username, password: readSecret(c.password) };
  }

  /**
   * Sends a request and returns once headers arrive. The caller must consume or destroy `body`; the concurrency
   * slot is held until the body closes, so a slow download counts against the limit for as long as it runs.
   */
  async send(req: UpstreamRequest): Promise<UpstreamResponse> {
    // Counted against a decision's upstream wait when sent while gathering evidence (metrics/upstream-wait.ts).
    // The first request waits for the credential plugin's first answer (later refreshes run in the background).
    await this.provider?.ready();
    const endWait = upstreamWaitBegin();
    let release: () => void;
    try {
      release = await this.limiter.acquire(req.signal);
    } catch (e) {
      endWait();
      throw e;
    }
    this.opts.metrics.upstreamInflight.inc({ upstream: this.name });
    const done = (): void => {
      release();
      this.opts.metrics.upstreamInflight.dec({ upstream: this.name });
      endWait();
    };
    let res: UpstreamResponse;
    try {
      res = await this.sendWithRetries(req);
    } catch (e) {
      done();
      throw e;
    }
    res.body.once('close', done);
    res.body.once('end', done);
    res.body.once('error', done);
    return res;
  }

  private async sendWithRetries(req: UpstreamRequest): Promise<UpstreamResponse> {
    const attempts = this.config.retries + 1;
    let lastError: unknown;
    for (let attempt = 0; attempt < attempts; attempt++) {
      if (attempt > 0) {
        // Full jitter keeps a herd of retries from arriving in lockstep.
        const cap = Math.min(this.backoffMs * 2 ** (attempt - 1), 5_000);
        await this.sleep(cap / 2 + Math.random() * (cap / 2));
      }
      try {
        const res = await this.sendAuthenticated(req);
        if (RETRY_STATUSES.has(res.status) && attempt < attempts - 1) {
          res.body.resume();
          this.opts.metrics.upstreamRetries.inc({ upstream: this.name, reason: String(res.status) });
          continue;
        }
        return res;
      } catch (e) {
        // An authentication failure is not an outage: retrying cannot help, and the client should be told to
        // check the credentials (see toRegistryError), not that the upstream is unreachable.
        // Nor is a refused destination: it would be refused again.
        if (req.signal?.aborted || e instanceof AuthError || e instanceof EgressRefusedError) throw e;
        lastError = e;
        this.opts.metrics.upstreamRetries.inc({ upstream: this.name, reason: 'connection' });
      }
    }
    throw new UpstreamUnavailableError(this.name, lastError);
  }

  private async sendAuthenticated(req: UpstreamRequest): Promise<UpstreamResponse> {
    const scope = req.repository ? `repository:${req.repository}:pull` : '';
    let authorization = scope || this.config.credentials ? await this.auth.authorization(scope) : undefined;
    let res = await this.follow(req, authorization);
    if (res.status === 401 && res.fromUpstreamHost) {
      const retry = this.auth.onUnauthorized(headerString(res.headers['www-authenticate']), scope, authorization ?? null);
      if (retry) {
        res.body.resume();
        authorization = await this.auth.authorization(scope);
        res = await this.follow(req, authorization);
      }
    }
    return res;
  }

  /** One logical request, following redirects by hand. */
  private async follow(req: UpstreamRequest, authorization: string | undefined): Promise<UpstreamResponse & { fromUpstreamHost: boolean }> {
    let url = new URL(req.path, this.baseUrl);
    // A central Portcullis serves many registries and routes by `?ns=`, as containerd names them (kind portcullis).
    if (this.config.kind === 'portcullis' && req.repository) url.searchParams.set('ns', this.config.registry);
    const origin = url.origin;
    for (let hop = 0; ; hop++) {
      const headers: Record<string, string> = { 'user-agent': 'portcullis/0.1', ...req.headers };
      // Credentials belong to the upstream's host; a redirect to a CDN or anywhere else must not carry them.
      if (authorization && url.origin === origin) headers.authorization = authorization;
      // The client's identity, signed for a central Portcullis upstream: for its host only, like the credentials.
      if (this.forwardSigner && url.origin === origin) {
        const fwd = await this.forwardSigner.header();
        if (fwd) headers[FORWARDED_IDENTITY_HEADER] = fwd;
      }
      const started = performance.now();
      let r: Pick<Dispatcher.ResponseData, 'statusCode' | 'statusText' | 'headers'> & { body: Readable };
      try {
        // Behind an egress proxy, blob bodies go through undici as well: tls.connect ignores `onread` over an
        // existing (tunnelled) socket, so the reused-buffer transport would gain nothing there. With a proxy from the
        // environment that holds even for NO_PROXY destinations: undici alone decides which requests it tunnels.
        r =
          req.bulk && !this.egressProxy
            ? await this.sendBulk(url, req, headers)
            : await request(url, { method: req.method, headers, dispatcher: this.agent, signal: req.signal });
      } catch (e) {
        this.opts.metrics.upstreamRequests.inc({ upstream: this.name, kind: req.kind, method: req.method, status: 'error' });
        throw e;
      }
      this.opts.metrics.upstreamDuration.observe({ upstream: this.name, kind: req.kind }, (performance.now() - started) / 1000);
      this.opts.metrics.upstreamRequests.inc({ upstream: this.name, kind: req.kind, method: req.method, status: String(r.statusCode) });
      // Docker Hub: `ratelimit-limit: 100;w=21600`, `ratelimit-remaining: 76;w=21600`. Both, so that alerts can
      // compute the headroom whatever the account's quota.
      for (const [header, gauge] of [
        ['ratelimit-remaining', this.opts.metrics.upstreamRateLimitRemaining],
        ['ratelimit-limit', this.opts.metrics.upstreamRateLimitLimit],
      ] as const) {
        const n = Number.parseInt(headerString(r.headers[header]) ?? '', 10);
        if (Number.isFinite(n)) gauge.set({ upstream: this.name }, n);
      }
      const location = headerString(r.headers.location);
      if (REDIRECT_STATUSES.has(r.statusCode) && location) {
        r.body.resume();
        if (hop >= MAX_REDIRECTS) throw new Error(`too many redirects from ${origin}`);
        const next = new URL(location, url);
        if (next.protocol !== 'https:' && next.protocol !== 'http:') throw new Error(`redirect to unsupported scheme ${next.protocol}`);
        // Never downgrade from https.
        if (url.protocol === 'https:' && next.protocol !== 'https:') throw new Error(`refusing https→http redirect to ${next.origin}`);
        // Userinfo in a Location would be sent as credentials, and written to logs with the URL.
        next.username = '';
        next.password = '';
        // Through an egress proxy the connector never sees the target; an IP literal can still be checked here.
        this.guard.checkHost(next.hostname);
        url = next;
        continue;
      }
      return { status: r.statusCode, statusText: r.statusText, headers: r.headers, body: r.body, url: url.toString(), fromUpstreamHost: url.origin === origin };
    }
  }

  private sendBulk(url: URL, req: UpstreamRequest, headers: Record<string, string>): Promise<SocketResponse> {
    const t = this.config.timeouts;
    return socketRequest(
      url,
      { method: req.method, headers, ...(req.signal ? { signal: req.signal } : {}), connectTimeout: t.connect, headersTimeout: t.headers, bodyTimeout: t.body },
      this.sockets,
    );
  }

  async close(): Promise<void> {
    this.sockets.close();
    await this.agent.close();
  }

  async destroy(): Promise<void> {
    this.sockets.close();
    await this.agent.destroy();
  }
}

function hasEnvProxy(env: NodeJS.ProcessEnv): boolean {
  return Boolean(env.https_proxy || env.HTTPS_PROXY || env.http_proxy || env.HTTP_PROXY);
}

/** The lower-case names win, as in curl and Go. */
function envProxySettings(env: NodeJS.ProcessEnv): { httpProxy?: string; httpsProxy?: string; noProxy: string } {
  const httpProxy = env.http_proxy || env.HTTP_PROXY;
  const httpsProxy = env.https_proxy || env.HTTPS_PROXY;
  return { ...(httpProxy ? { httpProxy } : {}), ...(httpsProxy ? { httpsProxy } : {}), noProxy: env.no_proxy ?? env.NO_PROXY ?? '' };
}

export function headerString(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}
