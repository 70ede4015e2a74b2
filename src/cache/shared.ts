/**
 * State that replicas of a central tier share and that can be rebuilt (DESIGN §11): decisions, tag→digest mappings
 * and the invalidation epoch. `storage.meta: redis` backs it with Redis (redis-shared.ts, loaded only then);
 * without it there is nothing to share and this module's `LOCAL_ONLY` answers every lookup with a miss.
 *
 * The synchronous MetaStore (SQLite) stays each replica's durable local copy and the warm path: a blob GET is one
 * indexed SQLite query, never a network round trip. Redis sits behind it and is consulted only on a local miss
 * (a decision or a tag this replica has not made or checked yet), so a Redis outage costs sharing, not serving.
 *
 * Redis key layout, version 1 (`<keyPrefix>` from storage.redis.keyPrefix, default `portcullis:`):
 *   <keyPrefix>v1:epoch                 string: the invalidation epoch, an integer that only grows
 *   <keyPrefix>v1:epoch:events          pub/sub channel: the new epoch after each bump (decimal text)
 *   <keyPrefix>v1:decision:<sha256>     JSON {v:1, admission, expiresAt}; PX = what is left of its TTL. The hash is
 *                                       of the gate's cache key: upstream, repository, digest, root, tag, kind,
 *                                       client identity and basis (policy, settings, trust revision, epoch)
 *   <keyPrefix>v1:tag:<sha256>          JSON {v:1, digest, mediaType, size, checkedAt}; hash of upstream\nrepo\ntag
 *   <keyPrefix>v1:bucket:<sha256>       hash {tokens, at}: a quota's token bucket (redis-buckets.ts); hash of
 *                                       `quota:<identity|address>:<kind>\n<who>`; PEXPIRE = time to refill
 *   <keyPrefix>v1:links:<sha256>        sorted set, hash of upstream\nrepo\nmember: closure hints (below), each member
 *                                       the JSON {v:1, role, root, voucher, tag} (signed), scored by its expiry (ms);
 *                                       at most 32 per member (the latest expiries), PEXPIREAT the latest
 * A later layout takes `v2:`; replicas of both versions can then share one Redis without reading each other's keys.
 * (`bucket:` was added within v1: a replica without it never reads those keys, and one with it reads only its own.)
 *
 * Redis Cluster (storage.redis.cluster): every atomic step touches ONE key, so no step spans hash slots and no
 * key needs a `{hash tag}`: GET/SET of one entry, the epoch scripts (bump, raise: the key, and the channel passed as
 * an argument, since PUBLISH is not keyed and a cluster forwards it to every node), the bucket script. A new script
 * or MULTI over several keys must put them in one slot (`<keyPrefix>v1:{<name>}:…`) and move the layout to v2.
 *
 * Messages are versioned by their channel's name (`v1:epoch:events` carries decimal epochs, nothing else; a
 * receiver ignores what does not parse), and every value by its `v` field as well as its key.
 */
import type { Digest } from '../routing/reference.js';
import type { ClosureMember, MemberRole, TagEntry } from './metastore.js';

/** A decision another replica made, as it stored it (the gate checks the shape: Redis is a cache, not an authority). */
export interface SharedDecision {
  admission: unknown;
  expiresAt: number;
}

/**
 * A closure hint: "`member` is listed in `role` by `voucher`, in the closure of `root`, which a replica admitted
 * (for `tag`)". Another replica left it so that a replica that never served the root can find the root to decide.
 * A hint is never an admission (gate/closures.ts): the root is decided again by this replica's gate, and the member
 * must be listed by the digest-verified manifests it names.
 */
export interface ClosureHint {
  role: MemberRole;
  root: Digest;
  voucher: Digest;
  /** The tag the root was admitted for ('' by digest); null when the entry carried no valid signature. */
  tag: string | null;
  expiresAt: number;
}

/** What a replica records after an admission: the root, the manifest that lists the members, the root's tag. */
export interface ClosureLink {
  root: Digest;
  voucher: Digest;
  tag: string;
}

/** Closure hints by member digest (Redis, the bucket, or both: closure-hints.ts). */
export interface HintStore {
  /** Hints for `member` in this repository, latest expiry first, at most `limit`; [] when the store is unreachable. */
  getHints(upstream: string, repository: string, member: Digest, limit: number): Promise<ClosureHint[]>;
  /**
   * Records `link` as the voucher of each member. Resolves once written (or failed: sharing never fails a request,
   * and the promise never rejects), so that the manifest response leaves after its hints: the client's next
   * request, on another replica, finds them.
   */
  putHints(upstream: string, repository: string, link: ClosureLink, members: readonly ClosureMember[], expiresAt: number): Promise<void>;
}

export interface SharedState extends HintStore {
  /** True when Redis answered recently: otherwise lookups miss at once instead of waiting for a timeout. */
  readonly healthy: boolean;
  getDecision(key: string): Promise<SharedDecision | undefined>;
  putDecision(key: string, d: SharedDecision): void;
  getTag(upstream: string, repository: string, tag: string): Promise<TagEntry | undefined>;
  putTag(upstream: string, repository: string, tag: string, e: TagEntry, ttlMs: number): void;
}

/**
 * The invalidation epoch as the gate sees it: part of the basis of every decision and admission (gate/basis.ts), so
 * a bump makes every cached decision and admission on every replica stale at once, and the next request decides
 * again (inline, as after a policy change).
 */
export interface EpochSource {
  /** The epoch to decide under now; it changes after a bump, and every `maxStaleness` while unconfirmed. */
  token(): string;
  /** Records a change that must invalidate decisions on every replica (a pushed report, a policy swap). */
  bump(reason: string): void;
  /** Called after the epoch changed (the gate frees its decision cache). Returns an unsubscribe. */
  onChange(f: () => void): () => void;
  /** A readiness note when the epoch could not be confirmed lately; undefined when all is well. */
  degraded(): string | undefined;
  /** A readiness note when the bucket (the epoch's durable copy) did not answer the last poll. */
  storeDegraded(): string | undefined;
}

/** Nothing shared: `storage.meta: sqlite`. */
export const LOCAL_ONLY: SharedState = {
  healthy: false,
  getDecision: () => Promise.resolve(undefined),
  putDecision: () => undefined,
  getTag: () => Promise.resolve(undefined),
  putTag: () => undefined,
  getHints: () => Promise.resolve([]),
  putHints: () => Promise.resolve(),
};

/**
 * Small durable documents in the blob bucket (s3-documents.ts), under `<s3 prefix>meta/v1/`: what replicas must all
 * see and what cannot be rebuilt (pushed scan reports). Keys are relative to that folder.
 */
export interface DurableDocuments {
  put(key: string, body: Buffer): Promise<void>;
  /** Undefined when the key does not exist. */
  get(key: string): Promise<Buffer | undefined>;
  /** Keys under `prefix`, ascending (at most `limit`). */
  list(prefix: string, limit: number): Promise<string[]>;
  delete(key: string): Promise<void>;
}
