/**
 * The decision explorer (src/ui) without a browser: escaping of attacker-controlled strings, the ring's bounds and
 * filters, reading back the decision-log file, the admin-token check, the security headers, the CSRF guard of the
 * one state-changing form, and the live-update stream's limit. The real-browser test is test/e2e/ui.test.ts.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import type { DecisionObserver } from '../../src/gate/gate.js';
import { Metrics } from '../../src/metrics/metrics.js';
import { UiHandler, type UiTarget } from '../../src/ui/handler.js';
import { esc, html, shellQuote } from '../../src/ui/html.js';
import { DecisionRing, fromLogEvent } from '../../src/ui/ring.js';
import { checkCommand, decisionPage, decisionsPage, limitSeverities, rows } from '../../src/ui/views.js';

type Ev = Parameters<DecisionObserver['onDecision']>[0];

const XSS = `<script>alert("pwned")</script>`;
const QUOTE_BREAK = `" onmouseover="alert(1)`;

/** A decision event as the gate's observers get it; `over` changes the parts a test cares about. */
function event(o: {
  id: string;
  outcome?: string;
  repository?: string;
  tag?: string;
  rule?: string;
  message?: string;
  user?: string | null;
  ip?: string;
  upstream?: string;
  ua?: string;
}): Ev {
  const outcome = o.outcome ?? 'deny';
  const deny = outcome === 'allow' ? [] : [{ rule: o.rule ?? 'signature.required', message: o.message ?? 'no valid signature' }];
  return {
    admission: {
      decisionId: o.id,
      serve: outcome !== 'deny',
      outcome,
      message: deny[0]?.message ?? 'allowed',
      violations: deny,
      warnings: [],
      mode: 'enforce',
      cached: false,
    },
    input: {
      version: 1,
      now: '2026-12-07T00:00:00Z',
      request: {
        kind: 'manifest',
        method: 'GET',
        client: { ip: o.ip ?? '10.0.0.1', user: o.user ?? null, groups: [], method: o.user ? 'basic' : 'anonymous', user_agent: o.ua ?? 'containerd/1.7' },
        routing: 'prefix',
      },
      image: {
        registry: 'registry.test',
        repository: o.repository ?? 'team/app',
        tag: o.tag ?? 'v1',
        digest: `sha256:${'a'.repeat(64)}`,
        media_type: 'application/vnd.oci.image.manifest.v1+json',
        platforms: [],
        labels: {},
        created: null,
      },
      upstream: { name: o.upstream ?? 'test', url: 'http://127.0.0.1:1' },
      signatures: { status: 'none', verified: [], rejected: [{ authority: 'release-key', reason: `bad signature ${XSS}` }] },
      attestations: [],
      scan: {
        status: 'ok',
        counts: { CRITICAL: 1 },
        vulnerabilities: [
          { id: `CVE-2024-0727${XSS}`, severity: 'CRITICAL', package: 'openssl' },
          { id: 'CVE-2020-1', severity: 'LOW' },
        ],
      },
    },
    result: undefined,
    revision: 'rev-1',
    evalMs: 1,
    totalMs: 2,
    route: { upstream: { name: o.upstream ?? 'test' } },
  } as unknown as Ev;
}

describe('escaping', () => {
  test('an image name, a reason and a user agent with <script> and quotes render inert on every page', () => {
    const ring = new DecisionRing(10);
    ring.onDecision(
      event({
        id: 'd1',
        repository: `team/${XSS}`,
        tag: QUOTE_BREAK,
        message: `reason ${XSS} ${QUOTE_BREAK}`,
        ua: `"><img src=x onerror=alert(1)>`,
        user: `eve'; rm -rf / #`,
      }),
    );
    const r = ring.get('d1')!;
    const pages = [
      decisionsPage({ records: [r], matched: 1, held: 1, capacity: 10, filter: { image: XSS, rule: QUOTE_BREAK }, upstreams: ['test'] }),
      decisionPage(r),
      rows([r]).text,
    ];
    for (const p of pages) {
      expect(p).not.toContain('<script>alert');
      expect(p).not.toContain('<img src=x');
      // A quote never closes an attribute: every `"` from a value arrives as &quot;.
      expect(p).not.toContain('" onmouseover="');
      expect(p).toContain('&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;');
    }
    // The only <script> element on a page is the one that loads /ui/assets/ui.js.
    expect(pages[1]!.match(/<script/g)).toHaveLength(1);
  });

  test('html`` escapes values, keeps nested html, drops null, undefined and false', () => {
    expect(html`<p title="${'"x"'}">${'<b>'}${html`<i>${'&'}</i>`}${null}${undefined}${false}${[1, '<', 2]}</p>`.text).toBe(
      '<p title="&quot;x&quot;">&lt;b&gt;<i>&amp;</i>1&lt;2</p>',
    );
    expect(esc(`'\``)).toBe('&#39;&#96;');
  });

  test('the check command quotes names for the shell', () => {
    expect(shellQuote(`a'b`)).toBe(`'a'\\''b'`);
    const ring = new DecisionRing(2);
    ring.onDecision(event({ id: 'd', user: `eve'; rm -rf / #` }));
    expect(checkCommand(ring.get('d')!)).toBe(`portcullis check --as 'eve'\\''; rm -rf / #' --method basic registry.test/team/app:v1`);
  });
});

