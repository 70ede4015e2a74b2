/**
 * The scan evidence provider on its own: the source order, vuln attestations (hand-made objects in the shape the
 * signature provider returns), pushed reports, and the Harbor scanner client against the test double (pending →
 * polled with Refresh-After → ok; failures; the scanner down; restart resumes polling), indexes, staleness, metrics.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, afterEach, describe, expect, test } from 'vitest';
import type { EvidenceContext, PolicyInput } from '../../src/policy/contract.js';
import { Metrics } from '../../src/metrics/metrics.js';
import type { Digest } from '../../src/routing/reference.js';
import type { Route } from '../../src/routing/route.js';
import { parseManifest } from '../../src/oci/mediatypes.js';
import { VULN_PREDICATE_TYPE } from '../../src/config/scan.js';
import { ScanService } from '../../src/scan/service.js';
import { startScannerDouble, type ScannerDouble } from '../harness/scanner.js';
import { cleanupTempDirs, makeConfig, sha256, tempDir, until } from './helpers.js';

const log = pino({ level: 'silent' });
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
const D1 = sha256('image-1');
const D2 = sha256('image-2');
const IDX = sha256('index');
const predicate = JSON.parse(readFileSync('test/fixtures/scan/cosign-vuln-predicate.json', 'utf8')) as {
  scanner: { result: { ArtifactName: string; Metadata: { RepoDigests: string[] } } };
  metadata: { scanFinishedOn: string };
};

/** The fixture predicate, bound to `digest` and scanned at `at`. */
function vulnPredicate(digest: string, at = new Date().toISOString()): unknown {
  const p = structuredClone(predicate);
  p.scanner.result.ArtifactName = `127.0.0.1:5000/demo/app@${digest}`;
  p.scanner.result.Metadata.RepoDigests = [`127.0.0.1:5000/demo/app@${digest}`];
  p.metadata.scanFinishedOn = at;
  return p;
}

const indexBytes = Buffer.from(
  JSON.stringify({
    schemaVersion: 2,
    mediaType: OCI_INDEX,
    manifests: [
      { mediaType: OCI_MANIFEST, digest: D1, size: 10, platform: { os: 'linux', architecture: 'amd64' } },
      { mediaType: OCI_MANIFEST, digest: D2, size: 10, platform: { os: 'linux', architecture: 'arm64' } },
      {
        mediaType: OCI_MANIFEST,
        digest: sha256('att'),
        size: 10,
        platform: { os: 'unknown', architecture: 'unknown' },
        annotations: { 'vnd.docker.reference.type': 'attestation-manifest' },
      },
    ],
  }),
);
const imageBytes = Buffer.from(
  JSON.stringify({
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: D2, size: 2 },
    layers: [],
  }),
);
const UPSTREAM = { name: 'local', registry: '127.0.0.1:5000', url: 'http://127.0.0.1:5000' };
const ROUTE: Route = { upstream: makeConfig({ upstreams: [UPSTREAM] }).upstreams[0]!, registry: '127.0.0.1:5000', repository: 'demo/app', routing: 'prefix' };

/** The gate passes the manifest it has: here, the index below for an index, else an image (its bytes are not read). */
function ctx(digest: string, mediaType = OCI_MANIFEST): EvidenceContext {
  const bytes = mediaType === OCI_INDEX ? indexBytes : imageBytes;
  const manifest = { digest: digest as Digest, mediaType, bytes, parsed: parseManifest(bytes, mediaType) };
  return { route: ROUTE, manifest, upstream: 'local', registry: '127.0.0.1:5000', repository: 'demo/app', digest: manifest.digest, mediaType };
}

const services: ScanService[] = [];
function service(
  scan: Record<string, unknown>,
  extra: { signatures?: unknown; dataDir?: string; now?: () => number; wallClock?: () => number; metrics?: Metrics } = {},
): ScanService {
  const config = makeConfig({
    upstreams: [UPSTREAM],
    dataDir: extra.dataDir ?? tempDir('pc-scan-'),
    ...(extra.signatures ? { signatures: extra.signatures } : {}),
    scan,
  });
  const s = new ScanService(
    { config, log, dataDir: config.dataDir, metrics: extra.metrics },
    { ...(extra.now ? { now: extra.now } : {}), ...(extra.wallClock ? { wallClock: extra.wallClock } : {}) },
  );
  services.push(s);
  return s;
}

