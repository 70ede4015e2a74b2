/**
 * Admin endpoints for rollouts, with the admin token of the report API (`scan.admin.token`, else
 * `scan.reports.token`) as `Authorization: Bearer <token>`:
 *
 * - `POST /api/v1/admin/impact`: what a candidate policy would change, without activating it (gate/impact.ts).
 *   Body: the bundle itself (`application/gzip` or `application/octet-stream`), or `application/json`
 *   `{"bundle": "<base64 tar.gz>", "settings": {…}}` with either or both. At most `policy.maxBundleSize` (a JSON
 *   body a third more, for the base64); signature-checked like a bundle that would go live when `policy.signing`
 *   is configured. 400 names what is wrong with the candidate.
 * - `GET /api/v1/admin/reevaluate/last`: the last scheduled re-evaluation (every image, what turned denied, what
 *   was purged); 404 before the first run.
 * - `POST /api/v1/admin/warm`: `{"images": ["registry/repo:tag", …], "as": {"user", "groups", "method"}}` → what
 *   was admitted (and fetched), denied (with the reason) or failed (server/warm.ts), decided for `as` (default:
 *   anonymous) as `portcullis check --as` does. At most `warm.maxImages` images and 64 KiB of body.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import { readSecret } from '../config/load.js';
import type { Config } from '../config/schema.js';
import { impact, type RecentDecisions } from '../gate/impact.js';
import type { ReevalTarget } from '../gate/reeval.js';
import type { ReevalRun } from '../gate/reeval-schedule.js';
import { BundleError, DEFAULT_MAX_BUNDLE } from '../policy/bundle.js';
import { loadCandidate, type CandidateRequest, type CandidateSources } from '../policy/candidate.js';
import type { Decider } from '../policy/contract.js';
import { RegistryError } from './errors.js';
import type { OciErrorCode } from '../oci/errors.js';
import { sendError, sendJson } from './respond.js';
import type { ApiHandler } from './scan-api.js';
import { warm, WarmLimitError, type WarmIdentity, type WarmTarget } from './warm.js';

export interface AdminApiOptions {
  config: Config;
  log: Logger;
  /** The running proxy, once it exists. */
  target: () => (ReevalTarget & WarmTarget) | undefined;
  active: Decider;
  candidates: CandidateSources;
  recent: RecentDecisions;
  /** The last scheduled re-evaluation (reevaluate.interval), if one has run. */
  lastRun: () => ReevalRun | undefined;
  now: () => number;
}

const WARM_BODY_MAX = 64 * 1024;

function apiError(status: number, code: OciErrorCode, message: string, detail: unknown = null, headers?: Record<string, string>): RegistryError {
  return new RegistryError(code, message, detail, { status, ...(headers ? { headers } : {}) });
}

export class AdminApi implements ApiHandler {
  constructor(private readonly o: AdminApiOptions) {}

  async handle(req: IncomingMessage, res: ServerResponse): Promise<boolean> {
    const path = (req.url ?? '/').split('?', 1)[0]!;
    if (path !== '/api/v1/admin/impact' && path !== '/api/v1/admin/warm' && path !== '/api/v1/admin/reevaluate/last') return false;
    try {
      this.authorize(req);
      if (path === '/api/v1/admin/reevaluate/last') return this.lastRun(req, res);
      if (req.method !== 'POST') throw apiError(405, 'UNSUPPORTED', 'method not allowed here (allowed: POST)', null, { allow: 'POST' });
      const target = this.o.target();
      if (!target) throw apiError(503, 'UNAVAILABLE', 'not ready');
      if (path === '/api/v1/admin/impact') await this.impact(req, res, target);
      else await this.warm(req, res, target);
    } catch (e) {
      const rid = res.getHeader('x-request-id');
      if (!(e instanceof RegistryError)) this.o.log.warn({ err: e instanceof Error ? e.message : String(e), path, rid }, 'admin api request failed');
      sendError(res, e instanceof RegistryError ? e : apiError(500, 'INTERNAL_ERROR', `internal error (request id ${String(rid ?? '-')})`), false);
    }
    return true;
  }

  /** The admin token, compared in constant time; unreadable: 503 without saying why (the log says). */
  private authorize(req: IncomingMessage): void {
    const scan = this.o.config.scan;
    const ref = scan?.admin?.token ?? scan?.reports?.token;
    if (!ref) throw apiError(404, 'NOT_FOUND', 'the admin API is not enabled (no token configured: scan.admin.token)');
    let expected: string;
    try {
      expected = readSecret(ref);
    } catch {
      throw apiError(503, 'UNAVAILABLE', 'the admin API is unavailable');
    }
    const m = /^Bearer[ ]+(\S+)\s*$/i.exec(req.headers.authorization ?? '');
    const hash = (s: string): Buffer => createHash('sha256').update(s).digest();
    if (!m || expected === '' || !timingSafeEqual(hash(m[1]!), hash(expected))) {
      throw apiError(401, 'UNAUTHORIZED', 'authentication required: send Authorization: Bearer <admin token>', null, {
        'www-authenticate': 'Bearer realm="portcullis"',
      });
    }
  }

