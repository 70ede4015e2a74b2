/**
 * Blobs: from the content cache when present, else streamed through from the upstream by a single shared download
 * per digest (cache/download.ts). Ranges are served from either source.
 */
import type { ServerResponse } from 'node:http';
import { DigestMismatchError, type BlobLease, type BlobStore } from '../cache/blobstore.js';
import type { OwnerSource } from '../cluster/owner-source.js';
import type { DownloadSource } from '../cache/download.js';
import type { DownloadManager } from '../cache/download-manager.js';
import type { Metrics } from '../metrics/metrics.js';
import type { Digest } from '../routing/reference.js';
import type { Route } from '../routing/route.js';
import { errors } from '../oci/errors.js';
import { headerString, type UpstreamClient } from '../upstream/client.js';
import { centralRefusal } from './central-refusal.js';
import { statusError, toRegistryError } from './manifests.js';
import { byteSourceOf } from '../util/byte-source.js';

/** What the handlers need of blobs (the implementation, ProxyBlobService, follows). */
export interface BlobService {
  /** Size of a blob, without downloading it. */
  size(route: Route, digest: Digest): Promise<number>;
  /**
   * Opens a blob for reading: from the cache, or joining or starting the one download of its digest (from the
   * upstream, or in a cluster from the blob's owner). `local`: never ask another replica (the internal endpoint
   * that serves the other replicas uses it, so requests between replicas never chain).
   */
  open(route: Route, digest: Digest, o?: { local?: boolean }): Promise<OpenBlob>;
}

export interface OpenBlob {
  size: number;
  source: 'cache' | 'upstream';
  /** Frees the lease when writeTo() is never called (HEAD, or a 416). */
  release(): void;
  /**
   * Writes bytes [start, end] (inclusive) to the response and ends it, with pooled slabs and no copies
   * (cache/sendfile.ts and cache/download.ts say why). Call at most once; it releases the lease.
   */
  writeTo(res: ServerResponse, start: number, end: number, onBytes: (n: number) => void): Promise<void>;
  /**
   * With `storage.redirect`, a cached blob's short-lived URL in the store (S3 presigned) for a redirect instead of
   * the bytes; undefined when there is none (not cached yet, or a store without URLs). Releases the lease when it
   * returns a URL: the client fetches from the store, not through us.
   */
  redirectUrl(): Promise<string | undefined>;
}

export interface BlobServiceOptions {
  store: BlobStore;
  downloads: DownloadManager;
  clientFor: (upstream: string) => UpstreamClient;
  metrics: Metrics;
  /** storage.redirect: answer warm GETs with the store's presigned URL. */
  redirect?: boolean;
  /** In a cluster: where cold blobs come from (the owner replica, or the upstream when this replica owns it). */
  cluster?: OwnerSource;
}

export class ProxyBlobService implements BlobService {
  private readonly store: BlobStore;
  private readonly downloads: DownloadManager;
  private readonly clientFor: (upstream: string) => UpstreamClient;
  private readonly metrics: Metrics;
  private readonly redirect: boolean;
  private readonly cluster: OwnerSource | undefined;

  constructor(o: BlobServiceOptions) {
    this.cluster = o.cluster;
    this.store = o.store;
    this.downloads = o.downloads;
    this.clientFor = o.clientFor;
    this.metrics = o.metrics;
    this.redirect = o.redirect ?? false;
  }

  async size(route: Route, digest: Digest): Promise<number> {
    const cached = this.store.size(digest);
    if (cached !== undefined) return cached;
    const inflight = this.downloads.get(digest);
    if (inflight) {
      await inflight.ready.catch(() => {});
      if (inflight.size !== undefined) return inflight.size;
    }
    let res;
    try {
      res = await this.clientFor(route.upstream.name).send({
        method: 'HEAD',
        path: `/v2/${route.repository}/blobs/${digest}`,
        kind: 'blob',
        repository: route.repository,
      });
    } catch (e) {
      throw toRegistryError(e, route.upstream.name);
    }
    const refusal = await centralRefusal(res, route.upstream, `${route.registry}/${route.repository}@${digest}`);
    if (refusal) throw refusal;
    res.body.resume();
    if (res.status === 404) throw errors.blobUnknown(`blob unknown: ${digest} not found in ${route.registry}/${route.repository}`);
    if (res.status !== 200) throw statusError(res, route.upstream.name, `blob ${digest}`);
    const len = Number(headerString(res.headers['content-length']));
    if (!Number.isSafeInteger(len) || len < 0) throw errors.upstream(`upstream "${route.upstream.name}" sent no Content-Length for blob ${digest}`);
    return len;
  }

  /**
   * The cached blob, if any. In a cluster, a miss asks the shared store once more before a download starts: another
   * replica may have written the object since this one last listed the store.
   */
  private async leaseOf(digest: Digest): Promise<BlobLease | undefined> {
    const lease = this.store.lease(digest);
    if (lease || !this.cluster || !this.store.refresh || this.downloads.get(digest)) return lease;
    await this.store.refresh(digest);
    return this.store.lease(digest);
  }

