/**
 * Portcullis as a real child process (`node dist/cli.js serve --config FILE`), with a temp YAML config, its logs in
 * a file, /metrics scraping and memory readings from /proc.
 */
import { closeSync, openSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { request } from 'undici';
import { startDaemon } from './proc.mjs';
import { freePort, waitHttp } from './registry.mjs';

/**
 * The Node flags every launcher of the product passes (the Dockerfile's ENTRYPOINT, the bin's shebang, `npm start`;
 * test/unit/node-flags.test.ts keeps them the same): the bench measures Portcullis as it is shipped.
 */
export const PRODUCT_NODE_FLAGS = ['--max-semi-space-size=8'];

/** The policy settings the bench runs with: production-like (DESIGN §3), no signature or scan rules (not implemented yet). */
export const BENCH_SETTINGS = { no_match: 'deny', scopes: [{ name: 'bench', images: ['**'], deny_tags: ['latest'] }] };

/**
 * @param {{ dir: string, name: string, distDir: string, bundleFile: string, upstream: {url: string, host: string, ca?: string},
 *           logLevel?: string, dataDir?: string, nodeArgs?: string[], extra?: object, settings?: object,
 *           env?: Record<string, string>, productFlags?: string[], port?: number, agent?: object, upstreamExtra?: object }} o
 *   extra.tls serves HTTPS: `agent` (an undici Agent trusting its CA) is then what the bench reaches it with.
 */
export async function startPortcullis(o) {
  const home = join(o.dir, o.name);
  mkdirSync(home, { recursive: true });
  const port = o.port ?? (await freePort());
  const dataDir = o.dataDir ?? join(home, 'data');
  const config = {
    listen: `127.0.0.1:${port}`,
    dataDir,
    upstreams: [{ name: 'bench', registry: o.upstream.host, url: o.upstream.url, ...(o.upstream.ca ? { ca: o.upstream.ca } : {}), ...o.upstreamExtra }],
    // Plain paths (/v2/bench/app/...) go to the bench upstream, like Docker's registry-mirrors.
    defaultUpstream: 'bench',
    policy: { bundleFile: o.bundleFile, settings: o.settings ?? BENCH_SETTINGS },
    decisionLog: { sink: 'file', file: join(home, 'decisions.jsonl') },
    log: { level: o.logLevel ?? 'info' },
    ...o.extra,
  };
  // JSON is valid YAML.
  const configPath = join(home, 'portcullis.yaml');
  writeFileSync(configPath, JSON.stringify(config, null, 2) + '\n');
  const logPath = join(home, 'portcullis.log');
  const fd = openSync(logPath, 'a');
  const d = startDaemon(
    process.execPath,
    [...(o.productFlags ?? PRODUCT_NODE_FLAGS), ...(o.nodeArgs ?? []), join(o.distDir, 'cli.js'), 'serve', '--config', configPath],
    {
      stdio: ['ignore', fd, fd],
      cwd: home,
      env: { ...process.env, ...o.env },
    },
  );
  closeSync(fd);
  const url = `${config.tls ? 'https' : 'http'}://127.0.0.1:${port}`;
  try {
    const deadline = Date.now() + 20_000;
    for (;;) {
      const status = await waitHttp(`${url}/readyz`, 20_000, () => d.exitInfo !== undefined, o.agent);
      if (status === 200) break;
      if (Date.now() > deadline) throw new Error(`${url}/readyz stayed ${status}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  } catch (e) {
    await d.stop();
    throw new Error(`Portcullis did not start: ${e.message}\n${readFileSync(logPath, 'utf8').slice(-3000)}`, { cause: e });
  }
  return {
    name: o.name,
    url,
    host: `127.0.0.1:${port}`,
    pid: d.pid,
    agent: o.agent,
    dataDir,
    logPath,
    decisionLogPath: config.decisionLog.file,
    config,
    async metrics() {
      if (o.agent) return parseProm(await (await request(`${url}/metrics`, { dispatcher: o.agent })).body.text());
      const res = await fetch(`${url}/metrics`);
      return parseProm(await res.text());
    },
    /** VmRSS / VmHWM in MiB. */
    memory() {
      return readMemory(d.pid);
    },
    /** Resets VmHWM (Linux: write 5 to clear_refs), so the next reading is the peak of what follows. */
    resetPeak() {
      try {
        writeFileSync(`/proc/${d.pid}/clear_refs`, '5');
        return true;
      } catch {
        return false;
      }
    },
    stop: (grace = 10_000) => d.stop(grace),
    /** kill -9 (the cluster phase kills a blob's owner mid-download). */
    kill9() {
      try {
        process.kill(-d.pid, 'SIGKILL');
      } catch {
        // already gone
      }
      return d.exited;
    },
    get exitInfo() {
      return d.exitInfo;
    },
  };
}

export function readMemory(pid) {
  const s = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (k) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(s)?.[1] ?? NaN);
  return { rssMiB: kb('VmRSS') / 1024, hwmMiB: kb('VmHWM') / 1024 };
}

/** Prometheus text format → [{ name, labels, value }]. */
export function parseProm(text) {
  const out = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    if (m[2]) for (const l of m[2].matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    out.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return out;
}

/** Cumulative histogram buckets of `name` (summed over other labels) as [[le, count], ...] sorted by le. */
export function histogram(samples, name, filter = () => true) {
  const byLe = new Map();
  for (const s of samples) {
    if (s.name !== `${name}_bucket` || !filter(s.labels)) continue;
    const le = s.labels.le === '+Inf' ? Infinity : Number(s.labels.le);
    byLe.set(le, (byLe.get(le) ?? 0) + s.value);
  }
  return [...byLe.entries()].sort((a, b) => a[0] - b[0]);
}

/** Bucket-wise difference of two cumulative histograms (after − before). */
export function histogramDelta(after, before) {
  const b = new Map(before);
  return after.map(([le, c]) => [le, c - (b.get(le) ?? 0)]);
}

/** Quantile from cumulative buckets, interpolating linearly inside the bucket (as Prometheus does). */
export function histogramQuantile(buckets, q) {
  const total = buckets.at(-1)?.[1] ?? 0;
  if (!total) return undefined;
  const rank = q * total;
  let prevLe = 0;
  let prevCount = 0;
  for (const [le, c] of buckets) {
    if (c >= rank) {
      if (le === Infinity) return prevLe;
      return prevLe + ((le - prevLe) * (rank - prevCount)) / Math.max(1, c - prevCount);
    }
    prevLe = le;
    prevCount = c;
  }
  return prevLe;
}
