/**
 * A recency list of digests with a size and a time each, packed into typed arrays: no JavaScript object per entry.
 *
 * Why: the blob index holds one entry per blob in the store, a million and more (issue 16). As an lru-cache of
 * objects keyed by digest strings it cost ~200 heap bytes and three or four heap objects per entry, and every major
 * GC marked them all: a full mark-compact took over a second with 10^6 entries, which showed up as the first-byte
 * p99 of warm GETs while the cache evicted. Here an entry is a slot in a few typed arrays (the digest's 32 bytes, its
 * size, its time, two list links) plus a slot in an open-addressing table: ~70 bytes, none of them for the GC to mark.
 *
 * The table's hash is keyed with a per-process random seed, so that a client choosing digests (they can grind
 * prefixes) cannot line up a long probe chain. sha512 digests keep their full string in a side map (rare).
 */
import { randomBytes } from 'node:crypto';
import { isDigest, type Digest } from '../routing/reference.js';

export interface DigestEntry {
  digest: Digest;
  size: number;
  /** ms since the epoch. */
  time: number;
}

const NONE = -1;
const SHA256 = 1;
const SHA512 = 2;
const KEY = 32;

export class DigestLru {
  private cap = 0;
  private alg = new Uint8Array(0);
  private keys = Buffer.alloc(0);
  private sizes = new Float64Array(0);
  private times = new Float64Array(0);
  private prev = new Int32Array(0);
  private next = new Int32Array(0);
  /** Open addressing, linear probing, power-of-two length ≥ 2 × cap; a slot number or NONE. */
  private table = new Int32Array(0);
  private readonly long = new Map<number, string>();
  /** Unused slots, chained through next[]. */
  private free = NONE;
  private oldestSlot = NONE;
  private newestSlot = NONE;
  private count = 0;
  private readonly scratch = Buffer.alloc(KEY);
  private readonly seed: Uint32Array;

  constructor(initialCapacity = 1024) {
    const s = randomBytes(16);
    this.seed = new Uint32Array([s.readUInt32LE(0), s.readUInt32LE(4), s.readUInt32LE(8), s.readUInt32LE(12) | 1]);
    this.grow(Math.max(16, initialCapacity));
  }

  get length(): number {
    return this.count;
  }

  has(d: Digest): boolean {
    return this.find(d) !== NONE;
  }

  /** Size, without touching recency. */
  peek(d: Digest): number | undefined {
    const slot = this.find(d);
    return slot === NONE ? undefined : this.sizes[slot];
  }

  /** Makes the entry the newest and sets its time; returns its size, or undefined when absent. */
  touch(d: Digest, time: number): number | undefined {
    const slot = this.find(d);
    if (slot === NONE) return undefined;
    this.times[slot] = time;
    if (slot !== this.newestSlot) {
      this.unlink(slot);
      this.linkNewest(slot);
    }
    return this.sizes[slot];
  }

  /** Adds an absent entry as the newest (true) or as the oldest (false). Returns false when it was present. */
  add(d: Digest, size: number, time: number, newest = true): boolean {
    if (this.find(d) !== NONE) return false;
    if (this.free === NONE) this.grow(this.cap * 2);
    const slot = this.free;
    this.free = this.next[slot]!;
    this.encode(d); // grow() rebuilt the table through scratch: put this key back in it
    this.scratch.copy(this.keys, slot * KEY);
    this.alg[slot] = d.startsWith('sha256:') ? SHA256 : SHA512;
    if (this.alg[slot] === SHA512) this.long.set(slot, d);
    this.sizes[slot] = size;
    this.times[slot] = time;
    if (newest) this.linkNewest(slot);
    else this.linkOldest(slot);
    this.place(slot);
    this.count++;
    return true;
  }

  /** Removes an entry; returns its size, or undefined when absent. */
  delete(d: Digest): number | undefined {
    const slot = this.find(d);
    if (slot === NONE) return undefined;
    const size = this.sizes[slot];
    this.drop(slot);
    return size;
  }

  /** The least recently used entry, or undefined when empty. */
  oldest(): DigestEntry | undefined {
    return this.oldestSlot === NONE ? undefined : this.entryAt(this.oldestSlot);
  }

  clear(): void {
    this.long.clear();
    this.oldestSlot = this.newestSlot = this.free = NONE;
    this.count = this.cap = 0;
    this.alg = new Uint8Array(0);
    this.keys = Buffer.alloc(0);
    this.grow(16);
  }

  /** Oldest first. Changing the list while iterating is not supported. */
  *entries(): Generator<DigestEntry> {
    for (let s = this.oldestSlot; s !== NONE; s = this.next[s]!) yield this.entryAt(s);
  }

  private entryAt(slot: number): DigestEntry {
    const hex = this.keys.toString('hex', slot * KEY, slot * KEY + KEY);
    const digest = this.alg[slot] === SHA256 ? (`sha256:${hex}` as Digest) : (this.long.get(slot) as Digest);
    return { digest, size: this.sizes[slot]!, time: this.times[slot]! };
  }

