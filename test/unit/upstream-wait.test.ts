import { describe, expect, it } from 'vitest';
import { measureUpstreamWait, upstreamWaitBegin } from '../../src/metrics/upstream-wait.js';

/** A hand-driven clock: the tests move time, so the figures are exact whatever the machine is doing. */
function manualClock(): { now: () => number; set: (ms: number) => void } {
  let t = 0;
  return { now: () => t, set: (ms) => void (t = ms) };
}

describe('measureUpstreamWait', () => {
  it('counts overlapping requests once and leaves local work out', async () => {
    const clock = manualClock();
    const { value, waitedMs } = await measureUpstreamWait(async () => {
      const a = upstreamWaitBegin();
      const b = upstreamWaitBegin();
      clock.set(40);
      b();
      clock.set(60);
      a(); // 0–60 ms with at least one request outstanding
      await Promise.resolve();
      clock.set(90); // local work: not a wait
      const c = upstreamWaitBegin();
      clock.set(110);
      c(); // 20 ms more
      return 'ok';
    }, clock.now);
    expect(value).toBe('ok');
    expect(waitedMs).toBe(80);
  });

  it('is a no-op outside a measure, and separate measures do not mix', async () => {
    const clock = manualClock();
    upstreamWaitBegin()(); // nothing to attribute it to
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const first = measureUpstreamWait(async () => {
      const end = upstreamWaitBegin();
      await gate;
      clock.set(30);
      end();
    }, clock.now);
    const second = measureUpstreamWait(() => Promise.resolve(undefined), clock.now);
    release();
    const [a, b] = await Promise.all([first, second]);
    expect(a.waitedMs).toBe(30);
    expect(b.waitedMs).toBe(0);
  });

  it('a request still open when the work ends counts up to then, and a late end is ignored', async () => {
    const clock = manualClock();
    let end!: () => void;
    const { waitedMs } = await measureUpstreamWait(() => {
      end = upstreamWaitBegin();
      clock.set(20);
      return Promise.resolve();
    }, clock.now);
    clock.set(500);
    end();
    expect(waitedMs).toBe(20);
  });
});
