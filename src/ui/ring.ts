/**
 * The decision explorer's memory: the last `ui.recentDecisions` root decisions, newest first, fed by the gate's
 * observers (the same events the decision log writes) and, at start, by the tail of `decisionLog.file`. No database:
 * a restart keeps only what the log file holds.
 *
 * Each decision is kept as a compact record, not as its policy input: attestation predicates and SBOMs can be
 * megabytes, so only what the pages show is copied, with every string and list capped. The records come from
 * clients and upstreams (names, tags, reasons): the pages escape them (html.ts); here they are only bounded.
 */
import { closeSync, openSync, readSync, statSync } from 'node:fs';
import type { DecisionObserver } from '../gate/gate.js';

type DecisionEventOf = Parameters<DecisionObserver['onDecision']>[0];

export interface Rule {
  rule: string;
  message: string;
}

export interface DecisionRecord {
  id: string;
  /** ISO time the decision was made (the log's timestamp for records read back from the file). */
  at: string;
  outcome: string;
  mode: string;
  kind: string;
  image: { registry: string; repository: string; tag: string | null; digest: string | null; mediaType: string | null; platforms: string[] };
  upstream: string;
  client: { ip: string; user: string | null; groups: string[]; method: string; userAgent: string | null; via: string | null };
  revision: string;
  deny: Rule[];
  warn: Rule[];
  signatures: {
    status: string;
    verified: Array<{ authority: string; kind: string; format: string; issuer: string | null; subject: string | null; signedDigest: string | null }>;
    rejected: Array<{ authority: string | null; reason: string }>;
  };
  attestations: Array<{ predicateType: string; authority: string }>;
  scan: {
    status: string;
    source: string | null;
    scanner: string | null;
    scannedAt: string | null;
    error: string | null;
    counts: Record<string, number>;
    vulnerabilities: Array<{ id: string; severity: string; package: string | null; installed: string | null; fixed: string | null }>;
    vulnerabilitiesTotal: number;
  };
  /** Where the record came from: this process's gate, or the decision-log file at start. */
  source: 'live' | 'log';
}

export interface DecisionFilter {
  outcome?: string;
  rule?: string;
  image?: string;
  upstream?: string;
  client?: string;
}

const MAX_STRING = 1024;
const MAX_LIST = 32;
const MAX_VULNS = 100;
/** At most this much of the decision-log file's end is read at start (whole lines only). */
const LOG_TAIL_BYTES = 16 * 1024 * 1024;

export class DecisionRing implements DecisionObserver {
  private readonly slots: Array<DecisionRecord | undefined>;
  private next = 0;
  private count = 0;
  private readonly byId = new Map<string, DecisionRecord>();
  private readonly listeners = new Set<(r: DecisionRecord) => void>();

  constructor(
    readonly capacity: number,
    private readonly now: () => number = Date.now,
  ) {
    this.slots = new Array<DecisionRecord | undefined>(capacity);
  }

  onDecision(e: DecisionEventOf): void {
    const a = e.admission;
    this.add(
      toRecord({
        id: a.decisionId,
        at: new Date(this.now()).toISOString(),
        outcome: a.outcome,
        input: e.input,
        // The admission, not the raw result: a failed evaluation (result undefined) is a deny with its own message.
        result: { deny: a.violations, warn: a.warnings, mode: a.mode },
        revision: e.revision,
        upstream: e.route.upstream.name,
        source: 'live',
      }),
    );
  }

  add(r: DecisionRecord): void {
    if (this.byId.has(r.id)) return;
    const old = this.slots[this.next];
    if (old) this.byId.delete(old.id);
    this.slots[this.next] = r;
    this.byId.set(r.id, r);
    this.next = (this.next + 1) % this.capacity;
    this.count = Math.min(this.count + 1, this.capacity);
    for (const l of this.listeners) l(r);
  }

  get(id: string): DecisionRecord | undefined {
    return this.byId.get(id);
  }

  get size(): number {
    return this.count;
  }

  /** Newest first, at most `limit`, and how many matched in all. */
  list(filter: DecisionFilter = {}, limit = 200): { records: DecisionRecord[]; matched: number } {
    const records: DecisionRecord[] = [];
    let matched = 0;
    for (let i = 1; i <= this.count; i++) {
      const r = this.slots[(this.next - i + this.capacity) % this.capacity]!;
      if (!matches(r, filter)) continue;
      matched++;
      if (records.length < limit) records.push(r);
    }
    return { records, matched };
  }

  /** Calls `l` for each new decision until the returned function is called. */
  subscribe(l: (r: DecisionRecord) => void): () => void {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }

  get subscribers(): number {
    return this.listeners.size;
  }

  /**
   * Reads back the last decisions of a decision-log file (`decisionLog.sink: file`, one event per line): at most
   * the file's last LOG_TAIL_BYTES, lines that do not parse are skipped. Returns how many were added.
   */
  loadLogFile(path: string): number {
    let fd: number;
    try {
      fd = openSync(path, 'r');
    } catch {
      return 0; // Not written yet: nothing to read back.
    }
    try {
      const size = statSync(path).size;
      const len = Math.min(size, LOG_TAIL_BYTES);
      const buf = Buffer.alloc(len);
      readSync(fd, buf, 0, len, size - len);
      let lines = buf.toString('utf8').split('\n');
      if (len < size) lines = lines.slice(1); // The first line is cut.
      const records: DecisionRecord[] = [];
      for (const line of lines.slice(-this.capacity)) {
        if (!line.trim()) continue;
        try {
          const r = fromLogEvent(JSON.parse(line));
          if (r) records.push(r);
        } catch {
          // A torn last line (the process died mid-write) or foreign content: skipped.
        }
      }
      for (const r of records) this.add(r);
      return records.length;
    } finally {
      closeSync(fd);
    }
  }
}

