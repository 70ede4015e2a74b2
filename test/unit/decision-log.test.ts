import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { pino } from 'pino';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import type { Config } from '../../src/config/schema.js';
import { DecisionLog, DecisionLogUnavailableError, maskInput, type DecisionEvent } from '../../src/gate/decision-log.js';
import { redactUrl } from '../../src/util/redact-url.js';
import type { DecisionObserver } from '../../src/gate/gate.js';
import type { Admission, PolicyInput } from '../../src/policy/contract.js';
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
    request: {
      kind: 'manifest',
      method: 'GET',
      client: { ip: `10.0.0.${i}`, user: 'alice', groups: [], method: 'basic', user_agent: 'docker/29' },
      routing: 'default',
    },
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
  const admission: Admission = {
    decisionId: `id-${i}`,
    serve: true,
    outcome: 'allow',
    message: '',
    violations: [],
    warnings: [],
    mode: 'enforce',
    cached: false,
  };
  return {
    admission,
    input: input(i),
    result: { allow: true, deny: [], warn: [], scope: 'all', mode: 'enforce' },
    revision: 'rev-1',
    evalMs: 0.5,
    totalMs: 1,
    route,
  };
}

async function counter(c: { get(): Promise<{ values: Array<{ value: number }> }> }): Promise<number> {
  return (await c.get()).values.reduce((n, v) => n + v.value, 0);
}

function httpCfg(url: string, over: Partial<Config['decisionLog']> = {}): Config['decisionLog'] {
  return { sink: 'http', url, batchSize: 2, flushInterval: 3_600_000, maxQueue: 5, mask: [], onFull: 'drop', blockTimeout: 5_000, ...over };
}

/**
 * A real HTTP collector on a fixed loopback port that can go down (the port refuses connections) and come back on
 * the same port; it records the decision ids it accepted, in the order it accepted them.
 */
interface Collector {
  url: string;
  ids: string[];
  batches: number;
  up(): Promise<void>;
  down(): Promise<void>;
}

async function collector(): Promise<Collector> {
  let server: Server | undefined;
  let port = 0;
  const c: Collector = {
    url: '',
    ids: [],
    batches: 0,
    async up() {
      const s = createServer((req, res) => {
        const chunks: Buffer[] = [];
        req.on('data', (b: Buffer) => chunks.push(b));
        req.on('end', () => {
          const batch = JSON.parse(gunzipSync(Buffer.concat(chunks)).toString('utf8')) as DecisionEvent[];
          c.batches++;
          c.ids.push(...batch.map((e) => e.decision_id));
          res.statusCode = 204;
          res.end();
        });
      });
      await new Promise<void>((resolve) => s.listen(port, '127.0.0.1', resolve));
      port = (s.address() as AddressInfo).port;
      c.url = `http://127.0.0.1:${port}/logs`;
      server = s;
    },
    async down() {
      const s = server;
      server = undefined;
      if (!s) return;
      s.closeAllConnections();
      await new Promise<void>((resolve) => s.close(() => resolve()));
    },
  };
  await c.up();
  return c;
}

const ids = (from: number, to: number): string[] => Array.from({ length: to - from }, (_, i) => `id-${from + i}`);

