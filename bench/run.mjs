#!/usr/bin/env node
/**
 * `npm run bench`: Portcullis side by side with CNCF Distribution's proxy mode and with direct pulls, in one run, on
 * loopback, reported as ratios against the targets of DESIGN §10. See bench/README.md.
 *
 *   node bench/run.mjs [--out FILE] [--quick] [--phases pulls,herd,wrk,auth,rss,index,hostile,scale,huge,cluster,bigblob,fanout,latency,tls,disk] [--scale-blobs N] [--bigblob-gib N] [--log-level info]
 *                      [--dist DIR] [--cpu-prof DIR] [--keep] [--node-flags 'FLAGS']
 *
 * Every process it starts (registries, Portcullis, skopeo, curl, wrk) is killed on exit, error or signal.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, statfsSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { curlPull, skopeoHerd, skopeoPull, wrkManifest } from './lib/clients.mjs';
import { HostileClients, openFileLimit } from './lib/hostile.mjs';
import { MANIFEST_ACCEPT, pushImage, pushIndex } from './lib/images.mjs';
import { evidenceConfig, pushReport, setupSigning, signImage } from './lib/evidence.mjs';
import { BENCH_SETTINGS, PRODUCT_NODE_FLAGS, histogram, histogramDelta, histogramQuantile, startPortcullis } from './lib/portcullis.mjs';
import { killAll, run } from './lib/proc.mjs';
import { bigblobPhase } from './lib/bigblob.mjs';
import { clusterPhase } from './lib/cluster.mjs';
import { startRegistry } from './lib/registry.mjs';
import { hugePhase } from './lib/huge.mjs';
import { scalePhase } from './lib/scale.mjs';
import { diskPhase } from './lib/disk.mjs';
import { fanoutPhase } from './lib/fanout.mjs';
import { latencyPhase } from './lib/latency.mjs';
import { tlsPhase } from './lib/tls.mjs';
import { fmt, median, round, summary } from './lib/stats.mjs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');

const { values: args } = parseArgs({
  options: {
    out: { type: 'string' },
    quick: { type: 'boolean', default: false },
    phases: { type: 'string', default: 'pulls,herd,wrk,auth,rss,index,hostile,scale,huge,cluster,bigblob,fanout,latency,tls,disk' },
    /** The scale phase's blob count (10^6 by default; tags, decisions and closures scale with it). */
    'scale-blobs': { type: 'string' },
    /** The bigblob phase's layer size in GiB (12 by default, 1 with --quick). */
    'bigblob-gib': { type: 'string' },
    'log-level': { type: 'string', default: 'info' },
    dist: { type: 'string', default: join(ROOT, 'dist') },
    'cpu-prof': { type: 'string' },
    keep: { type: 'boolean', default: false },
    'no-evidence': { type: 'boolean', default: false },
    /** Diagnostics only: extra environment for the Portcullis process, KEY=VALUE (repeatable). */
    'pc-env': { type: 'string', multiple: true, default: [] },
    /** The Node flags Portcullis starts with, instead of the product's (PRODUCT_NODE_FLAGS); '' for none. */
    'node-flags': { type: 'string' },
    reps: { type: 'string' },
  },
});

args.dist = resolve(args.dist);
const QUICK = args.quick;
const P = {
  pullReps: Number(args.reps ?? (QUICK ? 2 : 7)),
  warmPerRep: 2,
  image: QUICK ? { layers: 5, layerMiB: 8 } : { layers: 5, layerMiB: 40 }, // 200 MiB in 5 layers
  herdReps: QUICK ? 1 : 3,
  herdClients: 20,
  wrkSeconds: QUICK ? 2 : 5,
  wrkReps: QUICK ? 1 : 2,
  big: QUICK ? { layers: 1, layerMiB: 128 } : { layers: 1, layerMiB: 1024 }, // 1 GiB
  rssClients: 20,
  index: QUICK ? { layers: 1, layerMiB: 4 } : { layers: 2, layerMiB: 16 },
  indexReps: QUICK ? 1 : 2,
  scaleBlobs: Number(args['scale-blobs'] ?? (QUICK ? 100_000 : 1_000_000)),
  bigblobGiB: Number(args['bigblob-gib'] ?? (QUICK ? 1 : 12)),
  hostile: { idle: 2000, stalled: 100, blob: QUICK ? { layers: 1, layerMiB: 64 } : { layers: 1, layerMiB: 256 } },
};
const phases = new Set(args.phases.split(',').map((s) => s.trim()));

/** DESIGN §10. */
const TARGETS = {
  warm_ratio: { op: '<=', value: 1.03, text: 'warm pull ÷ direct ≤ 1.03' },
  cold_ratio: { op: '<=', value: 1.1, text: 'cold pull ÷ direct ≤ 1.10' },
  herd_upstream_gets_per_blob: { op: '==', value: 1, text: 'upstream GETs per blob in a 20-client herd = 1' },
  upstream_bytes_ratio: { op: '<=', value: 1.0 + 1e-6, text: 'upstream bytes ÷ image bytes in the herd = 1.0' },
  herd_vs_direct: { op: '<=', value: 1.2, text: 'herd through Portcullis ÷ direct herd ≤ 1.2' },
  manifest_rps_vs_direct: { op: '>=', value: 1.0, text: 'manifest GET by tag req/s ÷ direct ≥ 1.0' },
  decision_overhead_ms_p50: { op: '<=', value: 15, text: 'decision overhead of a cold pull, median ≤ 15 ms' },
  scale_manifest_rps_ratio: { op: '>=', value: 0.9, text: 'warm manifest GETs/s with full stores ÷ empty ≥ 0.9 (issue 16)' },
  scale_decision_overhead_ratio: { op: '<=', value: 1.2, text: 'cold decision overhead with full stores ÷ empty ≤ 1.2 (issue 16)' },
  scale_startup_s: { op: '<=', value: 3, text: 'start to ready with full stores ≤ 3 s (issue 16)' },
  eviction_p99_first_byte_ms: { op: '<=', value: 50, text: 'first byte of warm blob GETs while the LRU evicts, p99 ≤ 50 ms (issue 16)' },
  peak_rss_mib: { op: '<=', value: 300, text: 'peak RSS, 20 clients × 1 GiB ≤ 300 MiB' },
  hostile_peak_rss_mib: { op: '<=', value: 300, text: 'peak RSS with 2,000 idle connections and 100 stalled readers ≤ 300 MiB (issue 10)' },
  auth_manifest_rps_ratio: { op: '>=', value: 0.9, text: 'warm manifest GET req/s with client authentication (registry tokens) ÷ without ≥ 0.9 (issue 11)' },
  cluster_herd_upstream_gets_per_blob: { op: '==', value: 1, text: '20 clients over 3 replicas: upstream GETs per blob = 1 (issue 13)' },
  cluster_warm_ratio: { op: '<=', value: 1.1, text: 'warm pull from an S3-backed replica ÷ direct ≤ 1.10 (issue 13)' },
  cluster_cold_ratio: { op: '<=', value: 1.2, text: 'cold pull through a 3-replica cluster ÷ direct ≤ 1.20 (issue 13)' },
  cluster_manifest_rps_ratio: { op: '>=', value: 0.8, text: 'warm manifest GET req/s, storage.meta: redis ÷ embedded store (SQLite) ≥ 0.8 (issue 13)' },
  replica_kill_ok: { op: '==', value: true, text: 'kill -9 of the owner mid-herd: correct bytes for every client (issue 13)' },
  bigblob_resume_ok: {
    op: '==',
    value: true,
    text: '12 GiB layer through a cache a quarter its size: right bytes, Range resume after a disconnect half way (issue 16)',
  },
  bigblob_peak_rss_mib: { op: '<=', value: 300, text: 'peak RSS while a 12 GiB layer streams through a smaller cache ≤ 300 MiB (issue 16)' },
  hostile_manifest_p99_ms: { op: '<=', value: 50, text: 'manifest GET p99 under that load ≤ 50 ms (issue 10)' },
  fanout_throughput_ratio: { op: '>=', value: 0.9, text: '200 clients × 200 different cold images: bytes/s through Portcullis ÷ direct ≥ 0.9 (issue 16)' },
  fanout_peak_rss_mib: { op: '<=', value: 400, text: 'peak RSS during that fan-out ≤ 400 MiB (issue 16)' },
  fanout_failures: { op: '==', value: 0, text: 'failed pulls in the fan-out = 0 (issue 16)' },
  cold_decision_ms_at_50ms: { op: '<=', value: 215, text: 'cold decision with the upstream 50 ms RTT away, median ≤ 215 ms (issue 16)' },
  cold_decision_upstream_round_trips: { op: '<=', value: 4, text: 'serial upstream round trips per cold decision ≤ 4 (issue 16)' },
  disk_warm_ratio: { op: '<=', value: 1.03, text: 'warm pull ÷ direct, client output on the real disk ≤ 1.03 (issue 16)' },
  disk_cold_ratio: { op: '<=', value: 1.1, text: 'cold pull ÷ direct, client output on the real disk ≤ 1.10 (issue 16)' },
};

