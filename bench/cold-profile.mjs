#!/usr/bin/env node
/**
 * Where a cold pull's CPU goes: builds side by side against one upstream Distribution, alternating, each pulling a
 * fresh 200 MiB, 5-layer image cold and then warm with curl. For each pull, the proxy's CPU seconds per GiB split by
 * thread (MainThread = JavaScript, hashing and socket syscalls; libuv-worker = temp-file writes, fsync, rename and
 * warm-blob reads; V8Worker = concurrent GC) and user/system, from /proc/PID/task/TID/stat. A cold pull's CPU is
 * counted until its blobs are in the cache (the client has its last byte before the write-behind ends).
 *
 *   node bench/cold-profile.mjs DIST[,NODE_FLAG...] [DIST[,NODE_FLAG...] ...] [--reps N] [--perf DIR] [--keep]
 *   node bench/cold-profile.mjs --analyze DIR/A-*.data            # groups the samples of earlier perf files again
 *   node bench/cold-profile.mjs dist,--trace-gc --reps 2 --keep    # keeps the temp dir: K/portcullis.log has the GC trace
 *
 * With --perf DIR, `perf record` samples every thread of each proxy during its cold pulls only (the proxy runs with
 * --perf-basic-prof so JavaScript frames have names), and the samples are grouped by what they do (hashing, copies,
 * page cache, sockets, GC, JavaScript, ...) and turned into s/GiB by their share of that proxy's measured CPU.
 * Medians as JSON on stdout, one line per pull on stderr. Needs root (or perf_event_paranoid ≤ 1) for --perf.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { curlPull } from './lib/clients.mjs';
import { pushImage } from './lib/images.mjs';
import { PRODUCT_NODE_FLAGS, startPortcullis } from './lib/portcullis.mjs';
import { killAll, requireTool, run, startDaemon } from './lib/proc.mjs';
import { startRegistry } from './lib/registry.mjs';
import { median } from './lib/stats.mjs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const opt = (name) => {
  const i = args.indexOf(name);
  if (i < 0) return undefined;
  const [, v] = args.splice(i, 2);
  return v;
};
const reps = Number(opt('--reps') ?? 4);
const perfDir = opt('--perf');
const keep = args.includes('--keep') ? (args.splice(args.indexOf('--keep'), 1), true) : false;
const analyze = args[0] === '--analyze';
if (args.length === 0) {
  console.error('usage: node bench/cold-profile.mjs DIST[,NODE_FLAG...] [DIST...] [--reps N] [--perf DIR]');
  process.exit(2);
}
const builds = args.map((spec, i) => {
  const [dist, ...flags] = spec.split(',');
  return { key: String.fromCharCode(65 + i), spec, dist: resolve(dist), flags: flags.filter(Boolean) };
});

/** CPU seconds per thread group and mode: { 'MainThread.user': s, ... }. */
function threadCpu(pid) {
  const out = {};
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    let stat;
    try {
      stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
    } catch {
      continue; // the thread ended
    }
    const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
    const f = stat.slice(stat.lastIndexOf(') ') + 2).split(' ');
    const group = /^(MainThread|libuv-worker|V8Worker)$/.test(comm) ? comm : 'other';
    out[`${group}.user`] = (out[`${group}.user`] ?? 0) + Number(f[11]) / 100;
    out[`${group}.sys`] = (out[`${group}.sys`] ?? 0) + Number(f[12]) / 100;
  }
  return out;
}
const diff = (a, b) => Object.fromEntries(Object.keys({ ...a, ...b }).map((k) => [k, (b[k] ?? 0) - (a[k] ?? 0)]));
const sum = (o) => Object.values(o).reduce((x, y) => x + y, 0);

