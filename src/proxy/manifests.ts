/**
 * Manifests from the upstream, verified and cached.
 *
 * A tag resolves to a digest with a HEAD upstream (cheap, and free of Docker Hub's pull quota) and is trusted for
 * `cache.tagTTL`; within `cache.staleIfError` past that, a cached mapping is served while the upstream is down, or
 * while the manifest a tag now points to cannot be fetched or fails its digest check.
 * Bytes are fetched by digest, hashed exactly as received (never re-serialized) and refused on any mismatch, so
 * the cache only ever holds manifests that match their digest.
 */
import { createHash } from 'node:crypto';
import type { Config } from '../config/schema.js';
import type { MetaStore, StoredManifest, TagEntry } from '../cache/metastore.js';
import type { SharedState } from '../cache/shared.js';
import type { DurableState } from '../cache/durable-state.js';
import type { Metrics } from '../metrics/metrics.js';
import type { Route } from '../routing/route.js';
import { digestAlgorithm, isDigest, type Digest } from '../routing/reference.js';
import { errors, RegistryError } from '../oci/errors.js';
import { AuthError } from '../upstream/auth.js';
import { readCapped } from '../util/capped-body.js';
import { headerString, UpstreamUnavailableError, type UpstreamClient, type UpstreamResponse } from '../upstream/client.js';
import { ManifestFormatError, parseManifest, UPSTREAM_ACCEPT, type ParsedManifest } from '../oci/mediatypes.js';
import { errorText } from '../util/error-text.js';
import { SingleFlight } from '../util/single-flight.js';
import { centralRefusal } from './central-refusal.js';

/**
 * What the handlers, the gate and the evidence providers need of manifests (the implementation, ProxyManifestService,
 * follows): verified bytes by tag or by digest, each parsed once where it enters, and passed along from there.
 */
export interface ManifestService {
  /**
   * Tag → the manifest it points to, with its bytes and parse: a caller that asked by tag has the manifest in hand
   * and never looks it up again by digest. Concurrent resolutions of the same tag share one upstream round trip.
   */
  resolveTag(route: Route, tag: string, opts?: ResolveOptions): Promise<ResolvedTag>;
  /** Manifest bytes by digest, from cache or upstream; the bytes always hash to `digest`. */
  get(route: Route, digest: Digest): Promise<Manifest>;
}

export interface ResolveOptions {
  /**
   * A tag this replica holds no mapping for is fetched with one GET by tag instead of a HEAD and then a GET by digest.
   * For the tags a decision looks up once per digest (the `.sig`/`.att` and referrers tag-schema tags) the HEAD saves
   * nothing (a found tag's manifest is fetched anyway, and a 404 costs the same) and puts one more round trip on the
   * decision's critical path. A mapping past its TTL is still re-checked with a HEAD.
   */
  getWhenUnknown?: boolean;
}

export interface ResolvedTag {
  manifest: Manifest;
  /** Served from cache past its TTL because the upstream could not be asked. */
  stale: boolean;
}

export interface Manifest extends StoredManifest {
  parsed: ParsedManifest;
}

export interface ManifestServiceOptions {
  config: Config;
  meta: MetaStore;
  clientFor: (upstream: string) => UpstreamClient;
  metrics: Metrics;
  /** The tag-TTL clock. */
  now?: () => number;
  /** Tag mappings other replicas checked (storage.meta: redis), consulted when this replica's own is missing or old. */
  shared?: SharedState | undefined;
  /**
   * The bucket's admitted manifests and tag mappings (storage.blobs: s3): a manifest missing here is read there
   * before the upstream (verified against its digest), and a tag the upstream cannot confirm falls back on the
   * mapping any replica last confirmed, within staleIfError, as this replica's own stale mapping would.
   */
  durable?: Pick<DurableState, 'getManifest' | 'getTag' | 'putTag'> | undefined;
}

/** A confirmed tag mapping is written to the bucket at most this often while it does not change. */
const DURABLE_TAG_EVERY = 3_600_000;

export class ProxyManifestService implements ManifestService {
  private readonly tagFlights = new SingleFlight<string, ResolvedTag>();
  private readonly getFlights = new SingleFlight<string, Manifest>();
  /**
   * Recently served manifests, verified and parsed, by upstream, repository and digest (the metastore's own scope: a
   * digest cached for one repository is never served from another's entry). A manifest by digest never changes and
   * the metastore never forgets one, so this only saves the warm path a metastore read (two queries and a copy of the
   * bytes) and a JSON parse per request. Least recently used first; bounded in entries and bytes.
   */
  private readonly recent = new Map<string, Manifest>();
  /** The tag mappings this process read or wrote (freshTag), least recently used first, at most RECENT_MAX_TAGS. */
  private readonly tags = new Map<string, TagEntry>();
  private recentBytes = 0;

