/**
 * Persistent scan data, in its own SQLite file (`<dataDir>/scan.sqlite`, WAL) next to the metadata store:
 *
 * - `scan_reports`: reports CI pushed, per (registry, repository, digest), with the parsed findings and the raw
 *   body as uploaded;
 * - `scanner_scans`: per digest, the last result from the Harbor-compatible scanner, the scan request in flight
 *   (so polling resumes after a restart), and the last error.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { DatabaseSync, type StatementSync } from 'node:sqlite';
import type { Finding, ScanResult } from './normalize.js';
import type { ReportFormat } from './formats.js';

export interface StoredReport {
  registry: string;
  repository: string;
  digest: string;
  format: ReportFormat;
  uploadedAt: number;
  scannedAt: string;
  scanner: string | null;
  /** The report named this digest (false: it named none; reports naming another digest are never stored). */
  bound: boolean;
  size: number;
  findings: Finding[];
}

export interface ScannerJob {
  id: string;
  requestedAt: number;
  nextPollAt: number;
  upstream: string;
  repository: string;
  mimeType: string;
}

export interface ScannerRecord {
  digest: string;
  result: ScanResult | null;
  job: ScannerJob | null;
  error: { message: string; at: number } | null;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS scan_reports (
  registry TEXT NOT NULL, repository TEXT NOT NULL, digest TEXT NOT NULL,
  format TEXT NOT NULL, uploaded_at INTEGER NOT NULL, scanned_at TEXT NOT NULL, scanner TEXT,
  bound INTEGER NOT NULL, size INTEGER NOT NULL, findings TEXT NOT NULL, body BLOB NOT NULL,
  PRIMARY KEY (registry, repository, digest)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS scan_reports_by_digest ON scan_reports (digest, uploaded_at);
CREATE TABLE IF NOT EXISTS scanner_scans (
  digest TEXT PRIMARY KEY,
  result_scanned_at TEXT, result_scanner TEXT, result_findings TEXT,
  job_id TEXT, job_requested_at INTEGER, job_next_poll_at INTEGER, job_upstream TEXT, job_repository TEXT, job_mime TEXT,
  error TEXT, error_at INTEGER
) WITHOUT ROWID;
`;

interface ReportRow {
  registry: string;
  repository: string;
  digest: string;
  format: string;
  uploaded_at: number;
  scanned_at: string;
  scanner: string | null;
  bound: number;
  size: number;
  findings?: string;
}

interface ScannerRow {
  digest: string;
  result_scanned_at: string | null;
  result_scanner: string | null;
  result_findings: string | null;
  job_id: string | null;
  job_requested_at: number | null;
  job_next_poll_at: number | null;
  job_upstream: string | null;
  job_repository: string | null;
  job_mime: string | null;
  error: string | null;
  error_at: number | null;
}

const META_COLS = 'registry, repository, digest, format, uploaded_at, scanned_at, scanner, bound, size';

export class ScanStore {
  private readonly db: DatabaseSync;
  private readonly st: Record<string, StatementSync>;

  constructor(dataDir: string) {
    mkdirSync(dataDir, { recursive: true });
    this.db = new DatabaseSync(join(dataDir, 'scan.sqlite'));
    this.db.exec('PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;');
    this.db.exec(SCHEMA);
    const p = (sql: string): StatementSync => this.db.prepare(sql);
    this.st = {
      putReport: p(`INSERT INTO scan_reports (${META_COLS}, findings, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    ON CONFLICT (registry, repository, digest) DO UPDATE SET format = excluded.format, uploaded_at = excluded.uploaded_at,
                    scanned_at = excluded.scanned_at, scanner = excluded.scanner, bound = excluded.bound, size = excluded.size,
                    findings = excluded.findings, body = excluded.body`),
      getReport: p(`SELECT ${META_COLS}, findings FROM scan_reports WHERE registry = ? AND repository = ? AND digest = ?`),
      getBody: p('SELECT body, format FROM scan_reports WHERE registry = ? AND repository = ? AND digest = ?'),
      latestForDigest: p(`SELECT ${META_COLS}, findings FROM scan_reports WHERE digest = ? ORDER BY scanned_at DESC, uploaded_at DESC LIMIT 1`),
      delReport: p('DELETE FROM scan_reports WHERE registry = ? AND repository = ? AND digest = ?'),
      getScanner: p('SELECT * FROM scanner_scans WHERE digest = ?'),
      pendingJobs: p('SELECT * FROM scanner_scans WHERE job_id IS NOT NULL'),
      putScanner: p(`INSERT INTO scanner_scans (digest, result_scanned_at, result_scanner, result_findings, job_id, job_requested_at, job_next_poll_at,
                     job_upstream, job_repository, job_mime, error, error_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                     ON CONFLICT (digest) DO UPDATE SET result_scanned_at = excluded.result_scanned_at, result_scanner = excluded.result_scanner,
                     result_findings = excluded.result_findings, job_id = excluded.job_id, job_requested_at = excluded.job_requested_at,
                     job_next_poll_at = excluded.job_next_poll_at, job_upstream = excluded.job_upstream, job_repository = excluded.job_repository,
                     job_mime = excluded.job_mime, error = excluded.error, error_at = excluded.error_at`),
    };
  }

  putReport(r: StoredReport, body: Buffer): void {
    this.st.putReport!.run(r.registry, r.repository, r.digest, r.format, r.uploadedAt, r.scannedAt, r.scanner, r.bound ? 1 : 0, r.size, JSON.stringify(r.findings), body);
  }

  getReport(registry: string, repository: string, digest: string): StoredReport | undefined {
    const row = this.st.getReport!.get(registry, repository, digest) as ReportRow | undefined;
    return row ? toReport(row) : undefined;
  }

  reportBody(registry: string, repository: string, digest: string): Buffer | undefined {
    const row = this.st.getBody!.get(registry, repository, digest) as { body: Uint8Array } | undefined;
    return row ? Buffer.from(row.body) : undefined;
  }

  /** The newest report for this digest, whatever repository it was pushed under (same bytes, same findings). */
  latestReport(digest: string): StoredReport | undefined {
    const row = this.st.latestForDigest!.get(digest) as ReportRow | undefined;
    return row ? toReport(row) : undefined;
  }

  deleteReport(registry: string, repository: string, digest: string): boolean {
    return Number(this.st.delReport!.run(registry, repository, digest).changes) > 0;
  }

  /** Report metadata (no findings), newest upload first, filtered by exact registry/repository/digest. */
  listReports(f: { registry?: string; repository?: string; digest?: string; limit: number; offset: number }): { reports: Array<Omit<StoredReport, 'findings'>>; total: number } {
    const where: string[] = [];
    const args: string[] = [];
    for (const k of ['registry', 'repository', 'digest'] as const) {
      const v = f[k];
      if (v !== undefined) {
        where.push(`${k} = ?`);
        args.push(v);
      }
    }
    const w = where.length ? `WHERE ${where.join(' AND ')}` : '';
    const total = (this.db.prepare(`SELECT count(*) AS n FROM scan_reports ${w}`).get(...args) as { n: number }).n;
    const rows = this.db.prepare(`SELECT ${META_COLS} FROM scan_reports ${w} ORDER BY uploaded_at DESC, registry, repository, digest LIMIT ? OFFSET ?`).all(...args, f.limit, f.offset) as unknown as ReportRow[];
    return {
      total,
      reports: rows.map((row) => {
        const { findings: _f, ...meta } = toReport({ ...row, findings: '[]' });
        return meta;
      }),
    };
  }

  getScanner(digest: string): ScannerRecord | undefined {
    const row = this.st.getScanner!.get(digest) as ScannerRow | undefined;
    return row ? toScanner(row) : undefined;
  }

  putScanner(r: ScannerRecord): void {
    this.st.putScanner!.run(
      r.digest,
      r.result?.scannedAt ?? null,
      r.result?.scanner ?? null,
      r.result ? JSON.stringify(r.result.findings) : null,
      r.job?.id ?? null,
      r.job?.requestedAt ?? null,
      r.job?.nextPollAt ?? null,
      r.job?.upstream ?? null,
      r.job?.repository ?? null,
      r.job?.mimeType ?? null,
      r.error?.message ?? null,
      r.error?.at ?? null,
    );
  }

  /** Scans requested and not finished: polled again after a restart. */
  pendingScans(): ScannerRecord[] {
    return (this.st.pendingJobs!.all() as unknown as ScannerRow[]).map(toScanner);
  }

  close(): void {
    this.db.close();
  }
}

function toReport(row: ReportRow): StoredReport {
  const r: StoredReport = {
    registry: row.registry,
    repository: row.repository,
    digest: row.digest,
    format: row.format as ReportFormat,
    uploadedAt: row.uploaded_at,
    scannedAt: row.scanned_at,
    scanner: row.scanner,
    bound: row.bound === 1,
    size: row.size,
    findings: JSON.parse(row.findings ?? '[]') as Finding[],
  };
  return r;
}

function toScanner(row: ScannerRow): ScannerRecord {
  let result: ScanResult | null = null;
  if (row.result_scanned_at && row.result_findings) {
    result = { scannedAt: row.result_scanned_at, findings: JSON.parse(row.result_findings) as Finding[] };
    if (row.result_scanner) result.scanner = row.result_scanner;
  }
  const job: ScannerJob | null = row.job_id
    ? {
        id: row.job_id,
        requestedAt: row.job_requested_at ?? 0,
        nextPollAt: row.job_next_poll_at ?? 0,
        upstream: row.job_upstream ?? '',
        repository: row.job_repository ?? '',
        mimeType: row.job_mime ?? '',
      }
    : null;
  return { digest: row.digest, result, job, error: row.error ? { message: row.error, at: row.error_at ?? 0 } : null };
}
