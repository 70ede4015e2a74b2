import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { pino } from 'pino';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import type { Config } from '../../src/config/schema.js';
import { DecisionLog, maskInput, type DecisionEvent } from '../../src/gate/decision-log.js';
import type { DecisionObserver } from '../../src/gate/gate.js';
import type { Admission, PolicyInput } from '../../src/gate/types.js';
import { Metrics } from '../../src/metrics/metrics.js';
import { Router } from '../../src/routing/route.js';
import { cleanupTempDirs, type LocalServer, makeConfig, startServer, tempDir } from './helpers.js';

afterAll(cleanupTempDirs);

const silent = pino({ level: 'silent' });
const config = makeConfig({ upstreams: [{ name: 'dockerhub', registry: 'docker.io', url: 'https://registry-1.docker.io' }], defaultUpstream: 'dockerhub' });
const route = (() => {
  const r = new Router(config).resolve('nginx', undefined);
  if ('code' in r) throw new Error(r.message);
  return r;
})();

function input(i = 0): PolicyInput {
  return {
    version: 1,
    now: '2026-06-01T00:00:00Z',
    request: { kind: 'manifest', method: 'GET', client: { ip: `10.0.0.${i}`, user: 'alice', groups: [], method: 'basic', user_agent: 'docker/29' }, routing: 'default' },
    image: {
      registry: 'docker.io',
      repository: 'library/nginx',
      tag: 'latest',
      digest: `sha256:${'a'.repeat(64)}`,
      media_type: 'application/vnd.oci.image.index.v1+json',
      platforms: [],
      labels: { 'a/b': 'x', 'c~d': 'y' },
      created: null,
    },
    upstream: { name: 'dockerhub', url: 'https://registry-1.docker.io' },
    signatures: { status: 'none', verified: [], rejected: [] },
    attestations: [{ predicate_type: 'p', authority: 'a', predicate: { secret: 's' } }],
    scan: { status: 'missing' },
  };
}

function event(i: number): Parameters<DecisionObserver['onDecision']>[0] {
  const admission: Admission = { decisionId: `id-${i}`, serve: true, outcome: 'allow', message: '', violations: [], warnings: [], mode: 'enforce', cached: false };
  return { admission, input: input(i), result: { allow: true, deny: [], warn: [], scope: 'all', mode: 'enforce' }, revision: 'rev-1', evalMs: 0.5, totalMs: 1, route };
}

async function counter(c: { get(): Promise<{ values: Array<{ value: number }> }> }): Promise<number> {
  return (await c.get()).values.reduce((n, v) => n + v.value, 0);
}

function httpCfg(url: string, over: Partial<Config['decisionLog']> = {}): Config['decisionLog'] {
  return { sink: 'http', url, batchSize: 2, flushInterval: 3_600_000, maxQueue: 5, mask: [], ...over };
}

describe('maskInput', () => {
  it('replaces the values at JSON pointers under /input and reports which existed', () => {
    const original = input(7);
    const { input: masked, masked: which } = maskInput(original, ['/input/request/client/ip', '/input/request/client/user', '/input/nope/x', '/input/image/missing']);
    const m = masked as PolicyInput;
    expect(m.request.client.ip).toBe('**masked**');
    expect(m.request.client.user).toBe('**masked**');
    expect(m.request.client.user_agent).toBe('docker/29');
    expect(which).toEqual(['/input/request/client/ip', '/input/request/client/user']);
    // The input the policy saw is untouched.
    expect(original.request.client.ip).toBe('10.0.0.7');
  });

  it('masks whole subtrees, array elements and escaped keys', () => {
    const { input: masked, masked: which } = maskInput(input(), ['/input/request/client', '/input/attestations/0/predicate', '/input/image/labels/a~1b', '/input/image/labels/c~0d']);
    const m = masked as unknown as Record<string, any>;
    expect(m.request.client).toBe('**masked**');
    expect(m.attestations[0].predicate).toBe('**masked**');
    expect(m.image.labels).toEqual({ 'a/b': '**masked**', 'c~d': '**masked**' });
    expect(which).toHaveLength(4);
  });

  it('returns the input as is without pointers', () => {
    const i = input();
    expect(maskInput(i, [])).toEqual({ input: i, masked: [] });
  });
});

describe('DecisionLog sinks', () => {
  it('stdout: one JSON line per decision, OPA-shaped, with masking', () => {
    const lines: string[] = [];
    const metrics = new Metrics({ defaultMetrics: false });
    const log = new DecisionLog({ sink: 'stdout', batchSize: 1, flushInterval: 1000, maxQueue: 1, mask: ['/input/request/client/ip'] }, metrics, silent, (l) => lines.push(l));
    log.onDecision(event(1));
    expect(lines).toHaveLength(1);
    expect(lines[0]!.endsWith('\n')).toBe(true);
    const ev = (JSON.parse(lines[0]!) as { decision_log: DecisionEvent }).decision_log;
    expect(ev).toMatchObject({
      decision_id: 'id-1',
      path: 'portcullis/decision',
      bundles: { portcullis: { revision: 'rev-1' } },
      metrics: { timer_rego_query_eval_ns: 500_000 },
      outcome: 'allow',
      upstream: 'dockerhub',
      masked: ['/input/request/client/ip'],
      result: { allow: true },
    });
    expect((ev.input as PolicyInput).request.client.ip).toBe('**masked**');
    expect(Number.isNaN(Date.parse(ev.timestamp))).toBe(false);
  });

  it('none: writes nothing', () => {
    const lines: string[] = [];
    const log = new DecisionLog({ sink: 'none', batchSize: 1, flushInterval: 1000, maxQueue: 1, mask: [] }, new Metrics({ defaultMetrics: false }), silent, (l) => lines.push(l));
    log.onDecision(event(1));
    expect(lines).toEqual([]);
  });

  it('file: appends one JSON event per line', async () => {
    const file = join(tempDir(), 'decisions.jsonl');
    const log = new DecisionLog({ sink: 'file', file, batchSize: 1, flushInterval: 1000, maxQueue: 1, mask: [] }, new Metrics({ defaultMetrics: false }), silent);
    log.onDecision(event(1));
    log.onDecision(event(2));
    await log.close();
    const lines = readFileSync(file, 'utf8').trim().split('\n');
    expect(lines.map((l) => (JSON.parse(l) as DecisionEvent).decision_id)).toEqual(['id-1', 'id-2']);
  });
});

