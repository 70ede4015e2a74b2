#!/usr/bin/env -S node --max-semi-space-size=8
/**
 * The `portcullis` command: serve, check an image, validate a config, list what would now be denied, and write
 * the client configuration. Exit codes: 0 ok/allow, 1 deny or invalid,
 * 2 error.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import { pino } from 'pino';
import { ConfigError, loadConfig } from './config/load.js';
import type { Config } from './config/schema.js';
import { checkImage } from './server/check.js';
import type { DecisionObserver } from './gate/gate.js';
import { buildProxy, checkConfigFile } from './server/bootstrap.js';
import { formatReport, reevaluate, type ReevalReport } from './gate/reeval.js';
import { clientConfig } from './clients/config.js';
import { errorText } from './util/error-text.js';
import { formatImpact, impact, type ImpactReport } from './gate/impact.js';
import { loadCandidate } from './policy/candidate.js';
import { policySource } from './server/bootstrap.js';
import { formatWarm, type WarmReport } from './server/warm.js';
import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { backupCommand, restoreCommand, STORAGE_USAGE, storageImport } from './cli-storage.js';

const USAGE = `usage:
  portcullis serve [--config FILE]
  portcullis check [--config FILE] [--json] [--as USER [--groups G1,G2] [--method M]] <image-ref>
      --as evaluates as that client identity (policy \`clients\` rules); method defaults to basic
  portcullis config check [FILE]
  portcullis report [--config FILE] [--json] [--all] [--url PROXY_URL]
      the cached images that the current policy and scan data would now deny (exit 1 when there are any);
      --url asks a running proxy (GET /api/v1/admin/reevaluate, token from $PORTCULLIS_ADMIN_TOKEN); without it
      the command opens the data dir itself: only do that when no proxy is running on it
  portcullis policy impact [--config FILE] [--json] [--url PROXY_URL] (--bundle FILE | --settings FILE)...
      what a candidate bundle and/or settings (YAML or JSON: data.portcullis.config) would change for the cached
      images (and, with --url, the proxy's recent decisions), without activating it; exit 1 when anything would
      change. --url posts it to a running proxy (POST /api/v1/admin/impact, token from $PORTCULLIS_ADMIN_TOKEN)
  portcullis warm --url PROXY_URL [--json] [--as USER [--groups G1,G2] [--method M]] <image-ref>...
      decide and fetch images into a running proxy's cache before a rollout (POST /api/v1/admin/warm, token from
      $PORTCULLIS_ADMIN_TOKEN), as that client identity (default anonymous); exit 1 when an image was denied, 2
      when one failed
  portcullis client-config containerd|docker|podman --proxy URL [--config FILE] [--out DIR]
                           [--ca FILE] [--skip-verify] [--no-default] [--fallback URL]...
      the client configuration that cannot fall back to the real registries, for this config's upstreams;
      printed, or written under DIR (the client's certs.d or registries.conf.d directory); --fallback adds
      a central tier after a node instance (containerd/docker)
${STORAGE_USAGE}

The config defaults to $PORTCULLIS_CONFIG or config/portcullis.yaml.`;

function configPath(v: string | undefined): string {
  return v ?? process.env.PORTCULLIS_CONFIG ?? 'config/portcullis.yaml';
}

function load(file: string): Config {
  try {
    return loadConfig(file);
  } catch (e) {
    if (e instanceof ConfigError) {
      process.stderr.write(`${e.message}\n`);
      process.exit(1);
    }
    throw e;
  }
}

async function serve(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: { config: { type: 'string', short: 'c' } } });
  const config = load(configPath(values.config));
  const proxy = await buildProxy(config);
  await proxy.app.listen();
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    proxy.app.log.info({ signal, graceMs: config.shutdownGrace }, 'shutting down');
    proxy.close().then(
      () => process.exit(0),
      (e: unknown) => {
        proxy.app.log.error({ err: String(e) }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

async function check(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      config: { type: 'string', short: 'c' },
      json: { type: 'boolean' },
      as: { type: 'string' },
      groups: { type: 'string' },
      method: { type: 'string' },
    },
  });
  const ref = positionals[0];
  if (!ref) {
    process.stderr.write(`${USAGE}\n`);
    return 2;
  }
  const config = load(configPath(values.config));
  config.decisionLog.sink = 'none';
  const capture: { last?: Parameters<DecisionObserver['onDecision']>[0] } = {};
  const proxy = await buildProxy(config, {
    logger: pino({ level: 'warn' }, pino.destination(2)),
    scheduler: false,
    extraObservers: [{ onDecision: (e) => (capture.last = e) }],
  });
  try {
    const as = values.as
      ? { user: values.as, groups: (values.groups ?? '').split(',').filter(Boolean).sort(), method: values.method ?? 'basic' }
      : { user: null, groups: [], method: values.method ?? 'anonymous' };
    const report = await checkImage(proxy.app, ref, capture, as);
    const a = report.admission;
    if (values.json) {
      process.stdout.write(
        `${JSON.stringify({ image: report.image, upstream: report.upstream, decision_id: a.decisionId, outcome: a.outcome, serve: a.serve, mode: a.mode, deny: a.violations, warn: a.warnings, input: report.input, result: report.result }, null, 2)}\n`,
      );
    } else {
      const lines = [
        `image:     ${report.image}`,
        `client:    ${as.user ?? 'anonymous'}${as.groups.length ? ` (groups ${as.groups.join(', ')})` : ''} via ${as.method}`,
        `upstream:  ${report.upstream}`,
        `decision:  ${a.outcome.toUpperCase()} (mode ${a.mode}, policy ${proxy.policy.revision}, decision ${a.decisionId})`,
        `signature: ${report.input?.signatures.status ?? 'unknown'}`,
        `scan:      ${report.input?.scan.status ?? 'unknown'}`,
        ...a.violations.map((v) => `  deny  ${v.rule}: ${v.message}`),
        ...a.warnings.map((v) => `  warn  ${v.rule}: ${v.message}`),
      ];
      process.stdout.write(`${lines.join('\n')}\n`);
    }
    return a.serve ? 0 : 1;
  } catch (e) {
    process.stderr.write(`check failed: ${errorText(e)}\n`);
    return 2;
  } finally {
    await proxy.close();
  }
}

async function report(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: { config: { type: 'string', short: 'c' }, json: { type: 'boolean' }, all: { type: 'boolean' }, url: { type: 'string' } },
  });
  let r: ReevalReport;
  if (values.url) {
    const token = process.env.PORTCULLIS_ADMIN_TOKEN;
    const res = await fetch(`${values.url.replace(/\/+$/, '')}/api/v1/admin/reevaluate${values.all ? '?all=1' : ''}`, {
      headers: token ? { authorization: `Bearer ${token}` } : {},
    });
    if (res.status !== 200) {
      process.stderr.write(`report failed: HTTP ${res.status} ${(await res.text()).slice(0, 500)}\n`);
      return 2;
    }
    r = (await res.json()) as ReevalReport;
  } else {
    const config = load(configPath(values.config));
    config.decisionLog.sink = 'none';
    const proxy = await buildProxy(config, { logger: pino({ level: 'warn' }, pino.destination(2)), scheduler: false });
    try {
      r = await reevaluate(proxy.app, { all: values.all ?? false });
    } finally {
      await proxy.close();
    }
  }
  process.stdout.write(values.json ? `${JSON.stringify(r, null, 2)}\n` : `${formatReport(r)}\n`);
  return r.would_deny > 0 ? 1 : 0;
}

async function admin(url: string, path: string, body: Buffer | string, contentType: string): Promise<{ ok: true; json: unknown } | { ok: false }> {
  const token = process.env.PORTCULLIS_ADMIN_TOKEN;
  const res = await fetch(`${url.replace(/\/+$/, '')}${path}`, {
    method: 'POST',
    headers: { 'content-type': contentType, ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body,
  });
  if (res.status !== 200) {
    process.stderr.write(`${path} failed: HTTP ${res.status} ${(await res.text()).slice(0, 500)}\n`);
    return { ok: false };
  }
  return { ok: true, json: await res.json() };
}

async function policyImpact(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      config: { type: 'string', short: 'c' },
      json: { type: 'boolean' },
      url: { type: 'string' },
      bundle: { type: 'string' },
      settings: { type: 'string' },
    },
  });
  if (!values.bundle && !values.settings) {
    process.stderr.write(`${USAGE}\n`);
    return 2;
  }
  const bundle = values.bundle ? readFileSync(values.bundle) : undefined;
  const settings = values.settings ? (parseYaml(readFileSync(values.settings, 'utf8')) as Record<string, unknown>) : undefined;
  let r: ImpactReport;
  if (values.url) {
    const got = settings
      ? await admin(
          values.url,
          '/api/v1/admin/impact',
          JSON.stringify({ ...(bundle ? { bundle: bundle.toString('base64') } : {}), settings }),
          'application/json',
        )
      : await admin(values.url, '/api/v1/admin/impact', bundle!, 'application/gzip');
    if (!got.ok) return 2;
    r = got.json as ImpactReport;
  } else {
    const config = load(configPath(values.config));
    config.decisionLog.sink = 'none';
    const proxy = await buildProxy(config, { logger: pino({ level: 'warn' }, pino.destination(2)), scheduler: false });
    try {
      const candidate = await loadCandidate(
        { ...(bundle ? { bundle } : {}), ...(settings ? { settings } : {}) },
        { rules: policySource(config), activeSettings: config.policy.settings, activeBundle: () => proxy.policy.activeBundle() },
      );
      r = await impact(proxy.app, { active: proxy.policy, candidate });
    } catch (e) {
      process.stderr.write(`impact failed: ${e instanceof Error ? e.message : String(e)}\n`);
      return 2;
    } finally {
      await proxy.close();
    }
  }
  process.stdout.write(values.json ? `${JSON.stringify(r, null, 2)}\n` : `${formatImpact(r)}\n`);
  return r.changed > 0 ? 1 : 0;
}

async function warmCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { url: { type: 'string' }, json: { type: 'boolean' }, as: { type: 'string' }, groups: { type: 'string' }, method: { type: 'string' } },
  });
  const url = values.url ?? process.env.PORTCULLIS_URL;
  if (!url || positionals.length === 0) {
    process.stderr.write(`${USAGE}\n`);
    return 2;
  }
  const as = values.as ? { user: values.as, groups: (values.groups ?? '').split(',').filter(Boolean), method: values.method ?? 'basic' } : undefined;
  const got = await admin(url, '/api/v1/admin/warm', JSON.stringify({ images: positionals, ...(as ? { as } : {}) }), 'application/json');
  if (!got.ok) return 2;
  const r = got.json as WarmReport;
  process.stdout.write(values.json ? `${JSON.stringify(r, null, 2)}\n` : `${formatWarm(r)}\n`);
  return r.failed > 0 ? 2 : r.denied > 0 ? 1 : 0;
}

function clientConfigCommand(args: string[]): number {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      config: { type: 'string', short: 'c' },
      proxy: { type: 'string' },
      out: { type: 'string' },
      ca: { type: 'string' },
      'skip-verify': { type: 'boolean' },
      'no-default': { type: 'boolean' },
      fallback: { type: 'string', multiple: true },
    },
  });
  const kind = positionals[0];
  if ((kind !== 'containerd' && kind !== 'docker' && kind !== 'podman') || !values.proxy) {
    process.stderr.write(`${USAGE}\n`);
    return 2;
  }
  const config = load(configPath(values.config));
  let cc;
  try {
    cc = clientConfig(kind, config, {
      proxyUrl: values.proxy,
      ...(values.ca ? { caFile: values.ca } : {}),
      ...(values['skip-verify'] ? { skipVerify: true } : {}),
      ...(values['no-default'] ? { defaultHost: false } : {}),
      ...(values.fallback ? { fallback: values.fallback } : {}),
    });
  } catch (e) {
    process.stderr.write(`${errorText(e)}\n`);
    return 2;
  }
  if (values.out) {
    for (const f of cc.files) {
      const dest = join(values.out, f.path);
      mkdirSync(dirname(dest), { recursive: true });
      writeFileSync(dest, f.content);
      process.stderr.write(`wrote ${dest}\n`);
    }
  } else {
    for (const f of cc.files) process.stdout.write(`# ==> ${cc.directory}/${f.path} <==\n${f.content}\n`);
  }
  for (const n of cc.notes) process.stderr.write(`note: ${n}\n`);
  return 0;
}

async function configCheck(args: string[]): Promise<number> {
  const file = configPath(args[0]);
  try {
    const c = await checkConfigFile(file);
    process.stdout.write(
      `${file}: ok (${c.upstreams.length} upstream${c.upstreams.length === 1 ? '' : 's'}: ${c.upstreams.map((u) => `${u.name}=${u.registry}`).join(', ')})\n`,
    );
    return 0;
  } catch (e) {
    process.stderr.write(`${errorText(e)}\n`);
    return 1;
  }
}

async function main(argv: string[]): Promise<number | undefined> {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case 'serve':
      await serve(rest);
      return undefined;
    case 'check':
      return check(rest);
    case 'report':
      return report(rest);
    case 'config':
      if (rest[0] === 'check') return configCheck(rest.slice(1));
      break;
    case 'policy':
      if (rest[0] === 'impact') return policyImpact(rest.slice(1));
      break;
    case 'warm':
      return warmCommand(rest);
    case 'backup':
      return backupCommand(rest, (f) => load(configPath(f)));
    case 'restore':
      return restoreCommand(rest, (f) => load(configPath(f)));
    case 'storage':
      if (rest[0] === 'import') return storageImport(rest.slice(1), (f) => load(configPath(f)));
      break;
    case 'client-config':
      return clientConfigCommand(rest);
    case '--help':
    case '-h':
    case 'help':
      process.stdout.write(`${USAGE}\n`);
      return 0;
  }
  process.stderr.write(`${USAGE}\n`);
  return 2;
}

main(process.argv.slice(2)).then(
  (code) => {
    if (code !== undefined) process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`portcullis: ${errorText(e)}\n`);
    process.exitCode = 2;
  },
);
