/**
 * Layout markers: a small `layout.json` at the root of each blob store (the filesystem store's `<dataDir>/blobs/`,
 * the bucket's `<s3 prefix>`), written on first use and checked on every start, so that a release never reads or
 * writes a layout it does not know.
 *
 * `{ "format": "portcullis-blobs", "version": 1, "compatible": 1 }`: `version` is the layout the newest writer
 * used, `compatible` the oldest layout version a reader must know to use the store safely. A later release that
 * only adds keys next to the v1 ones (so that old replicas keep working during a rolling upgrade) writes
 * `version: 2, compatible: 1`; one that changes what v1 keys mean raises `compatible`, and older releases then
 * refuse to start (LayoutTooNewError) instead of serving from a layout they misread. A store without a marker was
 * written before markers existed: it is layout 1, and gets its marker.
 */
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export const BLOB_LAYOUT_FORMAT = 'portcullis-blobs';
/** The layout this release writes and reads (blobs under `<algorithm>/…`, documents under `meta/v1/`). */
export const BLOB_LAYOUT_VERSION = 1;

export interface LayoutMarker {
  format: string;
  version: number;
  compatible: number;
}

export class LayoutTooNewError extends Error {
  readonly code = 'LAYOUT_TOO_NEW';
  constructor(
    readonly where: string,
    readonly found: LayoutMarker,
    readonly known: number,
  ) {
    super(
      `${where}: blob layout version ${found.version} (readable from version ${found.compatible}) is newer than this Portcullis knows (${known}); ` +
        'it was written by a newer release. Run that release; this one does not read or write a layout it does not know',
    );
    this.name = 'LayoutTooNewError';
  }
}

export const CURRENT_MARKER: LayoutMarker = { format: BLOB_LAYOUT_FORMAT, version: BLOB_LAYOUT_VERSION, compatible: BLOB_LAYOUT_VERSION };

/** Parses a marker's bytes and checks this release may use the store; throws naming `where` otherwise. */
export function checkMarker(where: string, bytes: Buffer | string): LayoutMarker {
  let m: Partial<LayoutMarker>;
  try {
    m = JSON.parse(bytes.toString()) as Partial<LayoutMarker>;
  } catch (e) {
    throw new Error(`${where}: layout marker is not JSON (${e instanceof Error ? e.message : String(e)})`, { cause: e });
  }
  if (m.format !== BLOB_LAYOUT_FORMAT || !Number.isSafeInteger(m.version) || !Number.isSafeInteger(m.compatible ?? m.version)) {
    throw new Error(`${where}: not a Portcullis layout marker (want {"format": "${BLOB_LAYOUT_FORMAT}", "version": N})`);
  }
  const marker = { format: m.format, version: m.version!, compatible: m.compatible ?? m.version! };
  if (marker.compatible > BLOB_LAYOUT_VERSION) throw new LayoutTooNewError(where, marker, BLOB_LAYOUT_VERSION);
  return marker;
}

/** The filesystem store's marker, `<dir>/layout.json`: checked, or written (atomically) when absent. */
export function ensureFileLayout(dir: string): LayoutMarker {
  const file = join(dir, 'layout.json');
  let bytes: Buffer | undefined;
  try {
    bytes = readFileSync(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  if (bytes) return checkMarker(file, bytes);
  mkdirSync(dir, { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, `${JSON.stringify(CURRENT_MARKER)}\n`);
  renameSync(tmp, file);
  return CURRENT_MARKER;
}
