/**
 * The decision explorer under /ui: server-rendered pages behind the admin token, with a small script for live
 * updates. It answers on the operator listener when one is configured (app.ts), like /api/.
 *
 * Who may see it: whoever holds the admin token of the admin API (`scan.admin.token`, else `scan.reports.token`,
 * as for GET /api/v1/admin/reevaluate), sent as `Authorization: Bearer <token>` or, for a browser, as the password of
 * HTTP Basic (any user name). Without such a token configured, /ui answers 404: the pages show client identities
 * and image names, and are never open to anyone.
 *
 * Every response carries a strict CSP (scripts and styles from this origin only, no framing), nosniff and no-store.
 * Reads are GET; the one form that makes the proxy do something (the "try an image" check contacts the upstream and
 * records a decision) is a POST that needs a CSRF token and a same-origin request.
 */
import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import { readSecret } from '../config/load.js';
import type { Config, SecretRef } from '../config/schema.js';
import type { Admission } from '../policy/contract.js';
import type { Metrics } from '../metrics/metrics.js';
import type { ReevalReport } from '../gate/reeval.js';
import { CSS, JS } from './assets.js';
import { html } from './html.js';
import type { DecisionFilter, DecisionRing } from './ring.js';
import { healthPage, imagesPage, tryPage, type HealthView, type TryForm } from './views-ops.js';
import { decisionPage, decisionsPage, OUTCOMES, page } from './views.js';

/** What the explorer reads from the running proxy; server/bootstrap.ts provides it once the App exists. */
export interface UiTarget {
  metrics: Metrics;
  policy(): { revision: string; last: { ok: boolean; at: string; error?: string } | undefined };
  cache(): { bytes: number; entries: number };
  /** The re-evaluation report of every cached image (what GET /api/v1/admin/reevaluate?all=1 answers). */
  reevaluate(): Promise<ReevalReport>;
  /** `portcullis check`'s pipeline for one reference, as the given identity. */
  check(
    ref: string,
    as: { user: string | null; groups: string[]; method: string },
  ): Promise<{ image: string; upstream: string; digest: string; admission: Admission }>;
}

export interface UiOptions {
  config: Config;
  ring: DecisionRing;
  target: () => UiTarget | undefined;
  log: Logger;
}

const CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
/** Live-update streams open at once; more answer 429 (each holds a connection and a listener). */
const MAX_STREAMS = 16;
/** A stream whose client does not read is cut once this much is buffered for it. */
const MAX_STREAM_BUFFER = 64 * 1024;
const HEARTBEAT_MS = 25_000;
const MAX_FORM_BYTES = 8 * 1024;
const MAX_FIELD = 512;

class UiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

/** Mounted by the server like its other endpoints outside /v2/ (server/scan-api.ts ApiHandler, matched by shape). */
export class UiHandler {
  private readonly streams = new Set<ServerResponse>();
  /** Signs the CSRF token of the try form; new each start, so a token is only good for this process. */
  private readonly csrfKey = randomBytes(32);
  private reeval: Promise<ReevalReport> | undefined;
  private trying = false;

  constructor(private readonly o: UiOptions) {}

  async handle(req: IncomingMessage, res: ServerResponse, url: URL): Promise<boolean> {
    const path = (req.url ?? '/').split('?', 1)[0]!;
    if (!this.o.config.ui.enabled || (path !== '/ui' && !path.startsWith('/ui/'))) return false;
    const method = req.method ?? 'GET';
    for (const [k, v] of Object.entries(securityHeaders())) res.setHeader(k, v);
    try {
      this.authorize(req);
      await this.route(req, res, url, path, method);
    } catch (e) {
      const err = e instanceof UiError ? e : new UiError(500, `internal error (request id ${String(res.getHeader('x-request-id') ?? '-')})`);
      if (!(e instanceof UiError)) this.o.log.warn({ err: e instanceof Error ? e.message : String(e), path }, 'ui request failed');
      // A refused POST's body was never read: the connection cannot carry another request after it.
      if (method !== 'GET' && method !== 'HEAD' && !req.complete) res.setHeader('connection', 'close');
      if (res.headersSent) res.destroy();
      else
        send(
          res,
          err.status,
          page(
            'Error',
            'decisions',
            html`<h1>${err.status}</h1>
              <p class="error-box">${err.message}</p>`,
          ),
          method === 'HEAD',
          err.headers,
        );
    }
    return true;
  }

