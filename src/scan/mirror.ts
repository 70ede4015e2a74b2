/**
 * Pushed scan reports in the bucket (storage.blobs: s3), so that a report pushed to one replica counts on every
 * replica: each decision reads the newest report for the digest from the bucket as well as from its own store.
 * The replica that took the push keeps it in its own scan.sqlite too (the report API lists and serves what was
 * pushed to it).
 *
 * Layout, version 1 (under `<s3 prefix>meta/v1/`):
 *   reports/<digest>/<scan time, ms, 15 digits>-<upload time, ms, 15 digits>-<sha256(registry/repository), 16 hex>-<random>.json
 * Keys list in the order that decides which report is in force (scan time, then push time), so the newest is the
 * last key; the document is JSON {v: 1, registry, repository, digest, format, uploadedAt, scannedAt, scanner,
 * bound, findings}.
 */
import { createHash, randomBytes } from 'node:crypto';
import type { DurableDocuments } from '../cache/shared.js';
import type { Finding, ScanResult } from './normalize.js';
import type { StoredReport } from './store.js';

/** Versions of one digest listed per lookup: history is bounded per image (scan.reports.history), pushes are rare. */
const MAX_VERSIONS = 1_000;

type Published = Omit<StoredReport, 'id' | 'size'>;

export class ReportMirror {
  constructor(private readonly docs: DurableDocuments) {}

  /** Stores a pushed report; the push is answered only once this resolved. */
  async publish(r: Published): Promise<void> {
    const doc = { v: 1, ...r };
    await this.docs.put(`${this.versionPrefix(r)}${randomBytes(6).toString('hex')}.json`, Buffer.from(JSON.stringify(doc)));
  }

  /**
   * Stores a report unless the bucket already holds this version (same image, scan time and push time): for imports
   * and restores, which may run again. True when it was stored.
   */
  async publishOnce(r: Published): Promise<boolean> {
    if ((await this.docs.list(this.versionPrefix(r), 1)).length > 0) return false;
    await this.publish(r);
    return true;
  }

  /** The report in force for this digest in the bucket (newest scan time, then newest push), or null. */
  async latest(digest: string): Promise<(ScanResult & { uploadedAt: number }) | null> {
    const keys = await this.docs.list(`reports/${digest}/`, MAX_VERSIONS);
    // Newest first: a document that vanished meanwhile (deleted) or does not parse is skipped, not trusted.
    for (const key of keys.reverse()) {
      const body = await this.docs.get(key);
      const doc = body ? parse(body) : undefined;
      if (!doc || doc.digest !== digest) continue;
      return { scannedAt: doc.scannedAt, findings: doc.findings, ...(doc.scanner ? { scanner: doc.scanner } : {}), uploadedAt: doc.uploadedAt };
    }
    return null;
  }

  /** Deletes versions of an image: all of them, or those with these scan and push times; returns how many went. */
  async remove(
    ref: { registry: string; repository: string; digest: string },
    versions: Array<{ scannedAt: string; uploadedAt: number }> | 'all',
  ): Promise<number> {
    const repo = repoHash(ref);
    const keys = await this.docs.list(`reports/${ref.digest}/`, MAX_VERSIONS);
    let n = 0;
    const wanted = versions === 'all' ? undefined : new Set(versions.map((v) => `${stamp(Date.parse(v.scannedAt))}-${stamp(v.uploadedAt)}-${repo}-`));
    for (const key of keys) {
      const name = key.slice(`reports/${ref.digest}/`.length);
      if (!name.includes(`-${repo}-`)) continue;
      if (wanted && ![...wanted].some((w) => name.startsWith(w))) continue;
      await this.docs.delete(key);
      n++;
    }
    return n;
  }

  private versionPrefix(r: Published): string {
    return `reports/${r.digest}/${stamp(Date.parse(r.scannedAt))}-${stamp(r.uploadedAt)}-${repoHash(r)}-`;
  }
}

function stamp(ms: number): string {
  return String(Number.isFinite(ms) && ms > 0 ? Math.floor(ms) : 0).padStart(15, '0');
}

function repoHash(r: { registry: string; repository: string }): string {
  return createHash('sha256').update(`${r.registry}/${r.repository}`).digest('hex').slice(0, 16);
}

function parse(body: Buffer): (Published & { v: 1 }) | undefined {
  try {
    const d = JSON.parse(body.toString('utf8')) as Record<string, unknown>;
    if (d.v !== 1 || typeof d.digest !== 'string' || typeof d.scannedAt !== 'string' || typeof d.uploadedAt !== 'number' || !Array.isArray(d.findings)) {
      return undefined;
    }
    return { ...(d as unknown as Published), findings: d.findings as Finding[], v: 1 };
  } catch {
    return undefined;
  }
}
