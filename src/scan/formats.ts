/**
 * Parsers for the scan report formats Portcullis reads (listed below), each reduced to a
 * ScanResult, plus the digests a report names about itself, so that a report for one image cannot be filed
 * under another.
 *
 * - Trivy JSON (`trivy image --format json`): PascalCase Go field names, every field optional.
 * - SARIF 2.1.0 (`trivy image --format sarif`, or any SARIF producer): results point at rules; Trivy's rules carry
 *   the severity as a tag and in `security-severity`; the run's `properties` name the image (imageName,
 *   repoDigests).
 * - Harbor's HarborVulnerabilityReport (the Pluggable Scanner API's report).
 * - The cosign vuln predicate (`https://cosign.sigstore.dev/attestation/vuln/v1`), whose `scanner.result` is the
 *   scanner-native report (Trivy JSON when made with `trivy --format cosign-vuln`).
 */
import { normalizeSeverity, type Finding, type ScanResult, type Severity } from './normalize.js';

/** A report that cannot count as evidence; `field` names the part of the report at fault (the API returns it). */
export class ReportFormatError extends Error {
  override name = 'ReportFormatError';
  constructor(
    message: string,
    readonly field: string | undefined = undefined,
  ) {
    super(message);
  }
}

export type ReportFormat = 'trivy' | 'sarif';

export interface ParsedReport {
  format: ReportFormat;
  result: Omit<ScanResult, 'scannedAt'> & { scannedAt?: string };
  /** Every manifest digest the report names for the scanned artifact (RepoDigests, `name@sha256:…`). */
  namedDigests: string[];
  /** Where the scan time came from (`CreatedAt`, `runs[0].invocations[0].endTimeUtc`), for errors about it. */
  timeField?: string;
}

const DIGEST_IN = /(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})/g;

type Obj = Record<string, unknown>;
const isObj = (x: unknown): x is Obj => typeof x === 'object' && x !== null && !Array.isArray(x);
const str = (x: unknown): string | undefined => (typeof x === 'string' && x !== '' ? x : undefined);
const arr = (x: unknown): unknown[] => (Array.isArray(x) ? x : []);

function digestsIn(values: unknown[]): string[] {
  const out = new Set<string>();
  for (const v of values) {
    if (typeof v !== 'string') continue;
    // `repo@sha256:…` or `…@sha256:…`: only the part after '@' is a manifest digest (a bare sha256 could be an
    // image ID, which is the config digest, not the manifest's).
    const at = v.lastIndexOf('@');
    if (at === -1) continue;
    for (const m of v
      .slice(at + 1)
      .toLowerCase()
      .matchAll(DIGEST_IN))
      out.add(m[1]!);
  }
  return [...out];
}

function validTime(s: unknown): string | undefined {
  return typeof s === 'string' && Number.isFinite(Date.parse(s)) ? new Date(Date.parse(s)).toISOString() : undefined;
}

/** Detects and parses an uploaded report. */
export function parseReport(body: unknown): ParsedReport {
  if (!isObj(body)) throw new ReportFormatError('report is not a JSON object', '(root)');
  if (Array.isArray(body.runs)) return parseSarif(body);
  if ('SchemaVersion' in body || 'Results' in body || 'ArtifactName' in body) return parseTrivy(body);
  throw new ReportFormatError('unrecognised report: expected Trivy JSON (SchemaVersion, Results) or SARIF 2.1.0 (runs)', '(root)');
}

/**
 * A Trivy report counts only with `SchemaVersion: 2` and a `Results` array. Trivy lists every target it scanned
 * (the OS packages, each lock file) even when it found nothing, so "scanned, no findings" is `Results` with entries
 * and no `Vulnerabilities` (or an explicit `Results: []`); a report with no `Results` at all, such as
 * `{"SchemaVersion":2}`, says nothing about the image and is refused rather than read as clean.
 */
