/**
 * e2e: vulnerability evidence gating pulls, against a real CNCF Distribution upstream, the proxy in-process with
 * the committed policy bundle, the report API, and the Harbor Pluggable Scanner test double (test/harness/scanner.ts:
 * a double because no vulnerability database can be reached here). Reports are the Trivy JSON and SARIF fixtures
 * (test/fixtures/scan/), bound to the pushed digests.
 *
 * - 1 CRITICAL → denied, the message names the CVE (HTTP and crane);
 * - the CVE excepted until a future date → allowed; expired (a past date, or the proxy's clock moved past it) →
 *   denied again;
 * - on_pending: wait → allowed when the scanner's report (or a pushed report) arrives in time, denied with
 *   "scan pending" when it does not; an index is scanned per platform;
 * - a report naming another digest → 400; the report API's auth, listing, deletion and limits;
 * - the scanner down → on_error deny denies, on_error warn allows with a warning;
 * - re-evaluation (admin endpoint and `portcullis report`) lists cached images that would now be denied; metrics.
 */
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { DecisionObserver } from '../../src/gate/gate.js';
import { cranePull, runTool } from '../harness/clients.js';
import { MANIFEST_ACCEPT, pushImage, pushIndex, type PushedImage, type PushedIndex } from '../harness/images.js';
import { startProxy, type RunningProxy } from '../harness/proxy.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';
import { startScannerDouble, type ScannerDouble } from '../harness/scanner.js';
import { until } from '../harness/wait.js';

const REPORT_TOKEN = 'ci-report-token-4f1c';
const ADMIN_TOKEN = 'admin-token-9b2e';
process.env.PC_E2E_REPORT_TOKEN = REPORT_TOKEN;
process.env.PC_E2E_ADMIN_TOKEN = ADMIN_TOKEN;

const DAY = 86_400_000;
const FUTURE = new Date(Date.now() + 30 * DAY).toISOString();
const PAST = new Date(Date.now() - DAY).toISOString();
const CVE = 'CVE-2024-0727';
const ignore = (expires: string): unknown => ({ id: CVE, owner: 'sec-team', reason: 'openssl PKCS12 parsing is not reachable', expires });

const settings = {
  no_match: 'deny',
  scopes: [
    { name: 'excepted', images: ['*/demo/excepted'], scan: { ignore_cves: [ignore(FUTURE)] } },
    { name: 'expired', images: ['*/demo/expired'], scan: { ignore_cves: [ignore(PAST)] } },
    { name: 'wait-short', images: ['*/demo/wait-slow'], scan: { on_pending: 'wait', wait_seconds: 2 } },
    { name: 'wait', images: ['*/demo/wait-*', '*/demo/multi'], scan: { on_pending: 'wait', wait_seconds: 8 } },
    { name: 'down-warn', images: ['*/demo/down-warn'], scan: { on_error: 'warn' } },
    // `scan: {}`: the default limits (no CRITICAL), and deny when missing, pending, stale or failed.
    { name: 'scanned', images: ['**'], scan: {} },
  ],
};

const trivyFixture = readFileSync('test/fixtures/scan/trivy-critical.json', 'utf8');
const sarifFixture = readFileSync('test/fixtures/scan/trivy-critical.sarif', 'utf8');
const cleanFixture = readFileSync('test/fixtures/scan/trivy-clean.json', 'utf8');
const ZERO = `sha256:${'0'.repeat(64)}`;

/** A fixture as CI would produce it for this image: its digest and repository, scanned now. */
function boundReport(fixture: string, ref: string, digest: string): string {
  return fixture
    .replaceAll(`registry.example/demo/app@${ZERO}`, `${ref}@${digest}`)
    .replace(/"CreatedAt": "[^"]+"/, `"CreatedAt": "${new Date().toISOString()}"`);
}

let reg: RunningRegistry;
let scanner: ScannerDouble;
let px: RunningProxy;
const images: Record<string, PushedImage> = {};
let multi: PushedIndex;
const decisions: Array<Parameters<DecisionObserver['onDecision']>[0]> = [];

function scanConfig(scannerUrl: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    scan: {
      order: ['reports', 'scanner'],
      reports: { token: { env: 'PC_E2E_REPORT_TOKEN' }, maxSize: '64KiB' },
      scanner: { url: scannerUrl, pollInterval: '200ms', retryAfterError: '1s' },
      admin: { token: { env: 'PC_E2E_ADMIN_TOKEN' } },
      ...extra,
    },
  };
}

async function pushReport(p: RunningProxy, repo: string, digest: string, body: string, opts: { token?: string; contentType?: string } = {}): Promise<Response> {
  return fetch(`${p.url}/api/v1/reports/${reg.host}/${repo}@${digest}`, {
    method: 'PUT',
    headers: { authorization: `Bearer ${opts.token ?? REPORT_TOKEN}`, 'content-type': opts.contentType ?? 'application/json' },
    body,
  });
}