  /** Ends the live-update streams (a shutdown would otherwise wait for them). */
  close(): void {
    for (const s of this.streams) s.end();
    this.streams.clear();
  }

  private async route(req: IncomingMessage, res: ServerResponse, url: URL, path: string, method: string): Promise<void> {
    const head = method === 'HEAD';
    if (path === '/ui/try' && method === 'POST') return this.runTry(req, res);
    if (method !== 'GET' && method !== 'HEAD') throw new UiError(405, 'method not allowed', { allow: path === '/ui/try' ? 'GET, HEAD, POST' : 'GET, HEAD' });
    const ring = this.o.ring;
    if (path === '/ui' || path === '/ui/' || path === '/ui/decisions') {
      const filter = this.filterOf(url);
      const { records, matched } = ring.list(filter);
      return send(res, 200, decisionsPage({ records, matched, held: ring.size, capacity: ring.capacity, filter, upstreams: this.upstreams() }), head);
    }
    if (path.startsWith('/ui/decision/')) {
      const r = ring.get(decoded(path.slice('/ui/decision/'.length)));
      if (!r) throw new UiError(404, `no such decision here (the explorer keeps the last ${ring.capacity})`);
      return send(res, 200, decisionPage(r), head);
    }
    if (path === '/ui/events') return head ? send(res, 200, '', true, {}, 'text/event-stream; charset=utf-8') : this.events(req, res);
    if (path === '/ui/images') {
      const report = await this.reevaluate();
      return send(res, 200, imagesPage(report, url.searchParams.get('denied') === '1'), head);
    }
    if (path === '/ui/health') return send(res, 200, healthPage(await this.health()), head);
    if (path === '/ui/try') return send(res, 200, tryPage(this.emptyForm(field(url.searchParams, 'ref'))), head);
    if (path === '/ui/assets/ui.css') return send(res, 200, CSS, head, {}, 'text/css; charset=utf-8');
    if (path === '/ui/assets/ui.js') return send(res, 200, JS, head, {}, 'text/javascript; charset=utf-8');
    throw new UiError(404, 'no such page');
  }

  /** The admin token, as Bearer or as the password of Basic; see the file comment. */
  private authorize(req: IncomingMessage): void {
    const scan = this.o.config.scan;
    // The same credential as the admin API (server/scan-api.ts, reevaluate).
    const ref: SecretRef | undefined = scan?.admin?.token ?? scan?.reports?.token;
    if (!ref) throw new UiError(404, 'the decision explorer is not enabled: it needs the admin token (scan.admin.token)');
    let expected: string;
    try {
      expected = readSecret(ref);
    } catch {
      // config/load.ts logs which file and why; a client that has not even authenticated learns nothing.
      throw new UiError(503, 'the decision explorer is unavailable');
    }
    const given = presented(req.headers.authorization);
    const digest = (s: string): Buffer => createHash('sha256').update(s).digest();
    if (given === undefined || expected === '' || !timingSafeEqual(digest(given), digest(expected))) {
      throw new UiError(401, 'authentication required: the admin token, as the password (any user name)', {
        'www-authenticate': 'Basic realm="portcullis", charset="UTF-8"',
      });
    }
  }

  private filterOf(url: URL): DecisionFilter {
    const p = url.searchParams;
    const outcome = field(p, 'outcome');
    const upstream = field(p, 'upstream');
    return {
      ...((OUTCOMES as readonly string[]).includes(outcome) ? { outcome } : {}),
      ...(this.upstreams().includes(upstream) ? { upstream } : {}),
      ...(field(p, 'rule') ? { rule: field(p, 'rule') } : {}),
      ...(field(p, 'image') ? { image: field(p, 'image') } : {}),
      ...(field(p, 'client') ? { client: field(p, 'client') } : {}),
    };
  }

  private upstreams(): string[] {
    return this.o.config.upstreams.map((u) => u.name);
  }

  private target(): UiTarget {
    const t = this.o.target();
    if (!t) throw new UiError(503, 'not ready');
    return t;
  }

  /** One re-evaluation at a time: a second page load joins the running one. */
  private reevaluate(): Promise<ReevalReport> {
    this.reeval ??= this.target()
      .reevaluate()
      .finally(() => (this.reeval = undefined));
    return this.reeval;
  }

