/**
 * Single flight: concurrent callers asking for the same key share one running call instead of each starting their
 * own (one token fetch, one manifest download, one policy decision per key at a time).
 *
 * Nothing is cached: the entry is removed as soon as the call settles, before any caller sees the result, so the
 * next caller after that starts a new call. A failure is shared by every caller that joined the flight, and the
 * next caller tries again.
 */
export class SingleFlight<K, V> {
  private readonly flights = new Map<K, Promise<V>>();

  /** The running call for `key`, or `fn()` started as the new one. `fn` is called synchronously when it starts. */
  run(key: K, fn: () => Promise<V>): Promise<V> {
    const running = this.flights.get(key);
    if (running) return running;
    let started: Promise<V>;
    try {
      started = fn();
    } catch (e) {
      started = Promise.reject(e instanceof Error ? e : new Error(String(e)));
    }
    const p = started.finally(() => {
      // Only this flight's own entry: a later flight under the same key is not ours to remove.
      if (this.flights.get(key) === p) this.flights.delete(key);
    });
    this.flights.set(key, p);
    return p;
  }

  /** Is a call for `key` running now (a caller would join it)? */
  has(key: K): boolean {
    return this.flights.has(key);
  }

  /** Calls running now. */
  get size(): number {
    return this.flights.size;
  }
}