  private readonly config: Config;
  private readonly meta: MetaStore;
  private readonly clientFor: (upstream: string) => UpstreamClient;
  private readonly metrics: Metrics;
  private readonly now: () => number;
  private readonly shared: SharedState | undefined;
  private readonly durable: ManifestServiceOptions['durable'];
  /** When each tag mapping was last written to the bucket, and what it said. */
  private readonly durableTags = new Map<string, { digest: string; at: number }>();

  constructor(o: ManifestServiceOptions) {
    this.shared = o.shared;
    this.durable = o.durable;
    this.config = o.config;
    this.meta = o.meta;
    this.clientFor = o.clientFor;
    this.metrics = o.metrics;
    this.now = o.now ?? Date.now;
  }

  resolveTag(route: Route, tag: string, opts: ResolveOptions = {}): Promise<ResolvedTag> {
    // A mapping within its TTL is served without a flight (nothing to share: no upstream round trip).
    const fresh = this.freshTag(route, tag);
    if (fresh) {
      this.metrics.cacheLookups.inc({ kind: 'tag', result: 'hit' });
      return this.get(route, fresh.digest).then((manifest) => ({ manifest, stale: false }));
    }
    const key = `${route.upstream.name}\n${route.repository}\n${tag}`;
    if (this.tagFlights.has(key)) this.metrics.singleflightWaiters.inc({ kind: 'tag' });
    return this.tagFlights.run(key, () => this.doResolveTag(route, tag, opts));
  }

  /**
   * The tag's mapping if it was confirmed within its TTL: this process's own copy while that is fresh (every tag
   * write of this process goes through putTag/deleteTag below), else the metastore's row.
   */
  private freshTag(route: Route, tag: string): TagEntry | undefined {
    const key = `${route.upstream.name}\n${route.repository}\n${tag}`;
    const now = this.now();
    const ttl = this.tagTTL(route);
    const mine = this.tags.get(key);
    if (mine && now - mine.checkedAt < ttl) return mine;
    const cached = this.meta.getTag(route.upstream.name, route.repository, tag);
    if (!cached || now - cached.checkedAt >= ttl) return undefined;
    this.rememberTag(key, cached);
    return cached;
  }

  private putTag(route: Route, tag: string, e: TagEntry): void {
    this.meta.putTag(route.upstream.name, route.repository, tag, e);
    this.rememberTag(`${route.upstream.name}\n${route.repository}\n${tag}`, e);
  }

  private deleteTag(route: Route, tag: string): void {
    this.tags.delete(`${route.upstream.name}\n${route.repository}\n${tag}`);
    this.meta.deleteTag(route.upstream.name, route.repository, tag);
  }

  private rememberTag(key: string, e: TagEntry): void {
    this.tags.delete(key);
    this.tags.set(key, e);
    if (this.tags.size > RECENT_MAX_TAGS) this.tags.delete(this.tags.keys().next().value!);
  }

  /** A central Portcullis is asked again at least every `recheck`: a tag it now denies is not served for longer. */
  private tagTTL(route: Route): number {
    const upstream = route.upstream;
    return upstream.kind === 'portcullis' ? Math.min(this.config.cache.tagTTL, upstream.recheck) : this.config.cache.tagTTL;
  }