describe('maskInput', () => {
  it('replaces the values at JSON pointers under /input and reports which existed', () => {
    const original = input(7);
    const { input: masked, masked: which } = maskInput(original, [
      '/input/request/client/ip',
      '/input/request/client/user',
      '/input/nope/x',
      '/input/image/missing',
    ]);
    const m = masked as PolicyInput;
    expect(m.request.client.ip).toBe('**masked**');
    expect(m.request.client.user).toBe('**masked**');
    expect(m.request.client.user_agent).toBe('docker/29');
    expect(which).toEqual(['/input/request/client/ip', '/input/request/client/user']);
    // The input the policy saw is untouched.
    expect(original.request.client.ip).toBe('10.0.0.7');
  });

  it('masks whole subtrees, array elements and escaped keys', () => {
    const { input: masked, masked: which } = maskInput(input(), [
      '/input/request/client',
      '/input/attestations/0/predicate',
      '/input/image/labels/a~1b',
      '/input/image/labels/c~0d',
    ]);
    const m = masked as { request: { client: unknown }; attestations: Array<{ predicate: unknown }>; image: { labels: unknown } };
    expect(m.request.client).toBe('**masked**');
    expect(m.attestations[0]!.predicate).toBe('**masked**');
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
    const log = new DecisionLog({
      config: { sink: 'stdout', batchSize: 1, flushInterval: 1000, maxQueue: 1, mask: ['/input/request/client/ip'] },
      metrics,
      log: silent,
      write: (l) => lines.push(l),
    });
    void log.onDecision(event(1));
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
    const log = new DecisionLog({
      config: { sink: 'none', batchSize: 1, flushInterval: 1000, maxQueue: 1, mask: [] },
      metrics: new Metrics({ defaultMetrics: false }),
      log: silent,
      write: (l) => lines.push(l),
    });
    void log.onDecision(event(1));
    expect(lines).toEqual([]);
  });

  it('file: appends one JSON event per line', async () => {
    const file = join(tempDir(), 'decisions.jsonl');
    const log = new DecisionLog({
      config: { sink: 'file', file, batchSize: 1, flushInterval: 1000, maxQueue: 1, mask: [] },
      metrics: new Metrics({ defaultMetrics: false }),
      log: silent,
    });
    void log.onDecision(event(1));
    void log.onDecision(event(2));
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
    const log = new DecisionLog({ config: httpCfg(`${server.url}/logs`), metrics, log: silent });
    // Never blocks: with onFull: drop the observer answers synchronously, so the gate never waits on the sink.
    for (let i = 0; i < 10; i++) expect(log.onDecision(event(i))).toBeUndefined();
    await log.flush();
    expect(server.requests.length).toBeGreaterThanOrEqual(1);
    const dropped = await counter(metrics.decisionLogDropped);
    expect(log.queued).toBeLessThanOrEqual(5);
    expect(await counter(metrics.decisionLogSent)).toBe(0);
    // Nothing is lost silently: every event is queued or counted as dropped.
    expect(log.queued + dropped).toBe(10);
    expect(dropped).toBeGreaterThanOrEqual(5);
    // More events while it is down only add drops.
    for (let i = 10; i < 20; i++) void log.onDecision(event(i));
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
    const log = new DecisionLog({
      config: httpCfg(`${server.url}/logs`, { batchSize: 3, maxQueue: 100, mask: ['/input/request/client/user'] }),
      metrics,
      log: silent,
    });
    for (let i = 0; i < 7; i++) void log.onDecision(event(i));
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
    const log = new DecisionLog({ config: httpCfg(`${server.url}/logs`, { batchSize: 2, maxQueue: 10 }), metrics, log: silent });
    for (let i = 0; i < 4; i++) void log.onDecision(event(i));
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
    const log = new DecisionLog({ config: httpCfg(url), metrics, log: silent });
    for (let i = 0; i < 3; i++) void log.onDecision(event(i));
    await log.flush();
    expect(log.queued + (await counter(metrics.decisionLogDropped))).toBe(3);
  });
});