describe('DecisionLog HTTP sink', () => {
  let server: LocalServer | undefined;
  afterEach(async () => {
    await server?.close();
    server = undefined;
  });

  it('bounds its queue and counts drops while the collector fails; never blocks the caller', async () => {
    server = await startServer((_req, _body, res) => {
      res.statusCode = 500;
      res.end('down');
    });
    const metrics = new Metrics({ defaultMetrics: false });
    const log = new DecisionLog(httpCfg(`${server.url}/logs`), metrics, silent);
    const t0 = performance.now();
    for (let i = 0; i < 10; i++) log.onDecision(event(i));
    expect(performance.now() - t0).toBeLessThan(200);
    await log.flush();
    expect(server.requests.length).toBeGreaterThanOrEqual(1);
    const dropped = await counter(metrics.decisionLogDropped);
    expect(log.queued).toBeLessThanOrEqual(5);
    expect(await counter(metrics.decisionLogSent)).toBe(0);
    // Nothing is lost silently: every event is queued or counted as dropped.
    expect(log.queued + dropped).toBe(10);
    expect(dropped).toBeGreaterThanOrEqual(5);
    // More events while it is down only add drops.
    for (let i = 10; i < 20; i++) log.onDecision(event(i));
    expect(log.queued).toBeLessThanOrEqual(5);
    expect(log.queued + (await counter(metrics.decisionLogDropped))).toBe(20);
  });

  it('delivers gzip JSON batches intact when the collector is up, and masks', async () => {
    const batches: DecisionEvent[][] = [];
    server = await startServer((req, body, res) => {
      expect(req.method).toBe('POST');
      expect(req.headers['content-encoding']).toBe('gzip');
      expect(req.headers['content-type']).toBe('application/json');
      batches.push(JSON.parse(gunzipSync(body).toString('utf8')) as DecisionEvent[]);
      res.statusCode = 204;
      res.end();
    });
    const metrics = new Metrics({ defaultMetrics: false });
    const log = new DecisionLog(httpCfg(`${server.url}/logs`, { batchSize: 3, maxQueue: 100, mask: ['/input/request/client/user'] }), metrics, silent);
    for (let i = 0; i < 7; i++) log.onDecision(event(i));
    await log.close();
    const all = batches.flat();
    expect(all.map((e) => e.decision_id).sort()).toEqual(['id-0', 'id-1', 'id-2', 'id-3', 'id-4', 'id-5', 'id-6']);
    expect(batches.every((b) => b.length <= 3)).toBe(true);
    for (const e of all) {
      expect((e.input as PolicyInput).request.client.user).toBe('**masked**');
      expect(e.masked).toEqual(['/input/request/client/user']);
      expect(e.path).toBe('portcullis/decision');
      expect(e.bundles.portcullis?.revision).toBe('rev-1');
    }
    expect(await counter(metrics.decisionLogSent)).toBe(7);
    expect(await counter(metrics.decisionLogDropped)).toBe(0);
    expect(log.queued).toBe(0);
  });

  it('requeues after a failure and delivers once the collector recovers', async () => {
    let up = false;
    const received: DecisionEvent[] = [];
    server = await startServer((_req, body, res) => {
      if (!up) {
        res.statusCode = 503;
        res.end();
        return;
      }
      received.push(...(JSON.parse(gunzipSync(body).toString('utf8')) as DecisionEvent[]));
      res.statusCode = 200;
      res.end();
    });
    const metrics = new Metrics({ defaultMetrics: false });
    const log = new DecisionLog(httpCfg(`${server.url}/logs`, { batchSize: 2, maxQueue: 10 }), metrics, silent);
    for (let i = 0; i < 4; i++) log.onDecision(event(i));
    await log.flush();
    expect(received).toEqual([]);
    expect(log.queued).toBe(4);
    up = true;
    await log.close(); // close() ignores the backoff and flushes what is left
    expect(received.map((e) => e.decision_id).sort()).toEqual(['id-0', 'id-1', 'id-2', 'id-3']);
    expect(await counter(metrics.decisionLogSent)).toBe(4);
    expect(await counter(metrics.decisionLogDropped)).toBe(0);
  });

  it('an unreachable collector is a delivery failure, not an exception', async () => {
    const dead = await startServer((_q, _b, res) => {
      res.end();
    });
    const url = `${dead.url}/logs`;
    await dead.close();
    const metrics = new Metrics({ defaultMetrics: false });
    const log = new DecisionLog(httpCfg(url), metrics, silent);
    for (let i = 0; i < 3; i++) log.onDecision(event(i));
    await log.flush();
    expect(log.queued + (await counter(metrics.decisionLogDropped))).toBe(3);
  });
});
