/**
 * Where the policy comes from, and where decisions go: an HTTP bundle server polled with ETag, a real external
 * OPA server (`opa run --server`) as the decider, OPA-format decision logs to an HTTP collector (gzip batches),
 * and the `portcullis check` CLI with its exit codes.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { runTool, requireTool } from '../harness/clients.js';
import { repackWithRevision } from '../harness/bundles.js';
import { MANIFEST_ACCEPT, pushImage, type PushedImage } from '../harness/images.js';
import { startProxy } from '../harness/proxy.js';
import { freePort, startRegistry, type RunningRegistry } from '../harness/registry.js';

let reg: RunningRegistry;
let img: PushedImage;
let dir: string;
const settings = { no_match: 'deny', scopes: [{ name: 'all', images: ['**'], deny_tags: ['latest'] }] };

beforeAll(async () => {
  reg = await startRegistry();
  img = await pushImage(reg.url, 'demo/app', 'v1');
  await pushImage(reg.url, 'demo/app', 'latest');
  dir = await mkdtemp(join(tmpdir(), 'pc-policy-'));
});
afterAll(async () => {
  await reg?.stop();
  await rm(dir, { recursive: true, force: true });
});

function listen(server: Server): Promise<number> {
  return new Promise((r) => server.listen(0, '127.0.0.1', () => r((server.address() as { port: number }).port)));
}

async function body(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

describe('HTTP bundle server', () => {
  test('is polled with If-None-Match; a new ETag brings the new revision', async () => {
    const v1 = join(dir, 'v1.tar.gz');
    const v2 = join(dir, 'v2.tar.gz');
    await repackWithRevision(resolve('policies/bundle.tar.gz'), v1, 'http-1');
    await repackWithRevision(resolve('policies/bundle.tar.gz'), v2, 'http-2');
    let current = { etag: '"1"', file: v1 };
    const seen: Array<string | undefined> = [];
    const server = createServer((req, res) => {
      seen.push(req.headers['if-none-match']);
      if (req.headers['if-none-match'] === current.etag) {
        res.writeHead(304).end();
        return;
      }
      void readFile(current.file).then((b) => res.writeHead(200, { etag: current.etag, 'content-type': 'application/gzip' }).end(b));
    });
    const port = await listen(server);
    const px = await startProxy({
      upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
      settings,
      extra: { policy: { bundleUrl: `http://127.0.0.1:${port}/bundle.tar.gz`, pollInterval: '100ms', allowInsecureHttp: true } },
    });
    try {
      expect(px.proxy.policy.revision).toBe('http-1');
      await px.proxy.policy.poll();
      expect(seen).toContain('"1"');
      current = { etag: '"2"', file: v2 };
      await px.proxy.policy.poll();
      expect(px.proxy.policy.revision).toBe('http-2');
      const res = await fetch(`${px.url}/v2/${reg.host}/demo/app/manifests/latest`, { headers: { accept: MANIFEST_ACCEPT } });
      expect(res.status).toBe(403);
    } finally {
      await px.stop();
      server.close();
    }
  });
});

describe('external OPA server (REST API)', () => {
  let opa: ChildProcess;
  let port: number;
  beforeAll(async () => {
    requireTool('opa');
    const data = join(dir, 'data.json');
    await writeFile(data, JSON.stringify({ portcullis: { config: settings } }));
    port = await freePort();
    opa = spawn('opa', ['run', '--server', '--addr', `127.0.0.1:${port}`, '--log-level', 'error', resolve('policies/portcullis'), data], { stdio: 'ignore' });
    const deadline = Date.now() + 20_000;
    for (;;) {
      const ok = await fetch(`http://127.0.0.1:${port}/health`)
        .then((r) => r.ok)
        .catch(() => false);
      if (ok) break;
      if (Date.now() > deadline) throw new Error('opa server did not start');
      await new Promise((r) => setTimeout(r, 100));
    }
  });
  afterAll(() => {
    opa?.kill('SIGKILL');
  });

  test('decides allow and deny like the in-process WASM policy', async () => {
    const px = await startProxy({
      upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
      extra: { policy: { opaUrl: `http://127.0.0.1:${port}`, allowInsecureHttp: true } },
    });
    try {
      expect(px.proxy.policy.revision).toBe(`opa-rest:127.0.0.1:${port}`);
      const ok = await fetch(`${px.url}/v2/${reg.host}/demo/app/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT } });
      expect(ok.status).toBe(200);
      const denied = await fetch(`${px.url}/v2/${reg.host}/demo/app/manifests/latest`, { headers: { accept: MANIFEST_ACCEPT } });
      expect(denied.status).toBe(403);
      const err = ((await denied.json()) as { errors: Array<{ message: string }> }).errors[0]!;
      expect(err.message).toContain('tag "latest" is not allowed [tag.denied]');
    } finally {
      await px.stop();
    }
  });
});

describe('decision logs', () => {
  test('reach an HTTP collector as gzip batches of OPA-format events, with masking', async () => {
    const batches: unknown[][] = [];
    let fail = true;
    const server = createServer((req, res) => {
      void body(req).then((b) => {
        if (fail) {
          res.writeHead(500).end();
          return;
        }
        expect(req.headers['content-encoding']).toBe('gzip');
        batches.push(JSON.parse(gunzipSync(b).toString('utf8')) as unknown[]);
        res.writeHead(204).end();
      });
    });
    const port = await listen(server);
    const px = await startProxy({
      upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
      settings,
      extra: { decisionLog: { sink: 'http', url: `http://127.0.0.1:${port}/logs`, batchSize: 2, flushInterval: '100ms', mask: ['/input/request/client/ip'] } },
    });
    try {
      await fetch(`${px.url}/v2/${reg.host}/demo/app/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT } });
      await fetch(`${px.url}/v2/${reg.host}/demo/app/manifests/latest`, { headers: { accept: MANIFEST_ACCEPT } });
      // The collector fails first: events are kept and retried, pulls are unaffected.
      await px.proxy.decisionLog.flush();
      expect(px.proxy.decisionLog.queued).toBe(2);
      fail = false;
      const deadline = Date.now() + 70_000;
      while (batches.length === 0 && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 100));
      }
      const events = batches.flat() as Array<Record<string, unknown>>;
      expect(events).toHaveLength(2);
      const deny = events.find((e) => e.outcome === 'deny')!;
      expect(deny.path).toBe('portcullis/decision');
      expect(typeof deny.decision_id).toBe('string');
      expect((deny.bundles as Record<string, { revision: string }>).portcullis!.revision).toBe(px.proxy.policy.revision);
      expect((deny.result as { allow: boolean }).allow).toBe(false);
      expect((deny.input as { request: { client: { ip: string } } }).request.client.ip).toBe('**masked**');
      expect(deny.masked).toEqual(['/input/request/client/ip']);
      expect(typeof (deny.metrics as Record<string, number>).timer_rego_query_eval_ns).toBe('number');
    } finally {
      await px.stop();
      server.close();
    }
  });
});

describe('decision logs that lose nothing (spool, onFull: block)', () => {
  test('with a spool, events outlive a restart while the collector is down, and arrive in order once it is up', async () => {
    const port = await freePort();
    const dataDir = await mkdtemp(join(dir, 'spool-'));
    const decisionLog = { sink: 'http', url: `http://127.0.0.1:${port}/logs`, batchSize: 10, flushInterval: '100ms', spool: { maxSize: '1MiB' } };
    const allowAll = { no_match: 'deny', scopes: [{ name: 'all', images: ['**'] }] };
    const first = await startProxy({ upstreams: [{ name: 'local', registry: reg.host, url: reg.url }], settings: allowAll, extra: { decisionLog }, dataDir });
    for (const tag of ['v1', 'latest']) {
      const r = await fetch(`${first.url}/v2/${reg.host}/demo/app/manifests/${tag}`, { headers: { accept: MANIFEST_ACCEPT } });
      await r.arrayBuffer();
      expect(r.status).toBe(200);
    }
    expect(first.proxy.decisionLog.queued).toBe(2);
    await first.stop(); // the collector is still down: the events stay in dataDir/decision-log.sqlite
    const tags: Array<string | null> = [];
    const server = createServer((req, res) => {
      void body(req).then((b) => {
        tags.push(...(JSON.parse(gunzipSync(b).toString('utf8')) as Array<{ input: { image: { tag: string | null } } }>).map((e) => e.input.image.tag));
        res.writeHead(204).end();
      });
    });
    await new Promise<void>((r) => server.listen(port, '127.0.0.1', r));
    const second = await startProxy({ upstreams: [{ name: 'local', registry: reg.host, url: reg.url }], settings: allowAll, extra: { decisionLog }, dataDir });
    try {
      const deadline = Date.now() + 10_000;
      while (tags.length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      expect(tags).toEqual(['v1', 'latest']);
      expect(second.proxy.decisionLog.queued).toBe(0);
    } finally {
      await second.stop();
      server.close();
    }
  });

  test('with the collector down and the queue full, a decision that cannot be recorded is denied, and not cached', async () => {
    const port = await freePort(); // nothing listens there: every delivery is refused
    const px = await startProxy({
      upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
      settings: { no_match: 'deny', scopes: [{ name: 'all', images: ['**'] }] },
      extra: { decisionLog: { sink: 'http', url: `http://127.0.0.1:${port}/logs`, batchSize: 10, maxQueue: 1, onFull: 'block', blockTimeout: '300ms' } },
    });
    try {
      const pull = (ref: string): Promise<Response> => fetch(`${px.url}/v2/${reg.host}/demo/app/manifests/${ref}`, { headers: { accept: MANIFEST_ACCEPT } });
      // Room for one event: the first decision is recorded (queued) and served.
      const first = await pull('v1');
      await first.arrayBuffer();
      expect(first.status).toBe(200);
      // The queue is full and stays full: the next decision waits blockTimeout, then fails closed.
      const second = await pull('latest');
      expect(second.status).toBe(403);
      const err = ((await second.json()) as { errors: Array<{ code: string; message: string }> }).errors[0]!;
      expect(err.code).toBe('DENIED');
      expect(err.message).toContain('decision log unavailable [decision_log.unavailable]');
      // Not cached as a deny: the next pull decides (and waits) again.
      const third = await pull('latest');
      await third.arrayBuffer();
      expect(third.status).toBe(403);
      const metrics = await (await fetch(`${px.url}/metrics`)).text();
      expect(metrics).toMatch(/^portcullis_decision_log_refused_total 2$/m);
      expect(metrics).toMatch(/^portcullis_decision_log_dropped_total 0$/m);
      // The decision metrics (told after the log) count it as the deny it became.
      const denied = metrics.split('\n').find((l) => l.startsWith('portcullis_decisions_total{') && l.includes('rule="decision_log.unavailable"'));
      expect(denied).toContain('outcome="deny"');
      expect(denied).toMatch(/ 2$/);
      expect(px.proxy.decisionLog.queued).toBe(1);
    } finally {
      await px.stop();
    }
  });
});

describe('portcullis check', () => {
  test('exit 0 for allow, 1 for deny, 2 for an error; --json prints the evidence', async () => {
    const cfg = join(dir, 'check.yaml');
    await writeFile(
      cfg,
      JSON.stringify({
        dataDir: join(dir, 'check-data'),
        upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
        policy: { bundleFile: resolve('policies/bundle.tar.gz'), settings },
        log: { level: 'warn' },
      }),
    );
    const cli = resolve('dist/cli.js');
    const allow = await runTool('node', [cli, 'check', '--config', cfg, `${reg.host}/demo/app:v1`]);
    expect(allow.code, allow.stderr).toBe(0);
    expect(allow.stdout).toContain('decision:  ALLOW');
    const deny = await runTool('node', [cli, 'check', '--config', cfg, '--json', `${reg.host}/demo/app:latest`]);
    expect(deny.code).toBe(1);
    const report = JSON.parse(deny.stdout) as { outcome: string; deny: Array<{ rule: string }>; input: { image: { digest: string } } };
    expect(report.outcome).toBe('deny');
    expect(report.deny.map((d) => d.rule)).toEqual(['tag.denied']);
    expect(report.input.image.digest).toMatch(/^sha256:/);
    const byDigest = await runTool('node', [cli, 'check', '--config', cfg, `${reg.host}/demo/app@${img.digest}`]);
    expect(byDigest.code).toBe(0);
    const err = await runTool('node', [cli, 'check', '--config', cfg, `${reg.host}/demo/missing:v1`]);
    expect(err.code).toBe(2);
    expect(err.stderr).toContain('manifest unknown');
    const bad = await runTool('node', [cli, 'config', 'check', join(dir, 'nope.yaml')]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain('nope.yaml');
  });
});
