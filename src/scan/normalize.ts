/**
 * The common form every scan source is reduced to (a list of findings with a scan time), and the summary of it
 * that goes into the policy input's `scan` section: counts by severity, fixable counts and a capped list.
 */
import type { ScanEvidence } from '../policy/contract.js';

export const SEVERITIES = ['CRITICAL', 'HIGH', 'MEDIUM', 'LOW', 'UNKNOWN'] as const;
export type Severity = (typeof SEVERITIES)[number];

export interface Finding {
  id: string;
  severity: Severity;
  package?: string;
  installed?: string;
  fixed?: string;
}

/** One scan result for one digest, from any source. */
export interface ScanResult {
  /** When the scan ran (RFC3339); the upload time when the report says nothing. */
  scannedAt: string;
  /** "Trivy 0.50.1", when the report says. */
  scanner?: string;
  findings: Finding[];
}

/**
 * Trivy (CRITICAL…), Harbor (Critical, Negligible…), SARIF levels aside. Harbor's Negligible is counted as LOW;
 * anything unrecognised is UNKNOWN, which a limit on UNKNOWN can catch.
 */
export function normalizeSeverity(s: unknown): Severity {
  if (typeof s !== 'string') return 'UNKNOWN';
  const u = s.trim().toUpperCase();
  if (u === 'NEGLIGIBLE') return 'LOW';
  if (u === 'MODERATE') return 'MEDIUM';
  return (SEVERITIES as readonly string[]).includes(u) ? (u as Severity) : 'UNKNOWN';
}

const rank = (s: Severity): number => SEVERITIES.indexOf(s);

/** The same vulnerability in the same package version counts once (Trivy lists it once per target). */
export function dedupe(findings: Finding[]): Finding[] {
  const seen = new Map<string, Finding>();
  for (const f of findings) {
    const key = `${f.id}\n${f.package ?? ''}\n${f.installed ?? ''}`;
    const prev = seen.get(key);
    // Keep the most severe rating and any known fix.
    if (!prev) seen.set(key, f);
    else if (rank(f.severity) < rank(prev.severity) || (!prev.fixed && f.fixed))
      seen.set(key, { ...prev, severity: rank(f.severity) < rank(prev.severity) ? f.severity : prev.severity, fixed: prev.fixed || f.fixed });
  }
  return [...seen.values()];
}

export function isFixable(f: Finding): boolean {
  return typeof f.fixed === 'string' && f.fixed.trim() !== '';
}

/** Most severe first, fixable before unfixable, then by id: the list the policy and its deny messages name. */
export function sortFindings(fs: Finding[]): Finding[] {
  return [...fs].sort((a, b) => rank(a.severity) - rank(b.severity) || Number(isFixable(b)) - Number(isFixable(a)) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

export function emptyCounts(): Record<Severity, number> {
  return { CRITICAL: 0, HIGH: 0, MEDIUM: 0, LOW: 0, UNKNOWN: 0 };
}

/** The `ok`/`stale` evidence for a result; `status` is decided by the caller (age). */
export function summarize(
  r: ScanResult,
  opts: { status: 'ok' | 'stale'; source: NonNullable<ScanEvidence['source']>; now: number; maxVulnerabilities: number },
): ScanEvidence {
  const findings = sortFindings(dedupe(r.findings));
  const counts = emptyCounts();
  const fixable = emptyCounts();
  for (const f of findings) {
    counts[f.severity] += 1;
    if (isFixable(f)) fixable[f.severity] += 1;
  }
  const scannedMs = Date.parse(r.scannedAt);
  const ev: ScanEvidence = {
    status: opts.status,
    source: opts.source,
    scanned_at: r.scannedAt,
    age_seconds: Number.isFinite(scannedMs) ? Math.max(0, Math.floor((opts.now - scannedMs) / 1000)) : 0,
    counts,
    fixable_counts: fixable,
    vulnerabilities: findings.slice(0, opts.maxVulnerabilities).map((f) => {
      const v: NonNullable<ScanEvidence['vulnerabilities']>[number] = { id: f.id, severity: f.severity };
      if (f.package) v.package = f.package;
      if (f.installed) v.installed = f.installed;
      v.fixed = f.fixed ?? '';
      return v;
    }),
  };
  if (findings.length > opts.maxVulnerabilities) ev.vulnerabilities_total = findings.length;
  if (r.scanner) ev.scanner = r.scanner;
  return ev;
}

/** Several platform results of one index, as one: findings merged, the oldest scan time (the weakest link). */
export function mergeResults(rs: ScanResult[]): ScanResult {
  const times = rs.map((r) => r.scannedAt).sort((a, b) => Date.parse(a) - Date.parse(b));
  const scanners = [...new Set(rs.map((r) => r.scanner).filter((s): s is string => Boolean(s)))];
  const merged: ScanResult = { scannedAt: times[0] ?? new Date(0).toISOString(), findings: rs.flatMap((r) => r.findings) };
  if (scanners.length) merged.scanner = scanners.join(', ');
  return merged;
}
