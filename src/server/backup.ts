/**
 * `portcullis backup` / `portcullis restore`: what is durable and cannot be rebuilt from the upstreams.
 *
 * - Pushed scan reports in `<dataDir>/scan.sqlite` (every kept version, with the raw body as uploaded);
 * - with storage.blobs: s3, every durable document in the bucket under `<prefix>meta/v1/` (pushed reports, and
 *   whatever else is kept there: anything written through DurableDocuments is covered by the listing), except the
 *   invalidation epoch (`epoch/`), which only grows and is bumped by the restore instead.
 * Blobs, manifests, tags and decisions are not in it: they are a cache, fetched and decided again.
 *
 * The file is JSON Lines: a header `{format: "portcullis-backup", version: 1, createdAt, schemas, layout}`, one
 * line per item `{kind: "scan-report" | "document", key?, sha256, data}` (data: base64 of the item's bytes, sha256:
 * of those bytes), and a trailer `{end: true, entries, sha256}` (sha256 of every line before it). Restore checks the
 * header's versions, every item's hash and the trailer before it writes anything, and writes only what is missing
 * (a report version already there, a document already there), so it can run again.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { BLOB_LAYOUT_VERSION } from '../cache/layout.js';
import { openShared } from '../cache/open-shared.js';
import type { DurableDocuments } from '../cache/shared.js';
import type { Config } from '../config/schema.js';
import { SCAN_MIGRATIONS, ScanStore, type StoredReport } from '../scan/store.js';
import { latestVersion } from '../util/sqlite-migrate.js';

const FORMAT = 'portcullis-backup';
const VERSION = 1;
/** Documents listed per backup: far above any real count (reports are bounded per image), a bound all the same. */
const MAX_DOCUMENTS = 10_000_000;
const PAGE = 500;

interface Header {
  format: string;
  version: number;
  createdAt: string;
  schemas: { 'scan.sqlite': number };
  layout: number;
}
interface Item {
  kind: 'scan-report' | 'document';
  key?: string;
  sha256: string;
  data: string;
}
type ReportItem = Omit<StoredReport, 'id' | 'size'> & { body: string };

export interface BackupSummary {
  reports: number;
  documents: number;
}

const hex = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');

/** Opens what the config names: the scan store (when there is one) and the bucket's documents (storage.blobs: s3). */
async function open(config: Config): Promise<{ scans: ScanStore | undefined; docs: DurableDocuments | undefined; close(): Promise<void> }> {
  const shared = await openShared({ ...config, storage: { ...config.storage, meta: 'sqlite' } }, { onError: () => {} });
  const scans = config.scan?.reports || existsSync(join(config.dataDir, 'scan.sqlite')) ? new ScanStore(config.dataDir) : undefined;
  return {
    scans,
    docs: shared.documents,
    close: async () => {
      scans?.close();
      await shared.close();
    },
  };
}

export async function backup(config: Config, out: string): Promise<BackupSummary> {
  const o = await open(config);
  const lines: string[] = [];
  const summary: BackupSummary = { reports: 0, documents: 0 };
  const add = (kind: Item['kind'], bytes: Buffer, key?: string): void => {
    lines.push(JSON.stringify({ kind, ...(key === undefined ? {} : { key }), sha256: hex(bytes), data: bytes.toString('base64') } satisfies Item));
  };
  try {
    const header: Header = {
      format: FORMAT,
      version: VERSION,
      createdAt: new Date().toISOString(),
      schemas: { 'scan.sqlite': latestVersion(SCAN_MIGRATIONS) },
      layout: BLOB_LAYOUT_VERSION,
    };
    lines.push(JSON.stringify(header));
    for (let offset = 0; o.scans; offset += PAGE) {
      const { reports } = o.scans.listReports({ history: true, limit: PAGE, offset });
      for (const meta of reports) {
        const r = o.scans.getReport(meta.registry, meta.repository, meta.digest, meta.id);
        const body = o.scans.reportBody(meta.registry, meta.repository, meta.digest, meta.id);
        if (!r || !body) continue;
        const { id: _id, size: _size, ...rest } = r;
        add('scan-report', Buffer.from(JSON.stringify({ ...rest, body: body.toString('base64') } satisfies ReportItem)));
        summary.reports++;
      }
      if (reports.length < PAGE) break;
    }
    for (const key of o.docs ? await o.docs.list('', MAX_DOCUMENTS) : []) {
      if (key.startsWith('epoch/')) continue;
      const bytes = await o.docs!.get(key);
      if (!bytes) continue; // deleted since the listing
      add('document', bytes, key);
      summary.documents++;
    }
  } finally {
    await o.close();
  }
  const text = `${lines.join('\n')}\n`;
  const tmp = `${out}.tmp-${process.pid}`;
  writeFileSync(tmp, `${text}${JSON.stringify({ end: true, entries: lines.length - 1, sha256: hex(text) })}\n`, { mode: 0o600 });
  renameSync(tmp, out);
  return summary;
}

