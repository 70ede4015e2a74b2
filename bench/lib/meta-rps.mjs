/**
 * `cluster_manifest_rps_ratio` (issue 13, the `cluster` phase): warm manifest GETs per second of a replica with
 * `storage.meta: redis` (a real redis-server on a loopback port, shared decisions, tags, epoch and quota buckets)
 * ÷ one with the embedded store only (SQLite), same run, same image, same blob store (filesystem), reps alternating
 * which goes first. Both are separate processes with the main instance's policy and evidence. See bench/README.md.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { createConnection } from 'node:net';
import { join } from 'node:path';
import { wrkManifest } from './clients.mjs';
import { MANIFEST_ACCEPT } from './images.mjs';
import { startPortcullis } from './portcullis.mjs';
import { requireTool, sleep, startDaemon } from './proc.mjs';
import { freePort } from './registry.mjs';
import { median, round, summary } from './stats.mjs';

/** redis-server on a loopback port, no persistence; resolves once it answers PING. */
async function startRedisServer(dir) {
  const port = await freePort();
  const home = join(dir, 'redis');
  mkdirSync(home, { recursive: true });
  const args = ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', home];
  const d = startDaemon(requireTool('redis-server'), args, { cwd: home });
  const ping = () =>
    new Promise((resolve) => {
      const s = createConnection({ host: '127.0.0.1', port }, () => s.write('PING\r\n'));
      s.once('data', (b) => {
        s.destroy();
        resolve(b.toString().startsWith('+PONG'));
      });
      s.once('error', () => resolve(false));
    });
  for (let i = 0; !(await ping()); i++) {
    if (d.exitInfo || i > 200) throw new Error('redis-server did not answer PING');
    await sleep(50);
  }
  return { url: `redis://127.0.0.1:${port}/0`, stop: () => d.stop(2000) };
}

/** @param {{ QUICK: boolean, dir: string, seed: Function, pcOpts: object, instances: object[], log: Function, logLevel: string }} ctx */
export async function metaRpsPhase(ctx) {
  const { QUICK, dir, seed, pcOpts, instances, log } = ctx;
  const redis = await startRedisServer(dir);
  const env = { ...pcOpts.env, PC_BENCH_REDIS_KEY: randomBytes(32).toString('hex') };
  const storage = {
    meta: 'redis',
    redis: { url: redis.url, allowInsecure: true, signingKey: { env: 'PC_BENCH_REDIS_KEY' }, keyPrefix: 'bench:' },
  };
  const start = (name, extra) => startPortcullis({ ...pcOpts, name, env, logLevel: ctx.logLevel, extra: { ...pcOpts.extra, ...extra } });
  const [sqlite, withRedis] = await Promise.all([start('meta-sqlite', {}), start('meta-redis', { storage })]);
  // Seeded from now on: their scan reports go to these two as well.
  instances.push(sqlite, withRedis);
  try {
    const repo = 'bench/meta-rps';
    await seed(repo, 'v1', { layers: 1, layerMiB: 1 });
    const who = { sqlite, redis: withRedis };
    for (const r of Object.values(who)) {
      const res = await fetch(`${r.url}/v2/${repo}/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT } });
      await res.arrayBuffer();
      if (res.status !== 200) throw new Error(`warm-up GET manifest via ${r.url}: HTTP ${res.status}`);
    }
    const reps = QUICK ? 2 : 3;
    const seconds = QUICK ? 3 : 5;
    const rps = { sqlite: [], redis: [] };
    const ratios = [];
    for (let rep = 0; rep < reps; rep++) {
      const order = rep % 2 === 0 ? ['sqlite', 'redis'] : ['redis', 'sqlite'];
      for (const k of order) {
        const w = await wrkManifest(`${who[k].url}/v2/${repo}/manifests/v1`, { seconds });
        if (w.non2xx > 0) throw new Error(`wrk against meta-${k}: ${w.non2xx} non-2xx responses`);
        rps[k].push(w.rps);
      }
      ratios.push(rps.redis[rep] / rps.sqlite[rep]);
      log(`cluster manifest rps rep ${rep + 1}/${reps}: redis ${rps.redis[rep].toFixed(0)} / sqlite ${rps.sqlite[rep].toFixed(0)} req/s`);
    }
    return {
      wrk: `wrk -t2 -c16 -d${seconds}s --latency /v2/${repo}/manifests/v1`,
      rps: { redis: summary(rps.redis.map((x) => round(x, 0))), sqlite: summary(rps.sqlite.map((x) => round(x, 0))) },
      ratio: summary(ratios),
      cluster_manifest_rps_ratio: round(median(ratios), 3),
    };
  } finally {
    instances.splice(instances.indexOf(sqlite), 2);
    await Promise.all([sqlite.stop(2000), withRedis.stop(2000)]);
    await redis.stop();
  }
}