async function pull(p: RunningProxy, repo: string, ref = 'v1', method = 'GET'): Promise<{ status: number; error?: { code: string; message: string } }> {
  const res = await fetch(`${p.url}/v2/${reg.host}/${repo}/manifests/${ref}`, { method, headers: { accept: MANIFEST_ACCEPT } });
  if (res.status === 200 || method === 'HEAD') {
    await res.arrayBuffer();
    return { status: res.status };
  }
  const body = (await res.json()) as { errors: Array<{ code: string; message: string }> };
  return { status: res.status, error: body.errors[0]! };
}

beforeAll(async () => {
  reg = await startRegistry();
  scanner = await startScannerDouble({ delayMs: 1_500, refreshAfter: 1 });
  for (const name of ['vuln', 'sarif', 'excepted', 'expired', 'wait-ok', 'wait-report', 'wait-slow', 'down-deny', 'down-warn', 'other']) {
    images[name] = await pushImage(reg.url, `demo/${name}`, 'v1');
  }
  multi = await pushIndex(reg.url, 'demo/multi', 'v1', [
    { os: 'linux', architecture: 'amd64' },
    { os: 'linux', architecture: 'arm64' },
  ]);
  px = await startProxy({
    // crane cannot parse a host:port as a path component: it names the upstream by an alias.
    upstreams: [{ name: 'local', registry: reg.host, url: reg.url, aliases: ['upstream.scan'] }],
    settings,
    extra: scanConfig(scanner.url),
    observers: [{ onDecision: (e) => decisions.push(e) }],
  });
});

afterAll(async () => {
  await px?.stop();
  await scanner?.stop();
  await reg?.stop();
});

