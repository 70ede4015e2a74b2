#!/usr/bin/env node
/**
 * Two Portcullis builds or Node flag sets side by side against one upstream Distribution, in alternating order:
 * warm manifest GET req/s, p99 and the proxy's CPU per 1,000 requests (wrk, 5 s), then a cold and a warm curl pull of a fresh 200 MiB, 5-layer image on
 * each, with the proxy's CPU seconds per GiB (from /proc) and its VmHWM. No evidence requirement (policy only). Cold CPU
 * twice: until the client has its last byte (coldCpuPerGiB), and until the blob is in the cache (coldCachedCpuPerGiB:
 * the write-behind's file writes, fsync and rename, which otherwise land in the warm pull's figure).
 *
 *   node bench/ab.mjs DIST[,NODE_FLAG...] DIST[,NODE_FLAG...] [REPS]
 *   node bench/ab.mjs dist dist,--max-semi-space-size=8 4      # the product's flag against none
 *
 * Medians as JSON on stdout, one line per rep on stderr. Every process it starts is killed at the end; its temp dir
 * (configs, logs) is removed unless AB_KEEP=1.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { curlPull, wrkManifest } from './lib/clients.mjs';
import { pushImage } from './lib/images.mjs';
import { startPortcullis } from './lib/portcullis.mjs';
import { killAll } from './lib/proc.mjs';
import { startRegistry } from './lib/registry.mjs';
import { median } from './lib/stats.mjs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const [aSpec, bSpec, repsArg] = process.argv.slice(2);
if (!aSpec || !bSpec) {
  console.error('usage: node bench/ab.mjs DIST[,NODE_FLAG...] DIST[,NODE_FLAG...] [REPS]');
  process.exit(2);
}
const parse = (spec) => {
  const [dist, ...flags] = spec.split(',');
  return { dist: resolve(dist), flags: flags.filter(Boolean) };
};
const sides = { A: parse(aSpec), B: parse(bSpec) };
const reps = Number(repsArg ?? 4);

/** utime + stime of a process, in seconds. */
const cpu = (pid) => {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(f[11]) + Number(f[12])) / 100;
};

const tmp = await mkdtemp(join(os.tmpdir(), 'portcullis-ab-'));
try {
  const upstream = await startRegistry({ dir: tmp, name: 'upstream' });
  const bundleFile = join(ROOT, 'policies', 'bundle.tar.gz');
  const pcs = {};
  for (const [k, o] of Object.entries(sides)) {
    pcs[k] = await startPortcullis({ dir: tmp, name: k, distDir: o.dist, bundleFile, upstream, productFlags: o.flags });
  }
  const m = await pushImage(upstream.url, 'ab/m', 'v1', { layers: 1, layerMiB: 1, tmpDir: tmp });
  for (const p of Object.values(pcs)) {
    await curlPull(p.url, 'ab/m', 'v1', m.blobs);
    await wrkManifest(`${p.url}/v2/ab/m/manifests/v1`, { seconds: 3 });
  }
  const empty = () => ({
    rps: [],
    p99: [],
    cpuMsPer1kReq: [],
    coldMs: [],
    coldCpuPerGiB: [],
    coldCachedCpuPerGiB: [],
    warmMs: [],
    warmCpuPerGiB: [],
    hwmMiB: [],
  });
  const res = { A: empty(), B: empty() };
  /** One curl pull of every blob; returns [wall ms, proxy CPU s per GiB]. */
  const pull = async (k, repo, img) => {
    const c0 = cpu(pcs[k].pid);
    const t0 = performance.now();
    await curlPull(pcs[k].url, repo, 'v1', img.blobs);
    return [performance.now() - t0, (cpu(pcs[k].pid) - c0) / (img.bytes / 2 ** 30)];
  };
  /**
   * Waits until the proxy has committed every download (its temp dir is empty): the client has its last byte before
   * the cache file is written, fsynced and renamed, and that CPU belongs to the cold pull, not to the warm one after.
   * Polls the directory, not /metrics, so that the wait costs the proxy nothing.
   */
  const settled = async (k) => {
    const dir = join(pcs[k].dataDir, 'tmp');
    for (let i = 0; i < 3000 && readdirSync(dir).length > 0; i++) await new Promise((r) => setTimeout(r, 20));
  };
  for (let rep = 0; rep < reps; rep++) {
    const order = rep % 2 ? ['B', 'A'] : ['A', 'B'];
    for (const k of order) {
      const c0 = cpu(pcs[k].pid);
      const w = await wrkManifest(`${pcs[k].url}/v2/ab/m/manifests/v1`, { seconds: 5 });
      // CPU per request: far steadier than req/s on a shared machine.
      res[k].cpuMsPer1kReq.push(((cpu(pcs[k].pid) - c0) * 1e6) / w.requests);
      res[k].rps.push(w.rps);
      res[k].p99.push(w.p99);
    }
    for (const k of order) {
      const repo = `ab/i${k.toLowerCase()}${rep}`;
      const img = await pushImage(upstream.url, repo, 'v1', { layers: 5, layerMiB: 40, tmpDir: tmp });
      const c0 = cpu(pcs[k].pid);
      const [coldMs, coldCpu] = await pull(k, repo, img);
      await settled(k);
      const coldCached = (cpu(pcs[k].pid) - c0) / (img.bytes / 2 ** 30);
      const [warmMs, warmCpu] = await pull(k, repo, img);
      res[k].coldMs.push(coldMs);
      res[k].coldCpuPerGiB.push(coldCpu);
      res[k].coldCachedCpuPerGiB.push(coldCached);
      res[k].warmMs.push(warmMs);
      res[k].warmCpuPerGiB.push(warmCpu);
      res[k].hwmMiB.push(pcs[k].memory().hwmMiB);
    }
    const line = (k) => {
      const r = res[k];
      return `${k} ${r.rps.at(-1).toFixed(0)} req/s p99 ${r.p99.at(-1)} ms ${r.cpuMsPer1kReq.at(-1).toFixed(0)} CPU ms/1k req; cold ${r.coldMs.at(-1).toFixed(0)} ms ${r.coldCpuPerGiB.at(-1).toFixed(2)} s/GiB (${r.coldCachedCpuPerGiB.at(-1).toFixed(2)} until cached); warm ${r.warmMs.at(-1).toFixed(0)} ms ${r.warmCpuPerGiB.at(-1).toFixed(2)} s/GiB; VmHWM ${r.hwmMiB.at(-1).toFixed(0)} MiB`;
    };
    console.error(`rep ${rep + 1}/${reps}: ${line('A')} | ${line('B')}`);
  }
  const medians = (r) => Object.fromEntries(Object.entries(r).map(([x, a]) => [x, Number(median(a).toFixed(2))]));
  console.log(JSON.stringify({ A: aSpec, B: bSpec, reps, loadavg: os.loadavg(), A_median: medians(res.A), B_median: medians(res.B) }, null, 1));
} finally {
  killAll();
  if (process.env.AB_KEEP === '1') console.error(`kept ${tmp}`);
  else await rm(tmp, { recursive: true, force: true });
}