function putReport(
  s: ScanService,
  digest: string,
  findings: Array<{ id: string; severity: 'CRITICAL' | 'HIGH' | 'LOW'; fixed?: string }>,
  scannedAt = new Date().toISOString(),
): void {
  s.store.putReport(
    {
      registry: '127.0.0.1:5000',
      repository: 'demo/app',
      digest,
      format: 'trivy',
      uploadedAt: Date.now(),
      scannedAt,
      scanner: 'Trivy',
      bound: true,
      size: 1,
      findings,
    },
    Buffer.from('{}'),
  );
  s.reportsChanged(digest);
}

const REPORTS = { reports: { token: { env: 'UNUSED' } } };

afterEach(() => {
  for (const s of services.splice(0)) s.close();
});
afterAll(() => cleanupTempDirs());

describe('attestations', () => {
  const att = (authority: string, p: unknown, type = VULN_PREDICATE_TYPE): PolicyInput['attestations'][number] => ({
    predicate_type: type,
    authority,
    predicate: p,
  });
  const sigs = {
    authorities: [
      { name: 'release-team', kind: 'key', key: '/nonexistent/release.pub' },
      { name: 'other', kind: 'key', key: '/nonexistent/other.pub' },
    ],
  };

  test('a vuln attestation from a trusted authority is the scan result; others are ignored', async () => {
    const s = service({ attestations: { authorities: ['release-team'] } }, { signatures: sigs });
    const ev = await s.scan(ctx(D1), [
      att('other', vulnPredicate(D1)),
      att('release-team', vulnPredicate(D1)),
      att('release-team', {}, 'https://slsa.dev/provenance/v1'),
    ]);
    expect(ev).toMatchObject({ status: 'ok', source: 'attestation', counts: { CRITICAL: 1, LOW: 1 } });
    expect(ev.vulnerabilities![0]).toEqual({ id: 'CVE-2024-0727', severity: 'CRITICAL', package: 'libcrypto3', installed: '3.1.4-r2', fixed: '3.1.4-r5' });
    expect(await s.scan(ctx(D1), [att('other', vulnPredicate(D1))])).toEqual({ status: 'missing', code: 'NOT_SCANNED' });
  });

  test('the newest of several attestations wins; an old one is stale', async () => {
    const s = service({ attestations: { authorities: ['*'] }, staleAfter: '1d' }, { signatures: sigs });
    const old = new Date(Date.now() - 3 * 86_400_000).toISOString();
    const recent = new Date(Date.now() - 3_600_000).toISOString();
    const ev = await s.scan(ctx(D1), [att('other', vulnPredicate(D1, old)), att('release-team', vulnPredicate(D1, recent))]);
    expect(ev).toMatchObject({ status: 'ok', scanned_at: new Date(Date.parse(recent)).toISOString() });
    expect(ev.age_seconds).toBeGreaterThanOrEqual(3599);
    expect(await s.scan(ctx(D1), [att('other', vulnPredicate(D1, old))])).toMatchObject({ status: 'stale', code: 'STALE' });
  });

  test('an attestation whose report names another digest is refused (error, not a result)', async () => {
    const s = service({ attestations: { authorities: ['release-team'] } }, { signatures: sigs });
    const ev = await s.scan(ctx(D1), [att('release-team', vulnPredicate(D2))]);
    expect(ev).toMatchObject({ status: 'error', code: 'DIGEST_MISMATCH', source: 'attestation' });
    expect(ev.error).toContain(`reports on ${D2}, not this digest`);
  });

  test('an unreadable vuln attestation is an error with its code', async () => {
    const s = service({ attestations: { authorities: ['release-team'] } }, { signatures: sigs });
    const ev = await s.scan(ctx(D1), [att('release-team', { scanner: { uri: 'pkg:github/aquasecurity/trivy@0.50.1' } })]);
    expect(ev).toMatchObject({ status: 'error', code: 'REPORT_INVALID', source: 'attestation' });
    expect(ev.error).toMatch(/^unreadable vuln attestation by "release-team": /);
  });

  test('an unknown authority name is a startup error', () => {
    expect(() => service({ attestations: { authorities: ['nobody'] } }, { signatures: sigs })).toThrow(/no authority named "nobody"/);
  });
});

