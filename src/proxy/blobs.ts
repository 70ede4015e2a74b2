/**
 * Blobs: from the content cache when present, else streamed through from the upstream by a single shared download
 * per digest (cache/download.ts). Ranges are served from either source.
 */
import { createReadStream } from 'node:fs';
import type { ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import { DigestMismatchError, type BlobStore } from '../cache/blobstore.js';
import type { DownloadSource } from '../cache/download.js';
import type { DownloadManager } from '../cache/download-manager.js';
import type { Metrics } from '../metrics/metrics.js';
import type { Digest } from '../routing/reference.js';
import type { Route } from '../routing/route.js';
import { errors } from '../server/errors.js';
import { headerString, type UpstreamClient } from '../upstream/client.js';
import { statusError, toRegistryError } from './manifests.js';
import { sendFileRange } from '../cache/sendfile.js';
import { byteSourceOf } from '../util/byte-source.js';

export interface OpenBlob {
  size: number;
  source: 'cache' | 'upstream';
  /** Bytes [start, end], inclusive. Call at most once. */
  stream(start: number, end: number): Readable;
  /** Frees the lease when stream() is never called (HEAD, or a 416). */
  release(): void;
  /**
   * Writes bytes [start, end] to the response and ends it, with pooled slabs and no copies (cache/sendfile.ts and
   * cache/download.ts say why); use instead of stream(). Call at most once; it releases the lease.
   */
  writeTo(res: ServerResponse, start: number, end: number, onBytes: (n: number) => void): Promise<void>;
}

export class BlobService {
  constructor(
    private readonly store: BlobStore,
    private readonly downloads: DownloadManager,
    private readonly clientFor: (upstream: string) => UpstreamClient,
    private readonly metrics: Metrics,
  ) {}

  /** Size of a blob, without downloading it. */
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
    res.body.resume();
    if (res.status === 404) throw errors.blobUnknown(`blob unknown: ${digest} not found in ${route.registry}/${route.repository}`);
    if (res.status !== 200) throw statusError(res, route.upstream.name, `blob ${digest}`);
    const len = Number(headerString(res.headers['content-length']));
    if (!Number.isSafeInteger(len) || len < 0) throw errors.upstream(`upstream "${route.upstream.name}" sent no Content-Length for blob ${digest}`);
    return len;
  }

  /** Opens a blob for reading, joining or starting the upstream download on a miss. */
  async open(route: Route, digest: Digest): Promise<OpenBlob> {
    const lease = this.store.lease(digest);
    if (lease) {
      this.metrics.cacheHits.inc({ kind: 'blob', result: 'hit' });
      let used = false;
      return {
        size: lease.size,
        source: 'cache',
        stream: (start, end) => {
          used = true;
          const s = createReadStream(lease.path, { start, end, highWaterMark: 256 * 1024 });
          s.once('close', () => lease.release());
          return s;
        },
        release: () => {
          if (!used) lease.release();
        },
        writeTo: async (res, start, end, onBytes) => {
          used = true;
          try {
            await sendFileRange(res, lease.path, start, end, onBytes);
          } finally {
            lease.release();
          }
        },
      };
    }
    const { download, joined } = this.downloads.getOrStart(digest, () => this.fetch(route, digest));
    this.metrics.cacheHits.inc({ kind: 'blob', result: joined ? 'join' : 'miss' });
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
      stream: (s, e) => download.reader(s, e),
      release: () => {},
      // A download that fails before this response has sent anything becomes a clean OCI error (a digest mismatch
      // is the upstream's fault: 502); once bytes are out, the caller can only break the transfer.
      writeTo: (res, s, e, onBytes) =>
        download.writeTo(res, s, e, onBytes).catch((err: unknown) => {
          throw toRegistryError(err, route.upstream.name);
        }),
    };
  }

  private async fetch(route: Route, digest: Digest): Promise<DownloadSource> {
    const upstream = route.upstream.name;
    const controller = new AbortController();
    const res = await this.clientFor(upstream).send({
      method: 'GET',
      path: `/v2/${route.repository}/blobs/${digest}`,
      kind: 'blob',
      repository: route.repository,
      signal: controller.signal,
      bulk: true,
    });
    if (res.status === 404) {
      res.body.resume();
      throw errors.blobUnknown(`blob unknown: ${digest} not found in ${route.registry}/${route.repository}`);
    }
    if (res.status !== 200) {
      res.body.resume();
      throw statusError(res, upstream, `blob ${digest}`);
    }
    const len = Number(headerString(res.headers['content-length']));
    const counter = this.metrics.upstreamBytes.labels({ upstream });
    const body = res.body;
    const source = byteSourceOf(body);
    return {
      size: Number.isSafeInteger(len) && len >= 0 ? len : undefined,
      body: {
        pipeTo: (onChunk) =>
          source.pipeTo((chunk) => {
            counter.inc(chunk.length);
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
