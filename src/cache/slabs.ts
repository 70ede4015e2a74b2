/**
 * Reference-counted 1 MiB buffers for downloads, recycled through a small pool.
 *
 * Why: a cold pull moves every byte through these slabs. Allocated fresh, each is new external memory for V8 (a
 * major GC every few tens of MiB, whose marking threads took a third of the proxy's CPU on a cold pull) and, on a VM
 * that hands freed memory back to the host, fresh pages that fault in on first touch. Recycled, a steady transfer
 * allocates nothing. A slab goes back to the pool only when its last holder lets go: the download's window, each
 * socket write in flight (released in the write callback) and each temp-file write. A holder that never lets go
 * (a write whose callback never comes) only costs the pool that slab, which the GC then reclaims as usual.
 */
export const SLAB_SIZE = 1024 * 1024;

export class Slab {
  private refs = 1;
  /** Set when a holder saw an error: the slab is not trusted for reuse, whatever the count says. */
  private tainted = false;

  constructor(
    readonly buf: Buffer,
    private readonly pool: SlabPool,
  ) {}

  retain(): this {
    if (this.refs <= 0) throw new Error('slab retained after its last release');
    this.refs++;
    return this;
  }

  /** Lets go of one reference; `error` (from a failed write) keeps the slab out of the pool. */
  release(error?: unknown): void {
    if (this.refs <= 0) throw new Error('slab released more often than retained');
    if (error) this.tainted = true;
    if (--this.refs === 0) this.pool.give(this.buf, this.tainted);
  }
}

/** How a pool gives back what a burst left idle. */
export interface SlabPoolOptions {
  /** Idle slabs kept once the pool has been quiet for `trimAfterMs`. */
  keepIdle?: number;
  /** A pool that took no slab for this long lets its idle slabs beyond `keepIdle` go. */
  trimAfterMs?: number;
  now?: () => number;
  /** Runs `fn` in about `ms` (default: an unref'd setTimeout, so an idle pool keeps no process alive). */
  schedule?: (fn: () => void, ms: number) => void;
}

export class SlabPool {
  private readonly idle: Buffer[] = [];
  private taken = 0;
  private fresh = 0;
  private lastTake: number;
  private trimArmed = false;
  /** Idle slabs kept once the pool has been quiet. */
  readonly keepIdle: number;
  private readonly trimAfterMs: number;
  private readonly now: () => number;
  private readonly schedule: (fn: () => void, ms: number) => void;

  /**
   * @param maxIdle slabs kept for reuse while transfers run; more are left to the GC (idle slabs count in RSS).
   * @param slabSize the size of the slabs this pool recycles.
   *
   * Why trim: a burst (a cold download writes up to 16 MiB behind its readers) fills the pool to `maxIdle`, and a
   * full pool is memory that nothing uses until the next burst. Measured with the bench's hostile phase, the 32 idle
   * slabs that a 256 MiB cold download left behind were the largest single item of the process's memory before the
   * hostile clients arrived (and the stalled readers' small slabs then came on top). After `trimAfterMs` without a
   * take, the pool keeps `keepIdle`: a steady transfer takes a slab per MiB and is never trimmed.
   */
  constructor(
    readonly maxIdle: number,
    readonly slabSize = SLAB_SIZE,
    opts: SlabPoolOptions = {},
  ) {
    this.keepIdle = Math.min(maxIdle, opts.keepIdle ?? maxIdle);
    this.trimAfterMs = opts.trimAfterMs ?? 5_000;
    this.now = opts.now ?? Date.now;
    this.schedule = opts.schedule ?? ((fn, ms) => setTimeout(fn, ms).unref());
    this.lastTake = this.now();
  }

  /** A slab with one reference, for `size` bytes (≤ slabSize; only full-size slabs are recycled). */
  take(size = this.slabSize): Slab {
    let buf = size === this.slabSize ? this.idle.pop() : undefined;
    if (!buf) {
      buf = Buffer.allocUnsafeSlow(size);
      this.fresh++;
    }
    this.taken++;
    this.lastTake = this.now();
    return new Slab(buf, this);
  }

  /** @internal Its last holder let go; a tainted buffer is left to the GC. */
  give(buf: Buffer, tainted = false): void {
    this.taken--;
    if (!tainted && buf.length === this.slabSize && this.idle.length < this.maxIdle) this.idle.push(buf);
    if (this.idle.length > this.keepIdle) this.armTrim();
  }

  /**
   * Lets idle slabs beyond `keepIdle` go if no slab was taken for `trimAfterMs`; returns how many went. Runs by
   * itself (a timer armed while the pool holds more than `keepIdle`); callable directly.
   */
  trim(): number {
    if (this.now() - this.lastTake < this.trimAfterMs) return 0;
    const surplus = Math.max(0, this.idle.length - this.keepIdle);
    // The oldest first: the ones at the bottom of the stack were used least recently.
    this.idle.splice(0, surplus);
    return surplus;
  }

  private armTrim(): void {
    if (this.trimArmed) return;
    this.trimArmed = true;
    const fire = (): void => {
      this.trimArmed = false;
      this.trim();
      if (this.idle.length > this.keepIdle) {
        // Busy since: look again once the quiet period after the last take is over.
        this.trimArmed = true;
        this.schedule(fire, Math.max(1, this.lastTake + this.trimAfterMs - this.now()));
      }
    };
    this.schedule(fire, Math.max(1, this.lastTake + this.trimAfterMs - this.now()));
  }

  /** Slabs taken and not yet let go by every holder (what responses, downloads and writes hold right now). */
  get inUse(): number {
    return this.taken;
  }

  get idleCount(): number {
    return this.idle.length;
  }

  /**
   * Buffers allocated rather than taken from the idle ones, since the pool was made. Each is new memory (page faults,
   * and external memory that V8 answers with major GCs): a steady transfer keeps this flat (cache/download.ts).
   */
  get allocations(): number {
    return this.fresh;
  }
}

/** The process-wide pool: 32 idle slabs at most while transfers run, 4 once it has been quiet for 5 s. */
export const slabPool = new SlabPool(32, SLAB_SIZE, { keepIdle: 4 });

/**
 * Smaller slabs for the start of a cached blob's response (cache/sendfile.ts), before its client has shown that it
 * reads: a client that asks for a blob and never reads keeps the slab of its pending write (and the one read ahead)
 * until the write-stall timeout closes it, so 100 such clients held 200 MiB in 1 MiB slabs.
 */
export const SMALL_SLAB_SIZE = 256 * 1024;
export const smallSlabPool = new SlabPool(32, SMALL_SLAB_SIZE, { keepIdle: 4 });
