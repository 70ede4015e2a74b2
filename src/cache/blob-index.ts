/**
 * The size-bounded LRU that every blob store keeps over what it holds, with read leases: an entry that a client is
 * reading is evicted from the index at once (no new reader finds it) but its bytes are only removed once the last
 * reader lets go. The filesystem store unlinks a file then; the S3 store deletes an object. Shared so that both
 * stores evict the same way and the rule "never a blob being read" is written once.
 */
import type { Digest } from '../routing/reference.js';
import { DigestLru } from './digest-lru.js';

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
  /** Packed (digest-lru.ts): a million entries must not be a million objects for every major GC to mark. */
  private readonly lru = new DigestLru();
  private readonly readers = new Map<Digest, number>();
  /** Evicted while being read: removed when the last reader releases. */
  private readonly doomed = new Set<Digest>();
  private bytes = 0;
  /** What the bound counts: every entry weighs at least 1, so that empty blobs cannot pile up unbounded. */
  private weight = 0;

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
  }

  get totalBytes(): number {
    return this.bytes;
  }

  get entries(): number {
    return this.lru.length;
  }

  /**
   * Adds a blob (just written, or found at start in oldest-first order so that the newest end up most recently
   * used). One larger than the whole bound is never counted, and its bytes are removed.
   */
  track(digest: Digest, size: number, lastAccess = this.now()): void {
    this.doomed.delete(digest);
    if (this.lru.has(digest)) return;
    if (Math.max(1, size) > this.maxSize) {
      // Never count an entry larger than the bound, and leave no untracked bytes behind.
      this.events.onEvict?.(digest, size);
      this.removeWhenUnused(digest);
      return;
    }
    // Oldest first until the new entry fits, as lru-cache did.
    while (this.weight + Math.max(1, size) > this.maxSize && this.lru.length > 0) this.evictOldest();
    this.lru.add(digest, size, lastAccess);
    this.counted(size);
  }

  /**
   * Adds blobs that a scan found while the store was already in use, NEWEST FIRST: each goes below every entry
   * tracked so far in recency (entries tracked meanwhile were just read or written, and the scan's own come in
   * descending age). Entries already tracked or being evicted are skipped. Nothing is evicted here, so that a batch
   * can be added in slices; evictDown() restores the bound once the last slice is in.
   */
  trackOlder(found: Iterable<IndexedBlob>): void {
    for (const f of found) {
      if (this.doomed.has(f.digest) || Math.max(1, f.size) > this.maxSize) continue;
      if (this.lru.add(f.digest, f.size, f.lastAccess, false)) this.counted(f.size);
    }
  }

  /** Evicts the least recently used until the bound holds (after trackOlder). */
  evictDown(): void {
    while (this.weight > this.maxSize && this.lru.length > 0) this.evictOldest();
  }

  has(digest: Digest): boolean {
    return this.lru.has(digest) && !this.doomed.has(digest);
  }

  /** Size without touching recency. */
  size(digest: Digest): number | undefined {
    return this.doomed.has(digest) ? undefined : this.lru.peek(digest);
  }

  /** Pins an entry for reading and makes it most recently used; returns its size and the unpin, or undefined. */
  acquire(digest: Digest): { size: number; release: () => void } | undefined {
    if (this.doomed.has(digest)) return undefined;
    const size = this.lru.touch(digest, this.now());
    if (size === undefined) return undefined;
    this.readers.set(digest, (this.readers.get(digest) ?? 0) + 1);
    let released = false;
    return {
      size,
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
    this.uncount(this.lru.delete(digest));
    this.removeWhenUnused(digest);
  }

  /** Forgets an entry whose bytes are already gone (deleted behind our back): nothing to remove. */
  forget(digest: Digest): void {
    this.doomed.delete(digest);
    this.uncount(this.lru.delete(digest));
  }

  /** Every entry, least recently used first. */
  list(): IndexedBlob[] {
    const out: IndexedBlob[] = [];
    for (const e of this.lru.entries()) out.push({ digest: e.digest, size: e.size, lastAccess: e.time });
    return out;
  }

  private evictOldest(): void {
    const e = this.lru.oldest();
    if (e === undefined) return;
    this.lru.delete(e.digest);
    this.uncount(e.size);
    this.events.onEvict?.(e.digest, e.size);
    this.removeWhenUnused(e.digest);
  }

  private counted(size: number): void {
    this.bytes += size;
    this.weight += Math.max(1, size);
    this.events.onSizeChange?.(this.bytes, this.lru.length);
  }

  private uncount(size: number | undefined): void {
    if (size === undefined) return;
    this.bytes -= size;
    this.weight -= Math.max(1, size);
    this.events.onSizeChange?.(this.bytes, this.lru.length);
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
