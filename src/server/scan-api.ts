/**
 * HTTP endpoints of the scan capability, outside /v2/. Every one needs `Authorization: Bearer <token>`
 * (compared in constant time); errors are OCI-style JSON, `{"errors":[{"code","message","detail"}]}`.
 *
 * Reports (CI token: `scan.reports.token`; admin token: `scan.admin.token`):
 * - `PUT    /api/v1/reports/<registry>/<repository>@<digest>`  body: Trivy JSON or SARIF 2.1.0 → 201 (CI token)
 * - `GET    /api/v1/reports/<registry>/<repository>@<digest>[?id=N]`  → the version in force (or version N): its
 *   summary and the list of kept versions (`?raw=1`: the body as pushed)            (CI or admin token)
 * - `DELETE /api/v1/reports/<registry>/<repository>@<digest>[?id=N]` → 204: every version, or version N (admin only)
 * - `GET    /api/v1/reports?registry=&repository=&digest=&history=1&limit=&offset=` → `{reports, total}`
 *
 * Admin (token: `scan.admin.token`, else the reports token):
 * - `GET /api/v1/admin/reevaluate[?all=1]` → the cached images the current policy and scan data would now deny.
 *
 * Reports are append-only history: a push adds a version, the one with the latest scan time is in force, and the CI
 * token can add but never remove (deleting evidence is the admin's). A report is refused (400, naming the field)
 * when it has no results for the artifact (`{"SchemaVersion":2}` is not a clean scan), has the wrong schema, is
 * dated in the future beyond `maxClockSkew`, names a different digest (Trivy `Metadata.RepoDigests`/`ArtifactName`,
 * SARIF `runs[].properties.repoDigests`/`imageName`), or, unless `requireDigestBinding: false`, names none.
 *
 * Nothing about the server's files reaches a client: an unreadable token file answers a bare 503 with the request
 * id; the path and errno go to the log.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { globMatch } from '../auth/mtls.js';
import { readSecret, SecretError } from '../config/load.js';
import type { SecretRef } from '../config/schema.js';
import type { EvidenceDeps } from '../policy/evidence.js';
import { isDigest } from '../routing/reference.js';
import { RegistryError } from './errors.js';
import type { OciErrorCode } from '../oci/errors.js';
import { sendError, sendJson } from './respond.js';
import { parseReport, ReportFormatError, type ParsedReport } from '../scan/formats.js';
import { summarize } from '../scan/normalize.js';
import { reevaluate, type ReevalTarget } from '../gate/reeval.js';
import type { ScanService } from '../scan/service.js';
import type { ReportMeta } from '../scan/store.js';
import { errorText } from '../util/error-text.js';

/**
 * Extra HTTP endpoints outside /v2/ (for example the scan report API). The server tries each in order; a handler
 * returns false when the path is not its own.
 */
export interface ApiHandler {
  handle(req: IncomingMessage, res: ServerResponse, url: URL): Promise<boolean>;
}

/**
 * The report API answers with the same OCI-style error JSON as the registry endpoints: an OCI code, and the API's
 * own status for it (413, 415 and 503 are not the code's).
 */
function apiError(status: number, code: OciErrorCode, message: string, detail: unknown = null, headers?: Record<string, string>): RegistryError {
  return new RegistryError(code, message, detail, { status, ...(headers ? { headers } : {}) });
}

const PREFIX = '/api/v1/';