export function matches(r: DecisionRecord, f: DecisionFilter): boolean {
  const has = (hay: string, needle: string): boolean => hay.toLowerCase().includes(needle.toLowerCase());
  if (f.outcome && r.outcome !== f.outcome) return false;
  if (f.upstream && r.upstream !== f.upstream) return false;
  if (f.rule && ![...r.deny, ...r.warn].some((v) => has(v.rule, f.rule!))) return false;
  if (f.image && !has(imageRef(r), f.image)) return false;
  if (f.client) {
    const c = r.client;
    if (![c.user ?? 'anonymous', c.ip, c.method, ...c.groups, c.via ?? ''].some((s) => has(s, f.client!))) return false;
  }
  return true;
}

/** `registry/repository[:tag][@digest]`. */
export function imageRef(r: DecisionRecord): string {
  const i = r.image;
  return `${i.registry}/${i.repository}${i.tag ? `:${i.tag}` : ''}${i.digest ? `@${i.digest}` : ''}`;
}

/** A line of `decisionLog.file` (gate/decision-log.ts DecisionEvent), read defensively: it is only a file. */
export function fromLogEvent(ev: unknown): DecisionRecord | undefined {
  const e = obj(ev);
  const id = str(e.decision_id);
  if (!id) return undefined;
  return toRecord({
    id,
    at: str(e.timestamp) ?? '',
    outcome: str(e.outcome) ?? 'unknown',
    input: e.input,
    result: e.result,
    revision: str(obj(obj(e.bundles).portcullis).revision) ?? '',
    upstream: str(e.upstream) ?? '',
    source: 'log',
  });
}

interface RecordSource {
  id: string;
  at: string;
  outcome: string;
  input: unknown;
  result: unknown;
  revision: string;
  upstream: string;
  source: 'live' | 'log';
}

/** Copies what the pages show out of a policy input and result, bounding every string and list. */
function toRecord(s: RecordSource): DecisionRecord {
  const input = obj(s.input);
  const req = obj(input.request);
  const client = obj(req.client);
  const via = obj(client.via);
  const image = obj(input.image);
  const sig = obj(input.signatures);
  const scan = obj(input.scan);
  const result = obj(s.result);
  const vulns = list(scan.vulnerabilities, MAX_VULNS).map(obj);
  return {
    id: clip(s.id),
    at: clip(s.at),
    outcome: clip(s.outcome),
    mode: str(result.mode) ?? 'enforce',
    kind: str(req.kind) ?? 'manifest',
    image: {
      registry: str(image.registry) ?? '',
      repository: str(image.repository) ?? '',
      tag: str(image.tag),
      digest: str(image.digest),
      mediaType: str(image.media_type),
      platforms: list(image.platforms).map((p) => str(p) ?? ''),
    },
    upstream: clip(s.upstream || (str(obj(input.upstream).name) ?? '')),
    client: {
      ip: str(client.ip) ?? '',
      user: str(client.user),
      groups: list(client.groups).map((g) => str(g) ?? ''),
      method: str(client.method) ?? 'anonymous',
      userAgent: str(client.user_agent),
      via: client.via ? `${str(via.user) ?? 'anonymous'} (${str(via.method) ?? '?'})` : null,
    },
    revision: clip(s.revision),
    deny: rules(result.deny),
    warn: rules(result.warn),
    signatures: {
      status: str(sig.status) ?? 'unknown',
      verified: list(sig.verified).map((v) => {
        const o = obj(v);
        const id = obj(o.identity);
        return {
          authority: str(o.authority) ?? '',
          kind: str(o.kind) ?? '',
          format: str(o.format) ?? '',
          issuer: str(id.issuer),
          subject: str(id.subject),
          signedDigest: str(o.signed_digest),
        };
      }),
      rejected: list(sig.rejected).map((v) => ({ authority: str(obj(v).authority), reason: str(obj(v).reason) ?? '' })),
    },
    attestations: list(input.attestations).map((a) => ({ predicateType: str(obj(a).predicate_type) ?? '', authority: str(obj(a).authority) ?? '' })),
    scan: {
      status: str(scan.status) ?? 'unknown',
      source: str(scan.source),
      scanner: str(scan.scanner),
      scannedAt: str(scan.scanned_at),
      error: str(scan.error),
      counts: counts(scan.counts),
      vulnerabilities: vulns.map((v) => ({
        id: str(v.id) ?? '',
        severity: str(v.severity) ?? '',
        package: str(v.package),
        installed: str(v.installed),
        fixed: str(v.fixed),
      })),
      vulnerabilitiesTotal:
        typeof scan.vulnerabilities_total === 'number' ? scan.vulnerabilities_total : Array.isArray(scan.vulnerabilities) ? scan.vulnerabilities.length : 0,
    },
    source: s.source,
  };
}

function obj(v: unknown): Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : {};
}

function str(v: unknown): string | null {
  return typeof v === 'string' ? clip(v) : null;
}

function clip(s: string): string {
  return s.length > MAX_STRING ? `${s.slice(0, MAX_STRING - 1)}…` : s;
}

function list(v: unknown, max = MAX_LIST): unknown[] {
  return Array.isArray(v) ? v.slice(0, max) : [];
}

function rules(v: unknown): Rule[] {
  return list(v).map((x) => ({ rule: str(obj(x).rule) ?? '', message: str(obj(x).message) ?? '' }));
}

function counts(v: unknown): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, n] of Object.entries(obj(v)).slice(0, MAX_LIST)) if (typeof n === 'number') out[clip(k)] = n;
  return out;
}
