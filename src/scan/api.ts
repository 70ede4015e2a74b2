/**
 * HTTP endpoints of the scan capability, outside /v2/. Every one needs `Authorization: Bearer <token>`
 * (compared in constant time); errors are OCI-style JSON, `{"errors":[{"code","message","detail"}]}`.
 *
 * Reports (token: `scan.reports.token`):
 * - `PUT    /api/v1/reports/<registry>/<repository>@<digest>`  body: Trivy JSON or SARIF 2.1.0 → 201
 * - `GET    /api/v1/reports/<registry>/<repository>@<digest>`  → the stored report's summary (`?raw=1`: the body)
 * - `DELETE /api/v1/reports/<registry>/<repository>@<digest>`  → 204
 * - `GET    /api/v1/reports?registry=&repository=&digest=&limit=&offset=` → `{reports, total}`
 *
 * Admin (token: `scan.admin.token`, else the reports token):
 * - `GET /api/v1/admin/reevaluate[?all=1]` → the cached images the current policy and scan data would now deny.
 *
 * A report is bound to its digest: a Trivy report whose `Metadata.RepoDigests` or `ArtifactName`, or a SARIF run
 * whose `properties.repoDigests` or `imageName`, names a different digest is refused with 400 DIGEST_INVALID.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { readSecret } from '../config/load.js';
import type { SecretRef } from '../config/schema.js';
import type { ApiHandler, EvidenceDeps } from '../gate/evidence.js';
import { isDigest } from '../routing/reference.js';
import { RegistryError } from '../server/errors.js';
import { sendError, sendJson } from '../server/respond.js';
import { parseReport, ReportFormatError } from './formats.js';
import { summarize } from './normalize.js';
import { reevaluate, type ReevalTarget } from './reeval.js';
import type { ScanService } from './service.js';

// The report API answers with the same OCI-style error JSON as the registry endpoints.
const ApiError = RegistryError;
type ApiError = RegistryError;

const PREFIX = '/api/v1/';

export interface ScanApiOptions {
  service: ScanService | undefined;
  deps: EvidenceDeps;
  /** The running app, for re-evaluation (set once the App exists). */
  target: () => ReevalTarget | undefined;
  now: () => number;
}

export class ScanApi implements ApiHandler {
  constructor(private readonly o: ScanApiOptions) {}

  async handle(req: IncomingMessage, res: ServerResponse, url: URL): Promise<boolean> {
    const path = (req.url ?? '/').split('?', 1)[0]!;
    if (!path.startsWith(PREFIX)) return false;
    const rest = path.slice(PREFIX.length);
    const method = req.method ?? 'GET';
    try {
      if (rest === 'reports' || rest.startsWith('reports/')) {
        await this.reports(req, res, url, method, rest.slice('reports'.length));
        return true;
      }
      if (rest === 'admin/reevaluate') {
        await this.reevaluate(req, res, url, method);
        return true;
      }
      // Not ours: let another handler (or the 404) have it.
      return false;
    } catch (e) {
      const err = e instanceof ApiError ? e : new ApiError(500, 'INTERNAL_ERROR', `internal error: ${e instanceof Error ? e.message : String(e)}`);
      if (err.status >= 500) this.o.deps.log.warn({ err: err.message, path }, 'scan api request failed');
      sendError(res, err, method === 'HEAD');
      return true;
    }
  }

  private authorize(req: IncomingMessage, ref: SecretRef | undefined, what: string): void {
    if (!ref) throw new ApiError(404, 'NOT_FOUND', `the ${what} API is not enabled (no token configured)`);
    let expected: string;
    try {
      expected = readSecret(ref);
    } catch (e) {
      throw new ApiError(503, 'UNAVAILABLE', `the ${what} API token cannot be read: ${e instanceof Error ? e.message : String(e)}`);
    }
    const h = req.headers.authorization ?? '';
    const m = /^Bearer[ ]+(\S+)\s*$/i.exec(h);
    // Hash both sides so the comparison takes the same time whatever the lengths.
    const digest = (s: string): Buffer => createHash('sha256').update(s).digest();
    const ok = m !== null && expected !== '' && timingSafeEqual(digest(m[1]!), digest(expected));
    if (!ok) throw new ApiError(401, 'UNAUTHORIZED', 'authentication required: send Authorization: Bearer <token>', null, { 'www-authenticate': 'Bearer realm="portcullis"' });
  }

  // --- /api/v1/reports