export interface ScanApiOptions {
  service: ScanService | undefined;
  deps: EvidenceDeps;
  /** What re-evaluation and report deletion work on (the gate, the metadata, manifests and upstreams). */
  target: ReevalTarget;
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
      // Only API errors are shown as they are; anything else (a disk or database error names files) is logged.
      const rid = requestId(res);
      if (!(e instanceof RegistryError)) this.o.deps.log.warn({ err: errorText(e), path, rid }, 'scan api request failed');
      const err = e instanceof RegistryError ? e : apiError(500, 'INTERNAL_ERROR', `internal error (request id ${rid})`);
      sendError(res, err, method === 'HEAD');
      return true;
    }
  }

  /**
   * Which of the given credentials the request carries (undefined: none of them). A token that cannot be read answers
   * 503 without saying why: the path and errno go to the server log (config/load.ts), never to a client that has
   * not even authenticated.
   */
  private authenticate(req: IncomingMessage, res: ServerResponse, creds: Credential[], what: string): Credential | undefined {
    if (creds.length === 0) throw apiError(404, 'NOT_FOUND', `the ${what} API is not enabled (no token configured)`);
    const m = /^Bearer[ ]+(\S+)\s*$/i.exec(req.headers.authorization ?? '');
    // Hash both sides so the comparison takes the same time whatever the lengths.
    const digest = (s: string): Buffer => createHash('sha256').update(s).digest();
    let unreadable = false;
    let found: Credential | undefined;
    // Every credential is compared (no early return): which one matched is not told by the time taken.
    for (const c of creds) {
      let expected: string;
      try {
        expected = readSecret(c.ref);
      } catch (e) {
        unreadable = true;
        this.o.deps.log.warn(
          { rid: requestId(res), role: c.role, detail: e instanceof SecretError ? e.detail : String(e) },
          `the ${what} API token cannot be read`,
        );
        continue;
      }
      if (m !== null && expected !== '' && timingSafeEqual(digest(m[1]!), digest(expected)) && !found) found = c;
    }
    if (found) return found;
    if (unreadable) throw apiError(503, 'UNAVAILABLE', `the ${what} API is unavailable (request id ${requestId(res)})`);
    return undefined;
  }

  private authorize(req: IncomingMessage, res: ServerResponse, creds: Credential[], what: string): Credential {
    const c = this.authenticate(req, res, creds, what);
    if (!c)
      throw apiError(401, 'UNAUTHORIZED', 'authentication required: send Authorization: Bearer <token>', null, {
        'www-authenticate': 'Bearer realm="portcullis"',
      });
    return c;
  }

  /** The CI credentials: the single `token` (every repository) and the repository-scoped `tokens`. */
  private ciCredentials(): Credential[] {
    const r = this.o.service?.config.reports;
    if (!r) return [];
    return [
      ...(r.token ? [{ role: 'ci' as const, ref: r.token }] : []),
      ...r.tokens.map((t) => ({ role: 'ci' as const, ref: t.token, repositories: t.repositories })),
    ];
  }

  // --- /api/v1/reports

  private async reports(req: IncomingMessage, res: ServerResponse, url: URL, method: string, tail: string): Promise<void> {
    const scan = this.o.deps.config.scan;
    const ci = this.ciCredentials();
    const admin: Credential[] = scan?.admin?.token ? [{ role: 'admin', ref: scan.admin.token }] : [];
    if (ci.length === 0) throw apiError(404, 'NOT_FOUND', 'the report API is not enabled (no token configured)');
    const service = this.o.service!;
    if (tail === '' || tail === '/') {
      if (method !== 'GET' && method !== 'HEAD') throw methodNotAllowed('GET, HEAD');
      // A scoped token would see other pipelines' repositories in the listing: reading by name is enough for CI.
      if (this.authorize(req, res, [...ci, ...admin], 'report').repositories) throw apiError(403, 'DENIED', 'a repository-scoped token cannot list reports');
      const limit = intParam(url, 'limit', 100, 1, 1000);
      const offset = intParam(url, 'offset', 0, 0, Number.MAX_SAFE_INTEGER);
      const filter = {
        ...(url.searchParams.get('registry') ? { registry: url.searchParams.get('registry')!.toLowerCase() } : {}),
        ...(url.searchParams.get('repository') ? { repository: url.searchParams.get('repository')! } : {}),
        ...(url.searchParams.get('digest') ? { digest: url.searchParams.get('digest')! } : {}),
        history: flag(url, 'history'),
      };
      const { reports, total } = service.store.listReports({ ...filter, limit, offset });
      return sendJson(res, 200, { total, offset, reports: reports.map((r) => reportJson(r, r.inForce)) }, method === 'HEAD');
    }
    // Who may do what: the CI token pushes and reads; only the admin token deletes evidence.
    let who: Credential;
    if (method === 'PUT') who = this.authorize(req, res, ci, 'report');
    else if (method === 'GET' || method === 'HEAD') who = this.authorize(req, res, [...ci, ...admin], 'report');
    else if (method === 'DELETE') {
      who = this.authorize(req, res, [...ci, ...admin], 'report');
      if (who.role !== 'admin') {
        throw apiError(
          403,
          'DENIED',
          admin ? 'deleting a report needs the admin token (scan.admin.token), not the CI token' : 'deleting reports is disabled: configure scan.admin.token',
        );
      }
    } else throw methodNotAllowed('GET, HEAD, PUT, DELETE');
    let decoded: string;
    try {
      decoded = decodeURIComponent(tail.slice(1));
    } catch {
      throw apiError(400, 'NAME_INVALID', 'malformed percent-encoding in the path');
    }
    const ref = this.parseRef(decoded);
    // A token scoped to the repositories a pipeline builds files evidence for those only: another team's image
    // must not get a clean bill of health from this pipeline.
    if (who.repositories && !who.repositories.some((g) => globMatch(g, `${ref.registry}/${ref.repository}`))) {
      throw apiError(403, 'DENIED', `this token may not ${method === 'PUT' ? 'push' : 'read'} reports for ${ref.registry}/${ref.repository}`);
    }
    const id = url.searchParams.has('id') ? intParam(url, 'id', 0, 1, Number.MAX_SAFE_INTEGER) : undefined;
    if (method === 'PUT') return this.putReport(req, res, ref);
    if (method === 'GET' || method === 'HEAD') {
      const r = service.store.getReport(ref.registry, ref.repository, ref.digest, id);
      if (!r) throw unknownReport(ref, id);
      if (flag(url, 'raw')) {
        const body = service.store.reportBody(ref.registry, ref.repository, ref.digest, r.id)!;
        return sendJson(res, 200, body, method === 'HEAD', r.format === 'sarif' ? 'application/sarif+json' : 'application/json');
      }
      const { findings, ...meta } = r;
      const versions = service.store.versions(ref.registry, ref.repository, ref.digest);
      const inForce = versions[0]?.id;
      const summary = summarize(
        { scannedAt: r.scannedAt, findings, ...(r.scanner ? { scanner: r.scanner } : {}) },
        { status: 'ok', source: 'report', now: this.o.now(), maxVulnerabilities: service.config.maxVulnerabilities },
      );
      return sendJson(
        res,
        200,
        { ...reportJson(meta, meta.id === inForce), summary, versions: versions.map((v) => reportJson(v, v.id === inForce)) },
        method === 'HEAD',
      );
    }
    // The bucket's copies first (storage.blobs: s3): a report pushed to any replica goes everywhere.
    const version = id === undefined ? undefined : service.store.getReport(ref.registry, ref.repository, ref.digest, id);
    let shared: number;
    try {
      shared = id === undefined || version ? await service.unpublishReports(ref, version ? [version] : 'all') : 0;
    } catch (e) {
      throw apiError(503, 'UNAVAILABLE', `the report could not be deleted from the shared store: ${errorText(e)}; retry`);
    }
    const n = service.store.deleteReport(ref.registry, ref.repository, ref.digest, id);
    if (n === 0 && shared === 0) throw unknownReport(ref, id);
    this.reportChanged(service, ref.digest);
    this.o.deps.log.info(
      { registry: ref.registry, repository: ref.repository, digest: ref.digest, id, versions: n, rid: requestId(res) },
      'scan report deleted',
    );
    res.statusCode = 204;
    res.end();
  }

  /** A report came or went: the scan cache and the gate's cached decisions for that digest are stale. */
  private reportChanged(service: ScanService, digest: string): void {
    service.reportsChanged(digest);
    const dropped = isDigest(digest) ? this.o.target.gate.forgetDigest(digest) : 0;
    if (dropped > 0) this.o.deps.log.info({ digest, decisions: dropped }, 'cached decisions dropped after a scan report change');
  }

  /** `<registry>/<repository>@<digest>`, with the registry one of the configured upstreams (or an alias). */
  private parseRef(ref: string): { registry: string; repository: string; digest: string } {
    const at = ref.lastIndexOf('@');
    if (at === -1) throw apiError(400, 'NAME_INVALID', 'expected /api/v1/reports/<registry>/<repository>@<digest>');
    const name = ref.slice(0, at);
    const digest = ref.slice(at + 1);
    if (!isDigest(digest)) throw apiError(400, 'DIGEST_INVALID', `invalid digest "${digest.slice(0, 80)}"`);
    if (!name.includes('/')) throw apiError(400, 'NAME_INVALID', 'expected <registry>/<repository>@<digest>');
    const route = this.o.deps.router.resolve(name, undefined);
    if ('code' in route) throw apiError(route.code === 'NAME_UNKNOWN' ? 404 : 400, route.code, route.message);
    if (route.routing !== 'prefix')
      throw apiError(400, 'NAME_INVALID', `"${name.split('/', 1)[0]}" is not a registry host: name the registry, e.g. docker.io/library/nginx@sha256:…`);
    return { registry: route.registry, repository: route.repository, digest };
  }

  private async putReport(req: IncomingMessage, res: ServerResponse, ref: { registry: string; repository: string; digest: string }): Promise<void> {
    const service = this.o.service!;
    const cfg = service.config.reports!;
    const enc = req.headers['content-encoding'];
    if (enc !== undefined && enc !== 'identity') throw apiError(415, 'UNSUPPORTED', `content-encoding ${enc} is not supported: send the report uncompressed`);
    const ct = (req.headers['content-type'] ?? 'application/json').split(';', 1)[0]!.trim().toLowerCase();
    if (!/^application\/([\w.+-]+\+)?json$/.test(ct))
      throw apiError(415, 'UNSUPPORTED', `content-type ${ct} is not supported: send application/json (Trivy JSON) or application/sarif+json`);
    const body = await readBody(req, res, cfg.maxSize);
    let doc: unknown;
    try {
      doc = JSON.parse(body.toString('utf8'));
    } catch {
      throw apiError(400, 'REPORT_INVALID', 'report is not valid JSON');
    }
    let parsed: ParsedReport;
    try {
      parsed = parseReport(doc);
    } catch (e) {
      if (e instanceof ReportFormatError) throw apiError(400, 'REPORT_INVALID', e.message, e.field ? { field: e.field } : null);
      throw e;
    }
    const now = this.o.now();
    const dated = parsed.result.scannedAt !== undefined ? Date.parse(parsed.result.scannedAt) : undefined;
    // A report from the future would never go stale: refuse it rather than clamp it.
    if (dated !== undefined && dated > now + cfg.maxClockSkew) {
      const field = parsed.timeField ?? 'CreatedAt';
      throw apiError(
        400,
        'REPORT_INVALID',
        `${field}: ${parsed.result.scannedAt} is in the future (more than scan.reports.maxClockSkew ahead of ${new Date(now).toISOString()})`,
        { field },
      );
    }
    const named = parsed.namedDigests;
    const where = parsed.format === 'trivy' ? 'Metadata.RepoDigests / ArtifactName' : 'runs[].properties repoDigests / imageName';
    const field = parsed.format === 'trivy' ? 'Metadata.RepoDigests' : 'runs[].properties.repoDigests';
    if (named.length > 0 && !named.includes(ref.digest)) {
      throw apiError(400, 'DIGEST_INVALID', `report is for ${named.join(', ')} (${where}), not for ${ref.digest}`, {
        report_digests: named,
        digest: ref.digest,
        field,
      });
    }
    if (named.length === 0 && cfg.requireDigestBinding) {
      throw apiError(
        400,
        'DIGEST_INVALID',
        `${field}: the report names no image digest (${where}), so it cannot be bound to ${ref.digest}: scan the image by digest, or set scan.reports.requireDigestBinding: false`,
        { field },
      );
    }
    const uploadedAt = now;
    const scannedAt = parsed.result.scannedAt ?? new Date(now).toISOString();
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
    // Into the bucket first (storage.blobs: s3), so every replica's next decision reads it; a push the bucket did not
    // take is refused, and CI retries it, rather than counting on one replica only.
    try {
      const { size: _size, ...published } = stored;
      await service.publishReport(published);
    } catch (e) {
      throw apiError(503, 'UNAVAILABLE', `the report could not be stored in the shared store: ${errorText(e)}; retry`);
    }
    const { id, inForce, kept } = service.store.putReport(stored, body, cfg.history);
    if (inForce) this.reportChanged(service, ref.digest);
    const summary = summarize(
      { scannedAt, findings: stored.findings, ...(stored.scanner ? { scanner: stored.scanner } : {}) },
      { status: 'ok', source: 'report', now, maxVulnerabilities: service.config.maxVulnerabilities },
    );
    this.o.deps.log.info(
      { ...ref, id, inForce, format: parsed.format, findings: stored.findings.length, counts: summary.counts, rid: requestId(res) },
      'scan report stored',
    );
    const { findings: _f, ...meta } = stored;
    if (kept) res.setHeader('location', `/api/v1/reports/${ref.registry}/${ref.repository}@${ref.digest}?id=${id}`);
    // 201 even when an older report is history from the start: it was accepted, and `in_force` says what counts.
    sendJson(res, 201, { ...reportJson({ ...meta, id }, inForce), kept, summary });
  }

  // --- /api/v1/admin/reevaluate

  private async reevaluate(req: IncomingMessage, res: ServerResponse, url: URL, method: string): Promise<void> {
    const cfg = this.o.deps.config.scan;
    const ref = cfg?.admin?.token ?? cfg?.reports?.token;
    this.authorize(req, res, ref ? [{ role: 'admin', ref }] : [], 'admin');
    if (method !== 'GET') throw methodNotAllowed('GET');
    const all = ['1', 'true'].includes(url.searchParams.get('all') ?? '');
    sendJson(res, 200, await reevaluate(this.o.target, { all, now: this.o.now }));
  }
}

