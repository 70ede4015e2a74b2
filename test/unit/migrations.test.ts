/**
 * Schema versions and forward migrations of the SQLite files (util/sqlite-migrate.ts), and the blob store's layout
 * marker (cache/layout.ts). Each fixture is built with the SQL of the schema before versions existed (copied here
 * from main at 34a9059, user_version 0): opening it with this release keeps the data and advances the version; a
 * file or a store from a newer release is refused with the file and both versions named, and left untouched.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FileBlobStore } from '../../src/cache/blobstore.js';
import { LayoutTooNewError } from '../../src/cache/layout.js';
import { META_MIGRATIONS, SqliteMetaStore } from '../../src/cache/metastore.js';
import type { Digest } from '../../src/routing/reference.js';
import { SCAN_MIGRATIONS, ScanStore } from '../../src/scan/store.js';
import { migrate, SchemaTooNewError, schemaVersion, type Migration } from '../../src/util/sqlite-migrate.js';

const D = `sha256:${'a'.repeat(64)}` as Digest;
const L = `sha256:${'b'.repeat(64)}` as Digest;

/** meta.sqlite as main wrote it before schema versions (34a9059). */
const META_V0 = `
CREATE TABLE tags (upstream TEXT NOT NULL, repository TEXT NOT NULL, tag TEXT NOT NULL, digest TEXT NOT NULL, media_type TEXT NOT NULL,
  size INTEGER NOT NULL, checked_at INTEGER NOT NULL, PRIMARY KEY (upstream, repository, tag)) WITHOUT ROWID;
CREATE TABLE manifests (digest TEXT PRIMARY KEY, media_type TEXT NOT NULL, body BLOB NOT NULL, stored_at INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE manifest_links (upstream TEXT NOT NULL, repository TEXT NOT NULL, digest TEXT NOT NULL, PRIMARY KEY (upstream, repository, digest)) WITHOUT ROWID;
CREATE TABLE admissions (upstream TEXT NOT NULL, repository TEXT NOT NULL, digest TEXT NOT NULL, under TEXT NOT NULL, tag TEXT NOT NULL,
  kind TEXT NOT NULL, basis TEXT NOT NULL, serve INTEGER NOT NULL, decision_id TEXT NOT NULL, reason TEXT NOT NULL,
  decided_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, PRIMARY KEY (upstream, repository, digest, under, tag)) WITHOUT ROWID;
CREATE INDEX admissions_expiry ON admissions (expires_at);
CREATE TABLE closure_members (upstream TEXT NOT NULL, repository TEXT NOT NULL, member TEXT NOT NULL, role TEXT NOT NULL,
  root TEXT NOT NULL, voucher TEXT NOT NULL, expires_at INTEGER NOT NULL, PRIMARY KEY (upstream, repository, member, role, root, voucher)) WITHOUT ROWID;
CREATE INDEX closure_members_expiry ON closure_members (expires_at);
CREATE INDEX closure_members_root ON closure_members (root);
INSERT INTO tags VALUES ('hub', 'library/app', 'v1', '${D}', 'application/vnd.oci.image.manifest.v1+json', 123, 1000);
INSERT INTO manifests VALUES ('${D}', 'application/vnd.oci.image.manifest.v1+json', X'7b7d', 1000);
INSERT INTO manifest_links VALUES ('hub', 'library/app', '${D}');
INSERT INTO admissions VALUES ('hub', 'library/app', '${D}', '', 'v1', 'manifest', 'basis-1', 1, 'dec-1', '', 1000, 9999999999999);
INSERT INTO closure_members VALUES ('hub', 'library/app', '${L}', 'layer', '${D}', '${D}', 9999999999999);
`;

/** scan.sqlite as an earlier release wrote it: one report row per image, scanner errors without a code. */
const SCAN_V0 = `
CREATE TABLE scan_reports (registry TEXT NOT NULL, repository TEXT NOT NULL, digest TEXT NOT NULL, format TEXT NOT NULL,
  uploaded_at INTEGER NOT NULL, scanned_at TEXT NOT NULL, scanner TEXT, bound INTEGER NOT NULL, size INTEGER NOT NULL,
  findings TEXT NOT NULL, body BLOB NOT NULL, PRIMARY KEY (registry, repository, digest)) WITHOUT ROWID;
CREATE TABLE scanner_scans (digest TEXT PRIMARY KEY, result_scanned_at TEXT, result_scanner TEXT, result_findings TEXT,
  job_id TEXT, job_requested_at INTEGER, job_next_poll_at INTEGER, job_upstream TEXT, job_repository TEXT, job_mime TEXT,
  error TEXT, error_at INTEGER) WITHOUT ROWID;
INSERT INTO scan_reports VALUES ('docker.io', 'library/app', '${D}', 'trivy', 1000, '2026-01-01T00:00:00Z', 'trivy 0.50', 1, 2,
  '[{"id":"CVE-2026-0001","severity":"CRITICAL","package":"openssl","version":"1.0"}]', X'7b7d');
INSERT INTO scanner_scans (digest, error, error_at) VALUES ('${L}', 'scanner down', 2000);
`;

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'pc-migrate-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

function fixture(file: string, sql: string, version = 0): void {
  const db = new DatabaseSync(join(dir, file));
  db.exec(sql);
  db.exec(`PRAGMA user_version = ${version}`);
  db.close();
}

