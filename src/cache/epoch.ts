/**
 * The invalidation epoch (issue 13, DESIGN §11): an integer that only grows. A pushed or deleted scan report or a
 * policy swap on any replica bumps it; every replica folds the epoch it knows into the basis of its decisions
 * (gate/basis.ts), so after a bump no cached decision or admission of any replica holds, and the next request for an
 * image decides it again.
 *
 * Where it lives, and why each:
 * - Redis (`<prefix>v1:epoch`, pub/sub on `<prefix>v1:epoch:events`): the fast path. A bump is an atomic script
 *   (max(stored, bumper's own) + 1, then PUBLISH); replicas hear it at once, and read the key every `pollInterval`
 *   in case a message was lost.
 * - The durable copy (S3 objects under the bucket prefix when storage.blobs is s3: s3-epoch.ts): shared and
 *   surviving a Redis flush; a replica also confirms the epoch from it while Redis is down.
 * - A local floor (`<dataDir>/epoch`): the highest epoch this replica has seen. Its own SQLite admissions were made
 *   under epochs up to that one, so it never goes back below it (a flushed Redis that comes back at 0 would otherwise
 *   revive admissions an earlier bump invalidated); a lower Redis value is raised back.
 *
 * Staleness: a replica that could not read the epoch from Redis or the durable copy for longer than `maxStaleness`
 * no longer trusts its cached decisions: its token gets a suffix that changes every `maxStaleness`, so each image is
 * decided again at most once per `maxStaleness` until the epoch is confirmed again.
 */
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { EpochSource } from './shared.js';

/** Where a replica reads and writes the shared epoch (Redis; redis-shared.ts). */
export interface EpochChannel {
  /** The stored epoch; undefined when the key is missing (a fresh or flushed Redis). Rejects when unreachable. */
  read(): Promise<number | undefined>;
  /** Sets the stored epoch to at least `n` (never lowers it); returns what it is now. */
  raise(n: number): Promise<number>;
  /** max(stored, known) + 1, stored and published atomically; returns the new epoch. */
  bump(known: number): Promise<number>;
  /** Pub/sub: called with each epoch another replica published. */
  subscribe(f: (n: number) => void): void;
}

/** A shared, durable copy (S3); reads reject when the store is unreachable. */
export interface DurableEpoch {
  read(): Promise<number>;
  write(n: number): Promise<void>;
}

export interface EpochOptions {
  channel: EpochChannel;
  durable?: DurableEpoch | undefined;
  /** Directory of the local floor file. */
  dataDir: string;
  maxStaleness: number;
  pollInterval: number;
  now: () => number;
  onError?: (what: string, err: unknown) => void;
  /** Timers: tests drive `poll()` themselves and pass false. */
  timers?: boolean;
}

export class EpochTracker implements EpochSource {
  private value: number;
  /** When Redis or the durable copy last told us the epoch (ms); -Infinity before the first answer. */
  private confirmedAt = -Infinity;
  /** Why the last read of Redis failed; undefined when it answered. */
  private redisProblem: string | undefined = 'not read yet';
  /** Why the last read of the durable copy (the bucket) failed; undefined when it answered or there is none. */
  private storeProblem: string | undefined;
  /** Bumps not yet stored anywhere shared: retried on every poll. */
  private pendingBumps: string[] = [];
  private readonly listeners = new Set<() => void>();
  private timer: NodeJS.Timeout | undefined;
  private polling: Promise<void> | undefined;
  private flushing: Promise<void> | undefined;
  private readonly file: string;

  constructor(private readonly o: EpochOptions) {
    mkdirSync(o.dataDir, { recursive: true });
    this.file = join(o.dataDir, 'epoch');
    this.value = readFloor(this.file);
    o.channel.subscribe((n) => this.adopt(n));
    if (o.timers !== false) {
      this.timer = setInterval(() => void this.poll(), o.pollInterval);
      this.timer.unref();
    }
  }

  /** The epoch this replica knows (for tests and diagnostics). */
  get current(): number {
    return this.value;
  }

  get confirmed(): boolean {
    return this.o.now() - this.confirmedAt <= this.o.maxStaleness;
  }

  token(): string {
    if (this.confirmed) return String(this.value);
    // Unconfirmed: a token that changes every maxStaleness, so nothing decided more than that long ago is reused.
    return `${this.value}~${Math.floor(this.o.now() / this.o.maxStaleness)}`;
  }

  /** Redis answered the last epoch read. */
  get redisUp(): boolean {
    return this.redisProblem === undefined;
  }

