/**
 * How long a piece of work (a root decision) waits on upstream round trips, so that the decision overhead can be
 * measured without them: what the proxy adds beyond the upstream round trips (`npm run bench` reports it). Overlapping
 * requests count once: the measure is the wall time during which at least one upstream request started inside the
 * work was outstanding, from the request (its concurrency slot included) until its body is consumed.
 *
 * Requests that the work merely joins (a single-flight started elsewhere) are not seen, so their wait counts as
 * overhead: the figure errs on the high side.
 */
import { AsyncLocalStorage } from 'node:async_hooks';

interface WaitClock {
  /** Milliseconds, monotonic; injected by tests. */
  now: () => number;
  active: number;
  since: number;
  waitedMs: number;
  closed: boolean;
}

const clocks = new AsyncLocalStorage<WaitClock>();
const noop = (): void => {};

/** Runs `fn` and returns its value with the time it spent waiting on upstream requests. */
export async function measureUpstreamWait<T>(fn: () => Promise<T>, now: () => number = () => performance.now()): Promise<{ value: T; waitedMs: number }> {
  const clock: WaitClock = { now, active: 0, since: 0, waitedMs: 0, closed: false };
  try {
    const value = await clocks.run(clock, fn);
    return { value, waitedMs: stop(clock) };
  } catch (e) {
    stop(clock);
    throw e;
  }
}

function stop(clock: WaitClock): number {
  // A request still open when the work ends (an unconsumed body) counts up to now.
  if (!clock.closed && clock.active > 0) clock.waitedMs += clock.now() - clock.since;
  clock.closed = true;
  return clock.waitedMs;
}

/** Marks the start of an upstream request; call the returned function once it is over. No-op outside a measure. */
export function upstreamWaitBegin(): () => void {
  const clock = clocks.getStore();
  if (!clock || clock.closed) return noop;
  if (clock.active++ === 0) clock.since = clock.now();
  let ended = false;
  return () => {
    if (ended) return;
    ended = true;
    if (clock.closed) return;
    if (--clock.active === 0) clock.waitedMs += clock.now() - clock.since;
  };
}
