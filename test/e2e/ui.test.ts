/**
 * e2e: the decision explorer (/ui) in a real browser. Debian's Chromium, driven by playwright-core with the system
 * binary (never a downloaded browser; the test fails if /usr/bin/chromium is missing), against a real CNCF
 * Distribution upstream and the proxy with the committed policy bundle:
 *
 * - crane pulls an unsigned image under a require-signature scope through the proxy and is denied; an image with a
 *   CRITICAL in its pushed Trivy report is denied too; another image is allowed;
 * - the page lists those denials with their reasons, newest first, and a pull made while the page is open appears
 *   without a reload (live updates);
 * - the filters (outcome, rule, image, upstream, client) and the detail view (evidence, the findings over a limit,
 *   the check command) work; the cached-images and health pages show the re-evaluation and the proxy's state;
 * - the "try an image" form gives the verdict the CLI `portcullis check` gives for the same image;
 * - with JavaScript disabled, every read-only view still works;
 * - a decision whose image name, tag, reason and user agent carry <script>, event handlers and quotes runs nothing
 *   in the browser and shows those strings as text.
 *
 * Screenshots of the main views go to test-output/ui/ (git-ignored).
 */
import { generateKeyPairSync } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { Metrics } from '../../src/metrics/metrics.js';
import { UiHandler } from '../../src/ui/handler.js';
import { DecisionRing, fromLogEvent } from '../../src/ui/ring.js';
import { cranePull, runTool } from '../harness/clients.js';
import { MANIFEST_ACCEPT, pushImage, type PushedImage } from '../harness/images.js';
import { startProxy, type RunningProxy } from '../harness/proxy.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';

const CHROMIUM = '/usr/bin/chromium';
const SHOTS = resolve('test-output/ui');
const REPORT_TOKEN = 'ui-e2e-report-token-5a7e';
const ADMIN_TOKEN = 'ui-e2e-admin-token-8d21';
process.env.PC_UI_E2E_REPORT_TOKEN = REPORT_TOKEN;
process.env.PC_UI_E2E_ADMIN_TOKEN = ADMIN_TOKEN;
const ALIAS = 'upstream.ui';
const CVE = 'CVE-2024-0727';
const ZERO = `sha256:${'0'.repeat(64)}`;
/** How long a page may take to show what the server already has (2 shared cores, a browser, a registry). */
const POLL = { timeout: 20_000, interval: 100 };

const settings = {
  no_match: 'deny',
  scopes: [
    { name: 'signed', images: ['*/signed/**'], signatures: { authorities: ['release'] } },
    { name: 'scanned', images: ['*/scanned/**'], scan: {} },
    { name: 'open', images: ['**'] },
  ],
};

let dir: string;
let reg: RunningRegistry;
let px: RunningProxy;
let browser: Browser;
let ctx: BrowserContext;
let cfgFile: string;
const img: Record<string, PushedImage> = {};
let deniedId = '';

function extra(keyPath: string): Record<string, unknown> {
  return {
    signatures: { authorities: [{ name: 'release', kind: 'key', key: keyPath }] },
    scan: { order: ['reports'], reports: { token: { env: 'PC_UI_E2E_REPORT_TOKEN' } }, admin: { token: { env: 'PC_UI_E2E_ADMIN_TOKEN' } } },
  };
}

