/**
 * Metadata that must survive a restart or a crash: tag→digest mappings, manifest bytes and which repositories they
 * were seen in, and the closures of admitted images (decisions bound to what decided them, and the members they
 * admit, each in its role). SQLite (node:sqlite, WAL mode) gives atomic, durable updates
 * in-process with no external service, which is what a node-level DaemonSet wants.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { DatabaseSync, type StatementSync } from 'node:sqlite';
import type { Digest } from '../routing/reference.js';
import { migrate, type Migration } from '../util/sqlite-migrate.js';

/**
 * What the proxy stores, the gate and re-evaluation need of the metadata store (the implementation, SqliteMetaStore,
 * follows). Every method is synchronous: one indexed lookup or one transaction, on the warm path of every request.
 */
export interface MetaStore {
  /** tag → digest mappings, with when the upstream last confirmed them. */
  getTag(upstream: string, repository: string, tag: string): TagEntry | undefined;
  putTag(upstream: string, repository: string, tag: string, e: TagEntry): void;
  deleteTag(upstream: string, repository: string, tag: string): void;
  /** A manifest cached for this repository; a digest seen only in another repository is not returned. */
  getManifest(upstream: string, repository: string, digest: Digest): StoredManifest | undefined;
  /** Callers must have verified that bytes hash to digest. */
  putManifest(upstream: string, repository: string, m: StoredManifest): void;
  /** Records a decision; replaces the earlier one for the same (digest, under, tag), and only that one. */
  putAdmission(upstream: string, repository: string, r: AdmissionRecord): void;
  /** Extends a still-valid allow (a cached decision was reused) without writing a new decision. */
  touchAdmission(upstream: string, repository: string, digest: Digest, under: string, tag: string, basis: string, expiresAt: number): void;
  /** The unexpired decisions about `digest` as a root (`under` = '') or as a child of root `under`, newest first. */
  admissions(upstream: string, repository: string, digest: Digest, under: string, now: number): AdmissionRecord[];
  /** Records what an admitted manifest (`voucher`, under admitted `root`) lists. */
  putMembers(upstream: string, repository: string, root: Digest, voucher: Digest, members: ClosureMember[], expiresAt: number): void;
  /**
   * A link that vouches for `member` in one of `roles` right now: its root admitted under `basis`, and its voucher
   * too when the voucher is a child of the root. The warm path of every blob request.
   */
  validLink(upstream: string, repository: string, member: Digest, roles: readonly MemberRole[], basis: string, now: number): MemberLink | undefined;
  /** Unexpired links of `member` in one of `roles`, whatever their admissions say now (at most `limit`). */
  links(upstream: string, repository: string, member: Digest, roles: readonly MemberRole[], now: number, limit: number): MemberLink[];
  /** The roots, in any repository, whose closures hold this digest (as a member or as a decided child). */
  rootsContaining(member: Digest): Digest[];
  /** Forgets every decision about this root (and its children's decisions under it) and its members, everywhere. */
  dropRoot(root: Digest): void;
  /** Deletes at most `limit` expired rows of each closure table; returns how many went. Bounded work per call. */
  pruneExpired(now: number, limit: number): { admissions: number; members: number };
  /** Every cached tag mapping, plus the admitted roots that no tag names (for re-evaluation). */
  listRoots(): Array<{ upstream: string; repository: string; digest: Digest; tag: string | null }>;
  /** Every (root, blob) pair of the recorded closures: a purge keeps the blobs other roots list. */
  listBlobMembers(): Array<{ root: Digest; member: Digest }>;
  close(): void;
}

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

/**
 * What an admitted manifest lists, and in which role (gate/closures.ts): `child` is a manifest an index lists, `config`
 * and `layer` are blobs an image manifest lists. A member is served only in its role: a digest an image lists as a
 * layer is never thereby a manifest, and a child manifest is never thereby a blob.
 */
export type MemberRole = 'child' | 'config' | 'layer';

export interface ClosureMember {
  digest: Digest;
  role: MemberRole;
}

/**
 * One decision about a manifest, bound to what decided it. A root decision (`under` = '') is keyed by the tag it
 * was asked for ('' = by digest), so a deny for one tag never replaces another tag's admission of the same bytes; a
 * child decision (a runnable manifest of an admitted index) is keyed by the root it was decided under.
 */
export interface AdmissionRecord {
  digest: Digest;
  /** The root digest a child decision was made under; '' for a root decision. */
  under: string;
  /** The tag a root was asked for; '' when by digest or for a child. */
  tag: string;
  kind: 'manifest' | 'accessory';
  /** The policy revision, settings hash and trust revision that decided (src/gate/basis.ts). */
  basis: string;
  serve: boolean;
  decisionId: string;
  /** One line: why it was denied, '' for an allow. */
  reason: string;
  decidedAt: number;
  expiresAt: number;
}

