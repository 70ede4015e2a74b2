/**
 * Metadata that must survive a restart or a crash: tag→digest mappings, manifest bytes and which repositories they
 * were seen in, and the closures of admitted images. SQLite (node:sqlite, WAL mode) gives atomic, durable updates
 * in-process with no external service, which is what a node-level DaemonSet wants.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { DatabaseSync, type StatementSync } from 'node:sqlite';
import type { Digest } from '../routing/reference.js';

export interface TagEntry {
  digest: Digest;
  mediaType: string;
  size: number;
  /** When the mapping was last confirmed upstream (ms since epoch). */
  checkedAt: number;
}

export interface StoredManifest {
  digest: Digest;
  mediaType: string;
  bytes: Buffer;
}

export interface ClosureMember {
  digest: Digest;
  kind: 'manifest' | 'blob';
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS tags (
  upstream TEXT NOT NULL, repository TEXT NOT NULL, tag TEXT NOT NULL,
  digest TEXT NOT NULL, media_type TEXT NOT NULL, size INTEGER NOT NULL, checked_at INTEGER NOT NULL,
  PRIMARY KEY (upstream, repository, tag)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS manifests (
  digest TEXT PRIMARY KEY, media_type TEXT NOT NULL, body BLOB NOT NULL, stored_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS manifest_links (
  upstream TEXT NOT NULL, repository TEXT NOT NULL, digest TEXT NOT NULL,
  PRIMARY KEY (upstream, repository, digest)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS closures (
  upstream TEXT NOT NULL, repository TEXT NOT NULL, member TEXT NOT NULL, root TEXT NOT NULL,
  kind TEXT NOT NULL, expires_at INTEGER NOT NULL,
  PRIMARY KEY (upstream, repository, member, root)
) WITHOUT ROWID;
`;

export class MetaStore {
  private readonly db: DatabaseSync;
  private readonly st: Record<string, StatementSync>;

  constructor(dataDir: string) {
    mkdirSync(dataDir, { recursive: true });
    this.db = new DatabaseSync(join(dataDir, 'meta.sqlite'));
    this.db.exec('PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;');
    this.db.exec(SCHEMA);
    const p = (sql: string): StatementSync => this.db.prepare(sql);
    this.st = {
      getTag: p('SELECT digest, media_type, size, checked_at FROM tags WHERE upstream = ? AND repository = ? AND tag = ?'),
      putTag: p(`INSERT INTO tags (upstream, repository, tag, digest, media_type, size, checked_at) VALUES (?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (upstream, repository, tag) DO UPDATE SET digest = excluded.digest, media_type = excluded.media_type,
                 size = excluded.size, checked_at = excluded.checked_at`),
      delTag: p('DELETE FROM tags WHERE upstream = ? AND repository = ? AND tag = ?'),
      getManifest: p('SELECT media_type, body FROM manifests WHERE digest = ?'),
      putManifest: p('INSERT OR IGNORE INTO manifests (digest, media_type, body, stored_at) VALUES (?, ?, ?, ?)'),
      hasLink: p('SELECT 1 AS x FROM manifest_links WHERE upstream = ? AND repository = ? AND digest = ?'),
      putLink: p('INSERT OR IGNORE INTO manifest_links (upstream, repository, digest) VALUES (?, ?, ?)'),
      putClosure: p(`INSERT INTO closures (upstream, repository, member, root, kind, expires_at) VALUES (?, ?, ?, ?, ?, ?)
                     ON CONFLICT (upstream, repository, member, root) DO UPDATE SET expires_at = excluded.expires_at, kind = excluded.kind`),
      inClosure: p('SELECT root, kind FROM closures WHERE upstream = ? AND repository = ? AND member = ? AND expires_at > ? LIMIT 1'),
      dropClosure: p('DELETE FROM closures WHERE upstream = ? AND repository = ? AND root = ?'),
      pruneClosures: p('DELETE FROM closures WHERE expires_at <= ?'),
      rootsWith: p('SELECT DISTINCT root FROM closures WHERE member = ?'),
      dropRoot: p('DELETE FROM closures WHERE root = ?'),
    };
  }

  getTag(upstream: string, repository: string, tag: string): TagEntry | undefined {
    const r = this.st.getTag!.get(upstream, repository, tag) as { digest: string; media_type: string; size: number; checked_at: number } | undefined;
    return r ? { digest: r.digest as Digest, mediaType: r.media_type, size: r.size, checkedAt: r.checked_at } : undefined;
  }

  putTag(upstream: string, repository: string, tag: string, e: TagEntry): void {
    this.st.putTag!.run(upstream, repository, tag, e.digest, e.mediaType, e.size, e.checkedAt);
  }

  deleteTag(upstream: string, repository: string, tag: string): void {
    this.st.delTag!.run(upstream, repository, tag);
  }

  /** A manifest cached for this repository; a digest seen only in another repository is not returned. */
  getManifest(upstream: string, repository: string, digest: Digest): StoredManifest | undefined {
    if (!this.st.hasLink!.get(upstream, repository, digest)) return undefined;
    const r = this.st.getManifest!.get(digest) as { media_type: string; body: Uint8Array } | undefined;
    return r ? { digest, mediaType: r.media_type, bytes: Buffer.from(r.body) } : undefined;
  }

  /** Callers must have verified that bytes hash to digest. */
  putManifest(upstream: string, repository: string, m: StoredManifest): void {
    this.db.exec('BEGIN');
    try {
      this.st.putManifest!.run(m.digest, m.mediaType, m.bytes, Date.now());
      this.st.putLink!.run(upstream, repository, m.digest);
      this.db.exec('COMMIT');
    } catch (e) {
      this.db.exec('ROLLBACK');
      throw e;
    }
  }

  /** Records the members of an admitted root's closure (the root itself included). */
  putClosure(upstream: string, repository: string, root: Digest, members: ClosureMember[], expiresAt: number): void {
    this.db.exec('BEGIN');
    try {
      for (const m of members) this.st.putClosure!.run(upstream, repository, m.digest, root, m.kind, expiresAt);
      this.db.exec('COMMIT');
    } catch (e) {
      this.db.exec('ROLLBACK');
      throw e;
    }
  }

  /** The admitted root whose closure holds this digest in this repository, if any. */
  closureRootOf(upstream: string, repository: string, member: Digest, now: number): { root: Digest; kind: string } | undefined {
    const r = this.st.inClosure!.get(upstream, repository, member, now) as { root: string; kind: string } | undefined;
    return r ? { root: r.root as Digest, kind: r.kind } : undefined;
  }

  dropClosure(upstream: string, repository: string, root: Digest): void {
    this.st.dropClosure!.run(upstream, repository, root);
  }

  /** The roots, in any repository, whose closures hold this digest (itself, if it is a root). */
  rootsContaining(member: Digest): Digest[] {
    return (this.st.rootsWith!.all(member) as Array<{ root: string }>).map((r) => r.root as Digest);
  }

  /** Drops the closures of this root in every repository. */
  dropClosuresOfRoot(root: Digest): void {
    this.st.dropRoot!.run(root);
  }

  pruneClosures(now: number): void {
    this.st.pruneClosures!.run(now);
  }

  /**
   * The root images the proxy holds: every cached tag mapping, plus the roots of admitted closures (pulled by
   * digest) that no tag of the same repository names. For re-evaluation (`portcullis report`).
   */
  listRoots(): Array<{ upstream: string; repository: string; digest: Digest; tag: string | null }> {
    const tags = this.db.prepare('SELECT upstream, repository, tag, digest FROM tags ORDER BY upstream, repository, tag').all() as Array<{ upstream: string; repository: string; tag: string; digest: string }>;
    const roots = this.db.prepare('SELECT DISTINCT upstream, repository, root FROM closures ORDER BY upstream, repository, root').all() as Array<{ upstream: string; repository: string; root: string }>;
    const tagged = new Set(tags.map((t) => `${t.upstream}\n${t.repository}\n${t.digest}`));
    return [
      ...tags.map((t) => ({ upstream: t.upstream, repository: t.repository, digest: t.digest as Digest, tag: t.tag })),
      ...roots.filter((r) => !tagged.has(`${r.upstream}\n${r.repository}\n${r.root}`)).map((r) => ({ upstream: r.upstream, repository: r.repository, digest: r.root as Digest, tag: null })),
    ];
  }

  close(): void {
    this.db.close();
  }
}