async function pull(repo: string): Promise<{ status: number; id: string }> {
  const res = await fetch(`${px.url}/v2/${reg.host}/${repo}/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT } });
  await res.arrayBuffer();
  return { status: res.status, id: res.headers.get('portcullis-decision-id') ?? '' };
}

async function shot(page: Page, name: string): Promise<void> {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
}

beforeAll(async () => {
  // No skip: without the system browser this test fails here, naming what to install.
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: install Debian's chromium (scripts/install-tools.sh test)`);
  await mkdir(SHOTS, { recursive: true });
  dir = await mkdtemp(join(tmpdir(), 'pc-ui-e2e-'));
  const keyPath = join(dir, 'release.pub');
  await writeFile(keyPath, generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ format: 'pem', type: 'spki' }) as string);
  reg = await startRegistry();
  img.unsigned = await pushImage(reg.url, 'signed/app', 'v1');
  img.vuln = await pushImage(reg.url, 'scanned/app', 'v1');
  img.open = await pushImage(reg.url, 'open/app', 'v1');
  img.later = await pushImage(reg.url, 'open/later', 'v1');
  const upstreams = [{ name: 'local', registry: reg.host, url: reg.url, aliases: [ALIAS] }];
  px = await startProxy({ upstreams, settings, extra: extra(keyPath) });
  // The same configuration for the CLI, with a data directory of its own.
  cfgFile = join(dir, 'cli.yaml');
  await writeFile(
    cfgFile,
    JSON.stringify({
      listen: '127.0.0.1:0',
      dataDir: join(dir, 'cli-data'),
      upstreams,
      decisionLog: { sink: 'none' },
      log: { level: 'warn' },
      policy: { bundleFile: resolve('policies/bundle.tar.gz'), settings },
      ...extra(keyPath),
    }),
  );
  browser = await chromium.launch({ executablePath: CHROMIUM });
  ctx = await browser.newContext({ httpCredentials: { username: 'admin', password: ADMIN_TOKEN }, viewport: { width: 1440, height: 900 } });
});

