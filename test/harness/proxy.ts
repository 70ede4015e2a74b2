/**
 * Test harness: a Portcullis proxy in-process on a free loopback port, configured through the same zod schema as
 * the real config file, with the committed policy bundle (policies/bundle.tar.gz) unless a test gives another.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pino, type Logger } from 'pino';
import { parseConfig } from '../../src/config/load.js';
import type { Config } from '../../src/config/schema.js';
import type { DecisionObserver } from '../../src/gate/gate.js';
import { buildProxy, type Proxy } from '../../src/server/bootstrap.js';
import type { Scheduler } from '../../src/gate/reeval-schedule.js';

export interface TestUpstream {
  name: string;
  /** registry host clients name, e.g. 127.0.0.1:5001 */
  registry: string;
  url: string;
  [k: string]: unknown;
}

export interface StartProxyOptions {
  upstreams: TestUpstream[];
  defaultUpstream?: string;
  /** data.portcullis.config; default: allow every image (a catch-all scope). */
  settings?: Record<string, unknown>;
  /** Extra top-level config (cache, gate, policy, limits…), merged shallowly. */
  extra?: Record<string, unknown>;
  /** Reuse a data dir (restart tests). */
  dataDir?: string;
  observers?: DecisionObserver[];
  now?: () => number;
  /** The re-evaluation schedule's timer (reevaluate.interval), for tests that run it by hand. */
  scheduler?: Scheduler;
  /** A logger of the test's own (to read what the proxy logs); default: pino at PORTCULLIS_TEST_LOG or silent. */
  logger?: Logger;
}

export interface RunningProxy {
  url: string;
  host: string;
  dataDir: string;
  config: Config;
  proxy: Proxy;
  stop(opts?: { keepData?: boolean }): Promise<void>;
}

export const ALLOW_ALL = { no_match: 'deny', scopes: [{ name: 'all', images: ['**'] }] };

function hasOtherSource(policy: unknown): boolean {
  return typeof policy === 'object' && policy !== null && ('opaUrl' in policy || 'bundleUrl' in policy);
}

export async function startProxy(opts: StartProxyOptions): Promise<RunningProxy> {
  const dataDir = opts.dataDir ?? (await mkdtemp(join(tmpdir(), 'pc-proxy-')));
  const doc = {
    listen: '127.0.0.1:0',
    dataDir,
    upstreams: opts.upstreams.map((u) => ({ retries: 2, ...u })),
    ...(opts.defaultUpstream ? { defaultUpstream: opts.defaultUpstream } : {}),
    decisionLog: { sink: 'none' },
    log: { level: process.env.PORTCULLIS_TEST_LOG ?? 'silent' },
    ...opts.extra,
    policy: {
      ...(hasOtherSource(opts.extra?.policy) ? {} : { bundleFile: resolve('policies/bundle.tar.gz') }),
      pollInterval: '200ms',
      ...((opts.extra?.policy as object | undefined) ?? {}),
      settings: opts.settings ?? ALLOW_ALL,
    },
  };
  const config = parseConfig(JSON.stringify(doc), 'test-config.yaml', {});
  const logger = opts.logger ?? pino({ level: config.log.level });
  const proxy = await buildProxy(config, {
    logger,
    extraObservers: opts.observers ?? [],
    ...(opts.now ? { now: opts.now } : {}),
    ...(opts.scheduler ? { scheduler: opts.scheduler } : {}),
  });
  const addr = await proxy.app.listen();
  const host = `127.0.0.1:${addr.port}`;
  return {
    url: `http://${host}`,
    host,
    dataDir,
    config,
    proxy,
    async stop(s = {}) {
      await proxy.close();
      if (!s.keepData && !opts.dataDir) await rm(dataDir, { recursive: true, force: true });
    },
  };
}
