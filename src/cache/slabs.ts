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
    if (--this.refs === 0 && !this.tainted) this.pool.give(this.buf);
  }
}

export class SlabPool {
  private readonly idle: Buffer[] = [];

  /** @param maxIdle slabs kept for reuse; more are left to the GC (idle slabs count in RSS). */
  constructor(private readonly maxIdle: number) {}

  /** A slab with one reference, for `size` bytes (≤ SLAB_SIZE; only full-size slabs are recycled). */
  take(size = SLAB_SIZE): Slab {
    const buf = size === SLAB_SIZE ? (this.idle.pop() ?? Buffer.allocUnsafeSlow(SLAB_SIZE)) : Buffer.allocUnsafeSlow(size);
    return new Slab(buf, this);
  }

  /** @internal */
  give(buf: Buffer): void {
    if (buf.length === SLAB_SIZE && this.idle.length < this.maxIdle) this.idle.push(buf);
  }

  get idleCount(): number {
    return this.idle.length;
  }
}

/** The process-wide pool: 32 idle slabs at most. */
export const slabPool = new SlabPool(32);