describe('reports', () => {
  test('missing, then the pushed report; an index is covered by its own report or by all its platforms', async () => {
    const s = service(REPORTS);
    expect(await s.scan(ctx(D1), [])).toEqual({ status: 'missing', code: 'NOT_SCANNED' });
    putReport(s, D1, [{ id: 'CVE-9', severity: 'CRITICAL' }]);
    expect(await s.scan(ctx(D1), [])).toMatchObject({ status: 'ok', source: 'report', counts: { CRITICAL: 1 } });
    // Index: one platform only is not enough.
    expect((await s.scan(ctx(IDX, OCI_INDEX), [])).status).toBe('missing');
    putReport(s, D2, [{ id: 'CVE-8', severity: 'HIGH', fixed: '2' }]);
    expect(await s.scan(ctx(IDX, OCI_INDEX), [])).toMatchObject({ status: 'ok', counts: { CRITICAL: 1, HIGH: 1 }, fixable_counts: { HIGH: 1 } });
    putReport(s, IDX, []);
    expect(await s.scan(ctx(IDX, OCI_INDEX), [])).toMatchObject({ status: 'ok', counts: { CRITICAL: 0, HIGH: 0 } });
  });

  test('a report older than staleAfter is stale; a deleted report is gone at once', async () => {
    const s = service({ ...REPORTS, staleAfter: '1h' });
    putReport(s, D1, [], new Date(Date.now() - 2 * 3_600_000).toISOString());
    expect(await s.scan(ctx(D1), [])).toMatchObject({ status: 'stale', code: 'STALE' });
    s.store.deleteReport('127.0.0.1:5000', 'demo/app', D1);
    s.reportsChanged(D1);
    expect((await s.scan(ctx(D1), [])).status).toBe('missing');
  });

  test('the injected clock decides age and staleness', async () => {
    let now = Date.now();
    const s = service({ ...REPORTS, staleAfter: '1d' }, { now: () => now });
    putReport(s, D1, []);
    expect((await s.scan(ctx(D1), [])).status).toBe('ok');
    now += 2 * 86_400_000;
    const ev = await s.scan(ctx(D1), []);
    expect(ev.status).toBe('stale');
    expect(ev.age_seconds).toBeGreaterThanOrEqual(2 * 86_400 - 1);
  });

  test('a result dated in the future beyond the clock skew is stale, not fresh forever', async () => {
    const now = Date.parse('2026-06-01T00:00:00Z');
    const s = service({ ...REPORTS, staleAfter: '7d' }, { now: () => now });
    putReport(s, D1, [], '2999-01-01T00:00:00.000Z');
    expect(await s.scan(ctx(D1), [])).toMatchObject({ status: 'stale', code: 'FUTURE_SCAN_TIME' });
    // Within the skew (5m by default) it counts.
    putReport(s, D2, [], new Date(now + 60_000).toISOString());
    expect((await s.scan(ctx(D2), [])).status).toBe('ok');
  });

  test('reports are append-only history: a newer scan supersedes, an older push does not, bounded per image', async () => {
    const s = service(REPORTS);
    const at = (h: number): string => new Date(Date.parse('2026-06-01T00:00:00Z') + h * 3_600_000).toISOString();
    const meta = {
      registry: '127.0.0.1:5000',
      repository: 'demo/app',
      digest: D1,
      format: 'trivy' as const,
      uploadedAt: 1,
      scanner: 'Trivy',
      bound: true,
      size: 2,
    };
    const put = (h: number, findings: Array<{ id: string; severity: 'CRITICAL' }>): { id: number; inForce: boolean; kept: boolean } =>
      s.store.putReport({ ...meta, scannedAt: at(h), findings }, Buffer.from(`{"h":${h}}`), 3);
    const first = put(1, [{ id: 'CVE-1', severity: 'CRITICAL' }]);
    expect(first).toMatchObject({ inForce: true, kept: true });
    const second = put(2, []);
    expect(second).toMatchObject({ inForce: true, kept: true });
    expect(second.id).toBeGreaterThan(first.id);
    // The first is kept, not overwritten.
    expect(s.store.getReport(meta.registry, meta.repository, D1, first.id)!.findings).toEqual([{ id: 'CVE-1', severity: 'CRITICAL' }]);
    expect(s.store.reportBody(meta.registry, meta.repository, D1, first.id)!.toString()).toBe('{"h":1}');
    // A replayed older report (scanned before the one in force) is history from the start.
    const replay = put(0.5, []);
    expect(replay).toMatchObject({ inForce: false, kept: true });
    s.reportsChanged(D1);
    expect(s.store.getReport(meta.registry, meta.repository, D1)!.id).toBe(second.id);
    expect((await s.scan(ctx(D1), [])).counts!.CRITICAL).toBe(0);
    // Bounded: 3 versions per image, the oldest scans pruned first; the one in force never.
    expect(s.store.versions(meta.registry, meta.repository, D1).map((v) => v.id)).toEqual([second.id, first.id, replay.id]);
    const third = put(3, [{ id: 'CVE-3', severity: 'CRITICAL' }]);
    expect(s.store.versions(meta.registry, meta.repository, D1).map((v) => v.id)).toEqual([third.id, second.id, first.id]);
    expect(put(0.1, [])).toMatchObject({ inForce: false, kept: false });
    s.reportsChanged(D1);
    expect((await s.scan(ctx(D1), [])).counts!.CRITICAL).toBe(1);
    // The listing shows the version in force per image, or every version.
    expect(s.store.listReports({ limit: 10, offset: 0 }).reports.map((r) => [r.id, r.inForce])).toEqual([[third.id, true]]);
    expect(s.store.listReports({ history: true, limit: 10, offset: 0 })).toMatchObject({ total: 3 });
    // Deleting one version brings the next newest back in force; deleting all leaves nothing.
    expect(s.store.deleteReport(meta.registry, meta.repository, D1, third.id)).toBe(1);
    expect(s.store.getReport(meta.registry, meta.repository, D1)!.id).toBe(second.id);
    expect(s.store.deleteReport(meta.registry, meta.repository, D1)).toBe(2);
    expect(s.store.versions(meta.registry, meta.repository, D1)).toEqual([]);
  });

  test('reports stored before the history existed become the first version of each image', async () => {
    const dataDir = tempDir('pc-scan-migrate-');
    const { DatabaseSync } = await import('node:sqlite');
    const db = new DatabaseSync(join(dataDir, 'scan.sqlite'));
    db.exec(`CREATE TABLE scan_reports (registry TEXT NOT NULL, repository TEXT NOT NULL, digest TEXT NOT NULL, format TEXT NOT NULL, uploaded_at INTEGER NOT NULL,
      scanned_at TEXT NOT NULL, scanner TEXT, bound INTEGER NOT NULL, size INTEGER NOT NULL, findings TEXT NOT NULL, body BLOB NOT NULL, PRIMARY KEY (registry, repository, digest)) WITHOUT ROWID`);
    db.prepare('INSERT INTO scan_reports VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)').run(
      '127.0.0.1:5000',
      'demo/app',
      D1,
      'trivy',
      5,
      new Date().toISOString(),
      'Trivy',
      1,
      2,
      JSON.stringify([{ id: 'CVE-9', severity: 'CRITICAL' }]),
      Buffer.from('{}'),
    );
    db.close();
    const s = service(REPORTS, { dataDir });
    expect(s.store.versions('127.0.0.1:5000', 'demo/app', D1)).toHaveLength(1);
    expect(await s.scan(ctx(D1), [])).toMatchObject({ status: 'ok', counts: { CRITICAL: 1 } });
  });

  test('scanner errors stored before codes existed read as SCAN_FAILED; new ones keep their code', async () => {
    const dataDir = tempDir('pc-scan-migrate-');
    const { DatabaseSync } = await import('node:sqlite');
    const db = new DatabaseSync(join(dataDir, 'scan.sqlite'));
    db.exec(`CREATE TABLE scanner_scans (digest TEXT PRIMARY KEY, result_scanned_at TEXT, result_scanner TEXT, result_findings TEXT, job_id TEXT, job_requested_at INTEGER,
      job_next_poll_at INTEGER, job_upstream TEXT, job_repository TEXT, job_mime TEXT, error TEXT, error_at INTEGER) WITHOUT ROWID`);
    db.prepare('INSERT INTO scanner_scans (digest, error, error_at) VALUES (?, ?, ?)').run(D1, 'scan failed: HTTP 500', 5);
    db.close();
    const s = service(REPORTS, { dataDir });
    expect(s.store.getScanner(D1)?.error).toEqual({ message: 'scan failed: HTTP 500', at: 5, code: 'SCAN_FAILED' });
    s.store.putScanner({ digest: D2, result: null, job: null, error: { message: 'scan did not finish within 1s', at: 6, code: 'SCAN_TIMEOUT' } });
    expect(s.store.getScanner(D2)?.error?.code).toBe('SCAN_TIMEOUT');
  });
});

