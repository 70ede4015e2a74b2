/**
 * Forward-only schema migrations for the SQLite files (meta.sqlite, scan.sqlite). The schema version is SQLite's
 * `PRAGMA user_version` (0 in a new file and in every file written before versions existed). Each migration runs in
 * its own IMMEDIATE transaction together with the version bump, so a crash leaves the file at the old version or
 * the new one, never between; a second process opening the same file waits on the lock and then finds nothing to do.
 *
 * A file from a newer Portcullis than this one is refused: an older binary cannot know what the newer schema means,
 * and writing to it would corrupt it for the newer one (rolling back an upgrade means restoring a backup taken
 * before it, README "Upgrading").
 */
import type { DatabaseSync } from 'node:sqlite';

export interface Migration {
  /** The version this migration brings the file to: 1, 2, 3… in order, no gaps. */
  version: number;
  /** What changed, for the log and the error messages. */
  what: string;
  up(db: DatabaseSync): void;
}

/** A file written by a newer schema than this binary knows: the start stops (a stable code, the file and both versions). */
export class SchemaTooNewError extends Error {
  readonly code = 'SCHEMA_TOO_NEW';
  constructor(
    readonly file: string,
    readonly found: number,
    readonly known: number,
  ) {
    super(
      `${file}: schema version ${found} is newer than this Portcullis knows (${known}); it was written by a newer release. ` +
        'Run that release (or restore a backup taken before the upgrade); this one does not downgrade a file',
    );
    this.name = 'SchemaTooNewError';
  }
}

export function schemaVersion(db: DatabaseSync): number {
  return Number((db.prepare('PRAGMA user_version').get() as { user_version: number }).user_version);
}

/** The latest version the migrations reach (the binary's schema version). */
export function latestVersion(migrations: readonly Migration[]): number {
  return migrations.at(-1)?.version ?? 0;
}

/**
 * Brings `db` (opened from `file`) forward to the last migration's version; returns the versions it went through.
 * Throws SchemaTooNewError for a file from a newer schema, before touching it.
 */
export function migrate(db: DatabaseSync, file: string, migrations: readonly Migration[]): { from: number; to: number } {
  migrations.forEach((m, i) => {
    if (m.version !== i + 1) throw new Error(`migrations of ${file} must be numbered 1, 2, 3…: found ${m.version} at position ${i + 1}`);
  });
  const known = latestVersion(migrations);
  const from = schemaVersion(db);
  if (from > known) throw new SchemaTooNewError(file, from, known);
  for (const m of migrations) {
    if (m.version <= from) continue;
    db.exec('BEGIN IMMEDIATE');
    try {
      // Read again under the lock: another process may have migrated the file meanwhile.
      if (schemaVersion(db) < m.version) {
        m.up(db);
        db.exec(`PRAGMA user_version = ${m.version}`);
      }
      db.exec('COMMIT');
    } catch (e) {
      db.exec('ROLLBACK');
      throw new Error(`${file}: migration to schema version ${m.version} (${m.what}) failed: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
    }
  }
  return { from, to: Math.max(from, known) };
}