  private async reports(req: IncomingMessage, res: ServerResponse, url: URL, method: string, tail: string): Promise<void> {
    const cfg = this.o.service?.config.reports;
    this.authorize(req, cfg?.token, 'report');
    const service = this.o.service!;
    if (tail === '' || tail === '/') {
      if (method !== 'GET' && method !== 'HEAD') throw methodNotAllowed('GET, HEAD');
      const limit = intParam(url, 'limit', 100, 1, 1000);
      const offset = intParam(url, 'offset', 0, 0, Number.MAX_SAFE_INTEGER);
      const filter = {
        ...(url.searchParams.get('registry') ? { registry: url.searchParams.get('registry')!.toLowerCase() } : {}),
        ...(url.searchParams.get('repository') ? { repository: url.searchParams.get('repository')! } : {}),
        ...(url.searchParams.get('digest') ? { digest: url.searchParams.get('digest')! } : {}),
      };
      const { reports, total } = service.store.listReports({ ...filter, limit, offset });
      return sendJson(res, 200, { total, offset, reports: reports.map(reportJson) }, method === 'HEAD');
    }
    let decoded: string;
    try {
      decoded = decodeURIComponent(tail.slice(1));
    } catch {
      throw new ApiError(400, 'NAME_INVALID', 'malformed percent-encoding in the path');
    }
    const ref = this.parseRef(decoded);
    if (method === 'PUT') return this.putReport(req, res, ref);
    if (method === 'GET' || method === 'HEAD') {
      const r = service.store.getReport(ref.registry, ref.repository, ref.digest);
      if (!r) throw unknownReport(ref);
      if (url.searchParams.get('raw') === '1' || url.searchParams.get('raw') === 'true') {
        const body = service.store.reportBody(ref.registry, ref.repository, ref.digest)!;
        return sendJson(res, 200, body, method === 'HEAD', r.format === 'sarif' ? 'application/sarif+json' : 'application/json');
      }
      const { findings, ...meta } = r;
      const summary = summarize({ scannedAt: r.scannedAt, findings, ...(r.scanner ? { scanner: r.scanner } : {}) }, { status: 'ok', source: 'report', now: this.o.now(), maxVulnerabilities: service.config.maxVulnerabilities });
      return sendJson(res, 200, { ...reportJson(meta), summary }, method === 'HEAD');
    }
    if (method === 'DELETE') {
      if (!service.store.deleteReport(ref.registry, ref.repository, ref.digest)) throw unknownReport(ref);
      this.reportChanged(service, ref.digest);
      this.o.deps.log.info({ registry: ref.registry, repository: ref.repository, digest: ref.digest }, 'scan report deleted');
      res.statusCode = 204;
      res.end();
      return;
    }
    throw methodNotAllowed('GET, HEAD, PUT, DELETE');
  }

  /** A report came or went: the scan cache and the gate's cached decisions for that digest are stale. */
  private reportChanged(service: ScanService, digest: string): void {
    service.reportsChanged(digest);
    const dropped = isDigest(digest) ? (this.o.target()?.gate.forgetDigest(digest) ?? 0) : 0;
    if (dropped > 0) this.o.deps.log.info({ digest, decisions: dropped }, 'cached decisions dropped after a scan report change');
  }

  /** `<registry>/<repository>@<digest>`, with the registry one of the configured upstreams (or an alias). */
  private parseRef(ref: string): { registry: string; repository: string; digest: string } {
    const at = ref.lastIndexOf('@');
    if (at === -1) throw new ApiError(400, 'NAME_INVALID', 'expected /api/v1/reports/<registry>/<repository>@<digest>');
    const name = ref.slice(0, at);
    const digest = ref.slice(at + 1);
    if (!isDigest(digest)) throw new ApiError(400, 'DIGEST_INVALID', `invalid digest "${digest.slice(0, 80)}"`);
    if (!name.includes('/')) throw new ApiError(400, 'NAME_INVALID', 'expected <registry>/<repository>@<digest>');
    const route = this.o.deps.router.resolve(name, undefined);
    if ('code' in route) throw new ApiError(route.code === 'NAME_UNKNOWN' ? 404 : 400, route.code, route.message);
    if (route.routing !== 'prefix') throw new ApiError(400, 'NAME_INVALID', `"${name.split('/', 1)[0]}" is not a registry host: name the registry, e.g. docker.io/library/nginx@sha256:…`);
    return { registry: route.registry, repository: route.repository, digest };
  }