describe('the Harbor scanner', () => {
  let sc: ScannerDouble | undefined;
  afterEach(async () => {
    await sc?.stop();
    sc = undefined;
  });

  const scannerCfg = (url: string, extra: Record<string, unknown> = {}): Record<string, unknown> => ({ scanner: { url, pollInterval: '50ms', ...extra } });

  test('a miss requests a scan (pending), polls with Refresh-After, stores the result', async () => {
    sc = await startScannerDouble({ pull: false, delayMs: 300, refreshAfter: 0 });
    sc.setFindings(D1, { vulnerabilities: [{ id: 'CVE-2026-1', package: 'openssl', version: '3.0.1', fix_version: '3.0.2', severity: 'Critical' }] });
    const metrics = new Metrics({ defaultMetrics: false });
    const s = service(scannerCfg(sc.url), { metrics });
    expect(await s.scan(ctx(D1), [])).toEqual({ status: 'pending', source: 'scanner', code: 'PENDING' });
    expect(s.pendingScans).toBe(1);
    expect(sc.scans).toHaveLength(1);
    expect(sc.scans[0]).toMatchObject({
      registry: { url: 'http://127.0.0.1:5000' },
      artifact: { repository: 'demo/app', digest: D1, mime_type: OCI_MANIFEST },
    });
    // A second lookup while pending does not request again.
    expect((await s.scan(ctx(D1), [])).status).toBe('pending');
    expect(sc.scans).toHaveLength(1);
    const ev = await s.awaitResult(ctx(D1), [], 5_000);
    expect(ev).toMatchObject({ status: 'ok', source: 'scanner', counts: { CRITICAL: 1 }, fixable_counts: { CRITICAL: 1 }, scanner: 'Trivy 0.58.1' });
    expect(ev.vulnerabilities).toEqual([{ id: 'CVE-2026-1', severity: 'CRITICAL', package: 'openssl', installed: '3.0.1', fixed: '3.0.2' }]);
    expect(s.pendingScans).toBe(0);
    expect(sc.requests.filter((r) => r.path.endsWith('/report')).length).toBeGreaterThanOrEqual(2);
    const text = await metrics.registry.metrics();
    expect(text).toMatch(/portcullis_scan_lookups_total\{source="scanner",status="pending"\} [2-9]/);
    expect(text).toMatch(/portcullis_scanner_request_duration_seconds_count\{op="scan",outcome="202"\} 1/);
    expect(text).toMatch(/portcullis_scan_pending 0/);
  });

  test('Refresh-After is honoured: no poll before the scanner said', async () => {
    sc = await startScannerDouble({ pull: false, delayMs: 1_500, refreshAfter: 1 });
    // A frozen wall clock: the poll schedule the service writes down is then exact.
    const T = Date.parse('2026-06-01T00:00:00Z');
    const s = service(scannerCfg(sc.url), { wallClock: () => T });
    await s.scan(ctx(D1), []);
    // The first poll comes at once and gets 302 with Refresh-After: 1; the next is scheduled a second later, not
    // after pollInterval (50ms).
    await until(() => s.store.getScanner(D1)?.job?.nextPollAt !== T, 'the first poll');
    expect(s.store.getScanner(D1)!.job!.nextPollAt).toBe(T + 1_000);
    expect(sc.requests.filter((r) => r.path.endsWith('/report'))).toHaveLength(1);
    expect((await s.awaitResult(ctx(D1), [], 5_000)).status).toBe('ok');
  });

  test('awaitResult gives up at its deadline (capped by maxWait) and reports pending', async () => {
    sc = await startScannerDouble({ pull: false, delayMs: 10_000, refreshAfter: 0 });
    let wall = Date.parse('2026-06-01T00:00:00Z');
    const s = service({ ...scannerCfg(sc.url), maxWait: '300ms' }, { wallClock: () => wall });
    // The deadline is taken when awaitResult is called; then 300 ms pass. Capped at maxWait it has run out, so the
    // first lookup's pending is the answer. Uncapped (5 s) it would wait on until the scan finished, 10 s later.
    const waiting = s.awaitResult(ctx(D1), [], 5_000);
    wall += 300;
    expect((await waiting).status).toBe('pending');
  });

  test('an index is scanned per platform manifest and the results merged', async () => {
    sc = await startScannerDouble({ pull: false, delayMs: 0, refreshAfter: 0 });
    sc.setFindings(D1, { vulnerabilities: [{ id: 'CVE-A', package: 'a', version: '1', severity: 'High' }] });
    sc.setFindings(D2, { vulnerabilities: [{ id: 'CVE-B', package: 'b', version: '1', severity: 'Critical' }] });
    const s = service(scannerCfg(sc.url));
    const ev = await s.awaitResult(ctx(IDX, OCI_INDEX), [], 5_000);
    expect(ev).toMatchObject({ status: 'ok', counts: { CRITICAL: 1, HIGH: 1 } });
    expect(sc.scans.map((x) => x.artifact.digest).sort()).toEqual([D1, D2].sort());
  });

  test('a failed scan is an error that stands for retryAfterError, then the scan is requested again', async () => {
    sc = await startScannerDouble({ pull: false, delayMs: 0, refreshAfter: 0 });
    sc.setFindings(D1, { vulnerabilities: [], fail: 'database not ready' });
    let wall = Date.parse('2026-06-01T00:00:00Z');
    const s = service(scannerCfg(sc.url, { retryAfterError: '300ms' }), { wallClock: () => wall });
    const ev = await s.awaitResult(ctx(D1), [], 5_000);
    expect(ev).toMatchObject({ status: 'error', source: 'scanner', code: 'SCAN_FAILED' });
    expect(ev.error).toContain('database not ready');
    expect((await s.scan(ctx(D1), [])).status).toBe('error');
    expect(sc.scans).toHaveLength(1);
    sc.setFindings(D1, { vulnerabilities: [] });
    // The error stands for 300 ms after it was recorded, and no longer.
    const failedAt = s.store.getScanner(D1)!.error!.at;
    wall = failedAt + 299;
    expect((await s.scan(ctx(D1), [])).status).toBe('error');
    expect(sc.scans).toHaveLength(1);
    wall = failedAt + 301;
    expect((await s.scan(ctx(D1), [])).status).toBe('pending');
    expect(sc.scans).toHaveLength(2);
    expect((await s.awaitResult(ctx(D1), [], 5_000)).status).toBe('ok');
  });

  test('a scan that outlasts scanTimeout is an error with its code', async () => {
    sc = await startScannerDouble({ pull: false, delayMs: 60_000, refreshAfter: 0 });
    const s = service(scannerCfg(sc.url, { scanTimeout: '200ms' }));
    expect((await s.scan(ctx(D1), [])).code).toBe('PENDING');
    const ev = await s.awaitResult(ctx(D1), [], 5_000);
    expect(ev).toMatchObject({ status: 'error', source: 'scanner', code: 'SCAN_TIMEOUT', error: 'scan did not finish within 0s' });
  });

  test('an index with nothing to scan is a lookup error with its code', async () => {
    sc = await startScannerDouble({ pull: false });
    const bytes = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: OCI_INDEX,
        manifests: [{ mediaType: OCI_MANIFEST, digest: sha256('att'), size: 10, platform: { os: 'unknown', architecture: 'unknown' } }],
      }),
    );
    const s = service(scannerCfg(sc.url));
    // The index arrives with the request (EvidenceContext.manifest): one whose only child is an attestation.
    const onlyAttestations = { ...ctx(IDX, OCI_INDEX), manifest: { digest: IDX, mediaType: OCI_INDEX, bytes, parsed: parseManifest(bytes, OCI_INDEX) } };
    expect(await s.scan(onlyAttestations, [])).toEqual({
      status: 'error',
      source: 'scanner',
      code: 'LOOKUP_FAILED',
      error: 'index has no platform manifest to scan',
    });
    expect(sc.scans).toHaveLength(0);
  });

  test('the scanner down is an error naming it; sources before it still answer', async () => {
    const down = await startScannerDouble({ pull: false });
    const url = down.url;
    await down.stop();
    const s = service({ ...REPORTS, ...scannerCfg(url) });
    const ev = await s.scan(ctx(D1), []);
    expect(ev).toMatchObject({ status: 'error', source: 'scanner', code: 'SCANNER_ERROR' });
    expect(ev.error).toMatch(/scanner unreachable \(ECONNREFUSED/);
    putReport(s, D1, []);
    expect(await s.scan(ctx(D1), [])).toMatchObject({ status: 'ok', source: 'report' });
  });

  test('a fresh result from an earlier source means the scanner is never asked', async () => {
    sc = await startScannerDouble({ pull: false });
    const s = service({ ...REPORTS, ...scannerCfg(sc.url) });
    putReport(s, D1, []);
    expect((await s.scan(ctx(D1), [])).status).toBe('ok');
    expect(sc.requests).toEqual([]);
  });

  test('order: the scanner first when configured so', async () => {
    sc = await startScannerDouble({ pull: false, delayMs: 0, refreshAfter: 0 });
    const s = service({ order: ['scanner', 'reports'], ...REPORTS, ...scannerCfg(sc.url) });
    putReport(s, D1, [{ id: 'CVE-9', severity: 'CRITICAL' }]);
    // Pending at the scanner, but the report is a fresh result: it wins over pending.
    expect(await s.scan(ctx(D1), [])).toMatchObject({ status: 'ok', source: 'report' });
    expect(await s.awaitResult(ctx(D2), [], 5_000)).toMatchObject({ status: 'ok', source: 'scanner' });
  });

  test('a stale result is used while the rescan runs', async () => {
    sc = await startScannerDouble({ pull: false, delayMs: 0, refreshAfter: 0 });
    let now = Date.now();
    const s = service({ ...scannerCfg(sc.url), staleAfter: '1h' }, { now: () => now });
    expect((await s.awaitResult(ctx(D1), [], 5_000)).status).toBe('ok');
    sc.delayMs = 10_000;
    now += 2 * 3_600_000;
    expect((await s.scan(ctx(D1), [])).status).toBe('stale');
    expect(sc.scans).toHaveLength(2);
  });

  test('bearer auth to the scanner; polling resumes after a restart', async () => {
    process.env.PC_TEST_SCANNER_TOKEN = 's3cret';
    sc = await startScannerDouble({ pull: false, token: 's3cret', delayMs: 800, refreshAfter: 0 });
    const dataDir = tempDir('pc-scan-restart-');
    const cfg = scannerCfg(sc.url, { auth: { bearer: { env: 'PC_TEST_SCANNER_TOKEN' } } });
    const s1 = service(cfg, { dataDir });
    expect((await s1.scan(ctx(D1), [])).status).toBe('pending');
    s1.close();
    const s2 = service(cfg, { dataDir });
    expect(s2.pendingScans).toBe(1);
    expect((await s2.awaitResult(ctx(D1), [], 5_000)).status).toBe('ok');
    expect(sc.scans).toHaveLength(1);
    expect(sc.requests.every((r) => r.authorization === 'Bearer s3cret')).toBe(true);
  });

  test('the scanner losing a request (404) makes the proxy ask again', async () => {
    sc = await startScannerDouble({ pull: false, delayMs: 300, refreshAfter: 0 });
    const dataDir = tempDir('pc-scan-lost-');
    const s1 = service(scannerCfg(sc.url), { dataDir });
    await s1.scan(ctx(D1), []);
    s1.close();
    // A new scanner instance (restarted: it knows no ids) at the same config.
    const url = sc.url;
    await sc.stop();
    const port = Number(new URL(url).port);
    sc = await startScannerDouble({ pull: false, delayMs: 0, refreshAfter: 0, port });
    const s2 = service(scannerCfg(url), { dataDir });
    expect((await s2.awaitResult(ctx(D1), [], 5_000)).status).toBe('ok');
    expect(sc.scans).toHaveLength(1);
  });
});
