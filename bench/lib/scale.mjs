/**
 * The `scale` phase (issue 16, item 2): do the costs stay flat as the stores grow? The same measurements on an empty
 * data directory and on one filled to realistic sizes (scale-fill.mjs), in the same run, each on a fresh process:
 *   - start-up: process spawn to /readyz 200;
 *   - warm manifest GETs per second (wrk, the `wrk` phase's settings);
 *   - cold decision overhead (portcullis_decision_overhead_seconds over a few cold images, median);
 * then, on the full store with its cache bound just above what it holds, the first byte of warm blob GETs while
 * cold pulls make the LRU evict.
 */
import { rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { request } from 'undici';
import { wrkManifest } from './clients.mjs';
import { MANIFEST_ACCEPT } from './images.mjs';
import { histogram, histogramDelta, histogramQuantile, startPortcullis } from './portcullis.mjs';
import { fillBlobs, fillMeta } from './scale-fill.mjs';
import { median, round } from './stats.mjs';

/**
 * @param {{ tmp: string, pcOpts: object, seed: Function, instances: object[], log: Function, upstreamName: string,
 *           sizes: { blobs: number, tags: number, closures: number, decisions: number }, wrkSeconds: number,
 *           coldImages: number }} o
 */
export async function scalePhase(o) {
  const { tmp, pcOpts, seed, instances, log, sizes } = o;
  const out = { sizes };
  const fullDir = join(tmp, 'scale-full-data');
  const t0 = performance.now();
  await fillMeta(pcOpts.distDir, fullDir, { upstream: o.upstreamName, ...sizes });
  const fillMetaS = (performance.now() - t0) / 1000;
  const filledBytes = fillBlobs(fullDir, sizes.blobs);
  out.fill_s = { meta: round(fillMetaS, 1), blobs: round((performance.now() - t0) / 1000 - fillMetaS, 1) };
  out.meta_sqlite_mib = round(statSync(join(fullDir, 'meta.sqlite')).size / 2 ** 20, 1);
  log(
    `scale: filled ${sizes.blobs} blobs (${(filledBytes / 2 ** 30).toFixed(1)} GiB logical, sparse) and meta.sqlite (${out.meta_sqlite_mib} MiB) in ${out.fill_s.meta + out.fill_s.blobs} s`,
  );

  /** `entries`: blobs on disk at start; the steady-state figures wait until the start-up scan has indexed them. */
  const measure = async (label, dataDir, extra, entries = 0) => {
    const t = performance.now();
    const pc = await startPortcullis({ ...pcOpts, name: `scale-${label}`, dataDir, logLevel: 'warn', extra: { ...pcOpts.extra, ...extra } });
    const startupS = (performance.now() - t) / 1000;
    instances.push(pc);
    try {
      const repo = `bench/scale-${label}`;
      await seed(repo, 'v1', { layers: 1, layerMiB: 1 });
      const url = `${pc.url}/v2/${repo}/manifests/v1`;
      await getOk(url);
      // While the start-up scan runs it shares the event loop: measured once then, and the figures below after it.
      const duringScan = entries > 0 ? (await wrkManifest(url, { seconds: o.wrkSeconds })).rps : undefined;
      await indexed(pc, entries);
      const indexedS = (performance.now() - t) / 1000;
      const before = histogram(await pc.metrics(), 'portcullis_decision_overhead_seconds');
      for (let i = 0; i < o.coldImages; i++) {
        await seed(`${repo}-cold${i}`, 'v1', { layers: 1, layerMiB: 1 });
        await getOk(`${pc.url}/v2/${repo}-cold${i}/manifests/v1`);
      }
      const over = histogramDelta(histogram(await pc.metrics(), 'portcullis_decision_overhead_seconds'), before);
      const rps = [];
      for (let rep = 0; rep < 2; rep++) rps.push((await wrkManifest(url, { seconds: o.wrkSeconds })).rps);
      const r = {
        startup_s: round(startupS, 2),
        ...(entries > 0 ? { indexed_s: round(indexedS, 1), manifest_rps_during_scan: round(duringScan, 0) } : {}),
        manifest_rps: round(median(rps), 0),
        decision_overhead_p50_ms: round((histogramQuantile(over, 0.5) ?? NaN) * 1000, 3),
        rss_mib: round(pc.memory().rssMiB, 1),
      };
      log(
        `scale ${label}: start ${r.startup_s} s, ${r.manifest_rps} manifest req/s, decision overhead p50 ${r.decision_overhead_p50_ms} ms, RSS ${r.rss_mib} MiB`,
      );
      return { pc, r };
    } catch (e) {
      await stop(pc);
      throw e;
    }
  };
  /** Stops an instance and stops pushing reports to it. */
  const stop = async (pc) => {
    instances.splice(instances.indexOf(pc), 1);
    await pc.stop();
  };

  const empty = await measure('empty', join(tmp, 'scale-empty-data'), {});
  await stop(empty.pc);
  out.empty = empty.r;
  // The full store's cache bound sits 64 MiB above what it holds: the cold pulls below then evict.
  const headroom = 64 * 2 ** 20;
  const full = await measure('full', fullDir, { cache: { ...pcOpts.extra?.cache, maxSize: filledBytes + headroom } }, sizes.blobs);
  out.full = full.r;
  try {
    out.eviction = await evictionFirstByte(full.pc, { seed, log, filledBytes, entries: sizes.blobs });
  } finally {
    await stop(full.pc);
    rmSync(fullDir, { recursive: true, force: true });
  }
  return {
    scale: out,
    scale_manifest_rps_ratio: round(out.full.manifest_rps / out.empty.manifest_rps, 3),
    scale_decision_overhead_ratio: round(out.full.decision_overhead_p50_ms / out.empty.decision_overhead_p50_ms, 3),
    scale_startup_s: out.full.startup_s,
    eviction_p99_first_byte_ms: out.eviction.p99_ms,
  };
}

/** Waits (at most 10 minutes) until the cache gauge counts `entries` blobs: the start-up scan has indexed them. */
async function indexed(pc, entries) {
  const count = async () => (await pc.metrics()).find((s) => s.name === 'portcullis_cache_entries')?.value ?? 0;
  for (let i = 0; i < 3000 && (await count()) < entries; i++) await new Promise((r) => setTimeout(r, 200));
  const n = await count();
  if (n < entries) throw new Error(`scale: the start-up scan indexed ${n} of ${entries} blobs in 10 minutes`);
}

async function getOk(url) {
  const res = await request(url, { headers: { accept: MANIFEST_ACCEPT } });
  await res.body.arrayBuffer();
  if (res.statusCode !== 200) throw new Error(`GET ${url}: HTTP ${res.statusCode}`);
}

/**
 * Waits until the start-up scan has indexed the filled blobs (the cache gauges count them), warms one small image,
 * then reads its blob over and over (time to first byte of each GET) while cold pulls of 4 × 32 MiB push the cache
 * over its bound: every commit evicts hundreds of the oldest filled blobs.
 */
async function evictionFirstByte(pc, { seed, log, filledBytes, entries }) {
  const gauge = async (name) => (await pc.metrics()).find((s) => s.name === name)?.value ?? 0;
  await indexed(pc, entries);
  const evictions0 = await gauge('portcullis_cache_evictions_total');
  const hot = await seed('bench/scale-hot', 'v1', { layers: 1, layerMiB: 1 });
  await getOk(`${pc.url}/v2/bench/scale-hot/manifests/v1`);
  const blobUrl = `${pc.url}/v2/bench/scale-hot/blobs/${hot.blobs.at(-1).digest}`;
  await readAll(blobUrl);
  const cold = [];
  for (let i = 0; i < 4; i++) cold.push(await seed(`bench/scale-evict${i}`, 'v1', { layers: 1, layerMiB: 32 }));
  let pulling = true;
  const pulls = (async () => {
    try {
      for (const [i, img] of cold.entries()) {
        await getOk(`${pc.url}/v2/bench/scale-evict${i}/manifests/v1`);
        for (const l of img.blobs) await readAll(`${pc.url}/v2/bench/scale-evict${i}/blobs/${l.digest}`);
      }
    } finally {
      pulling = false;
    }
  })();
  const firstByte = [];
  while (pulling && firstByte.length < 100_000) {
    const t = performance.now();
    const res = await request(blobUrl);
    let first;
    for await (const chunk of res.body) if (first === undefined && chunk.length) first = performance.now() - t;
    if (first !== undefined) firstByte.push(first);
    if (res.statusCode !== 200) throw new Error(`warm blob GET during eviction: HTTP ${res.statusCode}`);
  }
  await pulls;
  firstByte.sort((a, b) => a - b);
  const q = (p) => firstByte[Math.min(firstByte.length - 1, Math.floor(p * firstByte.length))];
  const evicted = (await gauge('portcullis_cache_evictions_total')) - evictions0;
  const r = {
    gets: firstByte.length,
    evicted,
    p50_ms: round(q(0.5), 2),
    p99_ms: round(q(0.99), 2),
    cache_bound_gib: round((filledBytes + 64 * 2 ** 20) / 2 ** 30, 2),
  };
  log(`scale eviction: ${r.gets} warm blob GETs while ${r.evicted} blobs were evicted; first byte p50 ${r.p50_ms} ms, p99 ${r.p99_ms} ms`);
  if (evicted === 0) throw new Error('scale: the cold pulls evicted nothing; the eviction figure would mean nothing');
  return r;
}

async function readAll(url) {
  const res = await request(url);
  await res.body.arrayBuffer();
  if (res.statusCode !== 200) throw new Error(`GET ${url}: HTTP ${res.statusCode}`);
}