function versionOf(file: string): number {
  const db = new DatabaseSync(join(dir, file));
  try {
    return schemaVersion(db);
  } finally {
    db.close();
  }
}

describe('SQLite schema versions', () => {
  it('meta.sqlite from before versions: data survives and the version advances to the latest', () => {
    fixture('meta.sqlite', META_V0);
    const m = new SqliteMetaStore(dir);
    expect(m.getTag('hub', 'library/app', 'v1')?.digest).toBe(D);
    expect(m.getManifest('hub', 'library/app', D)?.bytes.toString()).toBe('{}');
    expect(m.validLink('hub', 'library/app', L, ['layer'], 'basis-1', 2000)).toEqual({ root: D, voucher: D, role: 'layer' });
    // The index version 1 added for by-digest lookups is there.
    expect(m.rootsContaining(L)).toEqual([D]);
    m.close();
    expect(versionOf('meta.sqlite')).toBe(META_MIGRATIONS.at(-1)!.version);
    // Opening again runs nothing and changes nothing.
    const again = new SqliteMetaStore(dir);
    expect(again.getTag('hub', 'library/app', 'v1')?.digest).toBe(D);
    again.close();
  });

  it('scan.sqlite from before versions: the report becomes the first version in force, scanner errors gain a code', () => {
    fixture('scan.sqlite', SCAN_V0);
    const s = new ScanStore(dir);
    const r = s.latestReport(D);
    expect(r?.findings[0]?.severity).toBe('CRITICAL');
    expect(s.versions('docker.io', 'library/app', D)).toHaveLength(1);
    expect(s.getScanner(L)?.error).toMatchObject({ message: 'scanner down', code: 'SCAN_FAILED' });
    s.close();
    expect(versionOf('scan.sqlite')).toBe(SCAN_MIGRATIONS.at(-1)!.version);
  });

  it('a new file starts at the latest version', () => {
    new SqliteMetaStore(dir).close();
    new ScanStore(dir).close();
    expect(versionOf('meta.sqlite')).toBe(1);
    expect(versionOf('scan.sqlite')).toBe(1);
  });

  it.each([
    ['meta.sqlite', (d: string) => new SqliteMetaStore(d)],
    ['scan.sqlite', (d: string) => new ScanStore(d)],
  ])('%s from a newer release: refused, naming the file and both versions, and left as it was', (file, open) => {
    fixture(file, 'CREATE TABLE future (x TEXT); INSERT INTO future VALUES (1);', 7);
    let err: unknown;
    try {
      open(dir).close();
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(SchemaTooNewError);
    expect((err as Error).message).toContain(join(dir, file));
    expect((err as Error).message).toMatch(/schema version 7 is newer than this Portcullis knows \(1\)/);
    expect(versionOf(file)).toBe(7);
    const db = new DatabaseSync(join(dir, file));
    expect(db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all()).toEqual([{ name: 'future' }]);
    db.close();
  });

  it('migrations run in order, each in a transaction: a failing one leaves the file at the version before it', () => {
    const file = join(dir, 'x.sqlite');
    const db = new DatabaseSync(file);
    const steps: Migration[] = [
      { version: 1, what: 'one', up: (d) => d.exec('CREATE TABLE a (x INTEGER); INSERT INTO a VALUES (1);') },
      { version: 2, what: 'two', up: (d) => d.exec('INSERT INTO a VALUES (2); INSERT INTO missing VALUES (3);') },
    ];
    expect(() => migrate(db, file, steps)).toThrow(/migration to schema version 2 \(two\) failed/);
    expect(schemaVersion(db)).toBe(1);
    expect(db.prepare('SELECT x FROM a').all()).toEqual([{ x: 1 }]);
    steps[1] = { version: 2, what: 'two', up: (d) => d.exec('INSERT INTO a VALUES (2);') };
    expect(migrate(db, file, steps)).toEqual({ from: 1, to: 2 });
    expect(db.prepare('SELECT x FROM a ORDER BY x').all()).toEqual([{ x: 1 }, { x: 2 }]);
    db.close();
  });
});

describe('the filesystem blob layout marker', () => {
  it('is written on first use, and a store written before markers gets one', () => {
    new FileBlobStore(dir, 1024);
    expect(JSON.parse(readFileSync(join(dir, 'blobs', 'layout.json'), 'utf8'))).toEqual({ format: 'portcullis-blobs', version: 1, compatible: 1 });
  });

  it('a newer layout that older releases can still read is accepted; one they cannot is refused, naming the file', () => {
    const marker = join(dir, 'blobs', 'layout.json');
    new FileBlobStore(dir, 1024);
    writeFileSync(marker, JSON.stringify({ format: 'portcullis-blobs', version: 2, compatible: 1 }));
    expect(() => new FileBlobStore(dir, 1024)).not.toThrow();
    writeFileSync(marker, JSON.stringify({ format: 'portcullis-blobs', version: 3, compatible: 2 }));
    expect(() => new FileBlobStore(dir, 1024)).toThrow(LayoutTooNewError);
    expect(() => new FileBlobStore(dir, 1024)).toThrow(new RegExp(`${marker}: blob layout version 3 .* newer than this Portcullis knows \\(1\\)`));
    writeFileSync(marker, 'not json');
    expect(() => new FileBlobStore(dir, 1024)).toThrow(/layout marker is not JSON/);
  });
});
