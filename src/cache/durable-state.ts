/**
 * What cannot be rebuilt without the upstream, durable in the bucket (storage.blobs: s3) as DurableDocuments, so
 * that a Redis flush while the upstream is down still leaves every replica, a new one with an empty SQLite included,
 * able to serve every cached admitted image (issue 13): the admitted manifests, the closure hints (which roots list
 * a digest, the "digest→admitting-root index"), the tag mappings last confirmed upstream and verified signature
 * evidence. Pushed scan reports are mirrored beside them (scan/mirror.ts).
 *
 * Layout, version 1, under `<s3 prefix>meta/v1/` (s3-documents.ts); `<repo>` is the first 32 hex of
 * sha256(upstream\nrepository), `<digest>` is `<algorithm>-<hex>`:
 *   manifests/<repo>/<digest>.json          {v:1, mediaType, bytes (base64)}: verified against <digest> on every read
 *   closures/<repo>/<member digest>/<32 hex of sha256(root\nvoucher\nrole\ntag)>.json
 *                                           {v:1, role, root, voucher, tag, expiresAt, mac}: a closure hint
 *   tags/<32 hex of sha256(upstream\nrepository\ntag)>.json   {v:1, digest, mediaType, size, checkedAt, mac}
 *   evidence/<64 hex of sha256(evidence key)>.json            {v:1, id, value, expiresAt, mac}
 * `mac` is HMAC-SHA256 with storage.redis.signingKey over the document's key and JSON (entry-mac.ts). Whoever can
 * write to the bucket without the key can forge none of what a decision trusts: a manifest must hash to its name, a
 * hint is only a root to decide again (its tag is used only when signed), and an unsigned tag mapping or evidence
 * entry is never read. Without a key (no storage.redis), only manifests and untagged hints are read back.
 * A later layout takes `meta/v2/`.
 */
import { createHash } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import { digestAlgorithm, isDigest, type Digest } from '../routing/reference.js';
import { hintFrom, MAX_HINTS_PER_MEMBER } from './closure-hints.js';
import { EntryMac } from './entry-mac.js';
import type { ClosureMember, StoredManifest, TagEntry } from './metastore.js';
import type { ClosureHint, ClosureLink, DurableDocuments, HintStore } from './shared.js';

/** A manifest document larger than this is refused on read (limits.maxManifestSize is far below, base64 included). */
const MAX_MANIFEST_DOC = 16 * 1024 * 1024;

export interface DurableStateOptions {
  docs: DurableDocuments;
  /** storage.redis.signingKey, when there is one. */
  signingKey?: Buffer | undefined;
  onError?: (what: string, err: unknown) => void;
}

export class DurableState implements HintStore {
  private readonly docs: DurableDocuments;
  private readonly entries: EntryMac;
  private readonly onError: (what: string, err: unknown) => void;
  /** Manifests this process wrote already (a manifest under its digest never changes). */
  private readonly written = new LRUCache<string, true>({ max: 50_000 });

  constructor(o: DurableStateOptions) {
    this.docs = o.docs;
    this.entries = new EntryMac(o.signingKey);
    this.onError = o.onError ?? (() => undefined);
  }

  // Manifests

  /** An admitted manifest's bytes, once per digest and repository; fire and forget. */
  putManifest(upstream: string, repository: string, m: StoredManifest): void {
    const key = `manifests/${repoKey(upstream, repository)}/${name(m.digest)}.json`;
    if (this.written.has(key)) return;
    this.written.set(key, true);
    const body = Buffer.from(JSON.stringify({ v: 1, mediaType: m.mediaType, bytes: m.bytes.toString('base64') }));
    this.docs.put(key, body).catch((e: unknown) => {
      this.written.delete(key);
      this.onError('store an admitted manifest in the bucket', e);
    });
  }

  /** The manifest, only if its bytes hash to `digest`; undefined when absent, unreadable or wrong. */
  async getManifest(upstream: string, repository: string, digest: Digest, maxSize: number): Promise<StoredManifest | undefined> {
    const doc = await this.read(`manifests/${repoKey(upstream, repository)}/${name(digest)}.json`, 'read an admitted manifest from the bucket');
    if (!doc || doc.length > MAX_MANIFEST_DOC) return undefined;
    const d = parse(doc.toString('utf8'));
    if (d?.v !== 1 || typeof d.mediaType !== 'string' || typeof d.bytes !== 'string') return undefined;
    const bytes = Buffer.from(d.bytes, 'base64');
    if (bytes.length > maxSize) return undefined;
    const alg = digestAlgorithm(digest);
    if (`${alg}:${createHash(alg).update(bytes).digest('hex')}` !== digest) return undefined;
    return { digest, mediaType: d.mediaType, bytes };
  }

  // Closure hints