  degraded(): string | undefined {
    const trust = this.confirmed
      ? 'epoch confirmed from the durable copy'
      : `epoch unconfirmed: cached decisions are decided again every ${this.o.maxStaleness / 1000}s`;
    if (this.redisProblem !== undefined) return `redis: degraded (${this.redisProblem}; ${trust})`;
    if (this.pendingBumps.length) return 'redis: degraded (an invalidation is not recorded yet)';
    if (!this.confirmed) return `redis: degraded (${trust})`;
    return undefined;
  }

  storeDegraded(): string | undefined {
    return this.storeProblem === undefined ? undefined : `s3: degraded (the bucket did not answer: ${this.storeProblem})`;
  }

  onChange(f: () => void): () => void {
    this.listeners.add(f);
    return () => this.listeners.delete(f);
  }

  bump(reason: string): void {
    this.pendingBumps.push(reason);
    void this.flushBumps();
  }

  /** Reads the epoch from Redis and the durable copy; one poll at a time. */
  poll(): Promise<void> {
    this.polling ??= this.doPoll().finally(() => (this.polling = undefined));
    return this.polling;
  }

  private async doPoll(): Promise<void> {
    await this.flushBumps();
    const started = this.o.now();
    const [fromRedis, fromStore] = await Promise.allSettled([this.o.channel.read(), this.o.durable ? this.o.durable.read() : Promise.resolve(undefined)]);
    this.redisProblem = fromRedis.status === 'rejected' ? describe(fromRedis.reason) : undefined;
    this.storeProblem = fromStore.status === 'rejected' ? describe(fromStore.reason) : undefined;
    const seen: number[] = [];
    if (fromRedis.status === 'fulfilled') seen.push(fromRedis.value ?? 0);
    if (fromStore.status === 'fulfilled' && fromStore.value !== undefined) seen.push(fromStore.value);
    if (seen.length === 0) return;
    this.adopt(Math.max(...seen));
    // Redis lost the key (flushed, failed over to an empty replica) or lags the durable copy: put it back.
    if (fromRedis.status === 'fulfilled' && (fromRedis.value === undefined || fromRedis.value < this.value)) {
      await this.o.channel.raise(this.value).catch((e: unknown) => this.o.onError?.('raise the epoch in redis', e));
    }
    this.confirmedAt = started;
  }

  /** Stores the pending bumps, one flush at a time; bumps that arrive meanwhile share the next increment. */
  private flushBumps(): Promise<void> {
    this.flushing ??= this.doFlush().finally(() => {
      this.flushing = undefined;
    });
    return this.flushing;
  }

  /** In Redis (then the durable copy), else in the durable copy alone; what fails stays pending for the next poll. */
  private async doFlush(): Promise<void> {
    while (this.pendingBumps.length) {
      const taken = this.pendingBumps.length;
      let n: number;
      try {
        n = await this.o.channel.bump(this.value);
      } catch (e) {
        const durable = this.o.durable;
        if (!durable) {
          this.o.onError?.('bump the epoch in redis', e);
          return;
        }
        try {
          n = Math.max(await durable.read(), this.value) + 1;
          await durable.write(n);
        } catch (e2) {
          this.o.onError?.('bump the epoch (redis and the durable copy unreachable)', e2);
          return;
        }
        this.pendingBumps.splice(0, taken);
        this.adopt(n);
        continue;
      }
      this.pendingBumps.splice(0, taken);
      this.adopt(n);
      // Redis has it and every replica hears of it now; the durable copy follows (it may be slow: S3).
      await this.o.durable?.write(n).catch((e: unknown) => this.o.onError?.('write the durable epoch', e));
    }
  }

  /** Moves to a higher epoch (never lower), keeps the floor, and tells the listeners. */
  private adopt(n: number): void {
    if (!Number.isSafeInteger(n) || n <= this.value) return;
    this.value = n;
    try {
      writeFloor(this.file, n);
    } catch (e) {
      this.o.onError?.('write the local epoch floor', e);
    }
    for (const f of this.listeners) f();
  }

  close(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }
}

function readFloor(file: string): number {
  try {
    const n = Number(readFileSync(file, 'utf8').trim());
    return Number.isSafeInteger(n) && n >= 0 ? n : 0;
  } catch {
    return 0;
  }
}

function writeFloor(file: string, n: number): void {
  const tmp = `${file}.tmp`;
  writeFileSync(tmp, `${n}\n`);
  renameSync(tmp, file);
}

function describe(e: unknown): string {
  return (e instanceof Error ? e.message : String(e)).slice(0, 200);
}
