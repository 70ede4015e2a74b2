/**
 * Persistent scan data, in its own SQLite file (`<dataDir>/scan.sqlite`, WAL) next to the metadata store:
 *
 * - `scan_report_versions`: reports CI pushed, with the parsed findings and the raw body as uploaded. Append-only
 *   history: a push adds a version and never replaces one; the version in force for an image is the one with the
 *   latest scan time (then the latest push), so a replayed older report cannot displace a newer one. At most
 *   `keep` versions are kept per (registry, repository, digest), the oldest pruned first (the one in force never);
 *   only the admin API deletes;
 * - `scanner_scans`: per digest, the last result from the Harbor-compatible scanner, the scan request in flight
 *   (so polling resumes after a restart), and the last error.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { DatabaseSync, type StatementSync } from 'node:sqlite';
import type { Finding, ScanResult } from './normalize.js';
import type { ReportFormat } from './formats.js';
import type { ScanCode } from '../policy/codes.js';
import { migrate, type Migration } from '../util/sqlite-migrate.js';

export interface StoredReport {
  /** The version's id, increasing with every push. */
  id: number;
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
  /** `code`: absent in rows written before codes existed (read as SCAN_FAILED). */
  error: { message: string; at: number; code?: ScanCode } | null;
}

/**
 * Schema version 1, frozen: a later change is a new migration below, never an edit here. IF NOT EXISTS because files
 * from before versions existed (user_version 0) already hold it.
 */
const SCHEMA_V1 = `
CREATE TABLE IF NOT EXISTS scan_report_versions (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  registry TEXT NOT NULL, repository TEXT NOT NULL, digest TEXT NOT NULL,
  format TEXT NOT NULL, uploaded_at INTEGER NOT NULL, scanned_at TEXT NOT NULL, scanner TEXT,
  bound INTEGER NOT NULL, size INTEGER NOT NULL, findings TEXT NOT NULL, body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS scan_report_versions_by_ref ON scan_report_versions (registry, repository, digest, scanned_at, id);
CREATE INDEX IF NOT EXISTS scan_report_versions_by_digest ON scan_report_versions (digest, scanned_at, id);
CREATE TABLE IF NOT EXISTS scanner_scans (
  digest TEXT PRIMARY KEY,
  result_scanned_at TEXT, result_scanner TEXT, result_findings TEXT,
  job_id TEXT, job_requested_at INTEGER, job_next_poll_at INTEGER, job_upstream TEXT, job_repository TEXT, job_mime TEXT,
  error TEXT, error_at INTEGER, error_code TEXT
) WITHOUT ROWID;
`;

/** The schema's history, oldest first (util/sqlite-migrate.ts): each runs once, forward, in a transaction. */
export const SCAN_MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    what: 'versioned baseline (report versions, scanner scans); the one-row-per-image reports become the first version of each history',
    up: (db) => {
      db.exec(SCHEMA_V1);
      // Scanner errors gained a code: files from before lack the column.
      const cols = db.prepare("SELECT name FROM pragma_table_info('scanner_scans')").all() as Array<{ name: string }>;
      if (!cols.some((c) => c.name === 'error_code')) db.exec('ALTER TABLE scanner_scans ADD COLUMN error_code TEXT');
      if (db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'scan_reports'").get()) {
        db.exec(`INSERT INTO scan_report_versions (${DATA_COLS}, findings, body) SELECT ${DATA_COLS}, findings, body FROM scan_reports ORDER BY uploaded_at;
                 DROP TABLE scan_reports;`);
      }
    },
  },
];

interface ReportRow {
  id: number;
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
  error_code: string | null;
}

