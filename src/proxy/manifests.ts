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
import type { MetaStore, StoredManifest } from '../cache/metastore.js';
import type { Metrics } from '../metrics/metrics.js';
import type { Route } from '../routing/route.js';
import { digestAlgorithm, isDigest, type Digest } from '../routing/reference.js';
import { errors, RegistryError } from '../oci/errors.js';
import { AuthError } from '../upstream/auth.js';
import { readCapped } from '../upstream/body.js';
import { headerString, UpstreamUnavailableError, type UpstreamClient, type UpstreamResponse } from '../upstream/client.js';
import { ManifestFormatError, parseManifest, UPSTREAM_ACCEPT, type ParsedManifest } from '../oci/mediatypes.js';

export interface ResolvedTag {
  digest: Digest;
  mediaType: string;
  size: number;
  /** Served from cache past its TTL because the upstream could not be asked. */
  stale: boolean;
}

export interface Manifest extends StoredManifest {
  parsed: ParsedManifest;
}

export class ManifestService {
  private readonly tagFlights = new Map<string, Promise<ResolvedTag>>();
  private readonly getFlights = new Map<string, Promise<Manifest>>();

  constructor(
    private readonly config: Config,
    private readonly meta: MetaStore,
    private readonly clientFor: (upstream: string) => UpstreamClient,
    private readonly metrics: Metrics,
    private readonly now: () => number = Date.now,
  ) {}

  /** Tag → digest; concurrent resolutions of the same tag share one upstream round trip. */
  resolveTag(route: Route, tag: string): Promise<ResolvedTag> {
    const key = `${route.upstream.name}\n${route.repository}\n${tag}`;
    let p = this.tagFlights.get(key);
    if (!p) {
      p = this.doResolveTag(route, tag).finally(() => this.tagFlights.delete(key));
      this.tagFlights.set(key, p);
    } else {
      this.metrics.singleflightWaiters.inc({ kind: 'tag' });
    }
    return p;
  }

  private async doResolveTag(route: Route, tag: string): Promise<ResolvedTag> {
    const { upstream, repository } = route;
    const cached = this.meta.getTag(upstream.name, repository, tag);
    const now = this.now();
    if (cached && now - cached.checkedAt < this.config.cache.tagTTL) {
      this.metrics.cacheHits.inc({ kind: 'tag', result: 'hit' });
      return { digest: cached.digest, mediaType: cached.mediaType, size: cached.size, stale: false };
    }
    const serveStale = (why: RegistryError | Error): ResolvedTag => {
      if (cached && now - cached.checkedAt < this.config.cache.tagTTL + this.config.cache.staleIfError) {
        this.metrics.cacheHits.inc({ kind: 'tag', result: 'stale' });
        return { digest: cached.digest, mediaType: cached.mediaType, size: cached.size, stale: true };
      }
      throw why;
    };
    this.metrics.cacheHits.inc({ kind: 'tag', result: 'miss' });
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
    res.body.resume();
    if (res.status === 404) {
      this.meta.deleteTag(upstream.name, repository, tag);
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
    const entry: ResolvedTag = { digest: m.digest, mediaType: m.mediaType, size: m.bytes.length, stale: false };
    this.meta.putTag(upstream.name, repository, tag, { digest: entry.digest, mediaType: entry.mediaType, size: entry.size, checkedAt: this.now() });
    return entry;
  }

  /** Manifest bytes by digest, from cache or upstream. */
  get(route: Route, digest: Digest): Promise<Manifest> {
    const cached = this.meta.getManifest(route.upstream.name, route.repository, digest);
    if (cached) {
      this.metrics.cacheHits.inc({ kind: 'manifest', result: 'hit' });
      return Promise.resolve({ ...cached, parsed: parseManifest(cached.bytes, cached.mediaType) });
    }
    const key = `${route.upstream.name}\n${route.repository}\n${digest}`;
    let p = this.getFlights.get(key);
    if (!p) {
      this.metrics.cacheHits.inc({ kind: 'manifest', result: 'miss' });
      p = this.fetchAndStore(route, digest, digest).finally(() => this.getFlights.delete(key));
      this.getFlights.set(key, p);
    } else {
      this.metrics.singleflightWaiters.inc({ kind: 'manifest' });
    }
    return p;
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
      throw errors.upstream(`upstream "${upstream.name}" failed while sending manifest ${repository}@${ref}: ${e instanceof Error ? e.message : String(e)}`);
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
    return m;
  }
}

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
  return errors.upstream(`upstream "${upstream}" failed: ${e instanceof Error ? e.message : String(e)}`);
}