  async open(route: Route, digest: Digest, o: { local?: boolean } = {}): Promise<OpenBlob> {
    const lease = await this.leaseOf(digest);
    if (lease) {
      this.metrics.cacheLookups.inc({ kind: 'blob', result: 'hit' });
      let used = false;
      return {
        size: lease.size,
        source: 'cache',
        release: () => {
          if (!used) lease.release();
        },
        writeTo: async (res, start, end, onBytes) => {
          used = true;
          try {
            await lease.writeTo(res, start, end, onBytes);
          } finally {
            lease.release();
          }
        },
        redirectUrl: async () => {
          if (!this.redirect || used) return undefined;
          const url = await lease.redirectUrl();
          if (url !== undefined) {
            used = true;
            lease.release();
          }
          return url;
        },
      };
    }
    const cluster = o.local ? undefined : this.cluster;
    const { download, joined } = this.downloads.getOrStart(digest, () =>
      cluster ? cluster.source(route.upstream.name, route.repository, digest, (offset) => this.fetch(route, digest, offset)) : this.fetch(route, digest),
    );
    this.metrics.cacheLookups.inc({ kind: 'blob', result: joined ? 'join' : 'miss' });
    if (joined) this.metrics.singleflightWaiters.inc({ kind: 'blob' });
    else {
      // Counted once per download (by the request that started it), like manifest mismatches in manifests.ts.
      void download.finished.then(() => {
        if (download.error instanceof DigestMismatchError) this.metrics.digestMismatches.inc({ upstream: route.upstream.name, kind: 'blob' });
      });
    }
    await download.ready.catch((e: unknown) => {
      throw toRegistryError(e, route.upstream.name);
    });
    // A download whose upstream sent no length is only servable once complete.
    if (download.size === undefined) {
      await download.finished;
      if (download.state !== 'done') throw toRegistryError(download.error, route.upstream.name);
    }
    return {
      size: download.size as number,
      source: 'upstream',
      release: () => {},
      redirectUrl: () => Promise.resolve(undefined),
      // A download that fails before this response has sent anything becomes a clean OCI error (a digest mismatch
      // is the upstream's fault: 502); once bytes are out, the caller can only break the transfer.
      writeTo: (res, s, e, onBytes) =>
        download.writeTo(res, s, e, onBytes).catch((err: unknown) => {
          throw toRegistryError(err, route.upstream.name);
        }),
    };
  }

  /**
   * The blob from the upstream, from byte `offset` on (a transfer from a cluster owner that broke mid-way resumes
   * here): a Range request, whose 206 must start at offset; an upstream that ignores the Range answers 200 with the
   * whole blob, and the first offset bytes are skipped. The size is always the whole blob's.
   */
  private async fetch(route: Route, digest: Digest, offset = 0): Promise<DownloadSource> {
    const upstream = route.upstream.name;
    const controller = new AbortController();
    const res = await this.clientFor(upstream).send({
      method: 'GET',
      path: `/v2/${route.repository}/blobs/${digest}`,
      kind: 'blob',
      repository: route.repository,
      signal: controller.signal,
      bulk: true,
      ...(offset > 0 ? { headers: { range: `bytes=${offset}-` } } : {}),
    });
    if (res.status === 404) {
      res.body.resume();
      throw errors.blobUnknown(`blob unknown: ${digest} not found in ${route.registry}/${route.repository}`);
    }
    const partial = offset > 0 && res.status === 206;
    if (res.status !== 200 && !partial) {
      const refusal = await centralRefusal(res, route.upstream, `${route.registry}/${route.repository}@${digest}`);
      if (refusal) throw refusal;
      res.body.resume();
      throw statusError(res, upstream, `blob ${digest}`);
    }
    const len = partial ? rangeTotal(headerString(res.headers['content-range']), offset) : Number(headerString(res.headers['content-length']));
    if (partial && len === undefined) {
      res.body.destroy();
      throw errors.upstream(`upstream "${upstream}" answered a Range request for blob ${digest} with a Content-Range other than bytes ${offset}-…`);
    }
    const counter = this.metrics.upstreamBytes.labels({ upstream });
    const body = res.body;
    const source = byteSourceOf(body);
    let skip = partial ? 0 : offset;
    return {
      size: len !== undefined && Number.isSafeInteger(len) && len >= 0 ? len : undefined,
      body: {
        pipeTo: (onChunk) =>
          source.pipeTo((chunk) => {
            counter.inc(chunk.length);
            if (skip > 0) {
              const n = Math.min(skip, chunk.length);
              skip -= n;
              if (n === chunk.length) return undefined;
              return onChunk(chunk.subarray(n));
            }
            return onChunk(chunk);
          }),
      },
      cancel: () => {
        controller.abort();
        body.destroy();
      },
    };
  }
}

/** The total size in a Content-Range of `bytes <offset>-<last>/<total>`; undefined when it starts elsewhere. */
function rangeTotal(contentRange: string | undefined, offset: number): number | undefined {
  const m = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(contentRange ?? '');
  if (!m || Number(m[1]) !== offset || Number(m[2]) !== Number(m[3]) - 1) return undefined;
  return Number(m[3]);
}
