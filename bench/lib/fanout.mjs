/**
 * The `fanout` phase (issue 16, item 3): many clients, many images. N clients (200) each pull a different cold image
 * at once (not a herd: no two clients share a blob), through a fresh Portcullis instance and straight from the
 * upstream, in the same rep and in alternating order. Each client is one curl process (GET the manifest by tag, then
 * each blob, to /dev/null; status and size of every response checked), so that the clients stay light next to the
 * servers. Every image is signed and has a pushed report, so each of the N pulls through Portcullis also makes a cold
 * decision. A rep pushes a fresh set of N images, so the proxied pull is cold in every rep.
 */
import { curlPull } from './clients.mjs';
import { startPortcullis } from './portcullis.mjs';
import { median, round, summary } from './stats.mjs';

/** Runs `f` over `items` with at most `n` at a time. */
async function pool(items, n, f) {
  const out = new Array(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(n, items.length) }, async () => {
      while (next < items.length) {
        const i = next++;
        out[i] = await f(items[i], i);
      }
    }),
  );
  return out;
}

/**
 * @param {{ QUICK: boolean, pcOpts: object, upstream: object, seed: Function, instances: object[], log: Function, logLevel: string,
 *           cpuSeconds: (pid: number) => number }} o
 */
export async function fanoutPhase(o) {
  const N = o.QUICK ? 40 : 200;
  const image = o.QUICK ? { layers: 2, layerMiB: 0.5 } : { layers: 2, layerMiB: 1.5 };
  const reps = Number(process.env.BENCH_FANOUT_REPS || (o.QUICK ? 1 : 2));
  // A fresh process, so that the peak is this phase's; every client comes from 127.0.0.1, so the per-client
  // connection cap is off (as in the hostile phase); everything else at its default (upstream concurrency 64).
  const pc = await startPortcullis({
    ...o.pcOpts,
    name: 'portcullis-fanout',
    logLevel: o.logLevel,
    nodeArgs: o.nodeArgs,
    extra: { ...o.pcOpts.extra, limits: { maxConnectionsPerClient: 0 } },
    // Diagnostics only: another upstream concurrency cap than the product's default.
    upstreamExtra: process.env.BENCH_FANOUT_UPSTREAM_CONCURRENCY ? { concurrency: Number(process.env.BENCH_FANOUT_UPSTREAM_CONCURRENCY) } : {},
  });
  o.instances.push(pc);
  const targets = { direct: o.upstream.url, portcullis: pc.url };
  const rows = [];
  try {
    for (let rep = 0; rep < reps; rep++) {
      const t0 = performance.now();
      const imgs = await pool(
        Array.from({ length: N }, (_, i) => i),
        6,
        (i) => o.seed(`bench/fanout${rep}-${i}`, 'v1', image),
      );
      const bytes = imgs.reduce((a, x) => a + x.bytes, 0);
      o.log(
        `fanout rep ${rep + 1}/${reps}: pushed, signed and reported ${N} images (${(bytes / 2 ** 20).toFixed(0)} MiB) in ${((performance.now() - t0) / 1000).toFixed(0)} s`,
      );
      const row = { rep: rep + 1, bytes };
      for (const who of rep % 2 === 0 ? ['direct', 'portcullis'] : ['portcullis', 'direct']) {
        const reset = who === 'portcullis' ? pc.resetPeak() : false;
        let sampled = 0;
        const timer =
          who === 'portcullis'
            ? setInterval(() => {
                try {
                  sampled = Math.max(sampled, pc.memory().rssMiB);
                } catch {
                  // gone: the pulls fail below
                }
              }, 50)
            : undefined;
        const cpu0 = { pc: o.cpuSeconds(pc.pid), upstream: o.cpuSeconds(o.upstream.pid) };
        const t = performance.now();
        let settled;
        try {
          settled = await Promise.allSettled(imgs.map((img) => curlPull(targets[who], img.repo, 'v1', img.blobs, { timeoutMs: 600_000 })));
        } finally {
          clearInterval(timer);
        }
        const ms = performance.now() - t;
        const failures = settled.filter((x) => x.status === 'rejected');
        const r = {
          wall_ms: round(ms, 0),
          mib_per_s: round(bytes / 2 ** 20 / (ms / 1000), 1),
          failures: failures.length,
          first_failures: failures.slice(0, 3).map((x) => String(x.reason?.message ?? x.reason).slice(0, 300)),
          cpu_s: { portcullis: round(o.cpuSeconds(pc.pid) - cpu0.pc, 2), upstream: round(o.cpuSeconds(o.upstream.pid) - cpu0.upstream, 2) },
        };
        if (who === 'portcullis') {
          const mem = pc.memory();
          r.peak_rss_mib = round(reset ? mem.hwmMiB : sampled, 1);
          r.sampled_max_rss_mib = round(sampled, 1);
          r.hwm_reset = reset;
        }
        row[who] = r;
        o.log(
          `fanout rep ${rep + 1}/${reps} ${who.padEnd(10)} ${N} × curl of ${N} different images: ${r.wall_ms} ms, ${r.mib_per_s} MiB/s, ${r.failures} failed` +
            (r.peak_rss_mib !== undefined ? `; peak RSS ${r.peak_rss_mib} MiB` : '') +
            `; CPU s Portcullis ${r.cpu_s.portcullis}, upstream ${r.cpu_s.upstream}`,
        );
      }
      row.throughput_ratio = round(row.direct.wall_ms / row.portcullis.wall_ms, 3);
      rows.push(row);
    }
  } finally {
    o.instances.splice(o.instances.indexOf(pc), 1);
    await pc.stop();
  }
  const ratios = rows.map((r) => r.throughput_ratio);
  return {
    fanout: {
      clients: N,
      upstream_concurrency: Number(process.env.BENCH_FANOUT_UPSTREAM_CONCURRENCY || 64),
      images: N,
      image: { ...image, mib: round(rows[0].bytes / N / 2 ** 20, 2) },
      reps,
      method:
        `${N} curl processes at once, each GETs the manifest of its own image by tag and then each blob (to /dev/null, status and size checked); ` +
        'direct from the upstream and through a fresh Portcullis instance (cold: a fresh set of signed, reported images per rep), alternating which goes first; ' +
        'the ratio is bytes/s through Portcullis ÷ direct (= direct wall ÷ Portcullis wall), median over reps',
      throughput_ratio: summary(ratios),
      rows,
    },
    fanout_throughput_ratio: round(median(ratios), 3),
    fanout_peak_rss_mib: Math.max(...rows.map((r) => r.portcullis.peak_rss_mib)),
    fanout_failures: rows.reduce((a, r) => a + r.portcullis.failures + r.direct.failures, 0),
  };
}