/** A member row: `root` is the admitted root, `voucher` the manifest whose admission covers the member. */
export interface MemberLink {
  root: Digest;
  voucher: Digest;
  role: MemberRole;
}

/**
 * Schema version 1, frozen: a later change is a new migration below, never an edit here (a file at version 1 never
 * runs this again). IF NOT EXISTS because files from before versions existed (user_version 0) already hold it.
 */
const SCHEMA_V1 = `
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
CREATE TABLE IF NOT EXISTS admissions (
  upstream TEXT NOT NULL, repository TEXT NOT NULL, digest TEXT NOT NULL, under TEXT NOT NULL, tag TEXT NOT NULL,
  kind TEXT NOT NULL, basis TEXT NOT NULL, serve INTEGER NOT NULL, decision_id TEXT NOT NULL, reason TEXT NOT NULL,
  decided_at INTEGER NOT NULL, expires_at INTEGER NOT NULL,
  PRIMARY KEY (upstream, repository, digest, under, tag)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS admissions_expiry ON admissions (expires_at);
CREATE TABLE IF NOT EXISTS closure_members (
  upstream TEXT NOT NULL, repository TEXT NOT NULL, member TEXT NOT NULL, role TEXT NOT NULL,
  root TEXT NOT NULL, voucher TEXT NOT NULL, expires_at INTEGER NOT NULL,
  PRIMARY KEY (upstream, repository, member, role, root, voucher)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS closure_members_expiry ON closure_members (expires_at);
CREATE INDEX IF NOT EXISTS closure_members_root ON closure_members (root);
-- By digest alone (any repository): a pushed report forgets every root containing its digest. Without these, each
-- push scanned both tables (1.5 s at 10^4 closures and 10^5 decisions, blocking every request; issue 16).
CREATE INDEX IF NOT EXISTS closure_members_member ON closure_members (member);
CREATE INDEX IF NOT EXISTS admissions_digest ON admissions (digest);
CREATE INDEX IF NOT EXISTS admissions_under ON admissions (under);
`;

/**
 * Closures written before admissions carried a basis (the old \`closures\` table) become admissions by digest under
 * a basis no proxy ever has: never served on their own strength, but a blob request finds its root and re-decides
 * it inline, so an upgrade does not fail a pull that is running.
 */
const LEGACY_CLOSURES = `
INSERT OR IGNORE INTO admissions (upstream, repository, digest, under, tag, kind, basis, serve, decision_id, reason, decided_at, expires_at)
  SELECT upstream, repository, root, '', '', 'manifest', 'legacy', 1, 'legacy', '', 0, MAX(expires_at) FROM closures GROUP BY upstream, repository, root;
INSERT OR IGNORE INTO closure_members (upstream, repository, member, role, root, voucher, expires_at)
  SELECT upstream, repository, member, CASE kind WHEN 'blob' THEN 'layer' ELSE 'child' END, root, root, expires_at FROM closures WHERE member != root;
DROP TABLE closures;
`;

/** The schema's history, oldest first (util/sqlite-migrate.ts): each runs once, forward, in a transaction. */
export const META_MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    what: 'versioned baseline (tags, manifests, admissions, closure members); legacy closures become admissions',
    up: (db) => {
      db.exec(SCHEMA_V1);
      if (db.prepare("SELECT 1 AS x FROM sqlite_master WHERE type = 'table' AND name = 'closures'").get()) db.exec(LEGACY_CLOSURES);
    },
  },
];

/**
 * Lookups by digest alone, across repositories (a pushed report forgets every root that contains its digest): each
 * must use an index (test/unit/metastore-plans.test.ts checks the query plans). Two deletes, not one with OR, so that
 * each uses its own.
 */
export const BY_DIGEST = {
  rootsWith: `SELECT DISTINCT root FROM closure_members WHERE member = ? UNION SELECT DISTINCT under FROM admissions WHERE digest = ? AND under != ''`,
  dropRootAdmissions: 'DELETE FROM admissions WHERE digest = ?',
  dropChildAdmissions: 'DELETE FROM admissions WHERE under = ?',
  dropRootMembers: 'DELETE FROM closure_members WHERE root = ?',
} as const;

const MEMBER_SELECT = `SELECT m.root, m.voucher, m.role FROM closure_members m
  WHERE m.upstream = ?1 AND m.repository = ?2 AND m.member = ?3 AND m.role IN (?4, ?5) AND m.expires_at > ?6`;

/** A valid admission of `a.digest`: allowed, unexpired, under the current basis. */
const VALID = 'a.serve = 1 AND a.basis = ?7 AND a.expires_at > ?6';

