/**
 * A client for the Harbor Pluggable Scanner API v1.1/v1.2 (github.com/goharbor/pluggable-scanner-spec), e.g. harbor-scanner-trivy:
 *
 * - `GET  /api/v1/metadata`: capabilities (which artifact MIME types it consumes, which report types it produces);
 * - `POST /api/v1/scan`: `{registry: {url, authorization}, artifact: {repository, digest, tag, mime_type}}` → 202 `{id}`;
 * - `GET  /api/v1/scan/{id}/report`: 200 with the report, **302 with `Refresh-After: <seconds>`** while the scan runs,
 *   404 for an unknown id, 500 with `{"error": {"message"}}` when the scan failed.
 *
 * Scanners consume platform manifests, not indexes: the caller scans each child of an index.
 */
import { request, type Dispatcher } from 'undici';
import { readCapped } from '../util/capped-body.js';
import { parseHarborReport } from './formats.js';
import type { ScanResult } from './normalize.js';

export const MIME = {
  metadata: 'application/vnd.scanner.adapter.metadata+json; version=1.0',
  metadataV11: 'application/vnd.scanner.adapter.metadata+json; version=1.1',
  scanRequest: 'application/vnd.scanner.adapter.scan.request+json; version=1.0',
  scanResponse: 'application/vnd.scanner.adapter.scan.response+json; version=1.0',
  error: 'application/vnd.scanner.adapter.error+json; version=1.0',
  harborReport: 'application/vnd.scanner.adapter.vuln.report.harbor+json; version=1.0',
  securityReport: 'application/vnd.security.vulnerability.report; version=1.1',
} as const;

/** Report types whose body is a HarborVulnerabilityReport, in order of preference. */
/** Reports are bounded by the scanner; metadata and errors are small. Capped anyway. */
const MAX_SCANNER_RESPONSE_BYTES = 64 * 1024 * 1024;

const REPORT_TYPES = [MIME.securityReport, MIME.harborReport, 'application/vnd.scanner.adapter.vuln.report.harbor+json; version=1.1'];

/** Artifact types scanners consume (platform manifests). */
export const SCANNABLE = ['application/vnd.oci.image.manifest.v1+json', 'application/vnd.docker.distribution.manifest.v2+json'];

export class ScannerError extends Error {
  override name = 'ScannerError';
}

export interface ScannerCapabilities {
  name: string;
  consumes: string[];
  reportType: string;
  /** v1.2 adapters tag capabilities with a type; then the scan request names the one it wants. */
  typed: boolean;
}

export type ReportPoll =
  { kind: 'done'; result: ScanResult } | { kind: 'pending'; refreshAfterMs: number | undefined } | { kind: 'unknown' } | { kind: 'failed'; message: string };

export interface HarborClientOptions {
  baseUrl: string;
  /** The Authorization header value for the scanner, read at use time (secret rotation). */
  authorization: () => string | undefined;
  timeoutMs: number;
  /** Observes each call (op = metadata | scan | report; outcome = HTTP status or "error"). */
  observe?: (op: string, seconds: number, outcome: string) => void;
  dispatcher?: Dispatcher;
}

type Obj = Record<string, unknown>;
const isObj = (x: unknown): x is Obj => typeof x === 'object' && x !== null && !Array.isArray(x);

export class HarborClient {
  private caps: { value: ScannerCapabilities; at: number } | undefined;

  constructor(private readonly o: HarborClientOptions) {}

