/**
 * The size-bounded LRU that every blob store keeps over what it holds, with read leases: an entry that a client is
 * reading is evicted from the index at once (no new reader finds it) but its bytes are only removed once the last
 * reader lets go. The filesystem store unlinks a file then; the S3 store deletes an object. Shared so that both
 * stores evict the same way and the rule "never a blob being read" is written once.
 */
import { LRUCache } from 'lru-cache';
import type { Digest } from '../routing/reference.js';

export interface BlobIndexEvents {
  onEvict?: (digest: Digest, size: number) => void;
  onSizeChange?: (bytes: number, entries: number) => void;
}

export interface IndexedBlob {
  digest: Digest;
  size: number;
  /** When a reader last leased it (or when it was written or found), ms since the epoch. */
  lastAccess: number;
}

export class BlobIndex {
  private readonly lru: LRUCache<Digest, IndexedBlob>;
  private readonly readers = new Map<Digest, number>();
  /** Evicted while being read: removed when the last reader releases. */
  private readonly doomed = new Set<Digest>();
  private bytes = 0;

  readonly maxSize: number;
  /** Removes the bytes of an entry that left the index and has no reader (unlink, DeleteObject). */
  private readonly removeBytes: (digest: Digest) => void;
  private readonly events: BlobIndexEvents;
  private readonly now: () => number;

  constructor(o: { maxSize: number; removeBytes: (digest: Digest) => void; events?: BlobIndexEvents; now?: () => number }) {
    this.maxSize = o.maxSize;
    this.removeBytes = o.removeBytes;
    this.events = o.events ?? {};
    this.now = o.now ?? Date.now;
    const maxSize = o.maxSize;
    this.lru = new LRUCache<Digest, IndexedBlob>({
      maxSize,
      sizeCalculation: (e) => Math.max(1, e.size),
      dispose: (e, digest, reason) => {
        this.bytes -= e.size;
        if (reason === 'evict') {
          this.events.onEvict?.(digest, e.size);
          this.removeWhenUnused(digest);
        }
        this.events.onSizeChange?.(this.bytes, this.lru.size);
      },
    });
  }

  get totalBytes(): number {
    return this.bytes;
  }

  get entries(): number {
    return this.lru.size;
  }

  /**
   * Adds a blob (just written, or found at start in oldest-first order so that the newest end up most recently
   * used). One larger than the whole bound is never counted, and its bytes are removed.
   */
  track(digest: Digest, size: number, lastAccess = this.now()): void {
    this.doomed.delete(digest);
    if (this.lru.has(digest)) return;
    if (Math.max(1, size) > this.maxSize) {
      // lru-cache silently refuses an entry larger than maxSize: never count it, and leave no untracked bytes behind.
      this.events.onEvict?.(digest, size);
      this.removeWhenUnused(digest);
      return;
    }
    this.bytes += size;
    this.lru.set(digest, { digest, size, lastAccess });
    this.events.onSizeChange?.(this.bytes, this.lru.size);
  }

  /**
   * Adds blobs that a scan found while the store was already in use (oldest first): they go below every entry tracked
   * meanwhile in recency, since those were just read or written. Entries already tracked or being evicted are skipped.
   */
  trackOlder(found: Iterable<IndexedBlob>): void {
    const newer = this.list();
    const known = new Set(newer.map((e) => e.digest));
    // 'delete' disposal only adjusts the byte count: nothing is removed here.
    this.lru.clear();
    for (const f of found) if (!known.has(f.digest) && !this.doomed.has(f.digest)) this.track(f.digest, f.size, f.lastAccess);
    for (const e of newer) this.track(e.digest, e.size, e.lastAccess);
  }

  has(digest: Digest): boolean {
    return this.lru.has(digest) && !this.doomed.has(digest);
  }

  /** Size without touching recency. */
  size(digest: Digest): number | undefined {
    return this.doomed.has(digest) ? undefined : this.lru.peek(digest)?.size;
  }

  /** Pins an entry for reading and makes it most recently used; returns its size and the unpin, or undefined. */
  acquire(digest: Digest): { size: number; release: () => void } | undefined {
    const e = this.lru.get(digest);
    if (e === undefined || this.doomed.has(digest)) return undefined;
    e.lastAccess = this.now();
    this.readers.set(digest, (this.readers.get(digest) ?? 0) + 1);
    let released = false;
    return {
      size: e.size,
      release: () => {
        if (released) return;
        released = true;
        const n = (this.readers.get(digest) ?? 1) - 1;
        if (n > 0) this.readers.set(digest, n);
        else {
          this.readers.delete(digest);
          if (this.doomed.has(digest)) this.removeNow(digest);
        }
      },
    };
  }

  /** Readers currently holding a lease on digest. */
  readersOf(digest: Digest): number {
    return this.readers.get(digest) ?? 0;
  }

  /** Drops an entry; its bytes go once no reader holds them. */
  remove(digest: Digest): void {
    this.lru.delete(digest);
    this.removeWhenUnused(digest);
  }

  /** Forgets an entry whose bytes are already gone (deleted behind our back): nothing to remove. */
  forget(digest: Digest): void {
    this.doomed.delete(digest);
    const e = this.lru.peek(digest);
    if (e === undefined) return;
    // dispose() would count an eviction and remove bytes only for reason 'evict'; 'delete' just adjusts the total.
    this.lru.delete(digest);
  }

  /** Every entry, least recently used first. */
  list(): IndexedBlob[] {
    const out: IndexedBlob[] = [];
    for (const e of this.lru.rvalues()) if (e) out.push({ ...e });
    return out;
  }

  private removeWhenUnused(digest: Digest): void {
    if ((this.readers.get(digest) ?? 0) > 0) this.doomed.add(digest);
    else this.removeNow(digest);
  }

  private removeNow(digest: Digest): void {
    this.doomed.delete(digest);
    this.removeBytes(digest);
  }
}
