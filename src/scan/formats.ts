/**
 * Parsers for the scan report formats Portcullis reads (reference/protocols.md §4c, §6), each reduced to a
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

export class ReportFormatError extends Error {
  override name = 'ReportFormatError';
}

export type ReportFormat = 'trivy' | 'sarif';

export interface ParsedReport {
  format: ReportFormat;
  result: Omit<ScanResult, 'scannedAt'> & { scannedAt?: string };
  /** Every manifest digest the report names for the scanned artifact (RepoDigests, `name@sha256:…`). */
  namedDigests: string[];
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
    for (const m of v.slice(at + 1).toLowerCase().matchAll(DIGEST_IN)) out.add(m[1]!);
  }
  return [...out];
}

function validTime(s: unknown): string | undefined {
  return typeof s === 'string' && Number.isFinite(Date.parse(s)) ? new Date(Date.parse(s)).toISOString() : undefined;
}

/** Detects and parses an uploaded report. */
export function parseReport(body: unknown): ParsedReport {
  if (!isObj(body)) throw new ReportFormatError('report is not a JSON object');
  if (Array.isArray(body.runs)) return parseSarif(body);
  if ('SchemaVersion' in body || 'Results' in body || 'ArtifactName' in body) return parseTrivy(body);
  throw new ReportFormatError('unrecognised report: expected Trivy JSON (SchemaVersion, Results) or SARIF 2.1.0 (runs)');
}

export function parseTrivy(r: Obj): ParsedReport {
  if (r.SchemaVersion !== undefined && r.SchemaVersion !== 2) throw new ReportFormatError(`unsupported Trivy SchemaVersion ${JSON.stringify(r.SchemaVersion)} (want 2)`);
  if (r.Results !== undefined && r.Results !== null && !Array.isArray(r.Results)) throw new ReportFormatError('Trivy report: Results is not an array');
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
  return { format: 'trivy', result, namedDigests: digestsIn([...arr(meta.RepoDigests), r.ArtifactName]) };
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

export function parseSarif(r: Obj): ParsedReport {
  if (r.version !== undefined && r.version !== '2.1.0') throw new ReportFormatError(`unsupported SARIF version ${JSON.stringify(r.version)} (want 2.1.0)`);
  const findings: Finding[] = [];
  const named: unknown[] = [];
  let tool: string | undefined;
  for (const run of arr(r.runs)) {
    if (!isObj(run)) continue;
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
  return { format: 'sarif', result, namedDigests: digestsIn(named) };
}

/** Harbor's HarborVulnerabilityReport (Pluggable Scanner API `GET /scan/{id}/report`). */
export function parseHarborReport(r: unknown): ScanResult {
  if (!isObj(r)) throw new ReportFormatError('scanner report is not a JSON object');
  if (r.vulnerabilities !== undefined && r.vulnerabilities !== null && !Array.isArray(r.vulnerabilities)) throw new ReportFormatError('scanner report: vulnerabilities is not an array');
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
  const name = str(scanner.uri)?.replace(/^pkg:github\/[^/]+\//, '').replace('@', ' ') ?? parsed.result.scanner;
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