  private async doResolveTag(route: Route, tag: string, opts: ResolveOptions): Promise<ResolvedTag> {
    const { upstream, repository } = route;
    const cached = this.meta.getTag(upstream.name, repository, tag);
    const now = this.now();
    const ttl = this.tagTTL(route);
    if (cached && now - cached.checkedAt < ttl) {
      this.metrics.cacheLookups.inc({ kind: 'tag', result: 'hit' });
      return { manifest: await this.get(route, cached.digest), stale: false };
    }
    const fromPeer = await this.sharedTag(route, tag, cached, now);
    if (fromPeer) return fromPeer;
    const serveStale = async (why: RegistryError | Error): Promise<ResolvedTag> => {
      // A replica that never saw the tag takes the mapping another one confirmed last (signed, in the bucket).
      const last = cached ?? (await this.durable?.getTag(upstream.name, repository, tag).catch(() => undefined));
      if (last && now - Math.min(last.checkedAt, now) < ttl + this.config.cache.staleIfError) {
        this.metrics.cacheLookups.inc({ kind: 'tag', result: 'stale' });
        return { manifest: await this.get(route, last.digest), stale: true };
      }
      throw why;
    };
    this.metrics.cacheLookups.inc({ kind: 'tag', result: 'miss' });
    if (upstream.kind === 'portcullis') return this.resolveChainedTag(route, tag, serveStale);
    if (!cached && opts.getWhenUnknown) return this.resolveTagByGet(route, tag);
    let res: UpstreamResponse;
    try {
      res = await this.clientFor(upstream.name).send({
        method: 'HEAD',
        path: `/v2/${repository}/manifests/${tag}`,
        kind: 'manifest',
        repository,
        headers: { accept: UPSTREAM_ACCEPT },
      });
    } catch (e) {
      return serveStale(toRegistryError(e, upstream.name));
    }
    // The central tier's denial is its decision, never masked by a stale mapping.
    const refusal = await centralRefusal(res, upstream, `${route.registry}/${repository}:${tag}`);
    if (refusal) throw refusal;
    res.body.resume();
    if (res.status === 404) {
      this.deleteTag(route, tag);
      throw errors.manifestUnknown(`manifest unknown: ${route.registry}/${repository}:${tag} not found upstream`);
    }
    if (res.status !== 200) return serveStale(statusError(res, upstream.name, `${repository}:${tag}`));
    const dcd = headerString(res.headers['docker-content-digest']);
    let m: Manifest;
    try {
      // The HEAD's digest is a claim; the bytes are checked against it when they are fetched by digest. Some
      // registries omit the digest on HEAD: then fetch by tag and compute it ourselves.
      m = dcd && isDigest(dcd) ? await this.get(route, dcd) : await this.fetchAndStore(route, tag, undefined);
    } catch (e) {
      // The tag moved (or was re-checked) but its manifest cannot be had, or its bytes did not match: the last
      // verified mapping is still a safe answer within staleIfError.
      return serveStale(toRegistryError(e, upstream.name));
    }
    const entry: TagEntry = { digest: m.digest, mediaType: m.mediaType, size: m.bytes.length, checkedAt: this.now() };
    this.putTag(route, tag, entry);
    this.shared?.putTag(upstream.name, repository, tag, entry, this.config.cache.tagTTL + this.config.cache.staleIfError);
    this.keepTag(route, tag, entry);
    return { manifest: m, stale: false };
  }

  /** The confirmed mapping into the bucket: when it changed, else at most every DURABLE_TAG_EVERY (bounded map). */
  private keepTag(route: Route, tag: string, entry: TagEntry): void {
    if (!this.durable) return;
    const key = `${route.upstream.name}\n${route.repository}\n${tag}`;
    const last = this.durableTags.get(key);
    if (last && last.digest === entry.digest && entry.checkedAt - last.at < DURABLE_TAG_EVERY) return;
    if (this.durableTags.size >= 10_000) this.durableTags.clear();
    this.durableTags.set(key, { digest: entry.digest, at: entry.checkedAt });
    this.durable.putTag(route.upstream.name, route.repository, tag, entry);
  }

  /**
   * A mapping another replica confirmed upstream within tagTTL and more recently than ours: used as if this replica
   * had checked it (one upstream HEAD per tag per TTL for the whole tier). The manifest is still read by digest and
   * its bytes verified; a checkedAt in the future (clock skew, a bad entry) counts as now.
   */
  private async sharedTag(route: Route, tag: string, cached: TagEntry | undefined, now: number): Promise<ResolvedTag | undefined> {
    if (!this.shared?.healthy) return undefined;
    const { upstream, repository } = route;
    const peer = await this.shared.getTag(upstream.name, repository, tag);
    if (!peer || !isDigest(peer.digest)) return undefined;
    const checkedAt = Math.min(peer.checkedAt, now);
    if (now - checkedAt >= this.config.cache.tagTTL || (cached && cached.checkedAt >= checkedAt)) return undefined;
    let m: Manifest;
    try {
      m = await this.get(route, peer.digest);
    } catch {
      return undefined;
    }
    this.metrics.cacheLookups.inc({ kind: 'tag', result: 'shared' });
    this.putTag(route, tag, { digest: m.digest, mediaType: m.mediaType, size: m.bytes.length, checkedAt });
    return { manifest: m, stale: false };
  }