describe('DecisionLog spool (onDisk) and onFull: block', () => {
  const collectors: Collector[] = [];
  const logs: DecisionLog[] = [];
  afterEach(async () => {
    for (const l of logs.splice(0)) await l.close();
    for (const c of collectors.splice(0)) await c.down();
  });
  const start = async (): Promise<Collector> => {
    const c = await collector();
    collectors.push(c);
    return c;
  };
  /** A DecisionLog whose backoff clock the test moves (`clock.t`). */
  const open = (cfg: Config['decisionLog'], dataDir: string, clock: { t: number }, metrics = new Metrics({ defaultMetrics: false })): DecisionLog => {
    const l = new DecisionLog({ config: cfg, metrics, log: silent, dataDir, now: () => clock.t });
    logs.push(l);
    return l;
  };

  it('the collector goes down and comes back: every event arrives once, in order', async () => {
    const c = await start();
    const clock = { t: 1_000_000 };
    const metrics = new Metrics({ defaultMetrics: false });
    const log = open(httpCfg(c.url, { batchSize: 3, spool: { maxSize: 1024 * 1024 } }), tempDir('pc-spool-'), clock, metrics);
    for (let i = 0; i < 4; i++) void log.onDecision(event(i));
    await log.flush();
    expect(c.ids).toEqual(ids(0, 4));
    await c.down();
    for (let i = 4; i < 14; i++) void log.onDecision(event(i));
    await log.flush();
    expect(log.queued).toBe(10);
    await c.up();
    // Still backing off: nothing is sent before the backoff ends.
    await log.flush();
    expect(c.ids).toEqual(ids(0, 4));
    clock.t += 120_000;
    await log.flush();
    expect(c.ids).toEqual(ids(0, 14));
    expect(log.queued).toBe(0);
    expect(await counter(metrics.decisionLogDropped)).toBe(0);
    expect(await counter(metrics.decisionLogSent)).toBe(14);
  });

  it('a restart resumes the spool where it stopped', async () => {
    const c = await start();
    await c.down();
    const dataDir = tempDir('pc-spool-');
    const clock = { t: 1_000_000 };
    const first = open(httpCfg(c.url, { batchSize: 2, spool: { maxSize: 1024 * 1024 } }), dataDir, clock);
    for (let i = 0; i < 5; i++) void first.onDecision(event(i));
    await first.close(); // the collector is down: close keeps the spool
    logs.splice(logs.indexOf(first), 1);
    await c.up();
    const second = open(httpCfg(c.url, { batchSize: 2, spool: { maxSize: 1024 * 1024 } }), dataDir, clock);
    void second.onDecision(event(5));
    await second.flush();
    await second.flush();
    expect(c.ids).toEqual(ids(0, 6));
    expect(second.queued).toBe(0);
  });

  it('the spool holds at most its size cap; beyond it, events are dropped and counted (onFull: drop)', async () => {
    const c = await start();
    await c.down();
    const metrics = new Metrics({ defaultMetrics: false });
    const cap = 64 * 1024;
    const clock = { t: 1_000_000 };
    const log = open(httpCfg(c.url, { batchSize: 50, spool: { maxSize: cap } }), tempDir('pc-spool-'), clock, metrics);
    const size = Buffer.byteLength(JSON.stringify({ ...event(100), timestamp: new Date().toISOString() }));
    const n = Math.ceil((2 * cap) / size);
    for (let i = 0; i < n; i++) void log.onDecision(event(i));
    const held = log.queued;
    expect(held).toBeGreaterThan(0);
    expect(log.spooledBytes).toBeLessThanOrEqual(cap);
    expect(log.spooledBytes).toBeGreaterThan(cap - 2 * size);
    expect(held + (await counter(metrics.decisionLogDropped))).toBe(n);
    // The oldest are the ones kept, and all of them arrive once the collector is back.
    await c.up();
    for (let i = 0; i < 10 && log.queued > 0; i++) {
      clock.t += 120_000;
      await log.flush();
    }
    expect(c.ids).toEqual(ids(0, held));
    expect(log.spooledBytes).toBe(0);
  });

  it('onFull: block holds a decision until there is room, and keeps the order', async () => {
    const c = await start();
    await c.down();
    const clock = { t: 1_000_000 };
    const log = open(httpCfg(c.url, { batchSize: 2, maxQueue: 2, onFull: 'block', blockTimeout: 60_000 }), tempDir('pc-spool-'), clock);
    expect(log.onDecision(event(0))).toBeUndefined();
    expect(log.onDecision(event(1))).toBeUndefined();
    const settled: string[] = [];
    const held2 = log.onDecision(event(2));
    const held3 = log.onDecision(event(3));
    expect(held2).toBeInstanceOf(Promise);
    expect(held3).toBeInstanceOf(Promise);
    void held2!.then(() => settled.push('2'));
    void held3!.then(() => settled.push('3'));
    await log.flush(); // the collector is down: nothing moves
    expect(settled).toEqual([]);
    expect(log.queued).toBe(2);
    await c.up();
    clock.t += 120_000;
    await log.flush();
    await Promise.all([held2, held3]);
    expect(settled).toEqual(['2', '3']);
    await log.flush();
    expect(c.ids).toEqual(ids(0, 4));
  });

  it('onFull: block fails closed after blockTimeout: DecisionLogUnavailableError, counted', async () => {
    const c = await start();
    await c.down();
    const metrics = new Metrics({ defaultMetrics: false });
    const log = open(httpCfg(c.url, { maxQueue: 1, onFull: 'block', blockTimeout: 50 }), tempDir('pc-spool-'), { t: 0 }, metrics);
    expect(log.onDecision(event(0))).toBeUndefined();
    await expect(log.onDecision(event(1))).rejects.toBeInstanceOf(DecisionLogUnavailableError);
    expect(await counter(metrics.decisionLogRefused)).toBe(1);
    expect(await counter(metrics.decisionLogDropped)).toBe(0);
  });
});

describe('credentials in upstream URLs never reach the decision log', () => {
  it('input.upstream.url loses its userinfo; the input the policy saw is untouched', () => {
    const lines: string[] = [];
    const log = new DecisionLog({
      config: { sink: 'stdout', batchSize: 1, flushInterval: 1000, maxQueue: 1, mask: [] },
      metrics: new Metrics({ defaultMetrics: false }),
      log: silent,
      write: (l) => lines.push(l),
    });
    const e = event(1);
    e.input.upstream.url = 'https://robot%24ci:s3cr3t-p%40ss@registry.example:8443/v2-mirror';
    void log.onDecision(e);
    expect(lines[0]).not.toMatch(/s3cr3t|robot/);
    const ev = (JSON.parse(lines[0]!) as { decision_log: DecisionEvent }).decision_log;
    expect((ev.input as PolicyInput).upstream.url).toBe('https://registry.example:8443/v2-mirror');
    expect(e.input.upstream.url).toContain('s3cr3t');
  });

  it('redactUrl strips userinfo whatever its shape and leaves other URLs as they are', () => {
    expect(redactUrl('https://u:p@h.example')).toBe('https://h.example');
    expect(redactUrl('https://u@h.example/x?y=1')).toBe('https://h.example/x?y=1');
    expect(redactUrl('http://:p@h.example:5000/')).toBe('http://h.example:5000/');
    expect(redactUrl('https://u:p@ss@h.example/v2')).toBe('https://h.example/v2');
    expect(redactUrl('https://registry-1.docker.io')).toBe('https://registry-1.docker.io');
    expect(redactUrl('not a url u:p@x')).toBe('not a url u:p@x');
  });
});
