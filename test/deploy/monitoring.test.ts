/**
 * deploy/monitoring: the alert rules pass `promtool check rules` and their unit tests (`promtool test rules`, one
 * firing and one quiet case per alert), every dashboard query is valid PromQL, and the rules and the dashboard
 * name only metrics that a running Portcullis really exports (scraped from /metrics of an in-process proxy, with
 * the _bucket/_sum/_count series of its histograms). promtool comes from scripts/install-tools.sh (a pinned
 * `go install`); missing, the tests fail.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml, stringify } from 'yaml';
import { requireTool, runTool } from '../harness/clients.js';
import { startFakeUpstream, type FakeUpstream } from '../harness/fake-upstream.js';
import { startProxy, type RunningProxy } from '../harness/proxy.js';

const DIR = resolve('deploy/monitoring');
const RULES = join(DIR, 'alerts.yaml');
const RULE_TESTS = join(DIR, 'alerts.test.yaml');
const DASHBOARD = join(DIR, 'grafana-dashboard.json');

interface Rule {
  alert?: string;
  record?: string;
  expr: string;
}
interface RuleFile {
  groups: Array<{ name: string; rules: Rule[] }>;
}
interface RuleTests {
  rule_files: string[];
  tests: Array<{ alert_rule_test?: Array<{ alertname: string; eval_time: string; exp_alerts?: unknown[] }> }>;
}
interface Panel {
  title: string;
  type: string;
  targets?: Array<{ expr: string }>;
}
interface Dashboard {
  panels: Panel[];
  templating: { list: Array<{ name: string; definition?: string }> };
}

const rules = parseYaml(readFileSync(RULES, 'utf8')) as RuleFile;
const alerts = rules.groups.flatMap((g) => g.rules).filter((r): r is Rule & { alert: string } => r.alert !== undefined);
const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as Dashboard;
const dashboardQueries = dashboard.panels.flatMap((p) => (p.targets ?? []).map((t) => ({ panel: p.title, expr: t.expr })));
const tmp = mkdtempSync(join(tmpdir(), 'pc-monitoring-'));

/** Metric names a PromQL expression names. All of ours are portcullis_*; anything else would be caught below. */
function metricNames(expr: string): string[] {
  return [...expr.matchAll(/\b(portcullis_[a-zA-Z0-9_]+)\b/g)].map((m) => m[1]!);
}

/** The series names /metrics exports: every `# TYPE`, histograms and summaries with their _bucket/_sum/_count. */
function exportedNames(text: string): Set<string> {
  const names = new Set<string>();
  for (const m of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
    const [, name, type] = m as unknown as [string, string, string];
    if (type === 'histogram') for (const s of ['_bucket', '_sum', '_count']) names.add(`${name}${s}`);
    else if (type === 'summary') for (const s of ['', '_sum', '_count']) names.add(`${name}${s}`);
    else names.add(name);
  }
  return names;
}

/** Grafana's variables as PromQL can take them, for promtool. */
function concrete(expr: string): string {
  return expr.replaceAll('$__rate_interval', '5m').replaceAll('$__range', '1h').replaceAll('$__interval', '1m').replaceAll('$instance', '.*');
}

let up: FakeUpstream;
let proxy: RunningProxy;
let exported: Set<string>;
let scrape: string;

