/**
 * Scan report parsers against fixtures written to the documented shapes (reference/protocols.md §4c, §6): Trivy
 * JSON, SARIF 2.1.0 as Trivy writes it, Harbor's vulnerability report, the cosign vuln predicate; and the summary
 * that goes into the policy input.
 */
import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import { scanSchema } from '../../src/config/scan.js';
import { parseHarborReport, parseReport, parseVulnPredicate, ReportFormatError } from '../../src/scan/formats.js';
import { mergeResults, normalizeSeverity, summarize, type ScanResult } from '../../src/scan/normalize.js';

const fixture = (name: string): unknown => JSON.parse(readFileSync(`test/fixtures/scan/${name}`, 'utf8')) as unknown;
const ZERO = `sha256:${'0'.repeat(64)}`;

describe('Trivy JSON', () => {
  test('findings, the digests it names, and its scan time', () => {
    const r = parseReport(fixture('trivy-critical.json'));
    expect(r.format).toBe('trivy');
    expect(r.namedDigests).toEqual([ZERO]);
    expect(r.result.scannedAt).toBe('2026-05-20T09:14:03.512Z');
    expect(r.result.findings).toContainEqual({ id: 'CVE-2024-0727', severity: 'CRITICAL', package: 'libcrypto3', installed: '3.1.4-r2', fixed: '3.1.4-r5' });
    expect(r.result.findings).toContainEqual({ id: 'CVE-2023-5678', severity: 'LOW', package: 'busybox', installed: '1.36.1-r15' });
    expect(r.result.findings).toContainEqual({ id: 'GHSA-952p-6rrq-rcjv', severity: 'HIGH', package: 'micromatch', installed: '4.0.5', fixed: '4.0.8' });
    expect(r.result.findings).toHaveLength(5);
  });

  test('a clean report has no findings; the image ID (a config digest) is not a manifest digest', () => {
    const r = parseReport(fixture('trivy-clean.json'));
    expect(r.result.findings).toEqual([]);
    expect(r.namedDigests).toEqual([ZERO]);
  });

  test('a report that names no digest (trivy image --input) binds to nothing', () => {
    const r = parseReport({ SchemaVersion: 2, ArtifactName: 'app.tar', Results: [] });
    expect(r.namedDigests).toEqual([]);
  });

  test('unsupported or malformed reports are refused with a reason', () => {
    expect(() => parseReport({ SchemaVersion: 1, Results: [] })).toThrow(/SchemaVersion/);
    expect(() => parseReport({ SchemaVersion: 2, Results: {} })).toThrow(/Results is not an array/);
    expect(() => parseReport({ hello: 1 })).toThrow(ReportFormatError);
    expect(() => parseReport([1, 2])).toThrow(/not a JSON object/);
  });

  /** The field a refused report is refused for. */
  const field = (doc: unknown): string | undefined => {
    try {
      parseReport(doc);
    } catch (e) {
      expect(e).toBeInstanceOf(ReportFormatError);
      return (e as ReportFormatError).field;
    }
    return undefined;
  };

  test('a report without results for the artifact is not a clean scan: refused, naming Results', () => {
    // The attack: an empty report used to count as "scanned, 0 findings".
    expect(field({ SchemaVersion: 2 })).toBe('Results');
    expect(() => parseReport({ SchemaVersion: 2 })).toThrow(/^Results: missing/);
    expect(field({ SchemaVersion: 2, Results: null, ArtifactName: `x@${ZERO}` })).toBe('Results');
    // The real clean fixture with its Results removed is refused; as Trivy writes it, it is a scan with no findings.
    const clean = fixture('trivy-clean.json') as Record<string, unknown>;
    const { Results: _r, ...noResults } = clean;
    expect(field(noResults)).toBe('Results');
    expect(parseReport(clean).result.findings).toEqual([]);
    // An explicit empty array is an explicit "nothing found".
    expect(parseReport({ SchemaVersion: 2, Results: [] }).result.findings).toEqual([]);
  });

  test('the schema must be stated and be 2; the scan time must be a time', () => {
    expect(field({ Results: [], ArtifactName: 'x' })).toBe('SchemaVersion');
    expect(field({ SchemaVersion: '2', Results: [] })).toBe('SchemaVersion');
    expect(field({ SchemaVersion: 3, Results: [] })).toBe('SchemaVersion');
    expect(field({ SchemaVersion: 2, Results: [], CreatedAt: 'soon' })).toBe('CreatedAt');
    expect(parseReport({ SchemaVersion: 2, Results: [], CreatedAt: '2999-01-01T00:00:00Z' })).toMatchObject({
      timeField: 'CreatedAt',
      result: { scannedAt: '2999-01-01T00:00:00.000Z' },
    });
  });

  test('never throws anything but ReportFormatError on arbitrary JSON', () => {
    fc.assert(
      fc.property(fc.jsonValue(), (v) => {
        try {
          parseReport(v);
        } catch (e) {
          expect(e).toBeInstanceOf(ReportFormatError);
        }
      }),
    );
    fc.assert(
      fc.property(fc.jsonValue(), (v) => {
        try {
          parseReport({ SchemaVersion: 2, Results: [{ Vulnerabilities: [v] }], Metadata: { RepoDigests: v } });
        } catch (e) {
          expect(e).toBeInstanceOf(ReportFormatError);
        }
      }),
    );
  });
});