/** What a perf sample's symbol is spent on; the first pattern that matches wins. */
const CATEGORIES = [
  ['sha256', /sha256|sha1_|SHA256/i],
  ['memcpy in user space (slab copies)', /memmove|memcpy/],
  [
    'page cache (new pages, write to file)',
    /copy_page_from_iter|copy_folio_from_iter|clear_page|filemap_|folio_|__filemap|shmem_|ext4_|generic_perform_write|iomap_|page_cache|lru_|get_page_from_freelist|rmqueue|__alloc_pages|handle_mm_fault|do_anonymous_page|asm_exc_page_fault|zap_|release_pages|free_unref|truncate|mark_buffer|jbd2|xas_|workingset|mem_cgroup|memcg|node_dirty|balance_dirty/,
  ],
  [
    'socket, kernel (tcp, loopback, copies)',
    /tcp_|skb|sock_|__sys_|inet_|ip_|net_rx|napi|__netif|process_backlog|copy_user|_copy_to_iter|_copy_from_iter|sk_|__dev_queue|loopback|csum|__kfree_skb|kmalloc_reserve|__alloc_skb/,
  ],
  ['V8 GC', /Heap|Mark|Scaveng|Sweep|Evacuat|GCTracer|Compact|Marking|ConcurrentMark|MinorMS|ArrayBufferSweeper|BackingStore|FlushedBytecode/],
  ['JavaScript (JS frames, builtins, IC)', /^(JS:|LazyCompile:|Function:|Builtins_|Bytecode|Handler:|Stub:|RegExp|Baseline:|Maglev:|Turbofan:|\*|~)/],
  ['node/V8 runtime (C++), libc', /node::|v8::|Runtime_|uv_|__GI_|pthread|absl::|_int_malloc|_int_free|malloc|std::/],
  ['kernel with interrupts off (paravirt irq enable: page allocator, faults, host exits)', /^pvm_|irq_enable|_raw_spin_unlock_irq/],
  ['kernel, other (syscalls, scheduling, epoll, futex)', /^[a-z_0-9.]+$/],
];

async function perfStart(pid, out) {
  const perf = requireTool('perf');
  const d = startDaemon(perf, ['record', '-F', '499', '-p', String(pid), '-o', out], { stdio: ['ignore', 'ignore', 'ignore'] });
  await new Promise((r) => setTimeout(r, 500));
  return d;
}

async function perfBreakdown(files) {
  const perf = requireTool('perf');
  const bySym = new Map();
  for (const f of files) {
    const r = await run(perf, ['report', '-i', f, '--no-children', '--sort', 'sym', '--stdio', '-q', '--percent-limit', '0'], { timeoutMs: 120_000 });
    for (const line of r.stdout.split('\n')) {
      const m = /^\s*([\d.]+)%\s+\[[.kgu]\]\s+(.*)$/.exec(line) ?? /^\s*([\d.]+)%\s+(.*)$/.exec(line);
      if (!m) continue;
      const kernel = /\[k\]/.test(line);
      const sym = m[2].trim();
      const key = kernel ? sym : sym;
      bySym.set(key, (bySym.get(key) ?? 0) + Number(m[1]) / files.length);
    }
  }
  const cats = {};
  const top = {};
  for (const [sym, pct] of bySym) {
    const cat = CATEGORIES.find(([, re]) => re.test(sym))?.[0] ?? 'unattributed';
    cats[cat] = (cats[cat] ?? 0) + pct;
    (top[cat] ??= []).push([sym, pct]);
  }
  for (const k of Object.keys(top))
    top[k] = top[k]
      .sort((a, b) => b[1] - a[1])
      .slice(0, 6)
      .map(([s, p]) => `${s.slice(0, 70)} ${p.toFixed(1)}%`);
  return { cats, top };
}