  /**
   * A tag on a central Portcullis: a GET, not a HEAD, because its denial's message and violations come only with a
   * body (its own cache makes the GET cheap). Its denial, and a tag it does not know, are answers, never masked by
   * a stale mapping; only a failure to reach it is.
   */
  private async resolveChainedTag(route: Route, tag: string, serveStale: (why: RegistryError | Error) => Promise<ResolvedTag>): Promise<ResolvedTag> {
    const { upstream } = route;
    let m: Manifest;
    try {
      m = await this.fetchAndStore(route, tag, undefined);
    } catch (e) {
      if (e instanceof RegistryError && e.code === 'MANIFEST_UNKNOWN') this.deleteTag(route, tag);
      if (e instanceof RegistryError && (e.code === 'DENIED' || e.code === 'MANIFEST_UNKNOWN')) throw e;
      return serveStale(toRegistryError(e, upstream.name));
    }
    this.putTag(route, tag, { digest: m.digest, mediaType: m.mediaType, size: m.bytes.length, checkedAt: this.now() });
    return { manifest: m, stale: false };
  }

  /** One GET by tag (ResolveOptions.getWhenUnknown): nothing cached to fall back on, so any failure is the answer. */
  private async resolveTagByGet(route: Route, tag: string): Promise<ResolvedTag> {
    const { upstream, repository } = route;
    const m = await this.fetchAndStore(route, tag, undefined);
    const entry: TagEntry = { digest: m.digest, mediaType: m.mediaType, size: m.bytes.length, checkedAt: this.now() };
    this.putTag(route, tag, entry);
    this.shared?.putTag(upstream.name, repository, tag, entry, this.config.cache.tagTTL + this.config.cache.staleIfError);
    return { manifest: m, stale: false };
  }

  get(route: Route, digest: Digest): Promise<Manifest> {
    const key = `${route.upstream.name}\n${route.repository}\n${digest}`;
    const recent = this.recent.get(key);
    if (recent) {
      this.recent.delete(key);
      this.recent.set(key, recent);
      this.metrics.cacheLookups.inc({ kind: 'manifest', result: 'hit' });
      return Promise.resolve(recent);
    }
    const cached = this.meta.getManifest(route.upstream.name, route.repository, digest);
    if (cached) {
      this.metrics.cacheLookups.inc({ kind: 'manifest', result: 'hit' });
      return Promise.resolve(this.remember(key, { ...cached, parsed: parseManifest(cached.bytes, cached.mediaType) }));
    }
    if (this.getFlights.has(key)) this.metrics.singleflightWaiters.inc({ kind: 'manifest' });
    else this.metrics.cacheLookups.inc({ kind: 'manifest', result: 'miss' });
    return this.getFlights.run(key, async () => (await this.fromBucket(route, digest)) ?? this.fetchAndStore(route, digest, digest));
  }

  /** An admitted manifest another replica kept in the bucket: its bytes hash to `digest` (checked there), and parse. */
  private async fromBucket(route: Route, digest: Digest): Promise<Manifest | undefined> {
    const { upstream, repository } = route;
    // A central tier's answers are re-asked on the node (chain.ts), never taken from a bucket.
    if (!this.durable || upstream.kind === 'portcullis') return undefined;
    const kept = await this.durable.getManifest(upstream.name, repository, digest, this.config.limits.maxManifestSize).catch(() => undefined);
    if (!kept) return undefined;
    let parsed: ParsedManifest;
    try {
      parsed = parseManifest(kept.bytes, kept.mediaType);
    } catch {
      return undefined;
    }
    const m: Manifest = { ...kept, mediaType: parsed.mediaType, parsed };
    this.meta.putManifest(upstream.name, repository, m);
    return m;
  }

