/**
 * The day-2 commands of `portcullis` (cli.ts dispatches here): `storage import` (filesystem store → S3),
 * `backup` and `restore` of what is durable. Exit codes: 0 ok, 1 something was skipped or refused (named on
 * stderr), 2 error.
 */
import { parseArgs } from 'node:util';
import type { Config } from './config/schema.js';
import { backup, restore } from './server/backup.js';
import { importToS3 } from './server/storage-import.js';

export const STORAGE_USAGE = `  portcullis storage import --from CACHE_DIR [--config FILE] [--concurrency N] [--json]
      uploads every blob of a filesystem cache into the S3 bucket of the config (storage.blobs: s3), each verified
      against its digest (a damaged one is skipped and reported; exit 1), those already there skipped; and the
      pushed reports of CACHE_DIR/scan.sqlite into the bucket
  portcullis backup --out FILE [--config FILE]
      what is durable (pushed reports in scan.sqlite; with storage.blobs: s3 the bucket's durable documents) into
      one JSON Lines file with versions and SHA-256s
  portcullis restore --in FILE [--config FILE]
      verifies the whole backup (versions, every SHA-256), then writes what is missing; stop the node first
      (scan.sqlite); replicas on the bucket may run (the restore bumps the invalidation epoch)`;

export async function storageImport(args: string[], load: (file: string | undefined) => Config): Promise<number> {
  const { values } = parseArgs({
    args,
    options: { from: { type: 'string' }, config: { type: 'string', short: 'c' }, concurrency: { type: 'string' }, json: { type: 'boolean' } },
  });
  const concurrency = Number(values.concurrency ?? 4);
  if (!values.from || !Number.isSafeInteger(concurrency) || concurrency < 1 || concurrency > 64) {
    process.stderr.write(`usage:\n${STORAGE_USAGE}\n(--concurrency: 1 to 64)\n`);
    return 2;
  }
  const config = load(values.config);
  const r = await importToS3({ from: values.from, config, concurrency, progress: (line) => process.stderr.write(`${line}\n`) });
  if (values.json) process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
  else {
    process.stdout.write(
      `blobs: ${r.blobs.imported} imported (${r.blobs.bytes} bytes), ${r.blobs.present} already in the bucket, ${r.corrupt.length} corrupt (skipped), ${r.failed.length} failed; ` +
        `reports: ${r.reports.published} published, ${r.reports.present} already there\n`,
    );
    for (const c of r.corrupt) process.stdout.write(`  corrupt ${c.digest}: ${c.reason}\n`);
    for (const f of r.failed) process.stdout.write(`  failed  ${f.digest}: ${f.reason}\n`);
  }
  return r.corrupt.length || r.failed.length ? 1 : 0;
}

export async function backupCommand(args: string[], load: (file: string | undefined) => Config): Promise<number> {
  const { values } = parseArgs({ args, options: { out: { type: 'string' }, config: { type: 'string', short: 'c' } } });
  if (!values.out) {
    process.stderr.write(`usage:\n${STORAGE_USAGE}\n`);
    return 2;
  }
  const s = await backup(load(values.config), values.out);
  process.stdout.write(`${values.out}: ${s.reports} report versions, ${s.documents} bucket documents\n`);
  return 0;
}

export async function restoreCommand(args: string[], load: (file: string | undefined) => Config): Promise<number> {
  const { values } = parseArgs({ args, options: { in: { type: 'string' }, config: { type: 'string', short: 'c' } } });
  if (!values.in) {
    process.stderr.write(`usage:\n${STORAGE_USAGE}\n`);
    return 2;
  }
  try {
    const s = await restore(load(values.config), values.in);
    process.stdout.write(
      `restored ${s.reports.restored} report versions (${s.reports.present} already there), ${s.documents.restored} bucket documents (${s.documents.present} already there)\n`,
    );
    return 0;
  } catch (e) {
    process.stderr.write(`restore refused: ${e instanceof Error ? e.message : String(e)}\n`);
    return 1;
  }
}