describe('ring', () => {
  test('keeps the last N, newest first; the oldest is forgotten', () => {
    const ring = new DecisionRing(3);
    for (let i = 1; i <= 5; i++) ring.onDecision(event({ id: `d${i}` }));
    expect(ring.size).toBe(3);
    expect(ring.list().records.map((r) => r.id)).toEqual(['d5', 'd4', 'd3']);
    expect(ring.get('d2')).toBeUndefined();
    expect(ring.get('d3')?.id).toBe('d3');
  });

  test('filters by outcome, rule, image, upstream and client', () => {
    const ring = new DecisionRing(10);
    ring.onDecision(event({ id: 'a', outcome: 'allow', repository: 'team/web', user: 'alice' }));
    ring.onDecision(
      event({ id: 'b', rule: 'scan.limit', message: '1 CRITICAL vulnerability exceeds limit 0', repository: 'team/db', upstream: 'hub', ip: '10.9.9.9' }),
    );
    ring.onDecision(event({ id: 'c', rule: 'signature.required', repository: 'other/db' }));
    const ids = (f: Parameters<DecisionRing['list']>[0]): string[] => ring.list(f).records.map((r) => r.id);
    expect(ids({ outcome: 'deny' })).toEqual(['c', 'b']);
    expect(ids({ rule: 'scan' })).toEqual(['b']);
    expect(ids({ image: 'DB' })).toEqual(['c', 'b']);
    expect(ids({ upstream: 'hub' })).toEqual(['b']);
    expect(ids({ client: 'alice' })).toEqual(['a']);
    expect(ids({ client: '10.9.9' })).toEqual(['b']);
    expect(ids({ outcome: 'deny', image: 'other' })).toEqual(['c']);
    expect(ring.list({}, 1)).toMatchObject({ matched: 3, records: [{ id: 'c' }] });
  });

  test('strings and lists are bounded: a 1 MB reason is not kept whole', () => {
    const ring = new DecisionRing(1);
    ring.onDecision(event({ id: 'big', message: 'x'.repeat(1_000_000) }));
    expect(ring.get('big')!.deny[0]!.message.length).toBeLessThanOrEqual(1024);
  });

  test('the findings that broke a limit are the severities a scan.limit entry names', () => {
    expect([
      ...limitSeverities([
        { rule: 'scan.limit', message: '2 fixable HIGH vulnerabilities (CVE-1, CVE-2) exceed limit 0' },
        { rule: 'other', message: '1 LOW vulnerability' },
      ]),
    ]).toEqual(['HIGH']);
    const ring = new DecisionRing(1);
    ring.onDecision(event({ id: 's', rule: 'scan.limit', message: '1 CRITICAL vulnerability (CVE-2024-0727) exceeds limit 0' }));
    const p = decisionPage(ring.get('s')!);
    const findings = /<table class="findings">[\s\S]*?<\/table>/.exec(p)![0];
    expect(findings).toContain('CVE-2024-0727');
    expect(findings).not.toContain('CVE-2020-1');
  });

  test('reads back the tail of the decision-log file; a torn line and foreign content are skipped', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'pc-ui-'));
    try {
      const line = (id: string): string =>
        JSON.stringify({
          decision_id: id,
          timestamp: '2026-12-07T10:00:00Z',
          outcome: 'deny',
          upstream: 'test',
          bundles: { portcullis: { revision: 'r9' } },
          input: event({ id }).input,
          result: { allow: false, deny: [{ rule: 'scan.limit', message: 'm' }], warn: [], mode: 'enforce' },
        });
      await writeFile(join(dir, 'd.log'), `${line('old1')}\nnot json\n${JSON.stringify({ other: 1 })}\n${line('old2')}\n${line('old3').slice(0, 40)}`);
      const ring = new DecisionRing(10);
      expect(ring.loadLogFile(join(dir, 'd.log'))).toBe(2);
      expect(ring.list().records.map((r) => [r.id, r.source, r.revision, r.deny[0]?.rule])).toEqual([
        ['old2', 'log', 'r9', 'scan.limit'],
        ['old1', 'log', 'r9', 'scan.limit'],
      ]);
      expect(ring.loadLogFile(join(dir, 'missing.log'))).toBe(0);
      expect(fromLogEvent('nonsense')).toBeUndefined();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('handler', () => {
  const TOKEN = 'ui-admin-token-3c1d';
  process.env.PC_UI_TEST_ADMIN = TOKEN;
  let server: Server;
  let base: string;
  let checks = 0;
  const ring = new DecisionRing(10);
  const config = (withToken: boolean): ReturnType<typeof parseConfig> =>
    parseConfig(
      JSON.stringify({
        upstreams: [{ name: 'test', registry: 'registry.test', url: 'http://127.0.0.1:9' }],
        ...(withToken ? { scan: { admin: { token: { env: 'PC_UI_TEST_ADMIN' } } } } : {}),
      }),
      't.yaml',
    );
  const target: UiTarget = {
    metrics: new Metrics(),
    policy: () => ({ revision: 'rev-1', last: { ok: true, at: '2026-12-07T00:00:00Z' } }),
    cache: () => ({ bytes: 0, entries: 0 }),
    reevaluate: () => Promise.reject(new Error('not in this test')),
    check: () => {
      checks++;
      return Promise.reject(new Error('not in this test'));
    },
  };
  const ui = new UiHandler({ config: config(true), ring, log: pino({ level: 'silent' }), target: () => target });
  const off = new UiHandler({ config: config(false), ring, log: pino({ level: 'silent' }), target: () => target });
  const basic = (user: string, pass: string): string => `Basic ${Buffer.from(`${user}:${pass}`).toString('base64')}`;

  beforeAll(async () => {
    server = createServer((req, res) => {
      const h = req.url?.startsWith('/off/') ? off : ui;
      if (req.url?.startsWith('/off/')) req.url = req.url.slice(4);
      void h.handle(req, res, new URL(req.url ?? '/', 'http://x')).then((mine) => {
        if (!mine) res.writeHead(404).end('not ui');
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    ring.onDecision(event({ id: 'h1', repository: `team/${XSS}` }));
  });
  afterAll(async () => {
    ui.close();
    await new Promise((r) => server.close(r));
  });

  test('the admin token is required: none or a wrong one gets a Basic challenge; Basic (any user) or Bearer passes', async () => {
    const none = await fetch(`${base}/ui/`);
    expect(none.status).toBe(401);
    expect(none.headers.get('www-authenticate')).toMatch(/^Basic realm="portcullis"/);
    expect(await none.text()).not.toContain('team/');
    expect((await fetch(`${base}/ui/`, { headers: { authorization: basic('admin', 'wrong') } })).status).toBe(401);
    expect((await fetch(`${base}/ui/`, { headers: { authorization: `Bearer ${TOKEN}x` } })).status).toBe(401);
    expect((await fetch(`${base}/ui/`, { headers: { authorization: basic('anyone', TOKEN) } })).status).toBe(200);
    const ok = await fetch(`${base}/ui/decision/h1`, { headers: { authorization: `Bearer ${TOKEN}` } });
    expect(ok.status).toBe(200);
    expect(await ok.text()).toContain('team/&lt;script&gt;');
    // Not /ui: not the explorer's.
    expect(await (await fetch(`${base}/uix`)).text()).toBe('not ui');
  });

  test('a refused POST closes the connection, since its body was never read; a refused GET keeps it', async () => {
    const post = await fetch(`${base}/ui/try`, { method: 'POST', body: 'x'.repeat(100_000) });
    await post.text();
    expect(post.status).toBe(401);
    expect(post.headers.get('connection')).toBe('close');
    const get = await fetch(`${base}/ui/`);
    await get.text();
    expect(get.headers.get('connection')).toBe('keep-alive');
  });

  test('without an admin token configured, /ui is not served to anyone', async () => {
    const r = await fetch(`${base}/off/ui/`, { headers: { authorization: basic('a', TOKEN) } });
    expect(r.status).toBe(404);
    expect(await r.text()).not.toContain('team/');
  });

  test('every answer carries the CSP, nosniff, no framing and no-store; assets are same-origin files', async () => {
    for (const path of ['/ui/', '/ui/decision/h1', '/ui/nope', '/ui/assets/ui.js']) {
      const r = await fetch(`${base}${path}`, { headers: { authorization: basic('a', TOKEN) } });
      expect(r.headers.get('content-security-policy')).toContain("frame-ancestors 'none'");
      expect(r.headers.get('content-security-policy')).toContain("script-src 'self'");
      expect(r.headers.get('content-security-policy')).not.toContain('unsafe-inline');
      expect(r.headers.get('x-content-type-options')).toBe('nosniff');
      expect(r.headers.get('x-frame-options')).toBe('DENY');
      expect(r.headers.get('cache-control')).toBe('no-store');
    }
    const unauth = await fetch(`${base}/ui/`);
    expect(unauth.headers.get('content-security-policy')).toContain("default-src 'none'");
  });

  test('the try form runs nothing on GET, and a POST needs the page token from the same origin', async () => {
    const auth = { authorization: basic('a', TOKEN) };
    const form = await (await fetch(`${base}/ui/try?ref=registry.test/team/app:v1`, { headers: auth })).text();
    expect(checks).toBe(0);
    const csrf = /name="csrf" value="([^"]+)"/.exec(form)![1]!;
    const post = (body: string, extra: Record<string, string> = {}): Promise<Response> =>
      fetch(`${base}/ui/try`, { method: 'POST', headers: { ...auth, 'content-type': 'application/x-www-form-urlencoded', ...extra }, body });
    expect((await post('ref=registry.test/team/app:v1')).status).toBe(403);
    expect((await post(`ref=registry.test/team/app:v1&csrf=${csrf}x`)).status).toBe(403);
    expect((await post(`ref=registry.test/team/app:v1&csrf=${csrf}`, { 'sec-fetch-site': 'cross-site' })).status).toBe(403);
    expect((await post(`ref=registry.test/team/app:v1&csrf=${csrf}`, { origin: 'https://evil.example' })).status).toBe(403);
    expect((await post(`ref=registry.test/team/app:v1&csrf=${csrf}`, { origin: 'null' })).status).toBe(403);
    expect(checks).toBe(0);
    // With the token, the check runs (and its failure is shown without the server's details).
    const ok = await post(`ref=registry.test/team/app:v1&csrf=${encodeURIComponent(csrf)}`, { 'sec-fetch-site': 'same-origin' });
    expect(checks).toBe(1);
    expect(await ok.text()).toContain('see the server log');
    expect((await fetch(`${base}/ui/`, { method: 'POST', headers: auth })).status).toBe(405);
  });

  test('live updates: a new decision is pushed to the stream; streams beyond the limit get 429', async () => {
    const auth = { authorization: basic('a', TOKEN) };
    const ac = new AbortController();
    const first = await fetch(`${base}/ui/events`, { headers: auth, signal: ac.signal });
    expect(first.headers.get('content-type')).toMatch(/^text\/event-stream/);
    const reader = first.body!.getReader();
    ring.onDecision(event({ id: 'pushed' }));
    let text = '';
    const dec = new TextDecoder();
    for (let i = 0; i < 10 && !text.includes('pushed'); i++) text += dec.decode((await reader.read()).value as Uint8Array);
    expect(text).toContain('event: decision\ndata: {"id":"pushed","outcome":"deny"}');
    const more: AbortController[] = [];
    for (let i = 0; i < 15; i++) {
      const c = new AbortController();
      more.push(c);
      expect((await fetch(`${base}/ui/events`, { headers: auth, signal: c.signal })).status).toBe(200);
    }
    expect((await fetch(`${base}/ui/events`, { headers: auth })).status).toBe(429);
    ac.abort();
    for (const c of more) c.abort();
  });
});
