/**
 * Runs the HTTP(S) server over the services bootstrap.ts built: request ids and logs, metrics, health endpoints,
 * limits, and a graceful shutdown that lets running downloads finish (or discards them) before exit.
 */
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { createServer as createNetServer, type AddressInfo, type Server as NetServer, type Socket } from 'node:net';
import type { Logger } from 'pino';
import type { ClientAuth } from '../auth/client-auth.js';
import { requestIdentity } from '../auth/forwarded.js';
import type { BlobStore } from '../cache/blobstore.js';
import type { DownloadManager } from '../cache/download-manager.js';
import type { MetaStore } from '../cache/metastore.js';
import type { Config } from '../config/schema.js';
import type { Gate } from '../gate/gate.js';
import type { SignatureProvider } from '../policy/contract.js';
import type { ApiHandler } from './scan-api.js';
import type { Metrics } from '../metrics/metrics.js';
import type { ManifestService } from '../proxy/manifests.js';
import type { Router } from '../routing/route.js';
import { addressSet, forwardedClient, type AddressSet } from '../util/address.js';
import type { UpstreamClient } from '../upstream/client.js';
import { readSecret } from '../config/load.js';
import { identify, metricsAllowed, serveToken } from './client-identity.js';
import { errors, httpStatus, RegistryError } from './errors.js';
import type { RegistryHandlers } from './handlers.js';
import { ConnectionGuard, guardFor, readSysctl } from './limits.js';
import { parseEndpoint, type Endpoint } from './paths.js';
import { answerClientError, sendError, sendJson } from './respond.js';
import { errorText } from '../util/error-text.js';

/** How often expired admission and closure rows are pruned (at most GateOptions.pruneBatch of each per run). */
const PRUNE_INTERVAL_MS = 60_000;

/**
 * The services the App serves with, built by src/server/bootstrap.ts (the one place that builds them). The App owns
 * the listeners and the request lifecycle; on close it also closes these, after the last response.
 */
export interface AppServices {
  config: Config;
  log: Logger;
  metrics: Metrics;
  meta: MetaStore;
  blobStore: BlobStore;
  downloads: DownloadManager;
  router: Router;
  manifests: ManifestService;
  gate: Gate;
  handlers: RegistryHandlers;
  /** The upstream clients, destroyed on close. */
  clients: UpstreamClient[];
  /** Closed on close (its trust-file watcher). */
  signatures?: SignatureProvider | undefined;
  /** Extra endpoints outside /v2/ (the scan report API, …). */
  api: ApiHandler[];
  /** Extra readiness checks (policy loaded, …); all must pass for /readyz. */
  readiness: Array<() => string | undefined>;
  /**
   * Backends this replica can serve without, slowly or with less sharing (Redis): named in /readyz's body with
   * status `degraded`, but still 200. They are shared by every replica, so a 503 would take the whole tier out of
   * its Service at once, while each replica can still serve from its own store.
   */
  degraded?: Array<() => string | undefined>;
  /** Client authentication of the registry listener (src/auth); absent: every client is anonymous. */
  auth?: ClientAuth | undefined;
  now?: () => number;
}

/** Which listener a request came in on: the registry API, or the operator surface (`operatorListen`). */
type Surface = 'registry' | 'operator';

/** How long a stopping process with reusePort keeps serving connections it accepted before closing idle ones. */
const HANDOFF_MS = 1_000;

export class App {
  readonly metrics: Metrics;
  readonly log: Logger;
  readonly gate: Gate;
  readonly blobStore: BlobStore;
  readonly meta: MetaStore;
  readonly downloads: DownloadManager;
  readonly router: Router;
  readonly manifests: ManifestService;
  private readonly handlers: RegistryHandlers;
  private readonly api: ApiHandler[];
  private server: Server | undefined;
  private readonly pruner: NodeJS.Timeout;
  private operatorServer: Server | undefined;
  private readonly metricsToken: string | undefined;
  /** Accepts connections and hands them to `server` once the guard admits them (see listen()). */
  private front: NetServer | undefined;
  private guard: ConnectionGuard | undefined;
  private readonly trustedProxies: AddressSet;
  private shuttingDown = false;
  /** Responses still being written, so that a graceful shutdown can let them finish (see close()). */
  private readonly inflight = new Set<ServerResponse>();
  private inflightEmpty: (() => void) | undefined;

