import { describe, expect, it } from 'vitest';
import { measureUpstreamWait, upstreamWaitBegin } from '../../src/metrics/upstream-wait.js';
import { sleep } from './helpers.js';

/** A fake upstream request: begins, waits ms, ends. */
async function request(ms: number): Promise<void> {
  const end = upstreamWaitBegin();
  await sleep(ms);
  end();
}

describe('measureUpstreamWait', () => {
  it('counts overlapping requests once and leaves local work out', async () => {
    const { value, waitedMs } = await measureUpstreamWait(async () => {
      await Promise.all([request(60), request(40)]); // ~60 ms of wall time with a request outstanding
      const t = performance.now();
      while (performance.now() - t < 30); // local work: not a wait
      await request(20);
      return 'ok';
    });
    expect(value).toBe('ok');
    expect(waitedMs).toBeGreaterThanOrEqual(75);
    expect(waitedMs).toBeLessThan(75 + 30 + 25);
  });

  it('is a no-op outside a measure, and separate measures do not mix', async () => {
    upstreamWaitBegin()(); // nothing to attribute it to
    const [a, b] = await Promise.all([measureUpstreamWait(() => request(30)), measureUpstreamWait(async () => undefined)]);
    expect(a.waitedMs).toBeGreaterThanOrEqual(25);
    expect(b.waitedMs).toBe(0);
  });

  it('a request still open when the work ends counts up to then, and a late end is ignored', async () => {
    let end!: () => void;
    const { waitedMs } = await measureUpstreamWait(async () => {
      end = upstreamWaitBegin();
      await sleep(20);
    });
    end();
    expect(waitedMs).toBeGreaterThanOrEqual(15);
  });
});