afterAll(async () => {
  await browser?.close();
  await px?.stop();
  await reg?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('decision explorer in Chromium', () => {
  test('denials made by real pulls appear with their reasons', async () => {
    const pulled = await cranePull(`${px.host}/${ALIAS}/signed/app:v1`, join(dir, 'unsigned.tar'));
    expect(pulled.code).not.toBe(0);
    expect(pulled.stderr).toContain('DENIED');
    const report = readFileSync('test/fixtures/scan/trivy-critical.json', 'utf8')
      .replaceAll(`registry.example/demo/app@${ZERO}`, `${reg.host}/scanned/app@${img.vuln!.digest}`)
      .replace(/"CreatedAt": "[^"]+"/, `"CreatedAt": "${new Date().toISOString()}"`);
    const put = await fetch(`${px.url}/api/v1/reports/${reg.host}/scanned/app@${img.vuln!.digest}`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${REPORT_TOKEN}`, 'content-type': 'application/json' },
      body: report,
    });
    expect(put.status).toBe(201);
    expect((await pull('scanned/app')).status).toBe(403);
    expect((await pull('open/app')).status).toBe(200);

    const page = await ctx.newPage();
    expect((await page.goto(`${px.url}/ui/`))!.status()).toBe(200);
    const rows = page.locator('tr.decision');
    // Newest first: the allowed pull, the CRITICAL, then crane's unsigned image.
    expect(await rows.evaluateAll((trs: Array<{ getAttribute(name: string): string | null }>) => trs.map((t) => t.getAttribute('data-outcome')))).toEqual([
      'allow',
      'deny',
      'deny',
    ]);
    const unsigned = rows.filter({ hasText: 'signed/app:v1' }).filter({ hasText: 'signature.required' });
    await expect.poll(() => unsigned.count(), POLL).toBe(1);
    deniedId = (await unsigned.getAttribute('data-id'))!;
    expect(await unsigned.locator('td.reason').innerText()).toMatch(/^signature\.required .*signature/);
    expect(await rows.filter({ hasText: 'scanned/app:v1' }).locator('td.reason').innerText()).toContain(`1 CRITICAL vulnerability (${CVE}) exceeds limit 0`);
    // The script ran and holds a live stream open.
    await expect.poll(() => page.locator('#live').innerText(), POLL).toBe('● live');

    // A pull made while the page is open appears without a reload.
    const later = await pull('open/later');
    expect(later.status).toBe(200);
    await page.locator(`tr.decision[data-id="${later.id}"]`).waitFor({ timeout: POLL.timeout });
    expect(await rows.first().getAttribute('data-id')).toBe(later.id);
    await expect.poll(() => page.locator('#summary').innerText(), POLL).toMatch(/^4 matching of 4 held/);
    await shot(page, 'decisions');
    await page.close();
  });

  test('the filters narrow the list by outcome, rule, image, upstream and client', async () => {
    const page = await ctx.newPage();
    await page.goto(`${px.url}/ui/`);
    await page.selectOption('select[name=outcome]', 'deny');
    await Promise.all([page.waitForURL(/outcome=deny/), page.click('form.filters button')]);
    const outcomes = (): Promise<Array<string | null>> =>
      page.locator('tr.decision').evaluateAll((trs: Array<{ getAttribute(name: string): string | null }>) => trs.map((t) => t.getAttribute('data-outcome')));
    expect(await outcomes()).toEqual(['deny', 'deny']);
    await page.fill('input[name=rule]', 'scan.limit');
    await Promise.all([page.waitForURL(/rule=scan.limit/), page.click('form.filters button')]);
    expect(await page.locator('tr.decision').count()).toBe(1);
    expect(await page.locator('tr.decision td.img').innerText()).toContain('scanned/app:v1');
    // The form keeps what was asked.
    expect(await page.inputValue('input[name=rule]')).toBe('scan.limit');
    expect(await page.locator('select[name=outcome]').inputValue()).toBe('deny');

    await page.goto(`${px.url}/ui/?image=open/`);
    expect(await page.locator('tr.decision').count()).toBe(2);
    await page.goto(`${px.url}/ui/?upstream=local&client=127.0.0.1`);
    expect(await page.locator('tr.decision').count()).toBe(4);
    await page.goto(`${px.url}/ui/?client=nobody-like-this`);
    expect(await page.locator('tr.decision').count()).toBe(0);
    expect(await page.locator('#rows').innerText()).toContain('No decisions match');
    await page.close();
  });

  test('the detail view shows the evidence, each deny entry and the check command', async () => {
    expect(deniedId, 'the first test found the denial').not.toBe('');
    const page = await ctx.newPage();
    await page.goto(`${px.url}/ui/`);
    await Promise.all([page.waitForURL(/\/ui\/decision\//), page.locator(`tr.decision[data-id="${deniedId}"] a.details`).click()]);
    expect(await page.locator('#decision-id').innerText()).toBe(deniedId);
    expect(await page.locator('dl.facts').innerText()).toContain(img.unsigned!.digest);
    expect(await page.locator('dl.facts').innerText()).toContain(px.proxy.policy.revision);
    expect(await page.locator('table.deny-entries').innerText()).toContain('signature.required');
    expect(await page.locator('#check-command').innerText()).toBe(`portcullis check ${reg.host}/signed/app:v1`);
    await shot(page, 'decision-signature');

    await page.goto(`${px.url}/ui/?rule=scan.limit`);
    await Promise.all([page.waitForURL(/\/ui\/decision\//), page.locator('tr.decision a.details').first().click()]);
    const findings = await page.locator('table.findings').innerText();
    expect(findings).toContain(CVE);
    expect(findings).toContain('CRITICAL');
    expect(await page.locator('table.counts').innerText()).toMatch(/CRITICAL[\s\S]*1/);
    await shot(page, 'decision-scan');
    await page.close();
  });

  test('cached images under the current policy, and health', async () => {
    const page = await ctx.newPage();
    await page.goto(`${px.url}/ui/images`);
    const text = await page.locator('#images').innerText();
    expect(text).toContain(`${reg.host}/open/app:v1@${img.open!.digest}`);
    expect(await page.locator('#reeval-summary').innerText()).toContain(px.proxy.policy.revision);
    // The same report as the admin API's.
    const api = (await (await fetch(`${px.url}/api/v1/admin/reevaluate?all=1`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).json()) as {
      evaluated: number;
      images: Array<{ image: string; outcome: string }>;
    };
    expect(await page.locator('tr.image').count()).toBe(api.evaluated);
    for (const e of api.images) expect(await page.locator(`tr.image[data-outcome="${e.outcome}"]`).filter({ hasText: e.image }).count()).toBe(1);
    await shot(page, 'images');

    await page.goto(`${px.url}/ui/health`);
    expect(await page.locator('#health-policy').innerText()).toContain(px.proxy.policy.revision);
    expect(await page.locator('#health-policy').innerText()).toContain('ok');
    const upstreams = await page.locator('#health-upstreams').innerText();
    expect(upstreams).toContain('local');
    expect(upstreams).toContain('reachable');
    expect(await page.locator('#health-cache').innerText()).toMatch(/blobs/);
    await shot(page, 'health');
    await page.close();
  });

  test('the try form gives the verdict of the CLI `portcullis check`', async () => {
    const ref = `${reg.host}/signed/app:v1`;
    const cli = await runTool('node', [resolve('dist/cli.js'), 'check', '--config', cfgFile, '--json', ref], { env: { ...process.env } });
    expect(cli.code, cli.stderr).toBe(1);
    const want = JSON.parse(cli.stdout) as { outcome: string; deny: Array<{ rule: string; message: string }> };
    expect(want.outcome).toBe('deny');

    const page = await ctx.newPage();
    await page.goto(`${px.url}/ui/try`);
    await page.fill('input[name=ref]', ref);
    await Promise.all([page.waitForURL(/\/ui\/try$/), page.click('form button')]);
    await page.locator('#try-output, .error-box').first().waitFor();
    expect(await page.locator('.error-box').count(), await page.locator('main').innerText()).toBe(0);
    const out = await page.locator('#try-output').innerText();
    expect(out).toContain(`decision:  ${want.outcome.toUpperCase()} `);
    for (const v of want.deny) expect(out).toContain(`  deny  ${v.rule}: ${v.message}`);
    expect(out.match(/^ {2}deny /gm)).toHaveLength(want.deny.length);
    await shot(page, 'try');

    // And an allowed image: both allow.
    const okRef = `${reg.host}/open/app:v1`;
    const okCli = await runTool('node', [resolve('dist/cli.js'), 'check', '--config', cfgFile, '--json', okRef], { env: { ...process.env } });
    expect(okCli.code, okCli.stderr).toBe(0);
    await page.fill('input[name=ref]', okRef);
    await Promise.all([page.waitForURL(/\/ui\/try$/), page.click('form button')]);
    const okWant = (JSON.parse(okCli.stdout) as { outcome: string }).outcome;
    expect(okWant).toBe('allow');
    await expect.poll(() => page.locator('#try-output').innerText(), POLL).toContain(`image:     ${okRef}@`);
    expect(await page.locator('#try-output').innerText()).toContain(`decision:  ${okWant.toUpperCase()} `);
    await page.close();
  });

  test('without JavaScript, every read-only view works', async () => {
    const noJs = await browser.newContext({
      javaScriptEnabled: false,
      httpCredentials: { username: 'admin', password: ADMIN_TOKEN },
      viewport: { width: 1440, height: 900 },
    });
    try {
      const page = await noJs.newPage();
      await page.goto(`${px.url}/ui/`);
      // The script did not run: no live stream.
      expect(await page.locator('#live').innerText()).toBe('');
      expect(await page.locator(`tr.decision[data-id="${deniedId}"]`).count()).toBe(1);
      await page.selectOption('select[name=outcome]', 'allow');
      await Promise.all([page.waitForURL(/outcome=allow/), page.click('form.filters button')]);
      // The two allowed pulls, and the try form's check of open/app unless it was answered from the decision cache.
      const allowed = await page
        .locator('tr.decision')
        .evaluateAll((trs: Array<{ getAttribute(name: string): string | null }>) => trs.map((t) => t.getAttribute('data-outcome')));
      expect(allowed.length).toBeGreaterThanOrEqual(2);
      expect(new Set(allowed)).toEqual(new Set(['allow']));
      await page.goto(`${px.url}/ui/decision/${deniedId}`);
      expect(await page.locator('table.deny-entries').innerText()).toContain('signature.required');
      await page.goto(`${px.url}/ui/images`);
      expect(await page.locator('tr.image').count()).toBeGreaterThan(0);
      await page.goto(`${px.url}/ui/health`);
      expect(await page.locator('#health-policy').innerText()).toContain(px.proxy.policy.revision);
      await shot(page, 'health-nojs');
    } finally {
      await noJs.close();
    }
  });
});

describe('hostile strings in the browser', () => {
  test('an image name, tag, reason and user agent with <script>, handlers and quotes render as inert text', async () => {
    const payload = (n: number): string => `<script>window.__xss=${n}</script><img src=x onerror="window.__xss=${n + 10}">`;
    const ring = new DecisionRing(10);
    ring.add(
      fromLogEvent({
        decision_id: 'xss-1',
        timestamp: new Date().toISOString(),
        outcome: 'deny',
        upstream: 'local',
        bundles: { portcullis: { revision: `r${payload(1)}` } },
        input: {
          request: { kind: 'manifest', client: { ip: '10.0.0.1', user: `eve"${payload(2)}`, groups: [], method: 'basic', user_agent: payload(3) } },
          image: { registry: 'registry.test', repository: `team/${payload(4)}`, tag: `v1" autofocus onfocus="window.__xss=5`, digest: null, platforms: [] },
          signatures: { status: 'none', verified: [], rejected: [{ authority: payload(6), reason: payload(7) }] },
          attestations: [],
          scan: { status: 'ok', counts: {}, vulnerabilities: [] },
        },
        result: { deny: [{ rule: `rule${payload(8)}`, message: `reason ${payload(9)} "quoted" 'single'` }], warn: [], mode: 'enforce' },
      })!,
    );
    const config = parseConfig(
      JSON.stringify({
        upstreams: [{ name: 'local', registry: 'registry.test', url: 'http://127.0.0.1:9' }],
        scan: { admin: { token: { env: 'PC_UI_E2E_ADMIN_TOKEN' } } },
      }),
      'xss.yaml',
    );
    const ui = new UiHandler({
      config,
      ring,
      log: pino({ level: 'silent' }),
      target: () => ({
        metrics: new Metrics(),
        policy: () => ({ revision: 'r', last: undefined }),
        cache: () => ({ bytes: 0, entries: 0 }),
        reevaluate: () => Promise.reject(new Error('unused')),
        check: () => Promise.reject(new Error('unused')),
      }),
    });
    // A handler that throws answers 500 at once (and the test fails on the status) instead of leaving the browser
    // waiting for a response that never comes.
    const server = createServer((req, res) => {
      ui.handle(req, res, new URL(req.url ?? '/', 'http://x')).catch((e: unknown) => {
        if (!res.headersSent) res.writeHead(500);
        res.end(String(e));
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const page = await ctx.newPage();
    // Bounded: a stuck navigation fails with its own message well inside the test's timeout.
    page.setDefaultTimeout(30_000);
    const dialogs: string[] = [];
    page.on('dialog', (d) => {
      dialogs.push(d.message());
      void d.dismiss();
    });
    try {
      for (const path of ['/ui/', '/ui/?image=%3Cscript%3E', '/ui/decision/xss-1']) {
        expect((await page.goto(`${base}${path}`))!.status()).toBe(200);
        expect(await page.evaluate('window.__xss')).toBeUndefined();
        // No element came from the strings: the only <script> is the page's own, and no <img> at all.
        expect(await page.locator('script').count()).toBe(1);
        expect(await page.locator('img').count()).toBe(0);
        expect(await page.locator('[onfocus], [onerror], [autofocus]').count()).toBe(0);
      }
      // The strings are there, as text.
      const main = await page.locator('main').innerText();
      expect(main).toContain(`team/${payload(4)}`);
      expect(main).toContain(`reason ${payload(9)} "quoted" 'single'`);
      expect(main).toContain(payload(7));
      expect(await page.locator('#check-command').innerText()).toContain(`--as 'eve"${payload(2)}'`);
      expect(dialogs).toEqual([]);
      await shot(page, 'xss-inert');
    } finally {
      await page.close();
      ui.close();
      await new Promise((r) => server.close(r));
    }
  });
});