  constructor(private readonly opts: AppServices) {
    const { config } = opts;
    this.metrics = opts.metrics;
    this.log = opts.log;
    this.metricsToken = config.metricsToken ? readSecret(config.metricsToken) : undefined;
    this.meta = opts.meta;
    this.blobStore = opts.blobStore;
    this.downloads = opts.downloads;
    this.router = opts.router;
    this.manifests = opts.manifests;
    this.gate = opts.gate;
    this.handlers = opts.handlers;
    this.api = opts.api;
    this.trustedProxies = addressSet(config.listener.trustedProxies);
    // Expired admissions and closure members leave meta.sqlite a bounded batch at a time.
    this.pruner = setInterval(() => {
      try {
        this.gate.prune();
      } catch (e) {
        this.log.warn({ err: errorText(e) }, 'pruning expired admissions failed');
      }
    }, PRUNE_INTERVAL_MS);
    this.pruner.unref();
  }

  /** Starts listening; resolves with the bound address (port 0 picks a free one). */
  async listen(listen = this.opts.config.listen): Promise<AddressInfo> {
    const { config } = this.opts;
    // An S3 store lists its bucket first: serving before would re-fetch every cached blob (and an unreachable
    // bucket stops the start here, naming the store).
    await this.blobStore.ready;
    const { limits } = config;
    const serverOpts = {
      maxHeaderSize: limits.maxHeaderSize,
      requestTimeout: limits.requestTimeout,
      headersTimeout: Math.min(30_000, limits.requestTimeout || 30_000),
      keepAliveTimeout: limits.idleTimeout,
    };
    const handler = (req: IncomingMessage, res: ServerResponse): void => void this.onRequest(req, res, 'registry');
    const server = (this.server = config.tls
      ? createHttpsServer(
          {
            ...serverOpts,
            cert: readFileSync(config.tls.cert),
            key: readFileSync(config.tls.key),
            // `optional`: the handshake completes without a trusted certificate; src/auth then refuses an untrusted one
            // and lets a client without one use another method.
            ...(config.tls.clientCA
              ? { ca: readFileSync(config.tls.clientCA), requestCert: true, rejectUnauthorized: config.tls.clientAuth === 'require' }
              : {}),
          },
          handler,
        )
      : createHttpServer(serverOpts, handler));
    server.on('clientError', (err: NodeJS.ErrnoException, socket) => answerClientError(err, socket));
    const guard = (this.guard = guardFor(config, this.trustedProxies, this.metrics, this.log, this.opts.now));
    // The HTTP server does not listen itself: a plain TCP server accepts, the guard counts the connection (and reads
    // its PROXY header) before TLS or HTTP parsing cost anything, and hands it over with the 'connection' event, as
    // Node documents for injecting sockets. Node starts its header and request timeout checks on 'listening'.
    const front = (this.front = createNetServer({ allowHalfOpen: true, noDelay: true }, (socket: Socket) =>
      guard.accept(socket, (s) => {
        server.emit('connection', s);
        if (!config.tls && s.isPaused()) s.resume();
      }),
    ));
    server.emit('listening');
    const idx = listen.lastIndexOf(':');
    const host = listen.slice(0, idx).replace(/^\[|\]$/g, '');
    const port = Number(listen.slice(idx + 1));
    await new Promise<void>((resolve, reject) => {
      front.once('error', reject);
      // reusePort: a replacement process can listen on the same address before this one drains (SIGTERM).
      front.listen({ port, host, reusePort: config.reusePort }, () => resolve());
    });
    if (config.reusePort && readSysctl('net/ipv4/tcp_migrate_req') === '0') {
      // Connections still in a closing listener's accept queue are reset unless the kernel may move them to another
      // listener of the same port (Linux ≥ 5.14).
      this.log.warn(
        'reusePort: net.ipv4.tcp_migrate_req is 0, so a process replacement can reset a few connections that arrive as the old process stops listening; set it to 1',
      );
    }
    const addr = front.address() as AddressInfo;
    if (config.operatorListen) await this.listenOperator(config.operatorListen, serverOpts);
    this.log.info({ address: addr.address, port: addr.port, tls: Boolean(config.tls), upstreams: config.upstreams.map((u) => u.name) }, 'listening');
    return addr;
  }