describe('SARIF', () => {
  test('Trivy SARIF: vulnerabilities only (misconfigurations skipped), severities, packages, versions, bound digest', () => {
    const r = parseReport(fixture('trivy-critical.sarif'));
    expect(r.format).toBe('sarif');
    expect(r.namedDigests).toEqual([ZERO]);
    expect(r.result.scanner).toBe('Trivy 0.58.1');
    expect(r.result.findings).toEqual([
      { id: 'CVE-2024-0727', severity: 'CRITICAL', package: 'libcrypto3', installed: '3.1.4-r2', fixed: '3.1.4-r5' },
      { id: 'CVE-2023-5678', severity: 'LOW', package: 'busybox', installed: '1.36.1-r15' },
    ]);
  });

  test('generic SARIF: severity from security-severity, ids from ruleId', () => {
    const r = parseReport({
      version: '2.1.0',
      runs: [
        {
          tool: { driver: { name: 'grype', rules: [{ id: 'CVE-1', properties: { 'security-severity': '7.5' } }] } },
          results: [{ ruleId: 'CVE-1', message: { text: 'x' } }],
        },
      ],
    });
    expect(r.result.findings).toEqual([{ id: 'CVE-1', severity: 'HIGH' }]);
    expect(r.namedDigests).toEqual([]);
  });

  test('other SARIF versions are refused', () => {
    expect(() => parseReport({ version: '2.0.0', runs: [] })).toThrow(/SARIF version/);
  });

  test('SARIF without a version, without runs, or with a run without results is refused, naming the field', () => {
    const sarif = fixture('trivy-critical.sarif') as { version?: string; runs: Array<Record<string, unknown>> };
    const fieldOf = (doc: unknown): string | undefined => {
      try {
        parseReport(doc);
        return undefined;
      } catch (e) {
        return (e as ReportFormatError).field;
      }
    };
    expect(fieldOf({ ...sarif, version: undefined })).toBe('version');
    expect(fieldOf({ ...sarif, runs: [] })).toBe('runs');
    const { results: _r, ...run } = sarif.runs[0]!;
    expect(fieldOf({ ...sarif, runs: [run] })).toBe('runs[0].results');
    // "Scanned, no findings" in SARIF is an empty results array.
    expect(parseReport({ ...sarif, runs: [{ ...run, results: [] }] }).result.findings).toEqual([]);
  });

  test('the scan time comes from invocations[].endTimeUtc', () => {
    const run = {
      tool: { driver: { name: 'grype' } },
      results: [],
      invocations: [{ executionSuccessful: true, startTimeUtc: '2026-05-20T09:00:00Z', endTimeUtc: '2026-05-20T09:01:00Z' }],
    };
    expect(parseReport({ version: '2.1.0', runs: [run] })).toMatchObject({
      timeField: 'runs[0].invocations[0].endTimeUtc',
      result: { scannedAt: '2026-05-20T09:01:00.000Z' },
    });
    expect(() => parseReport({ version: '2.1.0', runs: [{ ...run, invocations: [{ endTimeUtc: 'later' }] }] })).toThrow(/endTimeUtc: not an RFC 3339 time/);
  });
});

describe('Harbor report and cosign vuln predicate', () => {
  test('Harbor severities (Title case, Negligible) and fix versions', () => {
    const r = parseHarborReport(fixture('harbor-report.json'));
    expect(r.scannedAt).toBe('2026-05-20T09:30:00.000Z');
    expect(r.scanner).toBe('Trivy 0.58.1');
    expect(r.findings).toEqual([
      { id: 'CVE-2024-0727', severity: 'CRITICAL', package: 'libcrypto3', installed: '3.1.4-r2', fixed: '3.1.4-r5' },
      { id: 'CVE-2023-6237', severity: 'LOW', package: 'libssl3', installed: '3.1.4-r2' },
    ]);
  });

  test('trivy --format cosign-vuln: scanner.result is the Trivy report, scanFinishedOn is the scan time', () => {
    const { result, namedDigests } = parseVulnPredicate(fixture('cosign-vuln-predicate.json'));
    expect(result.scannedAt).toBe('2026-05-20T09:14:03.512Z');
    expect(result.scanner).toBe('trivy 0.58.1');
    expect(result.findings.map((f) => f.id)).toEqual(['CVE-2024-0727', 'CVE-2023-5678']);
    expect(namedDigests).toEqual([ZERO]);
  });

  test('a predicate without a readable report is an error', () => {
    expect(() => parseVulnPredicate({ scanner: { uri: 'x' } })).toThrow(ReportFormatError);
    expect(() => parseVulnPredicate('nope')).toThrow(ReportFormatError);
  });
});