const DATA_COLS = 'registry, repository, digest, format, uploaded_at, scanned_at, scanner, bound, size';
const META_COLS = `id, ${DATA_COLS}`;
/** The order of versions, newest (in force) first. */
const NEWEST = 'ORDER BY scanned_at DESC, id DESC';
const REF = 'registry = ? AND repository = ? AND digest = ?';
/** Only the version in force of each image: no version of the same image is newer. */
const IN_FORCE = `NOT EXISTS (SELECT 1 FROM scan_report_versions n WHERE n.registry = v.registry AND n.repository = v.repository
  AND n.digest = v.digest AND (n.scanned_at > v.scanned_at OR (n.scanned_at = v.scanned_at AND n.id > v.id)))`;

export type ReportMeta = Omit<StoredReport, 'findings'>;

export class ScanStore {
  private readonly db: DatabaseSync;
  private readonly st: Record<string, StatementSync>;

  constructor(dataDir: string) {
    mkdirSync(dataDir, { recursive: true });
    const file = join(dataDir, 'scan.sqlite');
    this.db = new DatabaseSync(file);
    this.db.exec('PRAGMA busy_timeout = 5000;');
    try {
      migrate(this.db, file, SCAN_MIGRATIONS);
    } catch (e) {
      this.db.close();
      throw e;
    }
    this.db.exec('PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;');
    const p = (sql: string): StatementSync => this.db.prepare(sql);
    this.st = {
      putReport: p(`INSERT INTO scan_report_versions (${DATA_COLS}, findings, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id`),
      prune: p(`DELETE FROM scan_report_versions WHERE id IN (SELECT id FROM scan_report_versions WHERE ${REF} ${NEWEST} LIMIT -1 OFFSET ?)`),
      getReport: p(`SELECT ${META_COLS}, findings FROM scan_report_versions WHERE ${REF} ${NEWEST} LIMIT 1`),
      getVersion: p(`SELECT ${META_COLS}, findings FROM scan_report_versions WHERE ${REF} AND id = ?`),
      versions: p(`SELECT ${META_COLS} FROM scan_report_versions WHERE ${REF} ${NEWEST}`),
      getBody: p(`SELECT body FROM scan_report_versions WHERE ${REF} AND id = ?`),
      latestForDigest: p(`SELECT ${META_COLS}, findings FROM scan_report_versions WHERE digest = ? ${NEWEST} LIMIT 1`),
      delReports: p(`DELETE FROM scan_report_versions WHERE ${REF}`),
      delVersion: p(`DELETE FROM scan_report_versions WHERE ${REF} AND id = ?`),
      getScanner: p('SELECT * FROM scanner_scans WHERE digest = ?'),
      pendingJobs: p('SELECT * FROM scanner_scans WHERE job_id IS NOT NULL'),
      putScanner: p(`INSERT INTO scanner_scans (digest, result_scanned_at, result_scanner, result_findings, job_id, job_requested_at, job_next_poll_at,
                     job_upstream, job_repository, job_mime, error, error_at, error_code) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                     ON CONFLICT (digest) DO UPDATE SET result_scanned_at = excluded.result_scanned_at, result_scanner = excluded.result_scanner,
                     result_findings = excluded.result_findings, job_id = excluded.job_id, job_requested_at = excluded.job_requested_at,
                     job_next_poll_at = excluded.job_next_poll_at, job_upstream = excluded.job_upstream, job_repository = excluded.job_repository,
                     job_mime = excluded.job_mime, error = excluded.error, error_at = excluded.error_at, error_code = excluded.error_code`),
    };
  }

  /**
   * Adds a version; never replaces one. Then keeps the newest `keep` versions of that image (by scan time), so the
   * one in force is never pruned. Returns the new version's id, and whether it is the one in force (a report with an
   * older scan time than the newest one is history from the start).
   */
  putReport(r: Omit<StoredReport, 'id'>, body: Buffer, keep = Number.MAX_SAFE_INTEGER): { id: number; inForce: boolean; kept: boolean } {
    this.db.exec('BEGIN IMMEDIATE');
    try {
      const { id } = this.st.putReport!.get(
        r.registry,
        r.repository,
        r.digest,
        r.format,
        r.uploadedAt,
        r.scannedAt,
        r.scanner,
        r.bound ? 1 : 0,
        r.size,
        JSON.stringify(r.findings),
        body,
      ) as { id: number };
      this.st.prune!.run(r.registry, r.repository, r.digest, Math.max(1, keep));
      const current = this.st.getReport!.get(r.registry, r.repository, r.digest) as unknown as ReportRow;
      const kept = this.st.getVersion!.get(r.registry, r.repository, r.digest, id) !== undefined;
      this.db.exec('COMMIT');
      return { id, inForce: current.id === id, kept };
    } catch (e) {
      this.db.exec('ROLLBACK');
      throw e;
    }
  }