  private async call(
    op: string,
    method: 'GET' | 'POST',
    path: string,
    headers: Record<string, string>,
    body?: string,
  ): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; text: string }> {
    const started = performance.now();
    const auth = this.o.authorization();
    try {
      const res = await request(`${this.o.baseUrl}/api/v1${path}`, {
        method,
        headers: { ...headers, ...(auth ? { authorization: auth } : {}), 'user-agent': 'portcullis' },
        ...(body !== undefined ? { body } : {}),
        headersTimeout: this.o.timeoutMs,
        bodyTimeout: this.o.timeoutMs,
        signal: AbortSignal.timeout(this.o.timeoutMs),
        ...(this.o.dispatcher ? { dispatcher: this.o.dispatcher } : {}),
      });
      const bytes = await readCapped(res.body, MAX_SCANNER_RESPONSE_BYTES, () => new ScannerError(`scanner ${op} response is larger than 64 MiB`));
      this.o.observe?.(op, (performance.now() - started) / 1000, String(res.statusCode));
      return { status: res.statusCode, headers: res.headers, text: bytes.toString('utf8') };
    } catch (e) {
      this.o.observe?.(op, (performance.now() - started) / 1000, 'error');
      if (e instanceof ScannerError) throw e;
      const err = e as NodeJS.ErrnoException & { cause?: NodeJS.ErrnoException };
      const code = err.code ?? err.cause?.code;
      throw new ScannerError(`scanner unreachable (${code ?? err.name}: ${err.message})`);
    }
  }

  /** The scanner's capabilities, cached for ten minutes. */
  async capabilities(): Promise<ScannerCapabilities> {
    if (this.caps && Date.now() - this.caps.at < 600_000) return this.caps.value;
    const res = await this.call('metadata', 'GET', '/metadata', { accept: `${MIME.metadataV11}, ${MIME.metadata}, application/json` });
    if (res.status !== 200) throw new ScannerError(`scanner metadata: HTTP ${res.status}${errorMessage(res.text)}`);
    const doc = parseJson(res.text, 'scanner metadata');
    const caps = isObj(doc) && Array.isArray(doc.capabilities) ? doc.capabilities.filter(isObj) : [];
    const vulnCaps = caps.filter((c) => c.type === undefined || c.type === 'vulnerability');
    const typed = caps.some((c) => typeof c.type === 'string');
    const produces = vulnCaps
      .flatMap((c) => (Array.isArray(c.produces_mime_types) ? (c.produces_mime_types as unknown[]) : []))
      .filter((m): m is string => typeof m === 'string');
    const consumes = vulnCaps
      .flatMap((c) => (Array.isArray(c.consumes_mime_types) ? (c.consumes_mime_types as unknown[]) : []))
      .filter((m): m is string => typeof m === 'string');
    const norm = (m: string): string => m.replace(/\s+/g, '').toLowerCase();
    const reportType = REPORT_TYPES.find((t) => produces.some((p) => norm(p) === norm(t)));
    if (!reportType) throw new ScannerError(`scanner produces no Harbor vulnerability report (produces: ${produces.join(', ') || 'nothing'})`);
    const scannerInfo = isObj(doc) && isObj(doc.scanner) ? doc.scanner : {};
    const name = [scannerInfo.name, scannerInfo.version].filter((x) => typeof x === 'string').join(' ') || 'scanner';
    const value: ScannerCapabilities = { name, consumes, reportType, typed };
    this.caps = { value, at: Date.now() };
    return value;
  }

  /** Asks for a scan; returns the scan request id. */
  async requestScan(req: { registryUrl: string; authorization?: string; repository: string; digest: string; tag?: string; mimeType: string }): Promise<string> {
    const caps = await this.capabilities();
    if (caps.consumes.length && !caps.consumes.includes(req.mimeType)) throw new ScannerError(`scanner does not consume ${req.mimeType}`);
    const body = {
      registry: { url: req.registryUrl, ...(req.authorization ? { authorization: req.authorization } : {}) },
      artifact: { repository: req.repository, digest: req.digest, ...(req.tag ? { tag: req.tag } : {}), mime_type: req.mimeType },
      ...(caps.typed ? { enabled_capabilities: [{ type: 'vulnerability', produces_mime_types: [caps.reportType] }] } : {}),
    };
    const res = await this.call(
      'scan',
      'POST',
      '/scan',
      { 'content-type': MIME.scanRequest, accept: `${MIME.scanResponse}, ${MIME.error}` },
      JSON.stringify(body),
    );
    if (res.status !== 202 && res.status !== 200) throw new ScannerError(`scan request refused: HTTP ${res.status}${errorMessage(res.text)}`);
    const doc = parseJson(res.text, 'scan response');
    const id = isObj(doc) ? doc.id : undefined;
    if (typeof id !== 'string' || id === '' || id.length > 256) throw new ScannerError('scan response has no id');
    return id;
  }

  async report(id: string): Promise<ReportPoll> {
    const caps = await this.capabilities();
    const res = await this.call('report', 'GET', `/scan/${encodeURIComponent(id)}/report`, { accept: caps.reportType });
    if (res.status === 200) return { kind: 'done', result: parseHarborReport(parseJson(res.text, 'scan report')) };
    if (res.status === 302) {
      const ra = res.headers['refresh-after'];
      const n = Number(Array.isArray(ra) ? ra[0] : ra);
      return { kind: 'pending', refreshAfterMs: Number.isFinite(n) && n >= 0 ? n * 1000 : undefined };
    }
    if (res.status === 404) return { kind: 'unknown' };
    return { kind: 'failed', message: `scan failed: HTTP ${res.status}${errorMessage(res.text)}` };
  }
}

function parseJson(text: string, what: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw new ScannerError(`${what} is not JSON`);
  }
}

/** ": <message>" from the adapter's `{"error": {"message"}}` body, bounded and on one line. */
function errorMessage(text: string): string {
  try {
    const doc = JSON.parse(text) as unknown;
    const m = isObj(doc) && isObj(doc.error) ? doc.error.message : undefined;
    if (typeof m === 'string' && m) return `: ${m.replace(/\s+/g, ' ').slice(0, 200)}`;
  } catch {
    // not JSON
  }
  return '';
}