  private events(req: IncomingMessage, res: ServerResponse): void {
    if (this.streams.size >= MAX_STREAMS) throw new UiError(429, 'too many live-update streams open', { 'retry-after': '30' });
    res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8' });
    res.write('retry: 5000\n\n');
    this.streams.add(res);
    const unsubscribe = this.o.ring.subscribe((r) => {
      if (res.writableLength > MAX_STREAM_BUFFER) return void res.destroy();
      // JSON keeps the event on one data line whatever the id holds.
      res.write(`event: decision\ndata: ${JSON.stringify({ id: r.id, outcome: r.outcome })}\n\n`);
    });
    const heartbeat = setInterval(() => res.write(': keep-alive\n\n'), HEARTBEAT_MS);
    heartbeat.unref();
    res.once('close', () => {
      unsubscribe();
      clearInterval(heartbeat);
      this.streams.delete(res);
    });
    req.socket.setTimeout(0);
  }

  private async health(): Promise<HealthView> {
    const t = this.target();
    const m = t.metrics;
    const upstreamRequests = (await m.upstreamRequests.get()).values;
    const remaining = (await m.upstreamRateLimitRemaining.get()).values;
    const limit = (await m.upstreamRateLimitLimit.get()).values;
    const lookups = (await m.cacheLookups.get()).values;
    const served = (await m.bytesServed.get()).values;
    const decisionCache = (await m.decisionCache.get()).values;
    type Labels = Record<string, string | number | undefined>;
    const sum = (vals: Array<{ labels: Labels; value: number }>, pred: (l: Labels) => boolean): number =>
      vals.filter((v) => pred(v.labels)).reduce((a, v) => a + v.value, 0);
    const kinds = [...new Set(lookups.map((v) => String(v.labels.kind)))].sort();
    const cache = t.cache();
    return {
      policy: t.policy(),
      upstreams: this.o.config.upstreams.map((u) => {
        const mine = (l: Record<string, string | number | undefined>): boolean => l.upstream === u.name;
        const failed = sum(upstreamRequests, (l) => mine(l) && (l.status === 'error' || Number(l.status) >= 500));
        return {
          name: u.name,
          registry: u.registry,
          answered: sum(upstreamRequests, mine) - failed,
          failed,
          rateRemaining: remaining.find((v) => mine(v.labels))?.value,
          rateLimit: limit.find((v) => mine(v.labels))?.value,
        };
      }),
      cache: {
        bytes: cache.bytes,
        maxBytes: this.o.config.cache.maxSize,
        entries: cache.entries,
        hits: kinds.map((kind) => ({ kind, hit: sum(lookups, (l) => l.kind === kind && l.result === 'hit'), total: sum(lookups, (l) => l.kind === kind) })),
        servedFromCache: sum(served, (l) => l.source === 'cache'),
        servedFromUpstream: sum(served, (l) => l.source === 'upstream'),
      },
      decisions: {
        held: this.o.ring.size,
        capacity: this.o.ring.capacity,
        cacheHits: sum(decisionCache, (l) => l.result === 'hit'),
        cacheMisses: sum(decisionCache, (l) => l.result === 'miss'),
      },
    };
  }

  private csrfToken(): string {
    return createHmac('sha256', this.csrfKey).update('ui-try-v1').digest('base64url');
  }

  private emptyForm(ref = ''): TryForm {
    return { ref, as: '', groups: '', method: '', csrf: this.csrfToken() };
  }

