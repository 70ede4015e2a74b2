/**
 * The re-evaluation schedule (src/gate/reeval-schedule.ts) with a hand-driven scheduler and a gate whose verdicts
 * the test sets: what is logged as newly denied, the metrics, and that runs never overlap. The e2e
 * (test/e2e/reeval.test.ts) runs it on a real proxy.
 */
import { pino } from 'pino';
import { describe, expect, test } from 'vitest';
import { ConfigError, parseConfig } from '../../src/config/load.js';
import { ReevalSchedule, type Scheduler } from '../../src/gate/reeval-schedule.js';
import type { ReevalTarget } from '../../src/gate/reeval.js';
import { Metrics } from '../../src/metrics/metrics.js';
import type { Admission } from '../../src/policy/contract.js';

const D1 = `sha256:${'1'.repeat(64)}`;
const D2 = `sha256:${'2'.repeat(64)}`;

type Verdict = { rule?: string; hold?: Promise<void> };

/** Two cached images whose verdicts the test sets; evaluation waits on `hold` when given. */
function fakeTarget(verdicts: Record<string, Verdict>): ReevalTarget {
  const upstream = { name: 'u', registry: 'r.example' };
  const target = {
    router: { upstreams: [upstream] },
    meta: { listRoots: () => [D1, D2].map((digest, i) => ({ upstream: 'u', repository: 'app', digest, tag: `v${i + 1}` })) },
    manifests: { get: (_r: unknown, digest: string) => Promise.resolve({ digest }) },
    gate: {
      policyRevision: 'rev-1',
      evaluate: async (req: { manifest: { digest: string } }) => {
        const v = verdicts[req.manifest.digest] ?? {};
        await v.hold;
        const violations = v.rule ? [{ rule: v.rule, message: `denied by ${v.rule}` }] : [];
        const admission: Admission = {
          decisionId: 'x',
          serve: !v.rule,
          outcome: v.rule ? 'deny' : 'allow',
          message: '',
          violations,
          warnings: [],
          mode: 'enforce',
          cached: false,
        };
        return { input: { scan: { status: 'ok' }, signatures: { status: 'ok' } }, result: undefined, admission };
      },
    },
  };
  return target as unknown as ReevalTarget;
}

function manual(): Scheduler & { tick(): Promise<void> } {
  let task: (() => Promise<void>) | undefined;
  return { every: (_ms, t) => ((task = t), { stop: () => (task = undefined) }), tick: () => task!() };
}

async function value(m: Metrics, name: string, labels: Record<string, string>): Promise<number | undefined> {
  const metric = m.registry.getSingleMetric(name);
  const got = await metric!.get();
  return got.values.find((v) => Object.entries(labels).every(([k, x]) => v.labels[k] === x))?.value;
}

function setup(verdicts: Record<string, Verdict>) {
  const lines: Array<Record<string, unknown>> = [];
  const metrics = new Metrics({ defaultMetrics: false });
  const schedule = new ReevalSchedule({
    target: fakeTarget(verdicts),
    config: { interval: 60_000, purge: false, concurrency: 2 },
    metrics,
    log: pino({ level: 'info' }, { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) }),
  });
  const s = manual();
  expect(schedule.start(s)).toBe(true);
  return { schedule, s, metrics, denied: () => lines.filter((l) => l.msg === 'cached image is now denied') };
}

describe('re-evaluation schedule', () => {
  test('an image is logged once when it turns denied; metrics follow each run', async () => {
    const verdicts: Record<string, Verdict> = {};
    const { schedule, s, metrics, denied } = setup(verdicts);
    await s.tick();
    expect(denied()).toEqual([]);
    expect(await value(metrics, 'portcullis_cached_images', { verdict: 'allow' })).toBe(2);

    verdicts[D2] = { rule: 'scan.limit' };
    await s.tick();
    expect(denied().map((l) => [l.image, l.previous, l.rules])).toEqual([[`r.example/app:v2@${D2}`, 'allow', ['scan.limit']]]);
    expect(await value(metrics, 'portcullis_cached_images', { verdict: 'deny' })).toBe(1);
    expect(await value(metrics, 'portcullis_reevaluation_denials', { rule: 'scan.limit' })).toBe(1);
    expect(schedule.last!.newlyDenied).toHaveLength(1);

    // Still denied: not logged again. Then denied by another rule only: the old rule's series goes.
    await s.tick();
    expect(denied()).toHaveLength(1);
    verdicts[D2] = { rule: 'signature.required' };
    await s.tick();
    expect(denied()).toHaveLength(1);
    expect(await value(metrics, 'portcullis_reevaluation_denials', { rule: 'scan.limit' })).toBeUndefined();
    expect(await value(metrics, 'portcullis_reevaluation_denials', { rule: 'signature.required' })).toBe(1);
    expect(await value(metrics, 'portcullis_reevaluation_runs_total', { result: 'ok' })).toBe(4);
  });

  test('after a start, an image already denied is logged once with previous "unknown"', async () => {
    const { s, denied } = setup({ [D1]: { rule: 'tag.denied' } });
    await s.tick();
    expect(denied().map((l) => [l.image, l.previous])).toEqual([[`r.example/app:v1@${D1}`, 'unknown']]);
  });

  test('a run still going when the next is due is not overlapped', async () => {
    let release!: () => void;
    const hold = new Promise<void>((r) => (release = r));
    const { s, metrics } = setup({ [D1]: { hold } });
    const first = s.tick();
    await s.tick();
    expect(await value(metrics, 'portcullis_reevaluation_runs_total', { result: 'skipped' })).toBe(1);
    release();
    await first;
    expect(await value(metrics, 'portcullis_reevaluation_runs_total', { result: 'ok' })).toBe(1);
  });

  test('config: off by default, at least a minute, errors name the field', () => {
    const base = 'upstreams: [{ name: u, registry: r.example, url: "https://r.example" }]\n';
    const c = parseConfig(base, 'p.yaml', {});
    expect(c.reevaluate).toEqual({ interval: 0, purge: false, concurrency: 4 });
    expect(c.warm).toEqual({ maxImages: 50, maxBlobs: 5000, concurrency: 4 });
    expect(parseConfig(`${base}reevaluate: { interval: 15m, purge: true }\n`, 'p.yaml', {}).reevaluate).toMatchObject({ interval: 900_000, purge: true });
    expect(() => parseConfig(`${base}reevaluate: { interval: 30s }\n`, 'p.yaml', {})).toThrow(ConfigError);
    expect(() => parseConfig(`${base}reevaluate: { interval: 30s }\n`, 'p.yaml', {})).toThrow(/reevaluate\.interval/);
    const off = new ReevalSchedule({
      target: fakeTarget({}),
      config: c.reevaluate,
      metrics: new Metrics({ defaultMetrics: false }),
      log: pino({ level: 'silent' }),
    });
    expect(off.start(manual())).toBe(false);
  });
});