  private async fetchAndStore(route: Route, ref: string, expected: Digest | undefined): Promise<Manifest> {
    const { upstream, repository } = route;
    let res: UpstreamResponse;
    try {
      res = await this.clientFor(upstream.name).send({
        method: 'GET',
        path: `/v2/${repository}/manifests/${ref}`,
        kind: 'manifest',
        repository,
        headers: { accept: UPSTREAM_ACCEPT },
      });
    } catch (e) {
      throw toRegistryError(e, upstream.name);
    }
    if (res.status === 404) {
      res.body.resume();
      throw errors.manifestUnknown(`manifest unknown: ${route.registry}/${repository}@${ref} not found upstream`);
    }
    if (res.status !== 200) {
      const refusal = await centralRefusal(res, upstream, `${route.registry}/${repository}${isDigest(ref) ? '@' : ':'}${ref}`);
      if (refusal) throw refusal;
      res.body.resume();
      throw statusError(res, upstream.name, `${repository}@${ref}`);
    }
    const max = this.config.limits.maxManifestSize;
    const declared = Number(headerString(res.headers['content-length']));
    if (Number.isFinite(declared) && declared > max) {
      res.body.destroy();
      throw errors.manifestInvalid(`manifest ${ref} is ${declared} bytes, over the ${max}-byte limit`);
    }
    let bytes: Buffer;
    try {
      bytes = await readCapped(res.body, max, () => errors.manifestInvalid(`manifest ${ref} is over the ${max}-byte limit`));
    } catch (e) {
      // A body cut short (connection reset, body timeout) is the upstream's failure, not an internal error.
      if (e instanceof RegistryError) throw e;
      throw errors.upstream(`upstream "${upstream.name}" failed while sending manifest ${repository}@${ref}: ${errorText(e)}`);
    }
    if (Number.isFinite(declared) && bytes.length !== declared) {
      throw errors.upstream(`upstream "${upstream.name}" sent ${bytes.length} of ${declared} bytes for manifest ${ref}`);
    }
    const alg = expected ? digestAlgorithm(expected) : 'sha256';
    const actual = `${alg}:${createHash(alg).update(bytes).digest('hex')}` as Digest;
    const claimed = headerString(res.headers['docker-content-digest']);
    const want = expected ?? (claimed && isDigest(claimed) && digestAlgorithm(claimed) === 'sha256' ? claimed : undefined);
    if (want && actual !== want) {
      this.metrics.digestMismatches.inc({ upstream: upstream.name, kind: 'manifest' });
      throw errors.upstream(`upstream "${upstream.name}" sent manifest bytes for ${repository}@${ref} that hash to ${actual}, not ${want}; refused`);
    }
    let parsed: ParsedManifest;
    try {
      parsed = parseManifest(bytes, headerString(res.headers['content-type']));
    } catch (e) {
      if (e instanceof ManifestFormatError) throw errors.manifestInvalid(`${route.registry}/${repository}@${ref}: ${e.message}`);
      throw e;
    }
    const m: Manifest = { digest: actual, mediaType: parsed.mediaType, bytes, parsed };
    this.meta.putManifest(upstream.name, repository, m);
    return this.remember(`${upstream.name}\n${repository}\n${actual}`, m);
  }

  private remember(key: string, m: Manifest): Manifest {
    if (m.bytes.length > RECENT_MAX_BYTES / 8) return m;
    const old = this.recent.get(key);
    if (old) {
      this.recent.delete(key);
      this.recentBytes -= old.bytes.length;
    }
    this.recent.set(key, m);
    this.recentBytes += m.bytes.length;
    for (const [k, v] of this.recent) {
      if (this.recent.size <= RECENT_MAX_ENTRIES && this.recentBytes <= RECENT_MAX_BYTES) break;
      this.recent.delete(k);
      this.recentBytes -= v.bytes.length;
    }
    return m;
  }
}

/** The in-memory manifest cache's bounds (ProxyManifestService.recent); a manifest over 1/8 of the bytes is not kept. */
const RECENT_MAX_ENTRIES = 1024;
const RECENT_MAX_BYTES = 16 * 1024 * 1024;
const RECENT_MAX_TAGS = 4096;

/** Maps an upstream status that is not 200/404 onto the error the client should see. */
export function statusError(res: UpstreamResponse, upstream: string, what: string): RegistryError {
  if (res.status === 429) {
    return errors.tooManyRequests(`upstream "${upstream}" rate-limited the request for ${what}`, headerString(res.headers['retry-after']));
  }
  if (res.status === 401 || res.status === 403) {
    return errors.upstream(`upstream "${upstream}" refused access to ${what} (HTTP ${res.status}); check the upstream credentials`);
  }
  return errors.upstream(`upstream "${upstream}" answered HTTP ${res.status} for ${what}`, res.status === 503);
}

export function toRegistryError(e: unknown, upstream: string): RegistryError {
  if (e instanceof RegistryError) return e;
  if (e instanceof AuthError) return errors.upstream(`upstream "${upstream}" authentication failed: ${e.message}; check the upstream credentials`);
  if (e instanceof UpstreamUnavailableError) return errors.upstream(e.message, true);
  return errors.upstream(`upstream "${upstream}" failed: ${errorText(e)}`);
}