  private async runTry(req: IncomingMessage, res: ServerResponse): Promise<void> {
    // A cross-site form post carries the browser's Basic credentials too: it must also carry this page's token, and
    // come from this origin when the browser says where it comes from.
    const site = req.headers['sec-fetch-site'];
    if (site !== undefined && site !== 'same-origin' && site !== 'none') throw new UiError(403, 'cross-site request refused');
    const origin = req.headers.origin;
    if (origin !== undefined && hostOf(origin) !== req.headers.host) throw new UiError(403, 'cross-origin request refused');
    const ct = (req.headers['content-type'] ?? '').split(';', 1)[0]!.trim().toLowerCase();
    if (ct !== 'application/x-www-form-urlencoded') throw new UiError(415, 'expected a form (application/x-www-form-urlencoded)');
    const p = new URLSearchParams(await readForm(req, res));
    const expected = Buffer.from(this.csrfToken());
    const given = Buffer.from(field(p, 'csrf'));
    if (given.length !== expected.length || !timingSafeEqual(given, expected))
      throw new UiError(403, 'the form has expired or did not come from this page: load it again');
    const form: TryForm = {
      ref: field(p, 'ref').trim(),
      as: field(p, 'as').trim(),
      groups: field(p, 'groups'),
      method: field(p, 'method').trim(),
      csrf: this.csrfToken(),
    };
    if (!form.ref) return send(res, 400, tryPage(form, undefined, 'name an image, e.g. docker.io/library/nginx:1.27'), false);
    if (form.method && !/^[a-z]{1,16}$/.test(form.method))
      return send(res, 400, tryPage(form, undefined, 'method: lower-case letters only (basic, token, mtls, oidc, anonymous)'), false);
    // One check at a time: each may contact the upstream and wait for evidence.
    if (this.trying) return send(res, 429, tryPage(form, undefined, 'another check is running; try again in a moment'), false, { 'retry-after': '5' });
    this.trying = true;
    try {
      const as = form.as
        ? {
            user: form.as,
            groups: form.groups
              .split(',')
              .map((g) => g.trim())
              .filter(Boolean)
              .sort(),
            method: form.method || 'basic',
          }
        : { user: null, groups: [], method: form.method || 'anonymous' };
      const t = this.target();
      const report = await t.check(form.ref, as);
      const rec = this.o.ring.get(report.admission.decisionId);
      const result = {
        ...report,
        revision: rec?.revision ?? t.policy().revision,
        signatures: rec?.signatures.status ?? 'unknown (answered from the decision cache)',
        scan: rec?.scan.status ?? 'unknown (answered from the decision cache)',
        recorded: rec !== undefined,
      };
      send(res, 200, tryPage(form, result), false);
    } catch (e) {
      // A routing or upstream answer (unknown name, manifest unknown) is shown; anything else may name files.
      const status = e instanceof Error && 'status' in e && typeof e.status === 'number' ? e.status : undefined;
      const shown =
        status !== undefined && status < 500 ? (e as Error).message : e instanceof Error && /^invalid (digest|tag) in /.test(e.message) ? e.message : undefined;
      if (!shown) this.o.log.warn({ err: e instanceof Error ? e.message : String(e) }, 'ui check failed');
      send(
        res,
        400,
        tryPage(form, undefined, `check failed: ${shown ?? `see the server log (request id ${String(res.getHeader('x-request-id') ?? '-')})`}`),
        false,
      );
    } finally {
      this.trying = false;
    }
  }
}

export function securityHeaders(): Record<string, string> {
  return {
    'content-security-policy': CSP,
    'x-content-type-options': 'nosniff',
    'x-frame-options': 'DENY',
    // same-origin, not no-referrer: with no-referrer Chromium sends `Origin: null` on this page's own form posts.
    'referrer-policy': 'same-origin',
    'cache-control': 'no-store',
    'cross-origin-opener-policy': 'same-origin',
    'cross-origin-resource-policy': 'same-origin',
  };
}

/** The token a request presents: a Bearer token, or the password of Basic credentials. */
function presented(header: string | undefined): string | undefined {
  if (!header) return undefined;
  const bearer = /^Bearer[ ]+(\S+)\s*$/i.exec(header);
  if (bearer) return bearer[1];
  const basic = /^Basic[ ]+([A-Za-z0-9+/=]+)\s*$/i.exec(header);
  if (!basic) return undefined;
  const decoded = Buffer.from(basic[1]!, 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  return colon === -1 ? undefined : decoded.slice(colon + 1);
}

/** The host of an Origin header; undefined for `null` or anything unparsable (refused). */
function hostOf(origin: string): string | undefined {
  try {
    return new URL(origin).host;
  } catch {
    return undefined;
  }
}

function decoded(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return '';
  }
}

function field(p: URLSearchParams, name: string): string {
  return (p.get(name) ?? '').slice(0, MAX_FIELD);
}

function send(res: ServerResponse, status: number, body: string, head: boolean, headers: Record<string, string> = {}, type = 'text/html; charset=utf-8'): void {
  res.statusCode = status;
  for (const [k, v] of Object.entries(headers)) res.setHeader(k, v);
  res.setHeader('content-type', type);
  res.setHeader('content-length', Buffer.byteLength(body));
  res.end(head ? undefined : body);
}

async function readForm(req: IncomingMessage, res: ServerResponse): Promise<string> {
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > MAX_FORM_BYTES) {
    res.setHeader('connection', 'close');
    throw new UiError(413, 'form too large');
  }
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of req) {
    n += (c as Buffer).length;
    if (n > MAX_FORM_BYTES) {
      res.setHeader('connection', 'close');
      throw new UiError(413, 'form too large');
    }
    chunks.push(c as Buffer);
  }
  return Buffer.concat(chunks).toString('utf8');
}