export function parseTrivy(r: Obj): ParsedReport {
  if (r.SchemaVersion === undefined) throw new ReportFormatError('SchemaVersion: missing (a Trivy JSON report has SchemaVersion 2)', 'SchemaVersion');
  if (r.SchemaVersion !== 2)
    throw new ReportFormatError(`SchemaVersion: unsupported Trivy SchemaVersion ${JSON.stringify(r.SchemaVersion).slice(0, 40)} (want 2)`, 'SchemaVersion');
  if (r.Results === undefined || r.Results === null) {
    throw new ReportFormatError(
      'Results: missing: the report has no results for the artifact, so it cannot count as a scan (a scan without findings still lists its targets, or send "Results": [])',
      'Results',
    );
  }
  if (!Array.isArray(r.Results)) throw new ReportFormatError('Trivy report: Results is not an array', 'Results');
  if (r.CreatedAt !== undefined && !validTime(r.CreatedAt)) throw new ReportFormatError('CreatedAt: not an RFC 3339 time', 'CreatedAt');
  const findings: Finding[] = [];
  for (const res of arr(r.Results)) {
    if (!isObj(res)) continue;
    for (const v of arr(res.Vulnerabilities)) {
      if (!isObj(v)) continue;
      const id = str(v.VulnerabilityID);
      if (!id) continue;
      findings.push(finding(id, normalizeSeverity(v.Severity), str(v.PkgName) ?? str(v.PkgID), str(v.InstalledVersion), str(v.FixedVersion)));
    }
  }
  const meta = isObj(r.Metadata) ? r.Metadata : {};
  const version = isObj(r.Trivy) ? str(r.Trivy.Version) : undefined;
  const result: ParsedReport['result'] = { findings, scanner: version ? `Trivy ${version}` : 'Trivy' };
  const created = validTime(r.CreatedAt);
  if (created) result.scannedAt = created;
  return { format: 'trivy', result, namedDigests: digestsIn([...arr(meta.RepoDigests), r.ArtifactName]), timeField: 'CreatedAt' };
}

const SARIF_SKIP = new Set(['misconfiguration', 'secret', 'license']);

function severityFromScore(s: unknown): Severity | undefined {
  const n = typeof s === 'number' ? s : typeof s === 'string' ? Number(s) : NaN;
  if (!Number.isFinite(n)) return undefined;
  if (n >= 9) return 'CRITICAL';
  if (n >= 7) return 'HIGH';
  if (n >= 4) return 'MEDIUM';
  if (n > 0) return 'LOW';
  return undefined;
}

function messageField(text: string | undefined, label: string): string | undefined {
  if (!text) return undefined;
  const m = new RegExp(`^${label}:[ \\t]*(.*)$`, 'mi').exec(text);
  const v = m?.[1]?.trim();
  return v ? v : undefined;
}

/**
 * SARIF counts only as version 2.1.0 with at least one run, and every run with a `results` array (empty when the
 * tool found nothing: SARIF's own way of saying "scanned, no findings"). The scan time is the latest
 * `invocations[].endTimeUtc` (else `startTimeUtc`) when the producer wrote one.
 */
export function parseSarif(r: Obj): ParsedReport {
  if (r.version !== '2.1.0')
    throw new ReportFormatError(`version: unsupported SARIF version ${JSON.stringify(r.version ?? null).slice(0, 40)} (want 2.1.0)`, 'version');
  const runs = arr(r.runs);
  if (runs.length === 0) throw new ReportFormatError('runs: empty: the report has no results for the artifact', 'runs');
  const findings: Finding[] = [];
  const named: unknown[] = [];
  let tool: string | undefined;
  let scannedAt: string | undefined;
  let timeField: string | undefined;
  for (const [i, run] of runs.entries()) {
    if (!isObj(run)) throw new ReportFormatError(`runs[${i}]: not an object`, `runs[${i}]`);
    if (!Array.isArray(run.results))
      throw new ReportFormatError(
        `runs[${i}].results: missing: the run has no results for the artifact (a scan without findings sends "results": [])`,
        `runs[${i}].results`,
      );
    for (const [j, inv] of arr(run.invocations).entries()) {
      if (!isObj(inv)) continue;
      for (const k of ['endTimeUtc', 'startTimeUtc'] as const) {
        if (inv[k] === undefined) continue;
        const t = validTime(inv[k]);
        const field = `runs[${i}].invocations[${j}].${k}`;
        if (!t) throw new ReportFormatError(`${field}: not an RFC 3339 time`, field);
        if (!scannedAt || Date.parse(t) > Date.parse(scannedAt)) [scannedAt, timeField] = [t, field];
        break;
      }
    }
    const driver = isObj(run.tool) && isObj(run.tool.driver) ? run.tool.driver : {};
    tool ??= [str(driver.name), str(driver.version)].filter(Boolean).join(' ') || undefined;
    const rules = arr(driver.rules).filter(isObj);
    const ruleById = new Map(rules.map((x) => [str(x.id) ?? '', x]));
    if (isObj(run.properties)) {
      const p = run.properties;
      named.push(...arr(p.repoDigests), p.imageName, p.imageRef);
    }
    for (const res of arr(run.results)) {
      if (!isObj(res)) continue;
      const rule = (typeof res.ruleIndex === 'number' ? rules[res.ruleIndex] : undefined) ?? ruleById.get(str(res.ruleId) ?? '');
      const props = isObj(rule?.properties) ? rule.properties : {};
      const tags = arr(props.tags).filter((t): t is string => typeof t === 'string');
      if (tags.some((t) => SARIF_SKIP.has(t.toLowerCase()))) continue;
      const text = isObj(res.message) ? str(res.message.text) : undefined;
      // Trivy's rule ids are the vulnerability ids; its contrib template used "[SEVERITY] CVE-…".
      const rawId = str(res.ruleId) ?? str(rule?.id);
      if (!rawId) continue;
      const id = rawId.replace(/^\[[A-Z]+\]\s*/, '');
      const sev =
        [messageField(text, 'Severity'), ...tags].map((t) => (t ? normalizeSeverity(t) : 'UNKNOWN')).find((s) => s !== 'UNKNOWN') ??
        severityFromScore(props['security-severity']) ??
        'UNKNOWN';
      findings.push(finding(id, sev, messageField(text, 'Package'), messageField(text, 'Installed Version'), messageField(text, 'Fixed Version')));
    }
  }
  const result: ParsedReport['result'] = { findings };
  if (tool) result.scanner = tool;
  if (scannedAt) result.scannedAt = scannedAt;
  return { format: 'sarif', result, namedDigests: digestsIn(named), ...(timeField ? { timeField } : {}) };
}