  /** Writes the digest's first 32 bytes into scratch; refuses anything that is not a well-formed digest. */
  private encode(d: Digest): void {
    if (!isDigest(d)) throw new TypeError(`not a digest: ${String(d).slice(0, 80)}`);
    // Both algorithms' prefixes ('sha256:', 'sha512:') are 7 characters; sha512 keeps only its first 32 bytes here.
    this.scratch.write(d.slice(7, 7 + 2 * KEY), 0, KEY, 'hex');
  }

  /** All 32 bytes, each word mixed with the seed (digests of stored blobs are uniform, but keys need not be). */
  private hash(): number {
    const s = this.scratch;
    let h = this.seed[0]!;
    for (let o = 0; o < KEY; o += 4) {
      h = Math.imul(h ^ s.readUInt32LE(o), 0x9e3779b1) ^ this.seed[(o >>> 2) & 3]!;
      h ^= h >>> 15;
    }
    h = Math.imul(h, this.seed[3]!);
    return (h ^ (h >>> 13)) >>> 0;
  }

  private find(d: Digest): number {
    this.encode(d);
    const alg = d.startsWith('sha256:') ? SHA256 : SHA512;
    const mask = this.table.length - 1;
    for (let i = this.hash() & mask; ; i = (i + 1) & mask) {
      const slot = this.table[i]!;
      if (slot === NONE) return NONE;
      if (this.alg[slot] === alg && this.scratch.compare(this.keys, slot * KEY, slot * KEY + KEY) === 0 && (alg === SHA256 || this.long.get(slot) === d))
        return slot;
    }
  }

  /** Puts a slot (its key in keys[]) into the table. */
  private place(slot: number): void {
    const mask = this.table.length - 1;
    let i = this.hashOfSlot(slot) & mask;
    while (this.table[i] !== NONE) i = (i + 1) & mask;
    this.table[i] = slot;
  }

  private hashOfSlot(slot: number): number {
    this.keys.copy(this.scratch, 0, slot * KEY, slot * KEY + KEY);
    return this.hash();
  }

  /** Removes a slot from the list and the table (backward-shift deletion: no tombstones) and frees it. */
  private drop(slot: number): void {
    this.unlink(slot);
    const mask = this.table.length - 1;
    let i = this.hashOfSlot(slot) & mask;
    while (this.table[i] !== slot) i = (i + 1) & mask;
    // Shift later members of the probe run back into the hole when their home position allows it.
    for (let j = (i + 1) & mask; this.table[j] !== NONE; j = (j + 1) & mask) {
      const home = this.hashOfSlot(this.table[j]!) & mask;
      // j's entry may move to the hole i when i lies cyclically in [home, j).
      if (((i - home) & mask) < ((j - home) & mask)) {
        this.table[i] = this.table[j]!;
        i = j;
      }
    }
    this.table[i] = NONE;
    this.alg[slot] = 0;
    this.long.delete(slot);
    this.next[slot] = this.free;
    this.free = slot;
    this.count--;
  }

  private unlink(slot: number): void {
    const p = this.prev[slot]!;
    const n = this.next[slot]!;
    if (p === NONE) this.oldestSlot = n;
    else this.next[p] = n;
    if (n === NONE) this.newestSlot = p;
    else this.prev[n] = p;
  }

  private linkNewest(slot: number): void {
    this.prev[slot] = this.newestSlot;
    this.next[slot] = NONE;
    if (this.newestSlot === NONE) this.oldestSlot = slot;
    else this.next[this.newestSlot] = slot;
    this.newestSlot = slot;
  }

  private linkOldest(slot: number): void {
    this.next[slot] = this.oldestSlot;
    this.prev[slot] = NONE;
    if (this.oldestSlot === NONE) this.newestSlot = slot;
    else this.prev[this.oldestSlot] = slot;
    this.oldestSlot = slot;
  }

  /** Doubles the arrays (or starts them); slots keep their numbers, the table is rebuilt. */
  private grow(cap: number): void {
    const old = this.cap;
    const copy = <T extends Float64Array | Int32Array | Uint8Array>(a: T, make: (n: number) => T, n: number): T => {
      const b = make(n);
      b.set(a.subarray(0, Math.min(a.length, n)));
      return b;
    };
    this.alg = copy(this.alg, (n) => new Uint8Array(n), cap);
    const keys = Buffer.alloc(cap * KEY);
    this.keys.copy(keys, 0, 0, Math.min(this.keys.length, cap * KEY));
    this.keys = keys;
    this.sizes = copy(this.sizes, (n) => new Float64Array(n), cap);
    this.times = copy(this.times, (n) => new Float64Array(n), cap);
    this.prev = copy(this.prev, (n) => new Int32Array(n), cap);
    this.next = copy(this.next, (n) => new Int32Array(n), cap);
    this.cap = cap;
    // Called only with no free slot left: the new slots become the free chain, lowest first.
    for (let slot = cap - 1; slot >= old; slot--) {
      this.next[slot] = this.free;
      this.free = slot;
    }
    let t = 16;
    while (t < cap * 2) t *= 2;
    this.table = new Int32Array(t).fill(NONE);
    for (let s = this.oldestSlot; s !== NONE; s = this.next[s]!) this.place(s);
  }
}
