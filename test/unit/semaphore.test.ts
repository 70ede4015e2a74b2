import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Semaphore } from '../../src/util/semaphore.js';

const tick = () => new Promise((r) => setImmediate(r));

describe('Semaphore', () => {
  it('grants up to the limit at once and queues the rest', async () => {
    const s = new Semaphore(2);
    const r1 = await s.acquire();
    const r2 = await s.acquire();
    expect(s.inUse).toBe(2);
    let third = false;
    const p3 = s.acquire().then((r) => {
      third = true;
      return r;
    });
    await tick();
    expect(third).toBe(false);
    r1();
    const r3 = await p3;
    expect(third).toBe(true);
    expect(s.inUse).toBe(2);
    r2();
    r3();
    expect(s.inUse).toBe(0);
  });

  it('serves waiters in FIFO order', async () => {
    const s = new Semaphore(1);
    const first = await s.acquire();
    const order: number[] = [];
    const waiters = Array.from({ length: 10 }, (_, i) =>
      s.acquire().then((release) => {
        order.push(i);
        release();
      }),
    );
    first();
    await Promise.all(waiters);
    expect(order).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(s.inUse).toBe(0);
  });

  it('a release is idempotent: calling it twice frees one slot only', async () => {
    const s = new Semaphore(1);
    const r = await s.acquire();
    const p = s.acquire();
    const q = s.acquire();
    r();
    r();
    const rp = await p;
    let qGranted = false;
    void q.then(() => (qGranted = true));
    await tick();
    expect(qGranted).toBe(false);
    expect(s.inUse).toBe(1);
    rp();
    (await q)();
    expect(s.inUse).toBe(0);
  });

  it('an abort while queued rejects with the reason and leaves the queue intact', async () => {
    const s = new Semaphore(1);
    const held = await s.acquire();
    const ac = new AbortController();
    const order: string[] = [];
    const a = s.acquire().then((r) => (order.push('a'), r));
    const b = s.acquire(ac.signal);
    const c = s.acquire().then((r) => (order.push('c'), r));
    const reason = new Error('client went away');
    ac.abort(reason);
    await expect(b).rejects.toBe(reason);
    expect(s.inUse).toBe(1);
    held();
    (await a)();
    (await c)();
    expect(order).toEqual(['a', 'c']);
    expect(s.inUse).toBe(0);
  });

  it('an abort after the grant changes nothing', async () => {
    const s = new Semaphore(1);
    const held = await s.acquire();
    const ac = new AbortController();
    const p = s.acquire(ac.signal);
    held();
    const r = await p;
    ac.abort();
    expect(s.inUse).toBe(1);
    r();
    expect(s.inUse).toBe(0);
  });

  it('an abort without an Error reason still rejects with an Error', async () => {
    const s = new Semaphore(1);
    const held = await s.acquire();
    const ac = new AbortController();
    const p = s.acquire(ac.signal);
    ac.abort('string reason');
    await expect(p).rejects.toBeInstanceOf(Error);
    held();
  });

  it('property: never more than limit holders; every task runs; slots all return', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 5 }),
        fc.array(fc.record({ work: fc.nat(3), abort: fc.boolean() }), { minLength: 1, maxLength: 25 }),
        async (limit, tasks) => {
          const s = new Semaphore(limit);
          let active = 0;
          let max = 0;
          let ran = 0;
          let aborted = 0;
          const controllers: AbortController[] = [];
          const all = tasks.map(async (t) => {
            const ac = new AbortController();
            if (t.abort) controllers.push(ac);
            let release: () => void;
            try {
              release = await s.acquire(ac.signal);
            } catch {
              aborted++;
              return;
            }
            active++;
            max = Math.max(max, active);
            expect(s.inUse).toBeLessThanOrEqual(limit);
            for (let i = 0; i < t.work; i++) await tick();
            active--;
            ran++;
            release();
          });
          await tick();
          for (const ac of controllers) ac.abort(new Error('x'));
          await Promise.all(all);
          expect(max).toBeLessThanOrEqual(limit);
          expect(ran + aborted).toBe(tasks.length);
          expect(s.inUse).toBe(0);
        },
      ),
      { numRuns: 100 },
    );
  });
});