  private async impact(req: IncomingMessage, res: ServerResponse, target: ReevalTarget): Promise<void> {
    const max = this.o.config.policy.maxBundleSize ?? DEFAULT_MAX_BUNDLE;
    const ct = (req.headers['content-type'] ?? '').split(';', 1)[0]!.trim().toLowerCase();
    let request: CandidateRequest;
    if (ct === 'application/json') {
      const body = await readBody(req, res, Math.ceil(max / 3) * 4 + 1024 * 1024, 'policy.maxBundleSize');
      request = parseCandidateJson(body);
    } else if (ct === 'application/gzip' || ct === 'application/x-gzip' || ct === 'application/octet-stream') {
      request = { bundle: await readBody(req, res, max, 'policy.maxBundleSize') };
    } else throw apiError(415, 'UNSUPPORTED', 'send the bundle as application/gzip, or application/json {"bundle": base64, "settings": {…}}');
    let candidate: Decider;
    try {
      candidate = await loadCandidate(request, this.o.candidates);
    } catch (e) {
      if (e instanceof BundleError) throw apiError(400, 'BUNDLE_INVALID', `candidate rejected: ${e.message}`, { reason: e.code });
      throw e;
    }
    const report = await impact(target, { active: this.o.active, candidate, recent: this.o.recent, now: this.o.now });
    this.o.log.info({ candidate: report.candidate_revision, active: report.active_revision, changed: report.changed }, 'policy impact evaluated');
    sendJson(res, 200, report);
  }

  private lastRun(req: IncomingMessage, res: ServerResponse): true {
    if (req.method !== 'GET' && req.method !== 'HEAD')
      throw apiError(405, 'UNSUPPORTED', 'method not allowed here (allowed: GET, HEAD)', null, { allow: 'GET, HEAD' });
    const run = this.o.lastRun();
    if (!run) throw apiError(404, 'NOT_FOUND', 'no scheduled re-evaluation has run yet (reevaluate.interval)');
    sendJson(
      res,
      200,
      { ...run.report, newly_denied: run.newlyDenied.map((e) => ({ image: e.image, previous: e.previous, deny: e.deny })), purged: run.purged ?? null },
      req.method === 'HEAD',
    );
    return true;
  }

  private async warm(req: IncomingMessage, res: ServerResponse, target: WarmTarget): Promise<void> {
    const body = await readBody(req, res, WARM_BODY_MAX, 'the 64 KiB warm request limit');
    let images: unknown;
    let as: unknown;
    try {
      ({ images, as } = JSON.parse(body.toString('utf8')) as { images?: unknown; as?: unknown });
    } catch {
      throw apiError(400, 'PARAM_INVALID', 'body is not JSON: send {"images": ["registry/repository:tag", …]}');
    }
    if (!Array.isArray(images) || !images.every((i): i is string => typeof i === 'string' && i.length > 0 && i.length <= 512)) {
      throw apiError(400, 'PARAM_INVALID', 'images: a list of image references (strings of at most 512 characters)', { field: 'images' });
    }
    const identity = parseIdentity(as);
    let report;
    try {
      report = await warm(target, this.o.config.warm, images, req.socket.remoteAddress ?? '', identity);
    } catch (e) {
      if (e instanceof WarmLimitError) throw apiError(400, 'PARAM_INVALID', e.message, { field: 'images' });
      throw e;
    }
    this.o.log.info({ admitted: report.admitted, denied: report.denied, failed: report.failed }, 'images warmed');
    sendJson(res, 200, report);
  }
}

/** `as`: who the policy decides for, as `portcullis check --as` (default: anonymous). */
function parseIdentity(as: unknown): WarmIdentity {
  if (as === undefined) return { user: null, groups: [], method: 'anonymous' };
  const a = as as { user?: unknown; groups?: unknown; method?: unknown };
  const short = (v: unknown): v is string => typeof v === 'string' && v.length > 0 && v.length <= 256;
  if (
    typeof as !== 'object' ||
    as === null ||
    !short(a.user) ||
    (a.groups !== undefined && !(Array.isArray(a.groups) && a.groups.length <= 64 && a.groups.every(short))) ||
    (a.method !== undefined && !(typeof a.method === 'string' && /^[a-z]{1,16}$/.test(a.method)))
  ) {
    throw apiError(400, 'PARAM_INVALID', 'as: {"user": name, "groups": [names], "method": "basic"|"token"|"mtls"|"oidc"}', { field: 'as' });
  }
  return { user: a.user, groups: [...(a.groups ?? [])].sort(), method: a.method ?? 'basic' };
}

function parseCandidateJson(body: Buffer): CandidateRequest {
  let doc: unknown;
  try {
    doc = JSON.parse(body.toString('utf8'));
  } catch {
    throw apiError(400, 'PARAM_INVALID', 'body is not JSON');
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw apiError(400, 'PARAM_INVALID', 'expected {"bundle": base64, "settings": {…}}');
  const d = doc as { bundle?: unknown; settings?: unknown };
  if (d.bundle !== undefined && (typeof d.bundle !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(d.bundle))) {
    throw apiError(400, 'PARAM_INVALID', 'bundle: base64 of the tar.gz', { field: 'bundle' });
  }
  if (d.settings !== undefined && (typeof d.settings !== 'object' || d.settings === null || Array.isArray(d.settings))) {
    throw apiError(400, 'PARAM_INVALID', 'settings: an object (data.portcullis.config)', { field: 'settings' });
  }
  return {
    ...(typeof d.bundle === 'string' ? { bundle: Buffer.from(d.bundle, 'base64') } : {}),
    ...(d.settings ? { settings: d.settings as Record<string, unknown> } : {}),
  };
}

/** Reads the body up to `max` bytes; beyond it answers 413 and closes the connection rather than reading on. */
async function readBody(req: IncomingMessage, res: ServerResponse, max: number, limit: string): Promise<Buffer> {
  const tooLarge = (): RegistryError => {
    res.setHeader('connection', 'close');
    return apiError(413, 'SIZE_INVALID', `body is larger than ${max} bytes (${limit})`);
  };
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > max) throw tooLarge();
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of req) {
    n += (c as Buffer).length;
    if (n > max) throw tooLarge();
    chunks.push(c as Buffer);
  }
  return Buffer.concat(chunks);
}