  private async putReport(req: IncomingMessage, res: ServerResponse, ref: { registry: string; repository: string; digest: string }): Promise<void> {
    const service = this.o.service!;
    const cfg = service.config.reports!;
    const enc = req.headers['content-encoding'];
    if (enc !== undefined && enc !== 'identity') throw new ApiError(415, 'UNSUPPORTED', `content-encoding ${enc} is not supported: send the report uncompressed`);
    const ct = (req.headers['content-type'] ?? 'application/json').split(';', 1)[0]!.trim().toLowerCase();
    if (!/^application\/([\w.+-]+\+)?json$/.test(ct)) throw new ApiError(415, 'UNSUPPORTED', `content-type ${ct} is not supported: send application/json (Trivy JSON) or application/sarif+json`);
    const body = await readBody(req, res, cfg.maxSize);
    let doc: unknown;
    try {
      doc = JSON.parse(body.toString('utf8'));
    } catch {
      throw new ApiError(400, 'REPORT_INVALID', 'report is not valid JSON');
    }
    let parsed;
    try {
      parsed = parseReport(doc);
    } catch (e) {
      throw new ApiError(400, 'REPORT_INVALID', e instanceof ReportFormatError ? e.message : String(e));
    }
    const named = parsed.namedDigests;
    if (named.length > 0 && !named.includes(ref.digest)) {
      const where = parsed.format === 'trivy' ? 'Metadata.RepoDigests / ArtifactName' : 'runs[].properties repoDigests / imageName';
      throw new ApiError(400, 'DIGEST_INVALID', `report is for ${named.join(', ')} (${where}), not for ${ref.digest}`, { report_digests: named, digest: ref.digest });
    }
    if (named.length === 0 && cfg.requireDigestBinding) {
      throw new ApiError(400, 'DIGEST_INVALID', `report names no image digest (${parsed.format === 'trivy' ? 'Metadata.RepoDigests' : 'runs[].properties.repoDigests'}) and scan.reports.requireDigestBinding is set`);
    }
    const uploadedAt = Date.now();
    const scannedAt = parsed.result.scannedAt ?? new Date(this.o.now()).toISOString();
    const stored = {
      ...ref,
      format: parsed.format,
      uploadedAt,
      scannedAt,
      scanner: parsed.result.scanner ?? null,
      bound: named.length > 0,
      size: body.length,
      findings: parsed.result.findings,
    };
    const existed = service.store.getReport(ref.registry, ref.repository, ref.digest) !== undefined;
    service.store.putReport(stored, body);
    this.reportChanged(service, ref.digest);
    const summary = summarize({ scannedAt, findings: stored.findings, ...(stored.scanner ? { scanner: stored.scanner } : {}) }, { status: 'ok', source: 'report', now: this.o.now(), maxVulnerabilities: service.config.maxVulnerabilities });
    this.o.deps.log.info({ ...ref, format: parsed.format, findings: stored.findings.length, counts: summary.counts }, 'scan report stored');
    const { findings: _f, ...meta } = stored;
    res.setHeader('location', `/api/v1/reports/${ref.registry}/${ref.repository}@${ref.digest}`);
    sendJson(res, existed ? 200 : 201, { ...reportJson(meta), summary });
  }

  // --- /api/v1/admin/reevaluate

  private async reevaluate(req: IncomingMessage, res: ServerResponse, url: URL, method: string): Promise<void> {
    const cfg = this.o.deps.config.scan;
    this.authorize(req, cfg?.admin?.token ?? cfg?.reports?.token, 'admin');
    if (method !== 'GET') throw methodNotAllowed('GET');
    const target = this.o.target();
    if (!target) throw new ApiError(503, 'UNAVAILABLE', 'not ready');
    const all = ['1', 'true'].includes(url.searchParams.get('all') ?? '');
    sendJson(res, 200, await reevaluate(target, { all, now: this.o.now }));
  }
}

function reportJson(r: { registry: string; repository: string; digest: string; format: string; uploadedAt: number; scannedAt: string; scanner: string | null; bound: boolean; size: number }): Record<string, unknown> {
  return {
    registry: r.registry,
    repository: r.repository,
    digest: r.digest,
    format: r.format,
    uploaded_at: new Date(r.uploadedAt).toISOString(),
    scanned_at: r.scannedAt,
    scanner: r.scanner,
    bound: r.bound,
    size: r.size,
  };
}

function unknownReport(ref: { registry: string; repository: string; digest: string }): ApiError {
  return new ApiError(404, 'REPORT_UNKNOWN', `no report for ${ref.registry}/${ref.repository}@${ref.digest}`);
}

function methodNotAllowed(allow: string): ApiError {
  return new ApiError(405, 'UNSUPPORTED', `method not allowed here (allowed: ${allow})`, null, { allow });
}

function intParam(url: URL, name: string, dflt: number, min: number, max: number): number {
  const v = url.searchParams.get(name);
  if (v === null) return dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max) throw new ApiError(400, 'PARAM_INVALID', `${name} must be an integer between ${min} and ${max}`);
  return n;
}

/** Reads the body up to `max` bytes; beyond it answers 413 and closes the connection rather than reading on. */
async function readBody(req: IncomingMessage, res: ServerResponse, max: number): Promise<Buffer> {
  const tooLarge = (): ApiError => {
    res.setHeader('connection', 'close');
    return new ApiError(413, 'SIZE_INVALID', `report is larger than the ${max} byte limit (scan.reports.maxSize)`);
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