type Role = 'ci' | 'admin';

/** A configured API token: its role, and for a scoped CI token the repositories (globs) it covers. */
interface Credential {
  role: Role;
  ref: SecretRef;
  repositories?: string[];
}

/** The request id app.ts set on the response, for messages that point at the log instead of saying more. */
function requestId(res: ServerResponse): string {
  const v = res.getHeader('x-request-id');
  return typeof v === 'string' ? v : '-';
}

function flag(url: URL, name: string): boolean {
  return ['1', 'true'].includes(url.searchParams.get(name) ?? '');
}

/** A version's metadata, and whether it is the version in force for its image. */
function reportJson(r: ReportMeta, inForce: boolean): Record<string, unknown> {
  return {
    id: r.id,
    in_force: inForce,
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

function unknownReport(ref: { registry: string; repository: string; digest: string }, id?: number): RegistryError {
  return apiError(404, 'REPORT_UNKNOWN', `no report${id !== undefined ? ` version ${id}` : ''} for ${ref.registry}/${ref.repository}@${ref.digest}`);
}

function methodNotAllowed(allow: string): RegistryError {
  return apiError(405, 'UNSUPPORTED', `method not allowed here (allowed: ${allow})`, null, { allow });
}

function intParam(url: URL, name: string, dflt: number, min: number, max: number): number {
  const v = url.searchParams.get(name);
  if (v === null) return dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max) throw apiError(400, 'PARAM_INVALID', `${name} must be an integer between ${min} and ${max}`);
  return n;
}

/** Reads the body up to `max` bytes; beyond it answers 413 and closes the connection rather than reading on. */
async function readBody(req: IncomingMessage, res: ServerResponse, max: number): Promise<Buffer> {
  const tooLarge = (): RegistryError => {
    res.setHeader('connection', 'close');
    return apiError(413, 'SIZE_INVALID', `report is larger than the ${max} byte limit (scan.reports.maxSize)`);
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
