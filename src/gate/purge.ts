/**
 * Purge after re-evaluation (`reevaluate.purge: true`): an image the current policy and evidence now deny loses its
 * admissions and closure, and its blobs leave the cache, so a newly found CRITICAL is not served from the cache
 * until its admission would have expired.
 *
 * What it never does:
 * - remove a blob that an image still in good standing lists (base layers are shared): the set of blobs every other
 *   cached image and every other closure lists is computed first, right before the removals, in one synchronous
 *   step, so no decision can slip in between;
 * - cut a running pull: the blob store removes a blob that a reader holds a lease on only once the last reader lets
 *   go (BlobStore.remove), and a blob being downloaded is left alone;
 * - act on a deny that says nothing about the image: a policy or evidence error, a pending scan, a client rule (the
 *   re-evaluation decides as an anonymous client). Those are reported, not purged.
 */
import type { BlobStore } from '../cache/blobstore.js';
import type { MetaStore } from '../cache/metastore.js';
import { parseManifest } from '../oci/mediatypes.js';
import type { Digest } from '../routing/reference.js';
import type { ReevalEntry } from './reeval.js';

/** What purging needs: the metadata store, the blob store's public methods, and the gate's forgetting. */
export interface PurgeTarget {
  meta: Pick<MetaStore, 'getManifest' | 'listBlobMembers'>;
  blobs: Pick<BlobStore, 'has' | 'remove'>;
  /** A download of this blob is running (it is left alone). */
  downloading(digest: Digest): boolean;
  /** Drops one root's cached decisions, admissions and closure members (Gate.forgetRoot). */
  forgetRoot(root: Digest): void;
}

export interface PurgeResult {
  /** Images whose admissions and closures were dropped. */
  images: string[];
  /** Blobs removed from the cache. */
  removed: Digest[];
  /** Blobs of purged images kept because another image lists them, or because they are being downloaded. */
  kept: Digest[];
}

/** Rules whose deny reflects the proxy or the asking client, not the image. */
const TRANSIENT_RULES = /^(client\.|policy\.error$|decision_log\.|scan\.error$|scan\.pending$)/;
/** Nested indexes deeper than this are not followed (as in gate/closures.ts). */
const MAX_DEPTH = 4;

/** An enforced deny about the image itself, on evidence that was gathered without error. */
export function purgeable(e: ReevalEntry): boolean {
  if (e.outcome !== 'deny' || e.deny.length === 0) return false;
  if (e.scan && (e.scan.status === 'error' || e.scan.status === 'pending')) return false;
  if (e.signatures === 'error') return false;
  return e.deny.every((v) => !TRANSIENT_RULES.test(v.rule));
}

export function purge(t: PurgeTarget, entries: ReevalEntry[]): PurgeResult {
  const key = (e: Pick<ReevalEntry, 'upstream' | 'repository' | 'digest'>): string => `${e.upstream}\n${e.repository}\n${e.digest}`;
  const denied = entries.filter(purgeable);
  const standing = entries.filter((e) => !purgeable(e));
  // A digest another tag or repository still has in good standing keeps its admissions: they are per digest.
  const standingDigests = new Set(standing.map((e) => e.digest));
  const purgedRoots = new Set(denied.map((e) => e.digest).filter((d) => !standingDigests.has(d)));
  if (purgedRoots.size === 0) return { images: [], removed: [], kept: [] };
  const candidates = new Set<Digest>();
  const seen = new Set<string>();
  for (const e of denied) {
    if (!purgedRoots.has(e.digest) || seen.has(key(e))) continue;
    seen.add(key(e));
    for (const b of blobsOf(t, e.upstream, e.repository, e.digest as Digest)) candidates.add(b);
  }
  // From here on, no await: what is kept and what goes are decided on one snapshot of the store.
  const keep = new Set<Digest>();
  for (const e of standing) for (const b of blobsOf(t, e.upstream, e.repository, e.digest as Digest)) keep.add(b);
  for (const m of t.meta.listBlobMembers()) if (!purgedRoots.has(m.root)) keep.add(m.member);
  for (const root of purgedRoots) t.forgetRoot(root as Digest);
  const removed: Digest[] = [];
  const kept: Digest[] = [];
  for (const b of candidates) {
    if (keep.has(b) || t.downloading(b)) kept.push(b);
    else if (t.blobs.has(b)) {
      removed.push(b);
      // A reader holding a lease keeps reading: the store unlinks the bytes when the last one lets go.
      void t.blobs.remove(b).catch(() => {});
    }
  }
  const images = [...new Set(denied.filter((e) => purgedRoots.has(e.digest)).map((e) => e.image))];
  return { images, removed, kept };
}

/** The config and layers of a cached image, or of every cached child of a cached index. */
function blobsOf(t: PurgeTarget, upstream: string, repository: string, digest: Digest, depth = 0): Digest[] {
  const m = t.meta.getManifest(upstream, repository, digest);
  if (!m || depth > MAX_DEPTH) return [];
  let parsed;
  try {
    parsed = parseManifest(m.bytes, m.mediaType);
  } catch {
    return [];
  }
  if (parsed.kind === 'image') return parsed.blobs.map((b) => b.digest);
  return parsed.manifests.flatMap((c) => blobsOf(t, upstream, repository, c.digest, depth + 1));
}