/** utime + stime of a process, in seconds (USER_HZ is 100 on Linux). */
function cpuSeconds(pid) {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return NaN;
  }
}

const log = (msg) => process.stderr.write(`[${((performance.now() - T0) / 1000).toFixed(1).padStart(6)}s] ${msg}\n`);
const T0 = performance.now();

async function machineInfo() {
  const cpus = os.cpus();
  let distro;
  try {
    distro = /PRETTY_NAME="?([^"\n]+)/.exec(readFileSync('/etc/os-release', 'utf8'))?.[1];
  } catch {
    distro = undefined;
  }
  const ver = async (cmd, a) => {
    try {
      const r = await run(cmd, a, { timeoutMs: 10_000 });
      return (r.stdout + r.stderr).split('\n')[0].trim();
    } catch {
      return null;
    }
  };
  return {
    cores: cpus.length,
    cpu_model: cpus[0]?.model ?? 'unknown',
    memory_gib: round(os.totalmem() / 2 ** 30, 1),
    node: process.version,
    os: `${distro ?? os.type()} (${os.type()} ${os.release()} ${os.arch()})`,
    loadavg_start: os.loadavg().map((x) => round(x, 2)),
    tools: {
      'docker-registry': await ver('docker-registry', ['--version']),
      skopeo: await ver('skopeo', ['--version']),
      wrk: await ver('wrk', ['-v']),
      curl: await ver('curl', ['--version']),
    },
  };
}

/** Client output goes to tmpfs when there is room: the bench measures the proxies, not the disk under skopeo. */
function clientDir(base) {
  try {
    const s = statfsSync('/dev/shm');
    if (s.bavail * s.bsize > 8 * 2 ** 30) return '/dev/shm';
  } catch {
    // no tmpfs
  }
  return base;
}

const decisionHist = async (pc) => {
  const m = await pc.metrics();
  return {
    decision: histogram(m, 'portcullis_decision_seconds'),
    overhead: histogram(m, 'portcullis_decision_overhead_seconds'),
    policy: histogram(m, 'portcullis_policy_evaluation_seconds'),
    signature: histogram(m, 'portcullis_signature_verification_seconds'),
    samples: m,
  };
};

function countUpstream(reqs, repo, blobs) {
  const mine = reqs.filter((r) => r.path.startsWith(`/v2/${repo}/`));
  const blobGets = mine.filter((r) => r.method === 'GET' && r.path.includes('/blobs/') && r.status === 200);
  const perBlob = blobs.map((b) => blobGets.filter((r) => r.path.endsWith(`/blobs/${b.digest}`)).length);
  const bytes = mine.filter((r) => r.method === 'GET' && r.status === 200).reduce((a, r) => a + r.bytes, 0);
  const manifestGets = mine.filter((r) => r.method === 'GET' && r.path.includes('/manifests/')).length;
  const manifestHeads = mine.filter((r) => r.method === 'HEAD' && r.path.includes('/manifests/')).length;
  return {
    perBlob,
    meanPerBlob: perBlob.reduce((a, b) => a + b, 0) / perBlob.length,
    maxPerBlob: Math.max(...perBlob),
    bytes,
    manifestGets,
    manifestHeads,
    total: mine.length,
  };
}