if (analyze) {
  // Re-reads perf files written by an earlier --perf run: node bench/cold-profile.mjs --analyze DIR/A-*.data
  const { cats, top } = await perfBreakdown(args.slice(1));
  console.log(JSON.stringify({ pct: Object.fromEntries(Object.entries(cats).sort((x, y) => y[1] - x[1])), top }, null, 1));
  process.exit(0);
}
const tmp = await mkdtemp(join(os.tmpdir(), 'portcullis-prof-'));
try {
  const upstream = await startRegistry({ dir: tmp, name: 'upstream' });
  const bundleFile = join(ROOT, 'policies', 'bundle.tar.gz');
  const pcs = {};
  for (const b of builds) {
    const nodeArgs = perfDir ? ['--perf-basic-prof'] : [];
    pcs[b.key] = await startPortcullis({
      dir: tmp,
      name: b.key,
      distDir: b.dist,
      bundleFile,
      upstream,
      productFlags: [...PRODUCT_NODE_FLAGS, ...b.flags],
      nodeArgs,
    });
  }
  if (perfDir) await mkdir(perfDir, { recursive: true });
  const res = Object.fromEntries(builds.map((b) => [b.key, { cold: [], warm: [], ms: [], perfFiles: [] }]));
  for (let rep = 0; rep < reps; rep++) {
    const order = rep % 2 ? [...builds].reverse() : builds;
    for (const b of order) {
      const pc = pcs[b.key];
      const repo = `prof/${b.key.toLowerCase()}${rep}`;
      const img = await pushImage(upstream.url, repo, 'v1', { layers: 5, layerMiB: 40, tmpDir: tmp });
      const gib = img.bytes / 2 ** 30;
      const perfFile = perfDir ? join(perfDir, `${b.key}-${rep}.data`) : undefined;
      const perf = perfFile ? await perfStart(pc.pid, perfFile) : undefined;
      let t0 = threadCpu(pc.pid);
      const coldMs = await curlPull(pc.url, repo, 'v1', img.blobs);
      // Until the blobs are in the cache (the temp dir is empty): the write-behind belongs to the cold pull.
      const tmpDir = join(pc.dataDir, 'tmp');
      for (let i = 0; i < 3000 && readdirSync(tmpDir).length > 0; i++) await new Promise((r) => setTimeout(r, 20));
      const cold = diff(t0, threadCpu(pc.pid));
      if (perf) {
        await perf.stop();
        res[b.key].perfFiles.push(perfFile);
      }
      t0 = threadCpu(pc.pid);
      const warmMs = await curlPull(pc.url, repo, 'v1', img.blobs);
      const warm = diff(t0, threadCpu(pc.pid));
      res[b.key].ms.push({ cold: coldMs, warm: warmMs, hwm: pc.memory().hwmMiB });
      const per = (o) => Object.fromEntries(Object.entries(o).map(([k, v]) => [k, v / gib]));
      res[b.key].cold.push(per(cold));
      res[b.key].warm.push(per(warm));
      const fmt = (o) =>
        Object.entries(o)
          .filter(([, v]) => v > 0)
          .map(([k, v]) => `${k} ${(v / gib).toFixed(2)}`)
          .join(' ');
      console.error(
        `rep ${rep + 1} ${b.key}: cold ${(sum(cold) / gib).toFixed(2)} s/GiB (${fmt(cold)}); warm ${(sum(warm) / gib).toFixed(2)} s/GiB (${fmt(warm)}); ${coldMs.toFixed(0)}/${warmMs.toFixed(0)} ms; VmHWM ${pc.memory().hwmMiB.toFixed(0)} MiB; load ${os.loadavg()[0].toFixed(1)}`,
      );
    }
  }
  const medians = (rows) => {
    const keys = [...new Set(rows.flatMap((r) => Object.keys(r)))].sort();
    const m = Object.fromEntries(keys.map((k) => [k, Number(median(rows.map((r) => r[k] ?? 0)).toFixed(3))]));
    m.total = Number(median(rows.map(sum)).toFixed(3));
    return m;
  };
  const out = { builds: builds.map((b) => `${b.key}=${b.spec}`), reps, loadavg: os.loadavg() };
  for (const b of builds) {
    const r = res[b.key];
    const med = (k) => Number(median(r.ms.map((x) => x[k])).toFixed(0));
    out[b.key] = { cold_s_per_gib: medians(r.cold), warm_s_per_gib: medians(r.warm), cold_ms: med('cold'), warm_ms: med('warm'), vmhwm_mib: med('hwm') };
    if (perfDir) {
      const { cats, top } = await perfBreakdown(r.perfFiles);
      const total = out[b.key].cold_s_per_gib.total;
      out[b.key].cold_perf = Object.fromEntries(
        Object.entries(cats)
          .sort((x, y) => y[1] - x[1])
          .map(([k, pct]) => [k, { pct: Number(pct.toFixed(1)), s_per_gib: Number(((pct / 100) * total).toFixed(3)), top: top[k] }]),
      );
    }
  }
  console.log(JSON.stringify(out, null, 1));
} finally {
  killAll();
  if (keep) console.error(`kept ${tmp}`);
  else await rm(tmp, { recursive: true, force: true });
}
