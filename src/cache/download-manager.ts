/** The single-flight table: at most one running Download per digest (download.ts), and its graceful drain. */
import type { BlobStore } from './blobstore.js';
import { Download, type DownloadSource } from './download.js';
import type { Digest } from '../routing/reference.js';

export class DownloadManager {
  private readonly inflight = new Map<Digest, Download>();

  constructor(private readonly store: BlobStore) {}

  get active(): number {
    return this.inflight.size;
  }

  /** The download in progress for this digest, if any. */
  get(digest: Digest): Download | undefined {
    return this.inflight.get(digest);
  }

  /** Joins the running download for digest, or starts one with fetch. */
  getOrStart(digest: Digest, fetch: () => Promise<DownloadSource>): { download: Download; joined: boolean } {
    const existing = this.inflight.get(digest);
    if (existing) return { download: existing, joined: true };
    const d = new Download(digest, this.store, fetch);
    this.inflight.set(digest, d);
    void d.run().finally(() => {
      if (this.inflight.get(digest) === d) this.inflight.delete(digest);
    });
    return { download: d, joined: false };
  }

  /** For graceful shutdown: wait for running downloads, then cancel what is left. */
  async drain(graceMs: number): Promise<void> {
    const all = [...this.inflight.values()];
    if (all.length === 0) return;
    const timer = new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), graceMs).unref());
    const outcome = await Promise.race([Promise.allSettled(all.map((d) => d.finished)).then(() => 'done' as const), timer]);
    if (outcome === 'timeout') {
      for (const d of this.inflight.values()) d.cancel(new Error('shutting down'));
      await Promise.allSettled([...this.inflight.values()].map((d) => d.finished));
    }
  }
}