  /** The operator surface: plain HTTP, health, metrics and the /api/ endpoints only. */
  private async listenOperator(listen: string, serverOpts: object): Promise<void> {
    const server = (this.operatorServer = createHttpServer(serverOpts, (req, res) => void this.onRequest(req, res, 'operator')));
    server.on('clientError', (err: NodeJS.ErrnoException, socket) => answerClientError(err, socket));
    const idx = listen.lastIndexOf(':');
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(Number(listen.slice(idx + 1)), listen.slice(0, idx).replace(/^\[|\]$/g, ''), () => resolve());
    });
    const addr = server.address() as AddressInfo;
    this.log.info({ address: addr.address, port: addr.port }, 'operator listener');
  }

  /** The operator listener's bound address, when `operatorListen` is set. */
  get operatorAddress(): AddressInfo | undefined {
    return this.operatorServer?.address() as AddressInfo | undefined;
  }

  private async onRequest(req: IncomingMessage, res: ServerResponse, surface: Surface): Promise<void> {
    const started = performance.now();
    const rid =
      typeof req.headers['x-request-id'] === 'string' && /^[\w.-]{1,64}$/.test(req.headers['x-request-id']) ? req.headers['x-request-id'] : randomUUID();
    res.setHeader('x-request-id', rid);
    res.setHeader('docker-distribution-api-version', 'registry/2.0');
    this.inflight.add(res);
    res.once('close', () => {
      this.inflight.delete(res);
      if (this.inflight.size === 0) this.inflightEmpty?.();
    });
    const target = req.url ?? '/';
    const url = new URL(target, 'http://proxy.invalid');
    // WHATWG URL parsing resolves dot segments, percent-encoded ones (`%2e%2e`) included, so `/v2/a/../b/…` would
    // silently become `/v2/b/…` and be fetched. Route on the path exactly as sent instead: the name grammar then
    // refuses `..` with 400 NAME_INVALID and nothing goes upstream.
    const q = target.indexOf('?');
    const pathname = target.startsWith('/') ? (q === -1 ? target : target.slice(0, q)) : url.pathname;
    const method = req.method ?? 'GET';
    let kind = 'other';
    const log = this.log.child({ rid });
    const client = this.clientOf(req, res);
    res.once('finish', () => {
      const ms = performance.now() - started;
      this.metrics.requests.inc({ kind, method, status: String(res.statusCode) });
      this.metrics.requestDuration.observe({ kind, method }, ms / 1000);
      log.info(
        {
          method,
          path: pathname,
          ns: url.searchParams.get('ns') ?? undefined,
          status: res.statusCode,
          ms: Math.round(ms),
          client: client.ip,
          ua: req.headers['user-agent'],
        },
        'request',
      );
    });
    res.once('close', () => {
      if (!res.writableFinished) log.warn({ method, path: pathname }, 'response aborted');
    });
    try {
      if (client.overLimit) throw errors.tooManyRequests('too many requests in flight from this client address', '1');
      if (pathname === '/healthz') return sendJson(res, 200, { status: 'ok' });
      if (pathname === '/readyz') return this.readyz(res);
      // With a separate operator listener, the registry listener serves neither metrics, the /api/ endpoints nor the
      // decision explorer (/ui), and the operator listener serves nothing else.
      const operatorOnly = pathname === '/metrics' || pathname.startsWith('/api/') || pathname === '/ui' || pathname.startsWith('/ui/');
      if (this.opts.config.operatorListen && operatorOnly !== (surface === 'operator')) throw errors.notFound(`no such endpoint: ${pathname.slice(0, 200)}`);
      if (pathname === '/metrics') {
        if (!metricsAllowed(this.metricsToken, req)) throw errors.unauthorized('metrics need the configured bearer token', 'Bearer realm="portcullis-metrics"');
        const body = await this.metrics.registry.metrics();
        return sendJson(res, 200, body, method === 'HEAD', this.metrics.registry.contentType);
      }
      for (const h of this.api) if (await h.handle(req, res, url)) return;
      if (this.opts.auth?.isTokenRequest(pathname)) return await serveToken(this.opts.auth, req, res, url, client.ip);
      const ep: Endpoint | undefined = pathname.startsWith('/v2') ? parseEndpoint(pathname) : undefined;
      if (!ep) throw errors.notFound(`no such endpoint: ${pathname.slice(0, 200)}`);
      kind = ep.kind;
      if (method !== 'GET' && method !== 'HEAD') {
        // Refuse before reading any body; the connection is closed so an unread upload cannot be smuggled on.
        res.setHeader('connection', 'close');
        res.setHeader('allow', 'GET, HEAD');
        throw errors.unsupported(`${method} is not supported: this is a read-only pull-through proxy`);
      }
      if (ep.kind === 'upload') throw errors.unsupported('pushes are not supported: this is a read-only pull-through proxy');
      const identity = await identify(this.opts.auth, req, ep, client.ip);
      if (this.shuttingDown) res.setHeader('connection', 'close');
      // The upstream client reads who this request is for when it forwards identities to a central tier.
      await requestIdentity.run(identity, () => this.handlers.handle({ req, res, url, method, clientIp: client.ip, identity }, ep));
    } catch (e) {
      // An unexpected error's message can name the server's files (ENOENT, EACCES …): the client gets the request id,
      // the log gets the message.
      const err = e instanceof RegistryError ? e : new RegistryError('UPSTREAM_ERROR', `internal error (request id ${rid})`, undefined, { status: 500 });
      if (!(e instanceof RegistryError) || httpStatus(err) >= 500) log.warn({ err: errorText(e), path: pathname }, 'request failed');
      if (res.headersSent) {
        res.destroy();
        return;
      }
      sendError(res, err, method === 'HEAD');
    }
  }

  /**
   * The client of a request: the connection's peer (or its PROXY header's source), or behind a trusted proxy the
   * X-Forwarded-For client, whose requests in flight then count against the per-client cap instead of connections.
   */
  private clientOf(req: IncomingMessage, res: ServerResponse): { ip: string; overLimit: boolean } {
    const guard = this.guard;
    if (!guard) return { ip: req.socket.remoteAddress ?? '', overLimit: false };
    guard.watch(req.socket);
    const peer = guard.peerOf(req.socket);
    const ip = forwardedClient(peer.address, req.headers['x-forwarded-for'], this.trustedProxies);
    if (peer.counted !== undefined || !this.trustedProxies.has(peer.address)) return { ip, overLimit: false };
    const leave = guard.enterRequest(ip);
    if (!leave) return { ip, overLimit: true };
    res.once('close', leave);
    return { ip, overLimit: false };
  }

  private readyz(res: ServerResponse): void {
    const problems = this.opts.readiness.map((f) => f()).filter((p): p is string => p !== undefined);
    if (this.shuttingDown) problems.push('shutting down');
    const degraded = (this.opts.degraded ?? []).map((f) => f()).filter((p): p is string => p !== undefined);
    const status = problems.length ? 'unready' : degraded.length ? 'degraded' : 'ready';
    sendJson(res, problems.length ? 503 : 200, { status, problems, ...(degraded.length ? { degraded } : {}) });
  }

  /** Stops accepting, lets in-flight downloads finish within the grace period, then closes everything. */
  async close(graceMs = this.opts.config.shutdownGrace): Promise<void> {
    this.shuttingDown = true;
    const server = this.server;
    const front = this.front;
    const closed = front ? new Promise<void>((r) => front.close(() => r())) : Promise.resolve();
    const operator = this.operatorServer;
    const operatorClosed = operator ? new Promise<void>((r) => operator.close(() => r())) : Promise.resolve();
    operator?.closeAllConnections();
    const deadline = Date.now() + graceMs;
    // With reusePort a replacement process is already listening. A connection this one accepted just before SIGTERM
    // may not have sent its request yet: closed as idle, its client would see a reset (a failed pull). So first a
    // short hand-off, during which requests are still served (with `Connection: close`, so clients reconnect to
    // the new process); only then are idle connections closed.
    if (this.opts.config.reusePort) await new Promise((r) => setTimeout(r, Math.min(graceMs, HANDOFF_MS)).unref());
    server?.closeIdleConnections();
    await this.downloads.drain(graceMs);
    // A finished download is not a finished response: a client slower than the upstream, or one reading a cached
    // blob, is still being sent bytes. Cutting those connections now would turn a graceful shutdown into a failed
    // pull, so let in-flight responses complete within what is left of the grace period.
    if (this.inflight.size > 0) {
      const left = Math.max(0, deadline - Date.now());
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        timer.unref();
        this.inflightEmpty = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.inflightEmpty = undefined;
    }
    server?.closeAllConnections();
    // Connections HTTP has not seen yet (in a TLS handshake, or sending a PROXY header) would hold the close open.
    this.guard?.destroyAll();
    await closed;
    clearInterval(this.pruner);
    await operatorClosed;
    await this.opts.auth?.close();
    // Stops Node's connection checks; the HTTP server never listened, so its "not running" answer is expected.
    server?.close(() => {});
    this.guard?.close();
    await Promise.all(this.opts.clients.map((c) => c.destroy()));
    this.opts.signatures?.close?.();
    await this.blobStore.close();
    this.meta.close();
  }
}