async function main() {
  if (!existsSync(join(args.dist, 'cli.js'))) throw new Error(`${args.dist}/cli.js is missing: run npm run build first (npm run bench does)`);
  const bundleFile = join(ROOT, 'policies', 'bundle.tar.gz');
  const machine = await machineInfo();
  const tmp = await mkdtemp(join(os.tmpdir(), 'portcullis-bench-'));
  const clients = await mkdtemp(join(clientDir(tmp), 'portcullis-bench-clients-'));
  const cleanup = async () => {
    killAll();
    if (!args.keep) {
      await rm(tmp, { recursive: true, force: true });
      await rm(clients, { recursive: true, force: true });
    }
  };
  log(`machine: ${machine.cores} cores, ${machine.cpu_model}, ${machine.memory_gib} GiB, node ${machine.node}; load ${machine.loadavg_start.join(' ')}`);
  log(`work dir ${tmp}; client output ${clients}${QUICK ? '; QUICK mode (smaller images, fewer reps)' : ''}`);

  const result = { version: 1, quick: QUICK, started_at: new Date().toISOString(), machine, params: P, log_level: args['log-level'] };
  /**
   * The peer is measured, not tested: a pull that Distribution's proxy fails (it answers 500 now and then under a
   * herd) is recorded under `peer_failures` and left out of the peer's figures, instead of ending the run. A failure
   * of Portcullis or of a direct pull still ends it.
   */
  result.peer_failures = [];
  const peerAttempt = async (what, f) => {
    try {
      return await f();
    } catch (e) {
      result.peer_failures.push({ what, error: String(e.message ?? e).slice(0, 400) });
      log(
        `peer failed (${what}), left out of its figures: ${String(e.message ?? e)
          .split('\n')[0]
          .slice(0, 200)}`,
      );
      return undefined;
    }
  };

  try {
    const upstream = await startRegistry({ dir: tmp, name: 'upstream' });
    const peer = await startRegistry({ dir: tmp, name: 'peer', remoteUrl: upstream.url });
    const nodeArgs = args['cpu-prof'] ? ['--cpu-prof', '--cpu-prof-dir', resolve(args['cpu-prof'])] : [];
    // Evidence as in production (issue 6): a cosign key signature and a pushed scan report required for every image.
    const signing = args['no-evidence'] ? undefined : await setupSigning(tmp);
    const reportToken = randomBytes(16).toString('hex');
    const pcEnv = Object.fromEntries(args['pc-env'].map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]));
    if (args['pc-env'].length) result.portcullis_env = pcEnv;
    const productFlags = args['node-flags'] === undefined ? PRODUCT_NODE_FLAGS : args['node-flags'].split(/\s+/).filter(Boolean);
    result.portcullis_node_flags = productFlags;
    const pcOpts = { dir: tmp, distDir: args.dist, bundleFile, upstream, productFlags, env: { ...pcEnv, PORTCULLIS_REPORT_TOKEN: reportToken } };
    if (signing) {
      const ev = evidenceConfig(signing, 'PORTCULLIS_REPORT_TOKEN');
      pcOpts.extra = ev.config;
      pcOpts.settings = { ...BENCH_SETTINGS, scopes: BENCH_SETTINGS.scopes.map((sc) => ({ ...sc, ...ev.scope })) };
      result.evidence = 'cosign-key-signature+pushed-trivy-report';
      result.evidence_note =
        'Every image is signed with a cosign key (legacy .sig tag, offline) and a clean Trivy report for its digest is ' +
        'pushed to the report API; the policy requires both (signatures: require all; scan: CRITICAL 0, on_missing deny).';
    } else {
      result.evidence = 'not_configured';
      result.evidence_note = args['no-evidence']
        ? 'Run with --no-evidence: no signature or scan requirement; the decision overhead is the policy evaluation only.'
        : 'cosign2 is not installed (scripts/install-tools.sh): no signature or scan requirement; the decision overhead is the policy evaluation only.';
    }
    result.settings = pcOpts.settings ?? BENCH_SETTINGS;
    const pc = await startPortcullis({ ...pcOpts, name: 'portcullis', logLevel: args['log-level'], nodeArgs });
    /** Portcullis instances that need scan reports for the images seeded from now on. */
    const instances = [pc];
    /** Pushes an image (or index) to the upstream, signs it and pushes its report to every Portcullis instance. */
    /** Signs an image pushed otherwise and pushes its report to the given instances. */
    const attest = async (repo, digest, to = instances, children = []) => {
      if (!signing) return;
      await signImage(signing, upstream.host, repo, digest);
      // Each platform of an index is decided on its own evidence (issue 10), so CI scans and reports each one.
      for (const inst of to) for (const d of [digest, ...children]) await pushReport(inst.url, reportToken, upstream.host, repo, d, inst.agent);
    };
    const seed = async (repo, tag, opts, platforms) => {
      const img = platforms
        ? await pushIndex(upstream.url, repo, tag, platforms, { ...opts, tmpDir: tmp })
        : await pushImage(upstream.url, repo, tag, { ...opts, tmpDir: tmp });
      await attest(
        repo,
        img.digest,
        instances,
        (img.children ?? []).map((c) => c.digest),
      );
      return img;
    };
    const procs = { portcullis: pc.pid, upstream: upstream.pid, peer: peer.pid };
    const cpuNow = () => Object.fromEntries(Object.entries(procs).map(([k, pid]) => [k, cpuSeconds(pid)]));
    const cpuDelta = (a, b) => Object.fromEntries(Object.keys(a).map((k) => [k, b[k] - a[k]]));
    result.cpu = {
      note: 'CPU seconds (user+system) per GiB delivered to clients, per process, summed over the phase; robust to a busy machine where wall times are not',
    };
    log(`upstream ${upstream.url} (pid ${upstream.pid}), Distribution proxy ${peer.url} (pid ${peer.pid}), Portcullis ${pc.url} (pid ${pc.pid})`);
    const targets = { direct: upstream.host, portcullis: pc.host, peer: peer.host };
    let coldPullMsPortcullis;
    let coldPullMsPeer;

    // ---------------------------------------------------------------------------------------------- cold and warm
    if (phases.has('pulls')) {
      const t = { direct: [], pcCold: [], pcWarm: [], peerCold: [], peerWarm: [] };
      const r = { cold: [], warm: [], peerCold: [], peerWarm: [] };
      const cpu = { direct: { n: 0 }, pcCold: { n: 0 }, pcWarm: { n: 0 }, peerCold: { n: 0 }, peerWarm: { n: 0 } };
      const addCpu = (k, d, gib) => {
        for (const [p, v] of Object.entries(d)) cpu[k][p] = (cpu[k][p] ?? 0) + v;
        cpu[k].n += gib;
      };
      const timed = async (k, host, ref, dest, gib) => {
        const c0 = cpuNow();
        const ms = await skopeoPull(host, ref, dest);
        addCpu(k, cpuDelta(c0, cpuNow()), gib);
        return ms;
      };
      {
        // One rep that is not counted, for all three sides alike: JIT warm-up of both proxies, connection pools,
        // the first touch of the clients' tmpfs. The first counted rep used to be the outlier of every run.
        const repo = 'bench/pull-warmup';
        await seed(repo, 'v1', P.image);
        const dest = join(clients, 'pull');
        await skopeoPull(targets.direct, `${repo}:v1`, dest);
        for (const who of ['portcullis', 'peer']) {
          const pulls = async () => {
            for (let i = 0; i < 2; i++) await skopeoPull(targets[who], `${repo}:v1`, dest);
          };
          if (who === 'peer') await peerAttempt('warm-up rep', pulls);
          else await pulls();
        }
        log('pull warm-up rep done (not counted)');
      }
      const before = await decisionHist(pc);
      for (let rep = 0; rep < P.pullReps; rep++) {
        const repo = `bench/pull${rep}`;
        const img = await seed(repo, 'v1', P.image);
        const gib = img.bytes / 2 ** 30;
        const ref = `${repo}:v1`;
        const dest = join(clients, 'pull');
        const d1 = await timed('direct', targets.direct, ref, dest, gib);
        // Alternate which proxy goes first, so neither always runs right after the push.
        const order = rep % 2 === 0 ? ['portcullis', 'peer'] : ['peer', 'portcullis'];
        const got = {};
        for (const who of order) {
          const k = who === 'portcullis' ? 'pc' : 'peer';
          const pulls = async () => {
            const cold = await timed(`${k}Cold`, targets[who], ref, dest, gib);
            const warm = [];
            for (let i = 0; i < P.warmPerRep; i++) warm.push(await timed(`${k}Warm`, targets[who], ref, dest, gib));
            return { cold, warm: median(warm) };
          };
          got[who] = who === 'peer' ? await peerAttempt(`pull rep ${rep + 1}`, pulls) : await pulls();
        }
        const d2 = await timed('direct', targets.direct, ref, dest, gib);
        const direct = (d1 + d2) / 2;
        t.direct.push(d1, d2);
        t.pcCold.push(got.portcullis.cold);
        t.pcWarm.push(got.portcullis.warm);
        r.cold.push(got.portcullis.cold / direct);
        r.warm.push(got.portcullis.warm / direct);
        if (got.peer) {
          t.peerCold.push(got.peer.cold);
          t.peerWarm.push(got.peer.warm);
          r.peerCold.push(got.peer.cold / direct);
          r.peerWarm.push(got.peer.warm / direct);
        }
        log(
          `pull rep ${rep + 1}/${P.pullReps} (${(img.bytes / 2 ** 20).toFixed(0)} MiB): direct ${d1.toFixed(0)}/${d2.toFixed(0)} ms; ` +
            `Portcullis cold ${got.portcullis.cold.toFixed(0)} warm ${got.portcullis.warm.toFixed(0)}; ` +
            (got.peer ? `Distribution proxy cold ${got.peer.cold.toFixed(0)} warm ${got.peer.warm.toFixed(0)}` : 'Distribution proxy failed'),
        );
      }
      const after = await decisionHist(pc);
      const dDec = histogramDelta(after.decision, before.decision);
      const dOver = histogramDelta(after.overhead, before.overhead);
      const dPol = histogramDelta(after.policy, before.policy);
      const dSig = histogramDelta(after.signature, before.signature);
      result.cpu.pulls = Object.fromEntries(
        Object.entries(cpu).map(([k, v]) => [
          k,
          Object.fromEntries(
            Object.entries(v)
              .filter(([p]) => p !== 'n')
              .map(([p, x]) => [`${p}_s_per_gib`, round(x / v.n, 2)]),
          ),
        ]),
      );
      coldPullMsPortcullis = median(t.pcCold);
      coldPullMsPeer = median(t.peerCold);
      result.pulls = {
        image_mib: round(P.image.layers * P.image.layerMiB, 1),
        layers: P.image.layers,
        reps: P.pullReps,
        ms: Object.fromEntries(Object.entries(t).map(([k, v]) => [k, summary(v.map((x) => round(x, 1)))])),
        ratios: Object.fromEntries(Object.entries(r).map(([k, v]) => [k, summary(v)])),
      };
      result.warm_ratio = round(median(r.warm), 3);
      result.cold_ratio = round(median(r.cold), 3);
      result.peer_warm_ratio = round(median(r.peerWarm), 3);
      result.peer_cold_ratio = round(median(r.peerCold), 3);
      const decisions = dDec.at(-1)?.[1] ?? 0;
      const haveOverhead = (dOver.at(-1)?.[1] ?? 0) > 0;
      const main = haveOverhead ? dOver : dDec;
      result.decision_overhead = {
        source: haveOverhead
          ? 'portcullis_decision_overhead_seconds: each cold root decision (evidence + signature verification + policy) ' +
            'minus the time it waited on upstream round trips; delta over the cold pulls, median interpolated in the buckets'
          : 'portcullis_decision_seconds (this build has no overhead histogram): evidence + policy including upstream round trips, an upper bound',
        decisions,
        p50_ms: round((histogramQuantile(main, 0.5) ?? NaN) * 1000, 3),
        p99_ms: round((histogramQuantile(main, 0.99) ?? NaN) * 1000, 3),
        with_upstream_round_trips_p50_ms: round((histogramQuantile(dDec, 0.5) ?? NaN) * 1000, 3),
        policy_eval_p50_ms: round((histogramQuantile(dPol, 0.5) ?? NaN) * 1000, 3),
        signature_evidence_p50_ms: dSig.length && dSig.at(-1)[1] ? round(histogramQuantile(dSig, 0.5) * 1000, 3) : null,
        signature_evidence_count: dSig.at(-1)?.[1] ?? 0,
        buckets: main.map(([le, c]) => [le === Infinity ? '+Inf' : le, c]),
      };
      result.decision_overhead_ms_p50 = result.decision_overhead.p50_ms;
    }

    // ------------------------------------------------------------------------------------------------------ herd
    if (phases.has('herd')) {
      const rows = { portcullis: [], direct: [], peer: [] };
      const herdCpu = { portcullis: [], direct: [], peer: [] };
      for (let rep = 0; rep < P.herdReps; rep++) {
        const repo = `bench/herd${rep}`;
        const img = await seed(repo, 'v1', P.image);
        const ref = `${repo}:v1`;
        const order = rep % 2 === 0 ? ['portcullis', 'direct', 'peer'] : ['peer', 'direct', 'portcullis'];
        for (const who of order) {
          const mark = upstream.mark();
          const c0 = cpuNow();
          const herd = () => skopeoHerd(targets[who], ref, join(clients, `herd-${who}`), P.herdClients);
          const h = who === 'peer' ? await peerAttempt(`herd rep ${rep + 1}`, herd) : await herd();
          if (!h) {
            rows.peer.push(undefined);
            continue;
          }
          const cpu = cpuDelta(c0, cpuNow());
          herdCpu[who].push(Object.fromEntries(Object.entries(cpu).map(([p, x]) => [`${p}_s_per_gib`, round(x / ((P.herdClients * img.bytes) / 2 ** 30), 2)])));
          await new Promise((res) => setTimeout(res, 300)); // the access-log line trails the response
          const up = countUpstream(upstream.requestsSince(mark), repo, img.blobs);
          rows[who].push({ wallMs: h.wallMs, meanClientMs: h.each.reduce((a, b) => a + b, 0) / h.each.length, up, imageBytes: img.bytes });
          log(
            `herd rep ${rep + 1}/${P.herdReps} ${who.padEnd(10)} ${P.herdClients} × skopeo: ${h.wallMs.toFixed(0)} ms; upstream blob GETs per blob ` +
              `${up.perBlob.join(',')}; upstream bytes ÷ image ${(up.bytes / img.bytes).toFixed(2)}`,
          );
        }
      }
      const wall = (who) => rows[who].filter(Boolean).map((x) => x.wallMs);
      const vsDirect = rows.portcullis.map((x, i) => x.wallMs / rows.direct[i].wallMs);
      const peerVsDirect = rows.peer.flatMap((x, i) => (x ? [x.wallMs / rows.direct[i].wallMs] : []));
      rows.peer = rows.peer.filter(Boolean);
      const gets = rows.portcullis.map((x) => x.up.meanPerBlob);
      const bytesRatio = rows.portcullis.map((x) => x.up.bytes / x.imageBytes);
      result.herd = {
        clients: P.herdClients,
        reps: P.herdReps,
        wall_ms: { portcullis: summary(wall('portcullis')), direct: summary(wall('direct')), peer: summary(wall('peer')) },
        upstream: {
          portcullis: rows.portcullis.map((x) => ({
            gets_per_blob: x.up.perBlob,
            bytes: x.up.bytes,
            image_bytes: x.imageBytes,
            manifest_gets: x.up.manifestGets,
            manifest_heads: x.up.manifestHeads,
          })),
          peer: rows.peer.map((x) => ({
            gets_per_blob: x.up.perBlob,
            bytes: x.up.bytes,
            image_bytes: x.imageBytes,
            manifest_gets: x.up.manifestGets,
            manifest_heads: x.up.manifestHeads,
          })),
        },
        herd_vs_direct: summary(vsDirect),
        peer_herd_vs_direct: summary(peerVsDirect),
      };
      result.cpu.herd = herdCpu;
      result.herd_upstream_gets_per_blob = round(Math.max(...rows.portcullis.map((x) => x.up.maxPerBlob)), 3);
      result.herd_upstream_gets_per_blob_mean = round(median(gets), 3);
      result.upstream_bytes_ratio = round(median(bytesRatio), 4);
      result.herd_vs_direct = round(median(vsDirect), 3);
      result.peer_herd_upstream_gets_per_blob = round(median(rows.peer.map((x) => x.up.meanPerBlob)), 2);
      result.peer_upstream_bytes_ratio = round(median(rows.peer.map((x) => x.up.bytes / x.imageBytes)), 2);
      result.peer_herd_vs_direct = round(median(peerVsDirect), 3);
      if (coldPullMsPortcullis === undefined) {
        // The herd's denominator is one cold pull of the same image size: take one now if the pull phase was skipped.
        const repo = 'bench/herd-single';
        await seed(repo, 'v1', P.image);
        coldPullMsPortcullis = await skopeoPull(targets.portcullis, `${repo}:v1`, join(clients, 'single'));
        coldPullMsPeer = await peerAttempt('herd single pull', () => skopeoPull(targets.peer, `${repo}:v1`, join(clients, 'single')));
      }
      result.herd_time_ratio = round(median(wall('portcullis')) / coldPullMsPortcullis, 2);
      result.peer_herd_time_ratio = coldPullMsPeer ? round(median(wall('peer')) / coldPullMsPeer, 2) : null;
    }

    // --------------------------------------------------------------------------------------- cluster (issue 13)
    if (phases.has('cluster')) {
      const c = await clusterPhase({ P, QUICK, dir: tmp, clients, upstream, seed, pcOpts, instances, log, logLevel: args['log-level'] });
      result.cluster = c;
      result.cluster_herd_upstream_gets_per_blob = c.herd_upstream_gets_per_blob;
      result.cluster_warm_ratio = round(c.warm_ratio.median, 3);
      result.cluster_cold_ratio = round(c.cold_ratio.median, 3);
      result.replica_kill_ok = c.kill.replica_kill_ok;
      result.cluster_manifest_rps_ratio = c.manifest_rps.cluster_manifest_rps_ratio;
    }

    // --------------------------------------------------------------------------------- bigblob (issue 16 item 5)
    if (phases.has('bigblob')) {
      const b = await bigblobPhase({ dir: tmp, upstream, pcOpts, log, size: Math.round(P.bigblobGiB * 2 ** 30), attest });
      result.bigblob = b;
      result.bigblob_peak_rss_mib = b.peak_rss_mib;
      result.bigblob_throughput_ratio = b.throughput_ratio;
      result.bigblob_resume_ok = b.resume_ok && b.correct.whole;
      log(
        `bigblob: ${b.blob_gib} GiB through a ${b.cache_max_gib} GiB cache: ${b.portcullis_mib_per_s} MiB/s vs direct ${b.direct_mib_per_s} (ratio ${b.throughput_ratio}); ` +
          `peak RSS ${b.peak_rss_mib} MiB; resume ${b.resume_ok ? 'ok' : 'WRONG'}; spool peak ${b.max_spool_gib} GiB, cache after ${b.cache_after_mib} MiB, ${b.tmp_files_after} temp files left`,
      );
    }

    // ------------------------------------------------------------------------------------ manifest throughput
    if (phases.has('wrk')) {
      const repo = 'bench/manifest';
      const mimg = await seed(repo, 'v1', { layers: 1, layerMiB: 1 });
      const warm = async (host) => {
        const res = await fetch(`http://${host}/v2/${repo}/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT } });
        await res.arrayBuffer();
        if (res.status !== 200) throw new Error(`warm-up GET manifest via ${host}: HTTP ${res.status}`);
      };
      // A second Portcullis at log level warn shows what the per-request info log line costs.
      const altLevel = args['log-level'] === 'info' ? 'warn' : 'info';
      const pcAlt = await startPortcullis({ ...pcOpts, name: `portcullis-${altLevel}`, logLevel: altLevel });
      if (signing) await pushReport(pcAlt.url, reportToken, upstream.host, repo, mimg.digest);
      const hosts = { direct: upstream.host, portcullis: pc.host, peer: peer.host, [`portcullis_${altLevel}`]: pcAlt.host };
      const res = Object.fromEntries(Object.keys(hosts).map((k) => [k, []]));
      try {
        for (let rep = 0; rep < P.wrkReps; rep++) {
          const order = rep % 2 === 0 ? Object.keys(hosts) : Object.keys(hosts).reverse();
          for (const who of order) {
            await warm(hosts[who]);
            const w = await wrkManifest(`http://${hosts[who]}/v2/${repo}/manifests/v1`, { seconds: P.wrkSeconds });
            if (w.non2xx > 0) throw new Error(`wrk against ${who}: ${w.non2xx} non-2xx responses`);
            res[who].push(w);
            log(`wrk rep ${rep + 1}/${P.wrkReps} ${who.padEnd(16)} ${w.rps.toFixed(0)} req/s, p50 ${fmt(w.p50)} ms, p99 ${fmt(w.p99)} ms`);
          }
        }
      } finally {
        await pcAlt.stop();
      }
      const m = (who, k) => median(res[who].map((x) => x[k]));
      result.manifest = Object.fromEntries(
        Object.keys(hosts).map((who) => [who, { rps: summary(res[who].map((x) => x.rps)), p50_ms: round(m(who, 'p50'), 3), p99_ms: round(m(who, 'p99'), 3) }]),
      );
      result.manifest.wrk = `wrk -t2 -c16 -d${P.wrkSeconds}s --latency -H 'Accept: <OCI and Docker manifest types>' /v2/${repo}/manifests/v1`;
      result.manifest_rps = round(m('portcullis', 'rps'), 0);
      result.peer_manifest_rps = round(m('peer', 'rps'), 0);
      result.direct_manifest_rps = round(m('direct', 'rps'), 0);
      result[`manifest_rps_log_${altLevel}`] = round(m(`portcullis_${altLevel}`, 'rps'), 0);
      result.manifest_rps_ratio = round(result.manifest_rps / result.peer_manifest_rps, 2);
      const perRep = res.portcullis.map((x, i) => x.rps / res.direct[i].rps);
      result.manifest_rps_vs_direct = round(median(perRep), 3);
      result.manifest_p50_ms = round(m('portcullis', 'p50'), 3);
      result.manifest_p99_ms = round(m('portcullis', 'p99'), 3);
      result.peer_manifest_p50_ms = round(m('peer', 'p50'), 3);
      result.peer_manifest_p99_ms = round(m('peer', 'p99'), 3);
      result.direct_manifest_p50_ms = round(m('direct', 'p50'), 3);
      result.direct_manifest_p99_ms = round(m('direct', 'p99'), 3);
    }

    // ---------------------------------------------------------------------------------------------- auth
    if (phases.has('auth')) {
      // The same warm manifest GET by tag, against the main instance (anonymous) and against one with client
      // authentication on (htpasswd + Portcullis's token flow), wrk sending one Bearer token it got once, as a
      // logged-in client does. Interleaved reps, each rep's on ÷ off paired, so that load on a shared machine hits both.
      const repo = 'bench/auth-manifest';
      const htpasswd = join(tmp, 'bench-htpasswd');
      const bcrypt = (await import('bcryptjs')).default;
      writeFileSync(htpasswd, `bench:${bcrypt.hashSync('bench-password', 10)}\n`);
      const pcAuth = await startPortcullis({
        ...pcOpts,
        name: 'portcullis-auth',
        logLevel: args['log-level'],
        nodeArgs,
        extra: { ...pcOpts.extra, auth: { anonymous: false, htpasswd: { file: htpasswd }, token: { ttl: '30m' } } },
      });
      instances.push(pcAuth);
      try {
        await seed(repo, 'v1', { layers: 1, layerMiB: 1 });
        const tokenRes = await fetch(`${pcAuth.url}/auth/token?service=portcullis&scope=repository:${repo}:pull`, {
          headers: { authorization: `Basic ${Buffer.from('bench:bench-password').toString('base64')}` },
        });
        if (tokenRes.status !== 200) throw new Error(`token endpoint: HTTP ${tokenRes.status}`);
        const { token } = await tokenRes.json();
        const who = { off: { host: pc.host, headers: {} }, on: { host: pcAuth.host, headers: { authorization: `Bearer ${token}` } } };
        const res = { off: [], on: [] };
        // Both processes see the same load first (JIT, caches), so that the first measured rep is not a warm-up.
        for (const k of ['off', 'on']) await wrkManifest(`http://${who[k].host}/v2/${repo}/manifests/v1`, { seconds: P.wrkSeconds, headers: who[k].headers });
        const reps = QUICK ? 3 : 5;
        for (let rep = 0; rep < reps; rep++) {
          for (const k of rep % 2 === 0 ? ['off', 'on'] : ['on', 'off']) {
            const url = `http://${who[k].host}/v2/${repo}/manifests/v1`;
            const warm = await fetch(url, { headers: { accept: MANIFEST_ACCEPT, ...who[k].headers } });
            await warm.arrayBuffer();
            if (warm.status !== 200) throw new Error(`warm-up GET manifest (auth ${k}): HTTP ${warm.status}`);
            const w = await wrkManifest(url, { seconds: P.wrkSeconds, headers: who[k].headers });
            if (w.non2xx > 0) throw new Error(`wrk (auth ${k}): ${w.non2xx} non-2xx responses`);
            res[k].push(w);
            log(`auth wrk rep ${rep + 1}/${reps} auth ${k.padEnd(3)} ${w.rps.toFixed(0)} req/s, p50 ${fmt(w.p50)} ms, p99 ${fmt(w.p99)} ms`);
          }
        }
        result.auth = {
          off: {
            rps: summary(res.off.map((x) => x.rps)),
            p50_ms: round(median(res.off.map((x) => x.p50)), 3),
            p99_ms: round(median(res.off.map((x) => x.p99)), 3),
          },
          on: {
            rps: summary(res.on.map((x) => x.rps)),
            p50_ms: round(median(res.on.map((x) => x.p50)), 3),
            p99_ms: round(median(res.on.map((x) => x.p99)), 3),
          },
          per_rep_ratio: res.on.map((x, i) => round(x.rps / res.off[i].rps, 3)),
          wrk: `wrk -t2 -c16 -d${P.wrkSeconds}s --latency -H 'Accept: …' [-H 'Authorization: Bearer <token from /auth/token>'] /v2/${repo}/manifests/v1`,
          method: 'htpasswd (bcrypt) login once at /auth/token, then the ES256 registry token on every request',
        };
        result.auth_off_manifest_rps = round(median(res.off.map((x) => x.rps)), 0);
        result.auth_on_manifest_rps = round(median(res.on.map((x) => x.rps)), 0);
        result.auth_manifest_rps_ratio = round(median(res.on.map((x, i) => x.rps / res.off[i].rps)), 3);
      } finally {
        instances.splice(instances.indexOf(pcAuth), 1);
        await pcAuth.stop();
      }
    }

    // ---------------------------------------------------------------------------------------------- peak RSS
    if (phases.has('rss')) {
      const repo = 'bench/big';
      const img = await seed(repo, 'v1', P.big);
      const baseline = pc.memory();
      const out = { image_mib: round(img.bytes / 2 ** 20, 0), clients: P.rssClients, baseline_rss_mib: round(baseline.rssMiB, 1) };
      for (const phase of ['cold', 'warm']) {
        const reset = pc.resetPeak();
        let sampled = 0;
        const timer = setInterval(() => {
          try {
            sampled = Math.max(sampled, pc.memory().rssMiB);
          } catch {
            // process gone: the pull fails below
          }
        }, 50);
        const mark = upstream.mark();
        const t0 = performance.now();
        try {
          await Promise.all(Array.from({ length: P.rssClients }, () => curlPull(pc.url, repo, 'v1', img.blobs)));
        } finally {
          clearInterval(timer);
        }
        const ms = performance.now() - t0;
        const mem = pc.memory();
        await new Promise((r) => setTimeout(r, 300));
        const up = countUpstream(upstream.requestsSince(mark), repo, img.blobs);
        // VmHWM is exact when the reset worked; otherwise it is the peak of the process's life, so use the samples.
        const peak = reset ? mem.hwmMiB : sampled;
        out[phase] = {
          ms: round(ms, 0),
          peak_rss_mib: round(peak, 1),
          sampled_max_rss_mib: round(sampled, 1),
          hwm_reset: reset,
          gib_per_s: round((P.rssClients * img.bytes) / 2 ** 30 / (ms / 1000), 2),
          upstream_gets_per_blob: up.perBlob,
        };
        log(
          `rss ${phase}: ${P.rssClients} × ${(img.bytes / 2 ** 20).toFixed(0)} MiB via curl in ${ms.toFixed(0)} ms; peak RSS ${peak.toFixed(0)} MiB (sampled ${sampled.toFixed(0)})`,
        );
      }
      out.process_lifetime_hwm_mib = round(pc.memory().hwmMiB, 1);
      result.rss = out;
      result.peak_rss_mib = round(Math.max(out.cold.peak_rss_mib, out.warm.peak_rss_mib), 1);
    }

    // ------------------------------------------------------------------------------------ multi-arch index
    if (phases.has('index')) {
      const r = { direct: [], pcCold: [], pcWarm: [], peerCold: [], peerWarm: [] };
      for (let rep = 0; rep < P.indexReps; rep++) {
        const repo = `bench/multi${rep}`;
        await seed(repo, 'v1', P.index, [
          { os: 'linux', architecture: 'amd64' },
          { os: 'linux', architecture: 'arm64', variant: 'v8' },
        ]);
        const ref = `${repo}:v1`;
        const dest = join(clients, 'multi');
        const o = { all: true };
        r.direct.push(await skopeoPull(targets.direct, ref, dest, o));
        r.pcCold.push(await skopeoPull(targets.portcullis, ref, dest, o));
        r.pcWarm.push(await skopeoPull(targets.portcullis, ref, dest, o));
        const peer = await peerAttempt(`index rep ${rep + 1}`, async () => [
          await skopeoPull(targets.peer, ref, dest, o),
          await skopeoPull(targets.peer, ref, dest, o),
        ]);
        if (peer) {
          r.peerCold.push(peer[0]);
          r.peerWarm.push(peer[1]);
        }
        log(
          `index rep ${rep + 1}/${P.indexReps} (2 platforms, skopeo --all): direct ${r.direct.at(-1).toFixed(0)} ms, Portcullis cold ${r.pcCold.at(-1).toFixed(0)} warm ${r.pcWarm.at(-1).toFixed(0)}, ` +
            (peer ? `Distribution proxy cold ${peer[0].toFixed(0)} warm ${peer[1].toFixed(0)}` : 'Distribution proxy failed'),
        );
      }
      const d = median(r.direct);
      result.index = {
        platforms: 2,
        mib: round(2 * P.index.layers * P.index.layerMiB, 0),
        ms: Object.fromEntries(Object.entries(r).map(([k, v]) => [k, summary(v.map((x) => round(x, 1)))])),
        cold_ratio: round(median(r.pcCold) / d, 3),
        warm_ratio: round(median(r.pcWarm) / d, 3),
        peer_cold_ratio: round(median(r.peerCold) / d, 3),
        peer_warm_ratio: round(median(r.peerWarm) / d, 3),
      };
    }

    // ------------------------------------------------------------------------------------ hostile clients
    if (phases.has('scale')) {
      const n = P.scaleBlobs;
      Object.assign(
        result,
        await scalePhase({
          tmp,
          pcOpts,
          seed,
          instances,
          log,
          upstreamName: 'bench',
          sizes: { blobs: n, tags: n / 10, closures: n / 100, decisions: n / 10 },
          wrkSeconds: P.wrkSeconds,
          coldImages: QUICK ? 4 : 8,
        }),
      );
    }

    if (phases.has('huge')) {
      Object.assign(result, await hugePhase({ pc, seed, log, reps: QUICK ? 2 : 3, layers: 128, platforms: 32 }));
    }

    // ------------------------------------------------------------------------ issue 16: fanout, latency, tls, disk
    for (const [name, phase] of Object.entries({ fanout: fanoutPhase, latency: latencyPhase, tls: tlsPhase, disk: diskPhase })) {
      if (!phases.has(name)) continue;
      const ctx = { P, QUICK, tmp, clients, upstream, peer, pc, pcOpts, seed, instances, log, cpuSeconds, peerAttempt, nodeArgs, logLevel: args['log-level'] };
      Object.assign(result, await phase(ctx));
    }

    if (phases.has('hostile')) {
      const H = P.hostile;
      // 2,000 idle and 100 stalled sockets in this process and as many in Portcullis, plus wrk's.
      const need = H.idle + H.stalled + 200;
      const limit = openFileLimit();
      if (limit !== undefined && limit < need)
        throw new Error(`the hostile phase needs ${need} open files; this process may open ${limit}: raise the hard limit (ulimit -Hn) first`);
      // Its own instance: a fresh process (so the peak is this phase's), with the per-client cap raised because every
      // bench client comes from 127.0.0.1, and everything else, the write-stall timeout included, at its default.
      const pcH = await startPortcullis({
        ...pcOpts,
        name: 'portcullis-hostile',
        logLevel: args['log-level'],
        extra: { ...pcOpts.extra, limits: { maxConnectionsPerClient: 0 } },
      });
      instances.push(pcH);
      const hostLimit = openFileLimit(pcH.pid);
      const hostile = new HostileClients(Number(pcH.host.split(':')[1]));
      try {
        if (hostLimit !== undefined && hostLimit < need) throw new Error(`Portcullis may open ${hostLimit} files; the hostile phase needs ${need}`);
        const mrepo = 'bench/hostile-manifest';
        const mimg = await seed(mrepo, 'v1', { layers: 1, layerMiB: 1 });
        const brepo = 'bench/hostile-blob';
        const bimg = await seed(brepo, 'v1', H.blob);
        // Admit both and warm the blob into the cache: the stalled readers then read a cached blob, as an attacker
        // with any admitted image could.
        await curlPull(pcH.url, brepo, 'v1', bimg.blobs);
        await curlPull(pcH.url, mrepo, 'v1', mimg.blobs);
        const layer = bimg.blobs.reduce((a, b) => (b.size > a.size ? b : a));
        const url = `${pcH.url}/v2/${mrepo}/manifests/v1`;
        // The same wrk first without the hostile clients: on a shared machine, what they add is the difference.
        const control = [];
        for (let rep = 0; rep < P.wrkReps; rep++) {
          const w = await wrkManifest(url, { seconds: P.wrkSeconds });
          if (w.non2xx > 0) throw new Error(`wrk against the hostile instance: ${w.non2xx} non-2xx responses`);
          control.push(w);
          log(
            `hostile control wrk rep ${rep + 1}/${P.wrkReps} (no hostile clients yet): ${w.rps.toFixed(0)} req/s, p50 ${fmt(w.p50)} ms, p99 ${fmt(w.p99)} ms`,
          );
        }
        const baseline = pcH.memory();
        const reset = pcH.resetPeak();
        let sampled = 0;
        const timer = setInterval(() => {
          try {
            sampled = Math.max(sampled, pcH.memory().rssMiB);
          } catch {
            // process gone: the phase fails below
          }
        }, 50);
        const wrkRuns = [];
        let afterSetup;
        try {
          const t0 = performance.now();
          await hostile.openIdle(H.idle);
          const servedBefore = (await pcH.metrics()).filter((x) => x.name === 'portcullis_served_bytes_total').reduce((a, x) => a + x.value, 0);
          await hostile.openStalled(H.stalled, `/v2/${brepo}/blobs/${layer.digest}`);
          // Let the stalled readers' sockets fill before measuring what the proxy sent them.
          await new Promise((r) => setTimeout(r, 1000));
          const servedAfter = (await pcH.metrics()).filter((x) => x.name === 'portcullis_served_bytes_total').reduce((a, x) => a + x.value, 0);
          afterSetup = {
            ms: round(performance.now() - t0, 0),
            rss_mib: round(pcH.memory().rssMiB, 1),
            sent_per_stalled_reader_mib: round((servedAfter - servedBefore) / H.stalled / 2 ** 20, 2),
          };
          log(
            `hostile: ${H.idle} idle keep-alive connections and ${H.stalled} stalled readers of a ${(layer.size / 2 ** 20).toFixed(0)} MiB blob open in ${afterSetup.ms} ms; RSS ${afterSetup.rss_mib} MiB (from ${baseline.rssMiB.toFixed(0)}); ${afterSetup.sent_per_stalled_reader_mib} MiB sent to each stalled reader before it stalled`,
          );
          for (let rep = 0; rep < P.wrkReps; rep++) {
            const w = await wrkManifest(url, { seconds: P.wrkSeconds });
            if (w.non2xx > 0) throw new Error(`wrk against the hostile instance: ${w.non2xx} non-2xx responses`);
            wrkRuns.push(w);
            log(`hostile wrk rep ${rep + 1}/${P.wrkReps}: ${w.rps.toFixed(0)} req/s, p50 ${fmt(w.p50)} ms, p99 ${fmt(w.p99)} ms`);
          }
        } finally {
          clearInterval(timer);
        }
        const mem = pcH.memory();
        const open = hostile.openCounts;
        const m = await pcH.metrics();
        const metric = (name, labels = {}) =>
          m.filter((x) => x.name === name && Object.entries(labels).every(([k, v]) => x.labels[k] === v)).reduce((a, x) => a + x.value, 0);
        const peak = reset ? mem.hwmMiB : sampled;
        result.hostile = {
          idle_connections: H.idle,
          stalled_readers: H.stalled,
          blob_mib: round(layer.size / 2 ** 20, 0),
          baseline_rss_mib: round(baseline.rssMiB, 1),
          after_setup: afterSetup,
          peak_rss_mib: round(peak, 1),
          sampled_max_rss_mib: round(sampled, 1),
          hwm_reset: reset,
          wrk: wrkRuns.map((w) => ({ rps: round(w.rps, 0), p50_ms: w.p50, p99_ms: w.p99, socket_errors: w.socketErrors })),
          control_wrk: control.map((w) => ({ rps: round(w.rps, 0), p50_ms: w.p50, p99_ms: w.p99, socket_errors: w.socketErrors })),
          // Every hostile connection was still open at the end (none refused, none cut): what was measured is their cost.
          client_sockets_open_at_end: open,
          client_sockets_closed_early: hostile.closedEarly,
          portcullis_connections_open: metric('portcullis_connections_open'),
          portcullis_connections_refused: metric('portcullis_connections_refused_total'),
          portcullis_connections_closed: metric('portcullis_connections_closed_total'),
          write_stall_timeout: 'default (60s): longer than the phase, so the stalled readers are held throughout',
        };
        result.hostile_peak_rss_mib = round(peak, 1);
        result.hostile_manifest_p99_ms = round(median(wrkRuns.map((w) => w.p99)), 3);
        result.hostile_manifest_rps = round(median(wrkRuns.map((w) => w.rps)), 0);
        result.hostile_control_manifest_p99_ms = round(median(control.map((w) => w.p99)), 3);
        result.hostile_control_manifest_rps = round(median(control.map((w) => w.rps)), 0);
        log(
          `hostile: peak RSS ${peak.toFixed(0)} MiB (sampled ${sampled.toFixed(0)}); manifest p99 ${fmt(result.hostile_manifest_p99_ms)} ms; client sockets still open: ${open.idle} idle, ${open.stalled} stalled`,
        );
      } finally {
        hostile.close();
        instances.splice(instances.indexOf(pcH), 1);
        await pcH.stop();
      }
    }

    const final = await pc.metrics().catch(() => []);
    const get = (name, labels = {}) =>
      final.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v)).reduce((a, s) => a + s.value, 0);
    result.portcullis_counters = {
      decisions: get('portcullis_decisions_total'),
      decision_cache_hits: get('portcullis_decision_cache_total', { result: 'hit' }),
      singleflight_joins: get('portcullis_singleflight_joins_total'),
      upstream_blob_bytes: get('portcullis_upstream_bytes_total'),
      denies: get('portcullis_decisions_total', { outcome: 'deny' }),
      signature_verifications: get('portcullis_signature_verifications_total', { result: 'verified' }),
      scan_lookups_ok: get('portcullis_scan_lookups_total', { status: 'ok' }),
    };
    const pcMem = pc.memory();
    result.portcullis_lifetime_hwm_mib = round(pcMem.hwmMiB, 1);
    const stopped = await pc.stop();
    if (stopped.code !== 0 && stopped.signal !== 'SIGTERM') log(`Portcullis exited with ${JSON.stringify(stopped)}`);
    await peer.stop();
    await upstream.stop();
  } finally {
    await cleanup();
  }

  result.machine.loadavg_end = os.loadavg().map((x) => round(x, 2));
  result.wall_seconds = round((performance.now() - T0) / 1000, 1);
  result.targets = {};
  for (const [key, t] of Object.entries(TARGETS)) {
    const v = result[key];
    const pass = v === undefined || v === null ? null : t.op === '<=' ? v <= t.value : t.op === '>=' ? v >= t.value : v === t.value;
    result.targets[key] = { target: `${t.op} ${t.value === 1.0 + 1e-6 ? '1.0' : t.value}`, value: v ?? null, pass, text: t.text };
  }
  printTable(result);
  if (args.out) {
    mkdirSync(dirname(resolve(args.out)), { recursive: true });
    writeFileSync(args.out, JSON.stringify(result, null, 2) + '\n');
    log(`wrote ${args.out}`);
  }
  const failed = Object.values(result.targets).filter((t) => t.pass === false).length;
  log(`done in ${result.wall_seconds} s; ${failed} target(s) missed`);
}