export class SqliteMetaStore implements MetaStore {
  private readonly db: DatabaseSync;
  private readonly st: Record<string, StatementSync>;

  constructor(dataDir: string) {
    mkdirSync(dataDir, { recursive: true });
    const file = join(dataDir, 'meta.sqlite');
    this.db = new DatabaseSync(file);
    this.db.exec('PRAGMA busy_timeout = 5000;');
    try {
      migrate(this.db, file, META_MIGRATIONS);
    } catch (e) {
      this.db.close();
      throw e;
    }
    this.db.exec('PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;');
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
      putAdmission: p(`INSERT INTO admissions (upstream, repository, digest, under, tag, kind, basis, serve, decision_id, reason, decided_at, expires_at)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                       ON CONFLICT (upstream, repository, digest, under, tag) DO UPDATE SET kind = excluded.kind, basis = excluded.basis,
                       serve = excluded.serve, decision_id = excluded.decision_id, reason = excluded.reason,
                       decided_at = excluded.decided_at, expires_at = excluded.expires_at`),
      touchAdmission: p(
        'UPDATE admissions SET expires_at = MAX(expires_at, ?) WHERE upstream = ? AND repository = ? AND digest = ? AND under = ? AND tag = ? AND basis = ? AND serve = 1',
      ),
      admissions: p(`SELECT digest, under, tag, kind, basis, serve, decision_id, reason, decided_at, expires_at FROM admissions
                     WHERE upstream = ? AND repository = ? AND digest = ? AND under = ? AND expires_at > ? ORDER BY decided_at DESC LIMIT 8`),
      putMember: p(`INSERT INTO closure_members (upstream, repository, member, role, root, voucher, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)
                    ON CONFLICT (upstream, repository, member, role, root, voucher) DO UPDATE SET expires_at = MAX(expires_at, excluded.expires_at)`),
      validLink: p(`${MEMBER_SELECT}
        AND EXISTS (SELECT 1 FROM admissions a WHERE a.upstream = m.upstream AND a.repository = m.repository AND a.digest = m.root AND a.under = '' AND ${VALID})
        AND (m.voucher = m.root OR EXISTS (SELECT 1 FROM admissions a WHERE a.upstream = m.upstream AND a.repository = m.repository
             AND a.digest = m.voucher AND a.under = m.root AND ${VALID}))
        LIMIT 1`),
      links: p(`${MEMBER_SELECT} ORDER BY m.expires_at DESC LIMIT ?7`),
      rootsWith: p(BY_DIGEST.rootsWith),
      dropRootAdmissions: p(BY_DIGEST.dropRootAdmissions),
      dropChildAdmissions: p(BY_DIGEST.dropChildAdmissions),
      dropRootMembers: p(BY_DIGEST.dropRootMembers),
      pruneAdmissions: p(
        'DELETE FROM admissions WHERE (upstream, repository, digest, under, tag) IN (SELECT upstream, repository, digest, under, tag FROM admissions WHERE expires_at <= ? LIMIT ?)',
      ),
      pruneMembers: p(
        'DELETE FROM closure_members WHERE (upstream, repository, member, role, root, voucher) IN (SELECT upstream, repository, member, role, root, voucher FROM closure_members WHERE expires_at <= ? LIMIT ?)',
      ),
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

  /** Records a decision; replaces the earlier one for the same (digest, under, tag), and only that one. */
  putAdmission(upstream: string, repository: string, r: AdmissionRecord): void {
    this.st.putAdmission!.run(
      upstream,
      repository,
      r.digest,
      r.under,
      r.tag,
      r.kind,
      r.basis,
      r.serve ? 1 : 0,
      r.decisionId,
      r.reason,
      r.decidedAt,
      r.expiresAt,
    );
  }

  /** Extends a still-valid allow (a cached decision was reused) without writing a new decision. */
  touchAdmission(upstream: string, repository: string, digest: Digest, under: string, tag: string, basis: string, expiresAt: number): void {
    this.st.touchAdmission!.run(expiresAt, upstream, repository, digest, under, tag, basis);
  }

  /** The unexpired decisions about `digest` as a root (`under` = '') or as a child of root `under`, newest first. */
  admissions(upstream: string, repository: string, digest: Digest, under: string, now: number): AdmissionRecord[] {
    const rows = this.st.admissions!.all(upstream, repository, digest, under, now) as Array<Record<string, string | number>>;
    return rows.map((r) => ({
      digest: r.digest as Digest,
      under: r.under as string,
      tag: r.tag as string,
      kind: r.kind === 'accessory' ? 'accessory' : 'manifest',
      basis: r.basis as string,
      serve: r.serve === 1,
      decisionId: r.decision_id as string,
      reason: r.reason as string,
      decidedAt: r.decided_at as number,
      expiresAt: r.expires_at as number,
    }));
  }

  /** Records what an admitted manifest (`voucher`, under admitted `root`) lists. */
  putMembers(upstream: string, repository: string, root: Digest, voucher: Digest, members: ClosureMember[], expiresAt: number): void {
    this.inTransaction(() => {
      for (const m of members) this.st.putMember!.run(upstream, repository, m.digest, m.role, root, voucher, expiresAt);
    });
  }

  /**
   * A link that vouches for `member` in one of `roles` right now: its root admitted under `basis`, and its voucher
   * too when the voucher is a child of the root. One indexed query: the warm path of every blob request.
   */
  validLink(upstream: string, repository: string, member: Digest, roles: readonly MemberRole[], basis: string, now: number): MemberLink | undefined {
    const r = this.st.validLink!.get(upstream, repository, member, roles[0]!, roles[1] ?? roles[0]!, now, basis) as Record<string, string> | undefined;
    return r ? { root: r.root as Digest, voucher: r.voucher as Digest, role: r.role as MemberRole } : undefined;
  }

  /** Unexpired links of `member` in one of `roles`, whatever their admissions say now (at most `limit`). */
  links(upstream: string, repository: string, member: Digest, roles: readonly MemberRole[], now: number, limit: number): MemberLink[] {
    const rows = this.st.links!.all(upstream, repository, member, roles[0]!, roles[1] ?? roles[0]!, now, limit) as Array<Record<string, string>>;
    return rows.map((r) => ({ root: r.root as Digest, voucher: r.voucher as Digest, role: r.role as MemberRole }));
  }

  /** The roots, in any repository, whose closures hold this digest (as a member or as a decided child). */
  rootsContaining(member: Digest): Digest[] {
    return (this.st.rootsWith!.all(member, member) as Array<{ root: string }>).map((r) => r.root as Digest);
  }

  /** Forgets every decision about this root (and its children's decisions under it) and its members, everywhere. */
  dropRoot(root: Digest): void {
    this.inTransaction(() => {
      this.st.dropRootAdmissions!.run(root);
      this.st.dropChildAdmissions!.run(root);
      this.st.dropRootMembers!.run(root);
    });
  }

  /** Deletes at most `limit` expired rows of each closure table; returns how many went. Bounded work per call. */
  pruneExpired(now: number, limit: number): { admissions: number; members: number } {
    const admissions = Number(this.st.pruneAdmissions!.run(now, limit).changes);
    const members = Number(this.st.pruneMembers!.run(now, limit).changes);
    return { admissions, members };
  }

  private inTransaction(f: () => void): void {
    this.db.exec('BEGIN');
    try {
      f();
      this.db.exec('COMMIT');
    } catch (e) {
      this.db.exec('ROLLBACK');
      throw e;
    }
  }

  /**
   * The root images the proxy holds: every cached tag mapping, plus the roots of admitted closures (pulled by
   * digest) that no tag of the same repository names. For re-evaluation (`portcullis report`).
   */
  listRoots(): Array<{ upstream: string; repository: string; digest: Digest; tag: string | null }> {
    const tags = this.db.prepare('SELECT upstream, repository, tag, digest FROM tags ORDER BY upstream, repository, tag').all() as Array<{
      upstream: string;
      repository: string;
      tag: string;
      digest: string;
    }>;
    const roots = this.db
      .prepare("SELECT DISTINCT upstream, repository, digest AS root FROM admissions WHERE under = '' AND serve = 1 ORDER BY upstream, repository, root")
      .all() as Array<{ upstream: string; repository: string; root: string }>;
    const tagged = new Set(tags.map((t) => `${t.upstream}\n${t.repository}\n${t.digest}`));
    return [
      ...tags.map((t) => ({ upstream: t.upstream, repository: t.repository, digest: t.digest as Digest, tag: t.tag })),
      ...roots
        .filter((r) => !tagged.has(`${r.upstream}\n${r.repository}\n${r.root}`))
        .map((r) => ({ upstream: r.upstream, repository: r.repository, digest: r.root as Digest, tag: null })),
    ];
  }

  /**
   * Every blob (config or layer) a closure lists, with the root that lists it, whatever its admission says now. For
   * re-evaluation's purge: a blob any other root lists stays.
   */
  listBlobMembers(): Array<{ root: Digest; member: Digest }> {
    const rows = this.db.prepare("SELECT DISTINCT root, member FROM closure_members WHERE role IN ('config', 'layer')").all() as Array<{
      root: string;
      member: string;
    }>;
    return rows.map((r) => ({ root: r.root as Digest, member: r.member as Digest }));
  }

  close(): void {
    this.db.close();
  }
}
