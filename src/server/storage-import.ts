/**
 * `portcullis storage import`: moves a node from the filesystem store to S3 without starting cold. Every blob of a
 * filesystem cache (`<dir>/blobs/<algorithm>/<xx>/<hex>`) is streamed into the configured bucket through the S3
 * store's own verified write (cache/s3-upload.ts: hashed as it goes, completed under the digest key with
 * If-None-Match only once the digest matched), so a damaged local blob is skipped and reported, never uploaded.
 * Blobs the bucket already holds are skipped (the import can run again, or next to running replicas). Pushed scan
 * reports of `<dir>/scan.sqlite` are published into the bucket's report documents (scan/mirror.ts) when they are
 * not there yet, so that every replica counts them.
 *
 * What stays local: meta.sqlite (tags, manifests, decisions) is each replica's own; pointing the S3 config's
 * dataDir at the same directory (moving the node in place) keeps it.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { createReadStream } from 'node:fs';
import { checkMarker } from '../cache/layout.js';
import { openBlobStore } from '../cache/open-store.js';
import { openShared } from '../cache/open-shared.js';
import { safeReaddir } from '../cache/spool.js';
import type { Config } from '../config/schema.js';
import { isDigest, type Digest } from '../routing/reference.js';
import { ReportMirror } from '../scan/mirror.js';
import { ScanStore } from '../scan/store.js';
import { errorText } from '../util/error-text.js';

export interface ImportReport {
  blobs: { total: number; imported: number; present: number; bytes: number };
  /** Local blobs whose bytes do not match their digest (or could not be read): not uploaded. */
  corrupt: Array<{ digest: string; reason: string }>;
  /** Uploads that failed (the bucket refused, the network broke): run the import again. */
  failed: Array<{ digest: string; reason: string }>;
  reports: { total: number; published: number; present: number };
}

export interface ImportOptions {
  /** The filesystem cache directory (a node's dataDir). */
  from: string;
  /** The S3-backed configuration to import into (storage.blobs: s3). */
  config: Config;
  /** Blobs uploaded at once. */
  concurrency: number;
  /** One line per blob and per phase. */
  progress?: (line: string) => void;
}

interface LocalBlob {
  digest: Digest;
  path: string;
  size: number;
}

function* localBlobs(dir: string): Generator<LocalBlob> {
  const blobs = join(dir, 'blobs');
  for (const alg of safeReaddir(blobs)) {
    for (const prefix of safeReaddir(join(blobs, alg))) {
      for (const hex of safeReaddir(join(blobs, alg, prefix))) {
        const digest = `${alg}:${hex}`;
        const path = join(blobs, alg, prefix, hex);
        const st = statSync(path, { throwIfNoEntry: false });
        if (isDigest(digest) && st?.isFile()) yield { digest, path, size: st.size };
      }
    }
  }
}

export async function importToS3(o: ImportOptions): Promise<ImportReport> {
  if (o.config.storage.blobs !== 's3' || !o.config.storage.s3) throw new Error('storage import: the target configuration must set storage.blobs: s3');
  if (!existsSync(join(o.from, 'blobs'))) throw new Error(`storage import: ${o.from} holds no filesystem blob store (no blobs/ directory)`);
  const marker = join(o.from, 'blobs', 'layout.json');
  // A source written by a release this one cannot read is refused, as serving from it would be.
  if (existsSync(marker)) checkMarker(marker, readFileSync(marker));
  const say = o.progress ?? (() => {});
  const out: ImportReport = {
    blobs: { total: 0, imported: 0, present: 0, bytes: 0 },
    corrupt: [],
    failed: [],
    reports: { total: 0, published: 0, present: 0 },
  };
  const store = await openBlobStore(o.config, { onError: (what, err) => say(`warning: s3 ${what}: ${errorText(err)}`) });
  try {
    await store.ready;
    const all = [...localBlobs(o.from)];
    out.blobs.total = all.length;
    say(`importing ${all.length} blobs from ${o.from} into s3://${o.config.storage.s3.bucket}/${o.config.storage.s3.prefix}`);
    let next = 0;
    let done = 0;
    const one = async (b: LocalBlob): Promise<string> => {
      if (store.has(b.digest)) {
        out.blobs.present++;
        return 'present';
      }
      const w = await store.createWriter(b.digest, b.size);
      try {
        for await (const chunk of createReadStream(b.path, { highWaterMark: 1024 * 1024 }) as AsyncIterable<Buffer>) await w.write(chunk);
        w.verify();
      } catch (e) {
        await w.abort();
        out.corrupt.push({ digest: b.digest, reason: errorText(e) });
        return `CORRUPT, skipped (${errorText(e)})`;
      }
      try {
        await w.commit();
      } catch (e) {
        await w.abort().catch(() => {});
        out.failed.push({ digest: b.digest, reason: errorText(e) });
        return `FAILED (${errorText(e)})`;
      }
      out.blobs.imported++;
      out.blobs.bytes += b.size;
      return `imported (${b.size} bytes)`;
    };
    const worker = async (): Promise<void> => {
      for (let i = next++; i < all.length; i = next++) {
        const what = await one(all[i]!);
        say(`[${++done}/${all.length}] ${all[i]!.digest} ${what}`);
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, Math.min(o.concurrency, all.length)) }, () => worker()));
    await importReports(o, out, say);
  } finally {
    await store.close();
  }
  return out;
}

/** Pushed reports of `<from>/scan.sqlite` into the bucket's report documents, every kept version, once each. */
async function importReports(o: ImportOptions, out: ImportReport, say: (line: string) => void): Promise<void> {
  if (!existsSync(join(o.from, 'scan.sqlite'))) return;
  const shared = await openShared({ ...o.config, storage: { ...o.config.storage, meta: 'sqlite' } }, { onError: () => {} });
  const scans = new ScanStore(o.from);
  try {
    if (!shared.documents) return;
    const mirror = new ReportMirror(shared.documents);
    const PAGE = 500;
    for (let offset = 0; ; offset += PAGE) {
      const { reports } = scans.listReports({ history: true, limit: PAGE, offset });
      for (const meta of reports) {
        out.reports.total++;
        const r = scans.getReport(meta.registry, meta.repository, meta.digest, meta.id);
        if (!r) continue;
        const { id: _id, size: _size, ...doc } = r;
        if (await mirror.publishOnce(doc)) out.reports.published++;
        else out.reports.present++;
      }
      if (reports.length < PAGE) break;
    }
    say(`reports: ${out.reports.published} published, ${out.reports.present} already in the bucket`);
  } finally {
    scans.close();
    await shared.close();
  }
}