function printTable(r) {
  const rows = [
    ['warm pull ÷ direct', r.warm_ratio, r.peer_warm_ratio, '≤ 1.03', r.targets.warm_ratio],
    ['cold pull ÷ direct', r.cold_ratio, r.peer_cold_ratio, '≤ 1.10', r.targets.cold_ratio],
    ['herd: upstream GETs per blob (max)', r.herd_upstream_gets_per_blob, r.peer_herd_upstream_gets_per_blob, '= 1', r.targets.herd_upstream_gets_per_blob],
    ['herd: upstream bytes ÷ image bytes', r.upstream_bytes_ratio, r.peer_upstream_bytes_ratio, '= 1.0', r.targets.upstream_bytes_ratio],
    ['herd time ÷ direct herd', r.herd_vs_direct, r.peer_herd_vs_direct, '≤ 1.2', r.targets.herd_vs_direct],
    ['herd time ÷ one cold pull', r.herd_time_ratio, r.peer_herd_time_ratio, '', null],
    ['manifest GET by tag, req/s', r.manifest_rps, r.peer_manifest_rps, `direct ${r.direct_manifest_rps ?? '—'}`, null],
    [
      'manifest req/s ÷ direct',
      r.manifest_rps_vs_direct,
      r.peer_manifest_rps && r.direct_manifest_rps ? round(r.peer_manifest_rps / r.direct_manifest_rps, 3) : undefined,
      '≥ 1.0',
      r.targets.manifest_rps_vs_direct,
    ],
    ['manifest req/s ÷ Distribution proxy', r.manifest_rps_ratio, 1, '', null],
    [
      'manifest p50 / p99 ms',
      r.manifest_p50_ms !== undefined ? `${fmt(r.manifest_p50_ms)} / ${fmt(r.manifest_p99_ms)}` : undefined,
      r.peer_manifest_p50_ms !== undefined ? `${fmt(r.peer_manifest_p50_ms)} / ${fmt(r.peer_manifest_p99_ms)}` : undefined,
      r.direct_manifest_p50_ms !== undefined ? `direct ${fmt(r.direct_manifest_p50_ms)} / ${fmt(r.direct_manifest_p99_ms)}` : '',
      null,
    ],
    ['auth: manifest req/s on ÷ off', r.auth_manifest_rps_ratio, undefined, '≥ 0.9', r.targets.auth_manifest_rps_ratio],
    [
      'auth: manifest req/s off / on',
      r.auth_off_manifest_rps !== undefined ? `${r.auth_off_manifest_rps} / ${r.auth_on_manifest_rps}` : undefined,
      undefined,
      '',
      null,
    ],
    ['decision overhead, cold, median ms', r.decision_overhead_ms_p50, undefined, '≤ 15', r.targets.decision_overhead_ms_p50],
    ['peak RSS, 20 × 1 GiB, MiB', r.peak_rss_mib, undefined, '≤ 300', r.targets.peak_rss_mib],
    ['hostile: peak RSS, MiB', r.hostile_peak_rss_mib, undefined, '≤ 300', r.targets.hostile_peak_rss_mib],
    ['hostile: manifest p99 ms', r.hostile_manifest_p99_ms, undefined, '≤ 50', r.targets.hostile_manifest_p99_ms],
    ['hostile: same wrk without them, p99 ms', r.hostile_control_manifest_p99_ms, undefined, '', null],
    ['scale: manifest req/s full ÷ empty', r.scale_manifest_rps_ratio, undefined, '≥ 0.9', r.targets.scale_manifest_rps_ratio],
    ['scale: decision overhead full ÷ empty', r.scale_decision_overhead_ratio, undefined, '≤ 1.2', r.targets.scale_decision_overhead_ratio],
    ['scale: start with full stores, s', r.scale_startup_s, undefined, '≤ 3', r.targets.scale_startup_s],
    ['scale: first byte p99 while evicting, ms', r.eviction_p99_first_byte_ms, undefined, '≤ 50', r.targets.eviction_p99_first_byte_ms],
    ['fanout: 200 × 200 images, bytes/s ÷ direct', r.fanout_throughput_ratio, undefined, '≥ 0.9', r.targets.fanout_throughput_ratio],
    ['fanout: peak RSS, MiB', r.fanout_peak_rss_mib, undefined, '≤ 400', r.targets.fanout_peak_rss_mib],
    ['fanout: failed pulls', r.fanout_failures, undefined, '= 0', r.targets.fanout_failures],
    ['cold decision at 50 ms RTT, ms', r.cold_decision_ms_at_50ms, undefined, '≤ 215', r.targets.cold_decision_ms_at_50ms],
    ['  the same with no added delay, ms', r.cold_decision_ms_at_0ms, undefined, '', null],
    ['  serial upstream round trips', r.cold_decision_upstream_round_trips, undefined, '≤ 4', r.targets.cold_decision_upstream_round_trips],
    [
      'tls: CPU s/GiB cold (plain)',
      r.tls_cold_cpu_s_per_gib !== undefined ? `${r.tls_cold_cpu_s_per_gib} (${r.tls_plain_cold_cpu_s_per_gib})` : undefined,
      undefined,
      '',
      null,
    ],
    [
      'tls: CPU s/GiB warm (plain)',
      r.tls_warm_cpu_s_per_gib !== undefined ? `${r.tls_warm_cpu_s_per_gib} (${r.tls_plain_warm_cpu_s_per_gib})` : undefined,
      undefined,
      '',
      null,
    ],
    ['disk: warm pull ÷ direct', r.disk_warm_ratio, r.disk_dist_warm_ratio, '≤ 1.03', r.targets.disk_warm_ratio],
    ['disk: cold pull ÷ direct', r.disk_cold_ratio, r.disk_dist_cold_ratio, '≤ 1.10', r.targets.disk_cold_ratio],
    [
      'huge: cold decision ms, 1 / 128 layers',
      r.huge ? `${r.huge.decision_ms.image_1} / ${r.huge.decision_ms.image_128}` : undefined,
      undefined,
      'linear',
      null,
    ],
    [
      'huge: cold decision ms, 1 / 32 platforms',
      r.huge ? `${r.huge.decision_ms.index_1} / ${r.huge.decision_ms.index_32}` : undefined,
      undefined,
      'linear',
      null,
    ],
    [
      'huge: children ms, 1 / 32 platforms',
      r.huge ? `${r.huge.decision_ms.index_1_children} / ${r.huge.decision_ms.index_32_children}` : undefined,
      undefined,
      'linear',
      null,
    ],
    ['bigblob: peak RSS, MiB', r.bigblob_peak_rss_mib, undefined, '≤ 300', r.targets.bigblob_peak_rss_mib],
    ['bigblob: throughput ÷ direct', r.bigblob_throughput_ratio, undefined, '', null],
    ['bigblob: right bytes, Range resume', r.bigblob_resume_ok, undefined, '= true', r.targets.bigblob_resume_ok],
  ];
  const cell = (v) => (v === undefined || v === null ? '—' : typeof v === 'number' ? String(v) : v);
  const w = [38, 12, 14, 16, 6];
  const line = (cols) => cols.map((c, i) => String(c).padEnd(w[i])).join(' ');
  const out = [
    '',
    line(['figure', 'Portcullis', 'Distribution', 'target', 'pass']),
    line(w.map((n) => '-'.repeat(n))),
    ...rows.map(([name, a, b, target, t]) => line([name, cell(a), cell(b), target, t ? (t.pass === null ? '—' : t.pass ? 'PASS' : 'MISS') : ''])),
    '',
    `evidence: ${r.evidence} — ${r.evidence_note}`,
    `machine: ${r.machine.cores} cores ${r.machine.cpu_model}, ${r.machine.memory_gib} GiB, ${r.machine.os}, node ${r.machine.node}; load ${r.machine.loadavg_start.join(' ')} → ${r.machine.loadavg_end.join(' ')}`,
    `wall time: ${r.wall_seconds} s${r.quick ? ' (quick mode: smaller images, fewer reps; not comparable with full runs)' : ''}`,
    '',
  ];
  process.stdout.write(out.join('\n'));
}

main().catch((e) => {
  process.stderr.write(`bench failed: ${e instanceof Error ? e.stack : String(e)}\n`);
  killAll();
  process.exitCode = 1;
});