/** Reads and checks a backup completely; throws naming the line on anything wrong. Nothing is written. */
function verify(file: string): { header: Header; items: Array<Item & { bytes: Buffer }> } {
  const text = readFileSync(file, 'utf8');
  const lines = text.split('\n');
  if (lines.at(-1) === '') lines.pop();
  const trailer = JSON.parse(lines.pop() ?? '{}') as { end?: boolean; entries?: number; sha256?: string };
  if (trailer.end !== true) throw new Error(`${file}: no trailer (the backup is truncated)`);
  const covered = text.slice(0, text.lastIndexOf('\n', text.length - 2) + 1);
  if (trailer.sha256 !== hex(covered)) throw new Error(`${file}: the content does not match the trailer's sha256 (damaged or edited)`);
  const header = JSON.parse(lines[0] ?? '{}') as Header;
  if (header.format !== FORMAT) throw new Error(`${file}: not a Portcullis backup`);
  if (header.version > VERSION) throw new Error(`${file}: backup format ${header.version} is newer than this Portcullis knows (${VERSION})`);
  if (header.schemas?.['scan.sqlite'] > latestVersion(SCAN_MIGRATIONS)) {
    throw new Error(
      `${file}: written by a release with scan.sqlite schema ${header.schemas['scan.sqlite']}, newer than this one (${latestVersion(SCAN_MIGRATIONS)})`,
    );
  }
  if (header.layout > BLOB_LAYOUT_VERSION)
    throw new Error(`${file}: bucket layout ${header.layout} is newer than this Portcullis knows (${BLOB_LAYOUT_VERSION})`);
  if (trailer.entries !== lines.length - 1) throw new Error(`${file}: ${lines.length - 1} items, the trailer says ${trailer.entries}`);
  const items = lines.slice(1).map((l, i) => {
    const it = JSON.parse(l) as Item;
    const bytes = Buffer.from(it.data ?? '', 'base64');
    if (it.kind !== 'scan-report' && it.kind !== 'document') throw new Error(`${file}:${i + 2}: unknown item kind ${String(it.kind)}`);
    if (hex(bytes) !== it.sha256) throw new Error(`${file}:${i + 2}: sha256 mismatch`);
    if (it.kind === 'document' && (typeof it.key !== 'string' || it.key.startsWith('/') || it.key.split('/').includes('..'))) {
      throw new Error(`${file}:${i + 2}: bad document key`);
    }
    return { ...it, bytes };
  });
  return { header, items };
}

export interface RestoreSummary {
  reports: { restored: number; present: number };
  documents: { restored: number; present: number };
}

export async function restore(config: Config, file: string): Promise<RestoreSummary> {
  const { items } = verify(file);
  const docsWanted = items.some((i) => i.kind === 'document');
  const o = await open(config);
  const summary: RestoreSummary = { reports: { restored: 0, present: 0 }, documents: { restored: 0, present: 0 } };
  try {
    if (docsWanted && !o.docs) throw new Error(`${file} holds bucket documents, and this configuration has no bucket (storage.blobs: s3)`);
    const scans = o.scans ?? new ScanStore(config.dataDir);
    for (const it of items) {
      if (it.kind === 'scan-report') {
        const { body, ...r } = JSON.parse(it.bytes.toString('utf8')) as ReportItem;
        const there = scans.versions(r.registry, r.repository, r.digest).some((v) => v.scannedAt === r.scannedAt && v.uploadedAt === r.uploadedAt);
        if (there) summary.reports.present++;
        else {
          const raw = Buffer.from(body, 'base64');
          scans.putReport({ ...r, findings: r.findings, size: raw.length }, raw);
          summary.reports.restored++;
        }
      } else if (await o.docs!.get(it.key!)) summary.documents.present++;
      else {
        await o.docs!.put(it.key!, it.bytes);
        summary.documents.restored++;
      }
    }
    if (scans !== o.scans) scans.close();
  } finally {
    await o.close();
  }
  if (summary.documents.restored > 0) await bumpEpoch(config);
  return summary;
}

/** Running replicas re-read reports (and decide again) after a restore into the bucket: one more epoch. */
async function bumpEpoch(config: Config): Promise<void> {
  const s3 = config.storage.s3;
  if (config.storage.blobs !== 's3' || !s3) return;
  const [{ s3Client }, { S3DurableEpoch }, { readSecret }] = await Promise.all([
    import('../cache/s3-client.js'),
    import('../cache/s3-epoch.js'),
    import('../config/load.js'),
  ]);
  const client = s3Client(s3, (ref) => readSecret(ref));
  try {
    const epoch = new S3DurableEpoch({ client, bucket: s3.bucket, prefix: s3.prefix });
    await epoch.write((await epoch.read()) + 1);
  } finally {
    client.destroy();
  }
}