beforeAll(async () => {
  requireTool('promtool');
  up = await startFakeUpstream();
  proxy = await startProxy({ upstreams: [{ name: 'hub', registry: 'docker.io', url: up.url }], defaultUpstream: 'hub' });
  // Docker Hub answers a pull over its quota with 429 and these headers (and sends them on every manifest request).
  up.setFault(
    { pathRegex: /\/manifests\// },
    { kind: 'status', status: 429, headers: { 'ratelimit-limit': '100;w=21600', 'ratelimit-remaining': '0;w=21600', 'retry-after': '60' } },
  );
  const r = await fetch(`${proxy.url}/v2/library/nginx/manifests/1.27?ns=docker.io`);
  expect(r.status).toBe(429);
  scrape = await (await fetch(`${proxy.url}/metrics`)).text();
  exported = exportedNames(scrape);
});

afterAll(async () => {
  await proxy?.stop();
  await up?.stop();
  rmSync(tmp, { recursive: true, force: true });
});

describe('metrics the alerts need', () => {
  it("Docker Hub's ratelimit headers become the remaining and limit gauges, per upstream", () => {
    expect(scrape).toMatch(/^portcullis_upstream_ratelimit_remaining\{upstream="hub"\} 0$/m);
    expect(scrape).toMatch(/^portcullis_upstream_ratelimit_limit\{upstream="hub"\} 100$/m);
  });
});

describe('alert rules', () => {
  it('promtool check rules', async () => {
    const r = await runTool(requireTool('promtool'), ['check', 'rules', RULES]);
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    expect(r.stdout).toContain(`SUCCESS: ${alerts.length} rules found`);
  });

  it('promtool test rules: the unit tests pass', async () => {
    const r = await runTool(requireTool('promtool'), ['test', 'rules', RULE_TESTS], { cwd: DIR });
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    expect(r.stdout).toContain('SUCCESS');
  });

  it('every alert has a unit test where it fires and one where it does not', () => {
    const t = parseYaml(readFileSync(RULE_TESTS, 'utf8')) as RuleTests;
    expect(t.rule_files).toEqual(['alerts.yaml']);
    const cases = t.tests.flatMap((x) => x.alert_rule_test ?? []);
    expect(alerts.length).toBeGreaterThanOrEqual(6);
    for (const a of alerts) {
      const mine = cases.filter((c) => c.alertname === a.alert);
      expect(
        mine.some((c) => (c.exp_alerts ?? []).length > 0),
        `${a.alert} fires somewhere`,
      ).toBe(true);
      expect(
        mine.some((c) => (c.exp_alerts ?? []).length === 0),
        `${a.alert} stays quiet somewhere`,
      ).toBe(true);
    }
    // And no test names an alert that does not exist.
    for (const c of cases) expect(alerts.map((a) => a.alert)).toContain(c.alertname);
  });

  it('name only metrics that /metrics exports', () => {
    for (const a of alerts) {
      const names = metricNames(a.expr);
      expect(names.length, a.alert).toBeGreaterThan(0);
      for (const n of names) expect(exported.has(n), `${a.alert}: ${n}`).toBe(true);
    }
  });
});

describe('Grafana dashboard', () => {
  it('has the panels operators asked for', () => {
    const titles = dashboard.panels.map((p) => p.title);
    for (const t of [
      'Decisions by outcome',
      'Denials and warnings by rule',
      'Cache hit ratio by kind',
      'Bytes saved',
      'Upstream latency (p50, p95, p99)',
      'Upstream errors and retries',
      'Pull quota headroom',
      'Single-flight joins',
      'Signature verification latency (p50, p95, p99)',
      'Policy and decision latency (p99)',
      'Policy reload state',
      'Decision log delivery',
    ]) {
      expect(titles).toContain(t);
    }
  });

  it('names only metrics that /metrics exports', () => {
    const queries = [...dashboardQueries, ...dashboard.templating.list.filter((v) => v.definition).map((v) => ({ panel: `$${v.name}`, expr: v.definition! }))];
    expect(queries.length).toBeGreaterThan(30);
    for (const q of queries) {
      const names = metricNames(q.expr);
      expect(names.length, `${q.panel}: ${q.expr}`).toBeGreaterThan(0);
      for (const n of names) expect(exported.has(n), `${q.panel}: ${n}`).toBe(true);
    }
  });

  it('every query is valid PromQL (promtool checks them as recording rules)', async () => {
    const file = join(tmp, 'dashboard-queries.yaml');
    const records = dashboardQueries.map((q, i) => ({ record: `dashboard:query_${i}`, expr: concrete(q.expr) }));
    writeFileSync(file, stringify({ groups: [{ name: 'dashboard', rules: records }] }));
    const r = await runTool(requireTool('promtool'), ['check', 'rules', file]);
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    expect(r.stdout).toContain(`SUCCESS: ${records.length} rules found`);
  });
});