/** Harbor's HarborVulnerabilityReport (Pluggable Scanner API `GET /scan/{id}/report`). */
export function parseHarborReport(r: unknown): ScanResult {
  if (!isObj(r)) throw new ReportFormatError('scanner report is not a JSON object');
  if (r.vulnerabilities !== undefined && r.vulnerabilities !== null && !Array.isArray(r.vulnerabilities))
    throw new ReportFormatError('scanner report: vulnerabilities is not an array');
  const findings: Finding[] = [];
  for (const v of arr(r.vulnerabilities)) {
    if (!isObj(v)) continue;
    const id = str(v.id);
    if (!id) continue;
    findings.push(finding(id, normalizeSeverity(v.severity), str(v.package), str(v.version), str(v.fix_version)));
  }
  const s = isObj(r.scanner) ? [str(r.scanner.name), str(r.scanner.version)].filter(Boolean).join(' ') : '';
  const out: ScanResult = { scannedAt: validTime(r.generated_at) ?? new Date().toISOString(), findings };
  if (s) out.scanner = s;
  return out;
}

/**
 * The cosign vuln predicate: `{scanner: {uri, version, result: <native report>}, metadata: {scanFinishedOn}}`.
 * The result is parsed as Trivy JSON or SARIF. Undefined when the predicate has no readable result.
 */
export function parseVulnPredicate(p: unknown): { result: ScanResult; namedDigests: string[] } {
  if (!isObj(p)) throw new ReportFormatError('vuln predicate is not an object');
  const scanner = isObj(p.scanner) ? p.scanner : undefined;
  if (!scanner) throw new ReportFormatError('vuln predicate has no scanner');
  const parsed = parseReport(scanner.result);
  const meta = isObj(p.metadata) ? p.metadata : {};
  const finished = validTime(meta.scanFinishedOn) ?? validTime(meta.scanStartedOn) ?? parsed.result.scannedAt;
  if (!finished) throw new ReportFormatError('vuln predicate has no scan time (metadata.scanFinishedOn)');
  const name =
    str(scanner.uri)
      ?.replace(/^pkg:github\/[^/]+\//, '')
      .replace('@', ' ') ?? parsed.result.scanner;
  const result: ScanResult = { scannedAt: finished, findings: parsed.result.findings };
  const label = name ?? (str(scanner.version) ? `scanner ${str(scanner.version)}` : undefined);
  if (label) result.scanner = label;
  return { result, namedDigests: parsed.namedDigests };
}

/** A finding with only the optional fields that the report actually had (empty strings count as absent). */
function finding(id: string, severity: Finding['severity'], pkg: string | undefined, installed: string | undefined, fixed: string | undefined): Finding {
  const f: Finding = { id, severity };
  if (pkg) f.package = pkg;
  if (installed) f.installed = installed;
  if (fixed) f.fixed = fixed;
  return f;
}