  async putHints(upstream: string, repository: string, link: ClosureLink, members: readonly ClosureMember[], expiresAt: number): Promise<void> {
    const writes: Array<Promise<void>> = [];
    for (const m of members.slice(0, 1_000)) {
      const key = `closures/${repoKey(upstream, repository)}/${name(m.digest)}/${sha(`${link.root}\n${link.voucher}\n${m.role}\n${link.tag}`).slice(0, 32)}.json`;
      const body = this.entries.sign(key, { v: 1, role: m.role, root: link.root, voucher: link.voucher, tag: link.tag, expiresAt });
      writes.push(this.docs.put(key, Buffer.from(body)).catch((e: unknown) => this.onError('store closure hints in the bucket', e)));
    }
    await Promise.all(writes);
  }

  /**
   * The hints for `member`, latest expiry first. Expired ones count too: a hint is a root to decide again, and the
   * bucket must still name it after a long outage (its expiry only orders them).
   */
  async getHints(upstream: string, repository: string, member: Digest, limit: number): Promise<ClosureHint[]> {
    const prefix = `closures/${repoKey(upstream, repository)}/${name(member)}/`;
    let keys: string[];
    try {
      keys = await this.docs.list(prefix, MAX_HINTS_PER_MEMBER);
    } catch (e) {
      this.onError('list closure hints in the bucket', e);
      return [];
    }
    const hints = await Promise.all(
      keys.map(async (key) => {
        const e = this.entries.open(key, (await this.read(key, 'read a closure hint from the bucket'))?.toString('utf8'));
        return e && typeof e.payload.expiresAt === 'number' ? hintFrom(e.payload, e.signed, e.payload.expiresAt) : undefined;
      }),
    );
    return hints
      .filter((h): h is ClosureHint => h !== undefined)
      .sort((a, b) => b.expiresAt - a.expiresAt)
      .slice(0, limit);
  }

  // Tag mappings

  putTag(upstream: string, repository: string, tag: string, e: TagEntry): void {
    if (!this.entries.signing) return;
    const key = tagKey(upstream, repository, tag);
    this.docs.put(key, Buffer.from(this.entries.sign(key, { v: 1, ...e }))).catch((err: unknown) => this.onError('store a tag mapping in the bucket', err));
  }

  /** The mapping last confirmed upstream by any replica; only a signed one (a forged mapping would pick the image). */
  async getTag(upstream: string, repository: string, tag: string): Promise<TagEntry | undefined> {
    if (!this.entries.signing) return undefined;
    const key = tagKey(upstream, repository, tag);
    const e = this.entries.open(key, (await this.read(key, 'read a tag mapping from the bucket'))?.toString('utf8'));
    const t = e?.signed ? e.payload : undefined;
    if (t?.v !== 1 || typeof t.digest !== 'string' || !isDigest(t.digest) || typeof t.mediaType !== 'string') return undefined;
    if (typeof t.size !== 'number' || typeof t.checkedAt !== 'number') return undefined;
    return { digest: t.digest, mediaType: t.mediaType, size: t.size, checkedAt: t.checkedAt };
  }

  // Verified signature evidence

  putEvidence(id: string, value: unknown, expiresAt: number): void {
    if (!this.entries.signing) return;
    const key = `evidence/${sha(id)}.json`;
    this.docs
      .put(key, Buffer.from(this.entries.sign(key, { v: 1, id, value, expiresAt })))
      .catch((e: unknown) => this.onError('store evidence in the bucket', e));
  }

  /** Evidence a replica verified, signed and unexpired, for exactly this key (which holds the trust revision). */
  async getEvidence(id: string, now: number): Promise<{ value: unknown; expiresAt: number } | undefined> {
    if (!this.entries.signing) return undefined;
    const key = `evidence/${sha(id)}.json`;
    const e = this.entries.open(key, (await this.read(key, 'read evidence from the bucket'))?.toString('utf8'));
    const d = e?.signed ? e.payload : undefined;
    if (d?.v !== 1 || d.id !== id || typeof d.expiresAt !== 'number' || d.expiresAt <= now || typeof d.value !== 'object' || d.value === null) return undefined;
    return { value: d.value, expiresAt: d.expiresAt };
  }

  private async read(key: string, what: string): Promise<Buffer | undefined> {
    try {
      return await this.docs.get(key);
    } catch (e) {
      this.onError(what, e);
      return undefined;
    }
  }
}

function sha(s: string): string {
  return createHash('sha256').update(s).digest('hex');
}

function repoKey(upstream: string, repository: string): string {
  return sha(`${upstream}\n${repository}`).slice(0, 32);
}

function tagKey(upstream: string, repository: string, tag: string): string {
  return `tags/${sha(`${upstream}\n${repository}\n${tag}`).slice(0, 32)}.json`;
}

function name(d: Digest): string {
  return d.replace(':', '-');
}

function parse(text: string): Record<string, unknown> | undefined {
  try {
    const v = JSON.parse(text) as unknown;
    return typeof v === 'object' && v !== null ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}