describe('summary for the policy input', () => {
  const r: ScanResult = {
    scannedAt: '2026-05-20T00:00:00Z',
    findings: [
      { id: 'CVE-3', severity: 'HIGH', package: 'a', installed: '1' },
      { id: 'CVE-1', severity: 'CRITICAL', package: 'b', installed: '1', fixed: '2' },
      { id: 'CVE-2', severity: 'CRITICAL', package: 'c', installed: '1' },
      { id: 'CVE-1', severity: 'HIGH', package: 'b', installed: '1' }, // same finding twice (two targets)
      { id: 'CVE-4', severity: 'LOW', package: 'd', installed: '1', fixed: '1.1' },
    ],
  };

  test('counts, fixable counts, sorted capped list, age', () => {
    const ev = summarize(r, { status: 'ok', source: 'report', now: Date.parse('2026-05-20T01:00:00Z'), maxVulnerabilities: 2 });
    expect(ev).toMatchObject({
      status: 'ok',
      source: 'report',
      scanned_at: '2026-05-20T00:00:00Z',
      age_seconds: 3600,
      counts: { CRITICAL: 2, HIGH: 1, MEDIUM: 0, LOW: 1, UNKNOWN: 0 },
      fixable_counts: { CRITICAL: 1, HIGH: 0, MEDIUM: 0, LOW: 1, UNKNOWN: 0 },
      vulnerabilities_total: 4,
    });
    expect(ev.vulnerabilities).toEqual([
      { id: 'CVE-1', severity: 'CRITICAL', package: 'b', installed: '1', fixed: '2' },
      { id: 'CVE-2', severity: 'CRITICAL', package: 'c', installed: '1', fixed: '' },
    ]);
  });

  test('merging platform results: findings deduplicated, oldest scan time', () => {
    const m = mergeResults([r, { scannedAt: '2026-05-19T00:00:00Z', findings: [{ id: 'CVE-2', severity: 'CRITICAL', package: 'c', installed: '1' }] }]);
    expect(m.scannedAt).toBe('2026-05-19T00:00:00Z');
    const ev = summarize(m, { status: 'ok', source: 'scanner', now: Date.now(), maxVulnerabilities: 50 });
    expect(ev.counts!.CRITICAL).toBe(2);
  });

  test('severity normalisation', () => {
    expect(['Critical', 'HIGH', 'medium', 'Negligible', 'moderate', 'weird', 3].map(normalizeSeverity)).toEqual([
      'CRITICAL',
      'HIGH',
      'MEDIUM',
      'LOW',
      'MEDIUM',
      'UNKNOWN',
      'UNKNOWN',
    ]);
  });
});

describe('scan config', () => {
  test('defaults and durations', () => {
    const c = scanSchema.parse({ reports: { token: { env: 'T' } }, scanner: { url: 'http://scanner:8080/api/v1/' } });
    expect(c.staleAfter).toBe(7 * 86_400_000);
    expect(c.maxWait).toBe(20_000);
    expect(c.reports!.maxSize).toBe(16 * 1024 * 1024);
    expect(c.scanner!.url).toBe('http://scanner:8080');
    expect(c.scanner!.pollInterval).toBe(2000);
    // Evidence defaults: a report must name its digest, 10 versions kept, 5 minutes of clock skew.
    expect(c.reports).toMatchObject({ requireDigestBinding: true, history: 10, maxClockSkew: 300_000 });
  });

  test('errors name the field', () => {
    const bad = scanSchema.safeParse({ order: ['scanner'], reports: { token: { env: 'T', file: 'f' } }, maxWait: '5m' });
    expect(bad.success).toBe(false);
    const paths = bad.error!.issues.map((i) => i.path.join('.'));
    expect(paths).toEqual(expect.arrayContaining(['reports.token', 'maxWait']));
    const unlisted = scanSchema.safeParse({ order: ['scanner'], reports: { token: { env: 'T' } } });
    expect(unlisted.error!.issues[0]!.message).toContain('source "scanner" is listed but not configured');
    expect(scanSchema.safeParse({ attestations: { authorities: [] } }).success).toBe(false);
    expect(scanSchema.safeParse({ reports: { token: 'inline-secret' } }).success).toBe(false);
  });
});