describe('vulnerability limits and CVE exceptions', () => {
  test('an image with 1 CRITICAL is denied and the message names the CVE', async () => {
    const put = await pushReport(px, 'demo/vuln', images.vuln!.digest, boundReport(trivyFixture, `${reg.host}/demo/vuln`, images.vuln!.digest));
    expect(put.status).toBe(201);
    const stored = (await put.json()) as { format: string; bound: boolean; summary: { counts: Record<string, number> } };
    expect(stored).toMatchObject({ format: 'trivy', bound: true, summary: { counts: { CRITICAL: 1, HIGH: 1, MEDIUM: 2, LOW: 1, UNKNOWN: 0 } } });

    const r = await pull(px, 'demo/vuln');
    expect(r.status).toBe(403);
    expect(r.error!.code).toBe('DENIED');
    expect(r.error!.message).toContain(`1 CRITICAL vulnerability (${CVE}) exceeds limit 0 [scan.limit]`);
    // The scanner is never asked when a fresh report answers.
    expect(scanner.scans.filter((s) => s.artifact.digest === images.vuln!.digest)).toEqual([]);

    // A real client shows the reason on one line.
    const dir = await mkdtemp(join(tmpdir(), 'pc-scan-crane-'));
    try {
      const c = await cranePull(`${px.host}/upstream.scan/demo/vuln:v1`, join(dir, 'img.tar'));
      expect(c.code).not.toBe(0);
      expect(c.stderr).toContain('DENIED');
      expect(c.stderr).toContain(CVE);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('a SARIF report works the same way', async () => {
    const put = await pushReport(px, 'demo/sarif', images.sarif!.digest, boundReport(sarifFixture, `${reg.host}/demo/sarif`, images.sarif!.digest), {
      contentType: 'application/sarif+json',
    });
    expect(put.status).toBe(201);
    expect(((await put.json()) as { format: string }).format).toBe('sarif');
    const r = await pull(px, 'demo/sarif');
    expect(r.status).toBe(403);
    expect(r.error!.message).toContain(`1 CRITICAL vulnerability (${CVE}) exceeds limit 0`);
  });

  test('with that CVE excepted until a future date, it is allowed', async () => {
    expect(
      (await pushReport(px, 'demo/excepted', images.excepted!.digest, boundReport(trivyFixture, `${reg.host}/demo/excepted`, images.excepted!.digest))).status,
    ).toBe(201);
    const r = await pull(px, 'demo/excepted');
    expect(r.status).toBe(200);
    // The exception is on record: who owns it and until when.
    const d = decisions.find((e) => e.input.image.digest === images.excepted!.digest)!;
    expect(d.admission.warnings).toEqual([
      { rule: 'scan.ignored', message: `${CVE} ignored until ${FUTURE} (sec-team: openssl PKCS12 parsing is not reachable)` },
    ]);
    // And it is on the response too, as a registry warning.
    const m = await fetch(`${px.url}/v2/${reg.host}/demo/excepted/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT } });
    await m.arrayBuffer();
    expect(m.headers.get('warning')).toBe(
      `299 - "portcullis: scan.ignored: ${CVE} ignored until ${FUTURE} (sec-team: openssl PKCS12 parsing is not reachable)"`,
    );
    // The whole image comes through.
    for (const d of [images.excepted!.config, ...images.excepted!.layers]) {
      const b = await fetch(`${px.url}/v2/${reg.host}/demo/excepted/blobs/${d.digest}`);
      expect(b.status).toBe(200);
      await b.arrayBuffer();
    }
  });

  test('once the exception has expired, it is denied again (a past date, and the clock moving past it)', async () => {
    expect(
      (await pushReport(px, 'demo/expired', images.expired!.digest, boundReport(trivyFixture, `${reg.host}/demo/expired`, images.expired!.digest))).status,
    ).toBe(201);
    const r = await pull(px, 'demo/expired');
    expect(r.status).toBe(403);
    expect(r.error!.message).toContain(`(${CVE}) exceeds limit 0`);

    // The same image and exception as in the previous test, on a proxy whose clock is past the expiry.
    const later = await startProxy({
      upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
      settings,
      extra: scanConfig(scanner.url, { staleAfter: '3650d' }),
      now: () => Date.parse(FUTURE) + DAY,
    });
    try {
      expect(
        (await pushReport(later, 'demo/excepted', images.excepted!.digest, boundReport(trivyFixture, `${reg.host}/demo/excepted`, images.excepted!.digest)))
          .status,
      ).toBe(201);
      const r2 = await pull(later, 'demo/excepted');
      expect(r2.status).toBe(403);
      expect(r2.error!.message).toContain(`1 CRITICAL vulnerability (${CVE}) exceeds limit 0 [scan.limit]`);
    } finally {
      await later.stop();
    }
  });
});

describe('pending scans', () => {
  test('with wait configured, a pull waits for the scanner and is allowed when the report arrives in time', async () => {
    const r = await pull(px, 'demo/wait-ok');
    // The scanner's result exists only 1.5 s after the scan was requested (on this pull's lookup), and the pull got
    // it: so it waited for it instead of failing.
    expect(r.status).toBe(200);
    const req = scanner.scans.find((s) => s.artifact.digest === images['wait-ok']!.digest);
    expect(req).toMatchObject({
      registry: { url: reg.url },
      artifact: { repository: 'demo/wait-ok', mime_type: 'application/vnd.oci.image.manifest.v1+json' },
    });
    const d = decisions.find((e) => e.input.image.digest === images['wait-ok']!.digest)!;
    expect(d.input.scan).toMatchObject({ status: 'ok', source: 'scanner' });
    expect(d.input.scan.waited_seconds).toBeGreaterThan(0);
  });

  test('a report pushed while a pull waits ends the wait at once', async () => {
    scanner.setFindings(images['wait-report']!.digest, { vulnerabilities: [], delayMs: 60_000 });
    const pending = pull(px, 'demo/wait-report');
    // The pull's lookup has asked the scanner (which will take a minute): the pull is waiting now.
    await until(() => scanner.scans.some((x) => x.artifact.digest === images['wait-report']!.digest), 'the scan request');
    expect(
      (
        await pushReport(
          px,
          'demo/wait-report',
          images['wait-report']!.digest,
          boundReport(cleanFixture, `${reg.host}/demo/wait-report`, images['wait-report']!.digest),
        )
      ).status,
    ).toBe(201);
    // Allowed: the wait (8 s here) ended with the report, not with the deadline (that would be a 403, scan pending).
    expect((await pending).status).toBe(200);
  });

  test('with wait configured, a pull is denied with "scan pending" when the report does not arrive in time', async () => {
    scanner.setFindings(images['wait-slow']!.digest, { vulnerabilities: [], delayMs: 60_000 });
    const r = await pull(px, 'demo/wait-slow');
    expect(r.status).toBe(403);
    expect(r.error!.message).toContain('vulnerability scan pending: no result after waiting 2s [scan.pending]');
    expect(decisions.filter((e) => e.input.image.digest === images['wait-slow']!.digest).at(-1)!.input.scan).toMatchObject({
      status: 'pending',
      code: 'PENDING',
      waited_seconds: expect.any(Number) as number,
    });
    // Not cached: the next pull decides again (a second decision, not a cache hit), still pending.
    const again = await pull(px, 'demo/wait-slow', 'v1', 'HEAD');
    expect(again.status).toBe(403);
    const slow = decisions.filter((e) => e.input.image.digest === images['wait-slow']!.digest);
    expect(slow.map((e) => e.input.scan.status)).toEqual(['pending', 'pending']);
  });

  test('an index is scanned per platform manifest; a CRITICAL in one platform denies it, named', async () => {
    const [amd64, arm64] = multi.children;
    scanner.setFindings(arm64!.digest, {
      vulnerabilities: [{ id: 'CVE-2026-7777', package: 'zlib', version: '1.2.13', fix_version: '1.3.1', severity: 'Critical' }],
      delayMs: 500,
    });
    scanner.setFindings(amd64!.digest, { vulnerabilities: [{ id: 'CVE-2026-1111', package: 'curl', version: '8.0', severity: 'Medium' }], delayMs: 500 });
    const r = await pull(px, 'demo/multi');
    expect(r.status).toBe(403);
    expect(r.error!.message).toContain('1 CRITICAL vulnerability (CVE-2026-7777) exceeds limit 0');
    expect(scanner.scans.map((s) => s.artifact.digest)).toEqual(expect.arrayContaining([amd64!.digest, arm64!.digest]));
    expect(scanner.scans.map((s) => s.artifact.digest)).not.toContain(multi.digest);
  });
});

describe('the report API', () => {
  test('a report for another digest is rejected', async () => {
    const other = images.other!.digest;
    const trivy = await pushReport(px, 'demo/vuln', images.vuln!.digest, boundReport(cleanFixture, `${reg.host}/demo/other`, other));
    expect(trivy.status).toBe(400);
    const err = ((await trivy.json()) as { errors: Array<{ code: string; message: string }> }).errors[0]!;
    expect(err.code).toBe('DIGEST_INVALID');
    expect(err.message).toBe(`report is for ${other} (Metadata.RepoDigests / ArtifactName), not for ${images.vuln!.digest}`);
    const sarif = await pushReport(px, 'demo/vuln', images.vuln!.digest, boundReport(sarifFixture, `${reg.host}/demo/other`, other));
    expect(sarif.status).toBe(400);
    expect(((await sarif.json()) as { errors: Array<{ message: string }> }).errors[0]!.message).toContain('runs[].properties');
    // The stored report is unchanged: still denied for its CRITICAL.
    expect((await pull(px, 'demo/vuln')).error!.message).toContain(CVE);
  });

  test('authentication: no token or a wrong one gets 401 with a Bearer challenge', async () => {
    const body = boundReport(cleanFixture, `${reg.host}/demo/vuln`, images.vuln!.digest);
    for (const headers of [
      {},
      { authorization: 'Bearer wrong' },
      { authorization: `Basic ${Buffer.from(`x:${REPORT_TOKEN}`).toString('base64')}` },
      { authorization: `Bearer ${ADMIN_TOKEN}` },
    ]) {
      const res = await fetch(`${px.url}/api/v1/reports/${reg.host}/demo/vuln@${images.vuln!.digest}`, { method: 'PUT', headers, body });
      expect(res.status).toBe(401);
      expect(res.headers.get('www-authenticate')).toBe('Bearer realm="portcullis"');
      expect(((await res.json()) as { errors: Array<{ code: string }> }).errors[0]!.code).toBe('UNAUTHORIZED');
    }
    expect((await fetch(`${px.url}/api/v1/reports`)).status).toBe(401);
    expect((await fetch(`${px.url}/api/v1/admin/reevaluate`, { headers: { authorization: `Bearer ${REPORT_TOKEN}` } })).status).toBe(401);
  });

  test('list, get (summary and raw), delete; names, digests, size and format are checked', async () => {
    const auth = { authorization: `Bearer ${REPORT_TOKEN}` };
    const list = (await (await fetch(`${px.url}/api/v1/reports?repository=demo/vuln`, { headers: auth })).json()) as {
      total: number;
      reports: Array<{ registry: string; repository: string; digest: string; format: string }>;
    };
    expect(list.total).toBe(1);
    expect(list.reports[0]).toMatchObject({ registry: reg.host, repository: 'demo/vuln', digest: images.vuln!.digest, format: 'trivy' });
    const all = (await (await fetch(`${px.url}/api/v1/reports?limit=2`, { headers: auth })).json()) as { total: number; reports: unknown[] };
    expect(all.total).toBeGreaterThanOrEqual(5);
    expect(all.reports).toHaveLength(2);

    const one = await fetch(`${px.url}/api/v1/reports/${reg.host}/demo/vuln@${images.vuln!.digest}`, { headers: auth });
    expect(((await one.json()) as { summary: { vulnerabilities: Array<{ id: string }> } }).summary.vulnerabilities[0]!.id).toBe(CVE);
    const raw = await fetch(`${px.url}/api/v1/reports/${reg.host}/demo/vuln@${images.vuln!.digest}?raw=1`, { headers: auth });
    expect(((await raw.json()) as { SchemaVersion: number }).SchemaVersion).toBe(2);

    // Delete: the CI token may add evidence but never remove it; the admin token may.
    scanner.setFindings(images.vuln!.digest, { vulnerabilities: [], delayMs: 60_000 });
    const reportUrl = `${px.url}/api/v1/reports/${reg.host}/demo/vuln@${images.vuln!.digest}`;
    const byCi = await fetch(reportUrl, { method: 'DELETE', headers: auth });
    expect(byCi.status).toBe(403);
    expect(((await byCi.json()) as { errors: Array<{ code: string; message: string }> }).errors[0]).toMatchObject({
      code: 'DENIED',
      message: expect.stringContaining('admin token') as unknown,
    });
    expect((await pull(px, 'demo/vuln')).error!.message).toContain(CVE);
    const admin = { authorization: `Bearer ${ADMIN_TOKEN}` };
    // The image then has no report and, with the scanner pending, is denied as pending.
    const del = await fetch(reportUrl, { method: 'DELETE', headers: admin });
    expect(del.status).toBe(204);
    expect((await fetch(reportUrl, { method: 'DELETE', headers: admin })).status).toBe(404);
    // The earlier deny (for its CRITICAL) was cached; the delete dropped it, so the next pull decides afresh: pending.
    const after = await pull(px, 'demo/vuln');
    expect(after.status).toBe(403);
    expect(after.error?.message).toMatch(/pending/i);
    expect(after.error?.message).not.toContain(CVE);

    const bad = async (path: string, body: string, init: RequestInit = {}): Promise<{ status: number; code: string }> => {
      const res = await fetch(`${px.url}/api/v1/reports/${path}`, {
        method: 'PUT',
        body,
        ...init,
        headers: { ...auth, 'content-type': 'application/json', ...(init.headers as Record<string, string>) },
      });
      return { status: res.status, code: ((await res.json()) as { errors: Array<{ code: string }> }).errors[0]!.code };
    };
    expect(await bad(`quay.io/demo/vuln@${images.vuln!.digest}`, cleanFixture)).toEqual({ status: 404, code: 'NAME_UNKNOWN' });
    expect(await bad(`${reg.host}/demo/vuln@sha256:nothex`, cleanFixture)).toEqual({ status: 400, code: 'DIGEST_INVALID' });
    expect(await bad(`${reg.host}/demo/vuln`, cleanFixture)).toEqual({ status: 400, code: 'NAME_INVALID' });
    expect(await bad(`${reg.host}/demo/vuln@${images.vuln!.digest}`, '{"not":"a report"}')).toEqual({ status: 400, code: 'REPORT_INVALID' });
    expect(await bad(`${reg.host}/demo/vuln@${images.vuln!.digest}`, 'garbage')).toEqual({ status: 400, code: 'REPORT_INVALID' });
    expect(await bad(`${reg.host}/demo/vuln@${images.vuln!.digest}`, cleanFixture, { headers: { 'content-type': 'text/plain' } })).toEqual({
      status: 415,
      code: 'UNSUPPORTED',
    });
    const huge = JSON.stringify({ SchemaVersion: 2, Results: [], pad: 'x'.repeat(70 * 1024) });
    expect(await bad(`${reg.host}/demo/vuln@${images.vuln!.digest}`, huge)).toEqual({ status: 413, code: 'SIZE_INVALID' });
  });
});

describe('report evidence that can be trusted', () => {
  // The proxy's clock is injected and fixed; report dates are relative to it.
  const T0 = Date.parse('2026-06-01T12:00:00Z');
  let p: RunningProxy;
  const at = (ms: number): string => new Date(T0 + ms).toISOString();
  /** A real fixture bound to `name` and dated `createdAt` (the proxy's clock is T0). */
  const report = (fixture: string, name: string, createdAt: string): string =>
    boundReport(fixture, `${reg.host}/demo/${name}`, images[name]!.digest).replace(/"CreatedAt": "[^"]+"/, `"CreatedAt": "${createdAt}"`);
  const put = async (name: string, body: string): Promise<{ status: number; json: Record<string, unknown> }> => {
    const res = await pushReport(p, `demo/${name}`, images[name]!.digest, body);
    return { status: res.status, json: (await res.json()) as Record<string, unknown> };
  };
  const errorOf = (json: Record<string, unknown>): { code: string; message: string; detail: { field?: string } | null } =>
    (json as { errors: Array<{ code: string; message: string; detail: { field?: string } | null }> }).errors[0]!;

  beforeAll(async () => {
    for (const name of ['trust-empty', 'trust-future', 'trust-unbound', 'trust-history']) images[name] = await pushImage(reg.url, `demo/${name}`, 'v1');
    p = await startProxy({
      upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
      settings: { no_match: 'deny', scopes: [{ name: 'scanned', images: ['**'], scan: {} }] },
      extra: { scan: { order: ['reports'], reports: { token: { env: 'PC_E2E_REPORT_TOKEN' }, history: 3 }, admin: { token: { env: 'PC_E2E_ADMIN_TOKEN' } } } },
      now: () => T0,
    });
  });
  afterAll(async () => {
    await p?.stop();
  });

  test('an empty report is not a clean scan: 400 naming Results, and the image stays denied', async () => {
    const r = await put('trust-empty', '{"SchemaVersion":2}');
    expect(r.status).toBe(400);
    expect(errorOf(r.json)).toMatchObject({ code: 'REPORT_INVALID', detail: { field: 'Results' } });
    expect(errorOf(r.json).message).toMatch(/^Results: missing/);
    // The clean fixture without its Results, bound and dated correctly, is refused the same way.
    const noResults = JSON.parse(report(cleanFixture, 'trust-empty', at(0))) as Record<string, unknown>;
    delete noResults.Results;
    expect(errorOf((await put('trust-empty', JSON.stringify(noResults))).json).detail).toEqual({ field: 'Results' });
    const wrongSchema = report(cleanFixture, 'trust-empty', at(0)).replace('"SchemaVersion": 2', '"SchemaVersion": 3');
    expect(errorOf((await put('trust-empty', wrongSchema)).json)).toMatchObject({ code: 'REPORT_INVALID', detail: { field: 'SchemaVersion' } });
    const pulled = await pull(p, 'demo/trust-empty');
    expect(pulled.status).toBe(403);
    expect(pulled.error!.message).toContain('[scan.missing]');
    // The real fixture, as Trivy writes a scan with no findings, is accepted and allows the image.
    expect((await put('trust-empty', report(cleanFixture, 'trust-empty', at(0)))).status).toBe(201);
    expect((await pull(p, 'demo/trust-empty')).status).toBe(200);
  });

  test('a report dated in the future (beyond maxClockSkew, on the proxy clock) is refused, naming CreatedAt', async () => {
    const r = await put('trust-future', report(cleanFixture, 'trust-future', '2999-01-01T00:00:00Z'));
    expect(r.status).toBe(400);
    expect(errorOf(r.json)).toMatchObject({ code: 'REPORT_INVALID', detail: { field: 'CreatedAt' } });
    expect(errorOf(r.json).message).toContain('in the future');
    expect((await put('trust-future', report(cleanFixture, 'trust-future', at(6 * 60_000)))).status).toBe(400);
    // Within the default 5 minutes of skew it is accepted.
    expect((await put('trust-future', report(cleanFixture, 'trust-future', at(4 * 60_000)))).status).toBe(201);
  });

  test('the digest binding is required by default: a report that names no digest is refused', async () => {
    const unbound = report(cleanFixture, 'trust-unbound', at(0)).replace(/"RepoDigests": \[[^\]]*\]/, '"RepoDigests": []');
    expect(unbound).not.toContain(images['trust-unbound']!.digest);
    const r = await put('trust-unbound', unbound);
    expect(r.status).toBe(400);
    expect(errorOf(r.json)).toMatchObject({ code: 'DIGEST_INVALID', detail: { field: 'Metadata.RepoDigests' } });
    expect(errorOf(r.json).message).toContain('requireDigestBinding');
  });

  test('reports are append-only history: newer supersedes, older is kept, bounded, listed; pushes and deletes drop cached decisions', async () => {
    const name = 'trust-history';
    const url = `${p.url}/api/v1/reports/${reg.host}/demo/${name}@${images[name]!.digest}`;
    const ci = { authorization: `Bearer ${REPORT_TOKEN}` };
    const admin = { authorization: `Bearer ${ADMIN_TOKEN}` };
    const critical = await put(name, report(trivyFixture, name, at(-3 * 3_600_000)));
    expect(critical).toMatchObject({ status: 201, json: { in_force: true, kept: true } });
    expect((await pull(p, `demo/${name}`)).error!.message).toContain(CVE);
    // A newer clean scan supersedes it, and the cached deny goes at once.
    const clean = await put(name, report(cleanFixture, name, at(-3_600_000)));
    expect(clean).toMatchObject({ status: 201, json: { in_force: true } });
    expect((await pull(p, `demo/${name}`)).status).toBe(200);
    // Replaying the older, vulnerable report does not displace the newer one: it is history from the start.
    const replay = await put(name, report(trivyFixture, name, at(-2 * 3_600_000)));
    expect(replay).toMatchObject({ status: 201, json: { in_force: false, kept: true } });
    expect((await pull(p, `demo/${name}`)).status).toBe(200);
    // Nothing was overwritten: every version is listed, and each can be read as pushed.
    const got = (await (await fetch(url, { headers: ci })).json()) as {
      id: number;
      in_force: boolean;
      versions: Array<{ id: number; in_force: boolean; scanned_at: string }>;
    };
    expect(got.id).toBe(clean.json.id);
    expect(got.versions.map((v) => v.id)).toEqual([clean.json.id, replay.json.id, critical.json.id]);
    expect(got.versions.map((v) => v.in_force)).toEqual([true, false, false]);
    const raw = (await (await fetch(`${url}?id=${String(critical.json.id)}&raw=1`, { headers: ci })).json()) as {
      Results: Array<{ Vulnerabilities?: unknown[] }>;
    };
    expect(raw.Results[0]!.Vulnerabilities!.length).toBeGreaterThan(0);
    const listed = (await (await fetch(`${p.url}/api/v1/reports?repository=demo/${name}&history=1`, { headers: ci })).json()) as { total: number };
    expect(listed.total).toBe(3);
    expect(((await (await fetch(`${p.url}/api/v1/reports?repository=demo/${name}`, { headers: ci })).json()) as { total: number }).total).toBe(1);
    // Bounded (history: 3): a fourth push prunes the oldest scan, never the one in force.
    const newest = await put(name, report(cleanFixture, name, at(-60_000)));
    const after = (await (await fetch(url, { headers: ci })).json()) as { versions: Array<{ id: number }> };
    expect(after.versions.map((v) => v.id)).toEqual([newest.json.id, clean.json.id, replay.json.id]);
    // Deleting needs the admin token; deleting the versions in force brings the older one back, and its deny.
    expect((await fetch(`${url}?id=${String(newest.json.id)}`, { method: 'DELETE', headers: ci })).status).toBe(403);
    for (const v of [newest, clean]) expect((await fetch(`${url}?id=${String(v.json.id)}`, { method: 'DELETE', headers: admin })).status).toBe(204);
    expect((await pull(p, `demo/${name}`)).error!.message).toContain(CVE);
  });
});

describe('the scanner down', () => {
  test('on_error deny denies naming the failure; on_error warn allows with a warning', async () => {
    const gone = await startScannerDouble();
    const url = gone.url;
    await gone.stop();
    const seen: Array<Parameters<DecisionObserver['onDecision']>[0]> = [];
    const p = await startProxy({
      upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
      settings,
      extra: scanConfig(url),
      observers: [{ onDecision: (e) => seen.push(e) }],
    });
    try {
      const denied = await pull(p, 'demo/down-deny');
      expect(denied.status).toBe(403);
      expect(denied.error!.message).toMatch(/vulnerability scan failed: scanner unreachable \(ECONNREFUSED.*\[scan\.error\]/);
      const warned = await pull(p, 'demo/down-warn');
      expect(warned.status).toBe(200);
      const d = seen.find((e) => e.input.image.repository === 'demo/down-warn')!;
      expect(d.admission.outcome).toBe('allow');
      expect(d.admission.warnings.map((w) => w.rule)).toEqual(['scan.error']);
      const metrics = await (await fetch(`${p.url}/metrics`)).text();
      expect(metrics).toMatch(/portcullis_scan_lookups_total\{source="scanner",status="error"\} [1-9]/);
      expect(metrics).toMatch(/portcullis_scanner_request_duration_seconds_count\{op="metadata",outcome="error"\} [1-9]/);
    } finally {
      await p.stop();
    }
  });
});

describe('vulnerability attestations (cosign2 attest --type vuln)', () => {
  let work: string;
  let env: NodeJS.ProcessEnv;
  let p: RunningProxy;
  const seen: Array<Parameters<DecisionObserver['onDecision']>[0]> = [];
  const att: Record<string, PushedImage> = {};

  const cosign = async (args: string[]): Promise<void> => {
    const r = await runTool('cosign2', args, { env, cwd: work, timeoutMs: 60_000 });
    expect(r.code, `cosign2 ${args[0]}: ${r.stderr}`).toBe(0);
  };
  /** `trivy --format cosign-vuln` output (the fixture) about `reportDigest`, attested with `key` on `name`. */
  const attest = async (name: string, key: string, reportDigest: string, opts: { clean?: boolean } = {}): Promise<void> => {
    const predicate = JSON.parse(readFileSync('test/fixtures/scan/cosign-vuln-predicate.json', 'utf8')) as {
      scanner: { result: Record<string, unknown> };
      metadata: Record<string, string>;
    };
    if (opts.clean) predicate.scanner.result.Results = [];
    predicate.scanner.result = JSON.parse(
      JSON.stringify(predicate.scanner.result).replaceAll(`registry.example/demo/app@${ZERO}`, `${reg.host}/demo/${name}@${reportDigest}`),
    ) as Record<string, unknown>;
    predicate.metadata = { scanStartedOn: new Date().toISOString(), scanFinishedOn: new Date().toISOString() };
    const file = join(work, `${name}.vuln.json`);
    await writeFile(file, JSON.stringify(predicate));
    await cosign([
      'attest',
      '--key',
      key,
      '--type',
      'vuln',
      '--predicate',
      file,
      '--tlog-upload=false',
      '--allow-insecure-registry',
      '--allow-http-registry',
      '-y',
      `${reg.host}/demo/${name}@${att[name]!.digest}`,
    ]);
  };

  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'pc-scan-cosign-'));
    env = { ...process.env, HOME: work, COSIGN_PASSWORD: '', TUF_ROOT: join(work, 'tuf'), DOCKER_CONFIG: join(work, 'docker') };
    await cosign(['generate-key-pair', '--output-key-prefix', 'release']);
    await cosign(['generate-key-pair', '--output-key-prefix', 'stranger']);
    for (const n of ['attested', 'attested-clean', 'attested-stranger', 'attested-other']) att[n] = await pushImage(reg.url, `demo/${n}`, 'v1');
    await attest('attested', 'release.key', att.attested!.digest);
    await attest('attested-clean', 'release.key', att['attested-clean']!.digest, { clean: true });
    await attest('attested-stranger', 'stranger.key', att['attested-stranger']!.digest);
    // A genuine attestation on this digest, but the scan inside is of another image.
    await attest('attested-other', 'release.key', att.attested!.digest);
    p = await startProxy({
      upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
      settings: { no_match: 'deny', scopes: [{ name: 'scanned', images: ['**'], scan: {} }] },
      extra: {
        signatures: { authorities: [{ name: 'release', kind: 'key', key: join(work, 'release.pub') }] },
        scan: { attestations: { authorities: ['release'] } },
      },
      observers: [{ onDecision: (e) => seen.push(e) }],
    });
  }, 120_000);

  afterAll(async () => {
    await p?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  test('a verified vuln attestation with 1 CRITICAL denies, naming the CVE; a clean one allows', async () => {
    const r = await pull(p, 'demo/attested');
    expect(r.status).toBe(403);
    expect(r.error!.message).toContain(`1 CRITICAL vulnerability (${CVE}) exceeds limit 0 [scan.limit]`);
    const d = seen.find((e) => e.input.image.digest === att.attested!.digest)!;
    expect(d.input.attestations.map((a) => [a.predicate_type, a.authority])).toEqual([['https://cosign.sigstore.dev/attestation/vuln/v1', 'release']]);
    expect(d.input.scan).toMatchObject({ status: 'ok', source: 'attestation', scanner: 'trivy 0.58.1', counts: { CRITICAL: 1, LOW: 1 } });
    expect((await pull(p, 'demo/attested-clean')).status).toBe(200);
  });

  test('an attestation by an untrusted key counts for nothing; one about another digest is refused', async () => {
    const stranger = await pull(p, 'demo/attested-stranger');
    expect(stranger.status).toBe(403);
    expect(stranger.error!.message).toContain('no vulnerability scan result for this image [scan.missing]');
    const other = await pull(p, 'demo/attested-other');
    expect(other.status).toBe(403);
    expect(other.error!.message).toContain(`reports on ${att.attested!.digest}, not this digest [scan.error]`);
    // The policy input says why with a stable code beside the text.
    const input = (name: string) => seen.filter((e) => e.input.image.digest === att[name]!.digest).at(-1)!.input;
    expect(input('attested-stranger').scan).toEqual({ status: 'missing', code: 'NOT_SCANNED' });
    expect(input('attested-other').scan).toMatchObject({ status: 'error', source: 'attestation', code: 'DIGEST_MISMATCH' });
  });
});

describe('re-evaluation', () => {
  test('the admin endpoint and `portcullis report` list cached images the current data would now deny', async () => {
    // demo/wait-ok was allowed on a clean scan, so its layers can be fetched by digest. CI now reports a CRITICAL in it.
    const layerUrl = `${px.url}/v2/${reg.host}/demo/wait-ok/blobs/${images['wait-ok']!.layers[0]!.digest}`;
    expect((await fetch(layerUrl, { method: 'HEAD' })).status).toBe(200);
    expect(
      (await pushReport(px, 'demo/wait-ok', images['wait-ok']!.digest, boundReport(trivyFixture, `${reg.host}/demo/wait-ok`, images['wait-ok']!.digest)))
        .status,
    ).toBe(201);
    const res = await fetch(`${px.url}/api/v1/admin/reevaluate`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    expect(res.status).toBe(200);
    const report = (await res.json()) as {
      evaluated: number;
      would_deny: number;
      images: Array<{ repository: string; digest: string; would_deny: boolean; deny: Array<{ rule: string; message: string }> }>;
    };
    const repos = report.images.map((i) => i.repository);
    expect(repos).toContain('demo/wait-ok');
    expect(repos).toContain('demo/expired');
    expect(repos).not.toContain('demo/excepted');
    const waitOk = report.images.find((i) => i.repository === 'demo/wait-ok')!;
    expect(waitOk.deny[0]!.message).toContain(CVE);
    expect(report.evaluated).toBeGreaterThan(report.would_deny);

    // The CLI asks the running proxy.
    const cli = await runTool('node', [resolve('dist/cli.js'), 'report', '--url', px.url], { env: { ...process.env, PORTCULLIS_ADMIN_TOKEN: ADMIN_TOKEN } });
    expect(cli.code, cli.stderr).toBe(1);
    expect(cli.stdout).toMatch(
      new RegExp(`DENY  ${reg.host.replace(/\./g, '\\.')}/demo/wait-ok:v1@${images['wait-ok']!.digest}: 1 CRITICAL vulnerability \\(${CVE}\\)`),
    );

    // The pushed report also dropped the cached allow (gate.allowTTL is 10 minutes) and the image's closure: its
    // layers are no longer served by digest, and the next pull is denied now.
    const layer = await fetch(layerUrl, { method: 'HEAD' });
    expect(layer.status).toBe(403);
    expect(layer.headers.get('portcullis-reason')).toBe('not part of an admitted image');
    const now = await pull(px, 'demo/wait-ok');
    expect(now.status).toBe(403);
    expect(now.error?.message).toContain(CVE);
  });

  test('metrics: lookups by source and status, scanner latency, pending scans', async () => {
    const text = await (await fetch(`${px.url}/metrics`)).text();
    expect(text).toMatch(/portcullis_scan_lookups_total\{source="report",status="ok"\} [1-9]/);
    expect(text).toMatch(/portcullis_scan_lookups_total\{source="scanner",status="pending"\} [1-9]/);
    expect(text).toMatch(/portcullis_scanner_request_duration_seconds_count\{op="report",outcome="302"\} [1-9]/);
    expect(text).toMatch(/portcullis_scan_pending [1-9]/);
  });
});
