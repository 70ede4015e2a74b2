/**
 * The invalidation epoch's rules (src/cache/epoch.ts), with a fault-injecting in-memory channel and durable copy
 * (the real Redis and S3 paths are in test/integration/redis-*.test.ts): it never goes down, a flushed store is
 * raised back, concurrent bumps share an increment, a bump Redis refuses goes to the durable copy or stays pending,
 * and the token changes every maxStaleness while unconfirmed (clock injected).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { EpochTracker, type DurableEpoch, type EpochChannel } from '../../src/cache/epoch.js';

class FakeChannel implements EpochChannel {
  value: number | undefined;
  down = false;
  bumps = 0;
  private listener: ((n: number) => void) | undefined;
  read(): Promise<number | undefined> {
    return this.down ? Promise.reject(new Error('ECONNREFUSED')) : Promise.resolve(this.value);
  }
  raise(n: number): Promise<number> {
    if (this.down) return Promise.reject(new Error('ECONNREFUSED'));
    this.value = Math.max(this.value ?? 0, n);
    return Promise.resolve(this.value);
  }
  bump(known: number): Promise<number> {
    if (this.down) return Promise.reject(new Error('ECONNREFUSED'));
    this.bumps++;
    this.value = Math.max(this.value ?? 0, known) + 1;
    this.listener?.(this.value);
    return Promise.resolve(this.value);
  }
  subscribe(f: (n: number) => void): void {
    this.listener = f;
  }
}

class FakeDurable implements DurableEpoch {
  value = 0;
  down = false;
  read(): Promise<number> {
    return this.down ? Promise.reject(new Error('bucket down')) : Promise.resolve(this.value);
  }
  write(n: number): Promise<void> {
    if (this.down) return Promise.reject(new Error('bucket down'));
    this.value = Math.max(this.value, n);
    return Promise.resolve();
  }
}

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function tracker(o: { channel?: FakeChannel; durable?: FakeDurable; dir?: string; clock?: { t: number } } = {}) {
  const dir = o.dir ?? mkdtempSync(join(tmpdir(), 'pc-epoch-'));
  if (!o.dir) dirs.push(dir);
  const channel = o.channel ?? new FakeChannel();
  const clock = o.clock ?? { t: 1_000_000 };
  const t = new EpochTracker({ channel, durable: o.durable, dataDir: dir, maxStaleness: 5_000, pollInterval: 1_000, now: () => clock.t, timers: false });
  return { t, channel, clock, dir };
}

describe('the invalidation epoch', () => {
  it('never goes below what this replica has seen, and puts a flushed value back', async () => {
    const { t, channel, dir } = tracker();
    channel.value = 9;
    await t.poll();
    expect(t.token()).toBe('9');
    channel.value = undefined; // FLUSHALL
    await t.poll();
    expect(t.token()).toBe('9');
    expect(channel.value).toBe(9);
    // A restart reads the local floor before Redis answers.
    const again = tracker({ dir, channel: Object.assign(new FakeChannel(), { down: true }) });
    expect(again.t.current).toBe(9);
  });

  it('bumps that come together share increments, and each is recorded exactly once', async () => {
    const { t, channel } = tracker();
    await t.poll();
    for (let i = 0; i < 5; i++) t.bump(`report ${i}`);
    await t.poll();
    expect(channel.bumps).toBeLessThanOrEqual(2);
    expect(t.current).toBe(channel.value);
    expect(t.degraded()).toBeUndefined();
  });

  it('a bump Redis refuses goes to the durable copy; without one it stays pending, and /readyz says so', async () => {
    const durable = new FakeDurable();
    const a = tracker({ durable });
    await a.t.poll();
    a.channel.down = true;
    a.t.bump('report');
    await a.t.poll();
    expect(durable.value).toBe(1);
    expect(a.t.current).toBe(1);
    a.channel.down = false;
    await a.t.poll();
    expect(a.channel.value).toBe(1); // raised back into Redis

    const b = tracker();
    await b.t.poll();
    b.channel.down = true;
    b.t.bump('report');
    await b.t.poll();
    expect(b.t.current).toBe(0);
    expect(b.t.degraded()).toMatch(/^redis: degraded/);
    b.channel.down = false;
    await b.t.poll();
    expect(b.t.current).toBe(1);
    expect(b.channel.value).toBe(1);
  });

  it('unconfirmed for longer than maxStaleness: a token that changes every maxStaleness', async () => {
    const { t, channel, clock } = tracker();
    await t.poll();
    expect(t.token()).toBe('0');
    channel.down = true;
    clock.t += 4_000;
    await t.poll();
    expect(t.token()).toBe('0'); // within the bound
    clock.t += 1_001;
    const first = t.token();
    expect(first).toMatch(/^0~\d+$/);
    clock.t += 5_000;
    expect(t.token()).not.toBe(first);
    channel.down = false;
    await t.poll();
    expect(t.token()).toBe('0');
  });

  it('pub/sub moves the epoch up at once but does not count as a confirmation', async () => {
    const { t, channel, clock } = tracker();
    await t.poll();
    let changes = 0;
    t.onChange(() => changes++);
    await channel.bump(0); // another replica
    expect(t.current).toBe(1);
    expect(changes).toBe(1);
    channel.down = true;
    clock.t += 6_000;
    expect(t.token()).toMatch(/^1~/);
  });
});