  /** The version in force for this image, or the version `id` of it. */
  getReport(registry: string, repository: string, digest: string, id?: number): StoredReport | undefined {
    const row = (id === undefined ? this.st.getReport!.get(registry, repository, digest) : this.st.getVersion!.get(registry, repository, digest, id)) as
      ReportRow | undefined;
    return row ? toReport(row) : undefined;
  }

  /** Every kept version of this image, newest (in force) first. */
  versions(registry: string, repository: string, digest: string): ReportMeta[] {
    return (this.st.versions!.all(registry, repository, digest) as unknown as ReportRow[]).map(toMeta);
  }

  reportBody(registry: string, repository: string, digest: string, id: number): Buffer | undefined {
    const row = this.st.getBody!.get(registry, repository, digest, id) as { body: Uint8Array } | undefined;
    return row ? Buffer.from(row.body) : undefined;
  }

  /** The newest report for this digest (by scan time), whatever repository it was pushed under (same bytes, same findings). */
  latestReport(digest: string): StoredReport | undefined {
    const row = this.st.latestForDigest!.get(digest) as ReportRow | undefined;
    return row ? toReport(row) : undefined;
  }

  /** Deletes every version of an image, or only version `id`; returns how many went. */
  deleteReport(registry: string, repository: string, digest: string, id?: number): number {
    const st = id === undefined ? this.st.delReports!.run(registry, repository, digest) : this.st.delVersion!.run(registry, repository, digest, id);
    return Number(st.changes);
  }

  /**
   * Report metadata (no findings), newest push first, filtered by exact registry/repository/digest: the version in
   * force of each image, or with `history` every kept version.
   */
  listReports(f: { registry?: string; repository?: string; digest?: string; history?: boolean; limit: number; offset: number }): {
    reports: Array<ReportMeta & { inForce: boolean }>;
    total: number;
  } {
    const where: string[] = f.history ? [] : [IN_FORCE];
    const args: string[] = [];
    for (const k of ['registry', 'repository', 'digest'] as const) {
      const v = f[k];
      if (v !== undefined) {
        where.push(`v.${k} = ?`);
        args.push(v);
      }
    }
    const w = where.length ? `WHERE ${where.join(' AND ')}` : '';
    const total = (this.db.prepare(`SELECT count(*) AS n FROM scan_report_versions v ${w}`).get(...args) as { n: number }).n;
    const cols = META_COLS.split(', ')
      .map((c) => `v.${c}`)
      .join(', ');
    const rows = this.db
      .prepare(`SELECT ${cols}, ${IN_FORCE} AS in_force FROM scan_report_versions v ${w} ORDER BY v.id DESC LIMIT ? OFFSET ?`)
      .all(...args, f.limit, f.offset) as unknown as Array<ReportRow & { in_force: number }>;
    return { total, reports: rows.map((row) => ({ ...toMeta(row), inForce: row.in_force === 1 })) };
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
      r.error?.code ?? null,
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

function toMeta(row: ReportRow): ReportMeta {
  const { findings: _f, ...meta } = toReport({ ...row, findings: '[]' });
  return meta;
}

function toReport(row: ReportRow): StoredReport {
  const r: StoredReport = {
    id: row.id,
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
  return {
    digest: row.digest,
    result,
    job,
    error: row.error ? { message: row.error, at: row.error_at ?? 0, code: (row.error_code as ScanCode | null) ?? 'SCAN_FAILED' } : null,
  };
}
