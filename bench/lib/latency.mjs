/**
 * The `latency` phase (issue 16, item 5): what a buyer measures over a real network. Loopback hides round trips; here
 * a Portcullis instance of its own reaches the same upstream through a userspace TCP delay proxy (delay-proxy.mjs:
 * 25 ms each way, a 50 ms round trip; it replaces netem, which this kernel lacks), keeping the upstream's registry
 * name so the signatures and scan reports of the seed images still name it. Each cold decision is one manifest GET by
 * tag of a fresh, signed, reported image (the first request a pull makes, and the one that waits for the decision),
 * timed at the client on loopback; the delay proxy records every upstream request it carried meanwhile, and the
 * number of serial round trips is the longest chain of them in which each started after the previous ended.
 */
import { MANIFEST_ACCEPT } from './images.mjs';
import { startDelayProxy, serialDepth } from './delay-proxy.mjs';
import { startPortcullis } from './portcullis.mjs';
import { median, round, summary } from './stats.mjs';

/**
 * @param {{ QUICK: boolean, pcOpts: object, upstream: { host: string }, seed: Function, instances: object[], log: Function, logLevel: string,
 *           oneWayMs?: number }} o
 */
export async function latencyPhase(o) {
  const oneWayMs = o.oneWayMs ?? 25;
  const decisions = o.QUICK ? 3 : 7;
  const delay = await startDelayProxy({ target: o.upstream.host, oneWayMs });
  const pc = await startPortcullis({
    ...o.pcOpts,
    name: 'portcullis-latency',
    logLevel: o.logLevel,
    // The registry name stays the upstream's (signatures and reports name it); only the URL goes through the delay.
    upstream: { host: o.upstream.host, url: delay.url },
  });
  o.instances.push(pc);
  const rows = [];
  try {
    // One decision first that is not counted: JIT, and the pool's first connection to the upstream.
    for (let i = -1; i < decisions; i++) {
      const repo = `bench/latency${i < 0 ? '-warmup' : i}`;
      const img = await o.seed(repo, 'v1', { layers: 1, layerMiB: 1 });
      const from = delay.requests.length;
      const conns = delay.connections;
      const t0 = performance.now();
      const res = await fetch(`${pc.url}/v2/${repo}/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT } });
      await res.arrayBuffer();
      const ms = performance.now() - t0;
      if (res.status !== 200) throw new Error(`latency: cold GET ${repo}:v1 through Portcullis: HTTP ${res.status}`);
      if (res.headers.get('docker-content-digest') !== img.digest) throw new Error(`latency: ${repo}:v1 answered another digest`);
      const reqs = delay.requests.slice(from).filter((r) => r.start >= t0);
      const { depth, chain } = serialDepth(reqs);
      const row = {
        ms: round(ms, 1),
        upstream_requests: reqs.length,
        serial_round_trips: depth,
        new_connections: delay.connections - conns,
        critical_path: chain.map(
          (r) => `${r.method} ${r.path.replace(/^\/v2\/bench\/latency[\w-]*\//, '').replace(/sha256[:-]([0-9a-f]{12})[0-9a-f]{52}/g, 'sha256-$1…')}`,
        ),
        requests: reqs.map((r) => ({
          method: r.method,
          path: r.path.replace(/^\/v2\/bench\/latency[\w-]*\//, ''),
          start_ms: round(r.start - t0, 1),
          end_ms: round(r.end - t0, 1),
        })),
      };
      if (i >= 0) rows.push(row);
      o.log(
        `latency ${i < 0 ? 'warm-up (not counted)' : `${i + 1}/${decisions}`}: cold decision ${row.ms} ms at ${2 * oneWayMs} ms RTT; ${row.upstream_requests} upstream requests, ` +
          `${row.serial_round_trips} serial (${row.critical_path.join(' → ')}); ${row.new_connections} new connections`,
      );
    }
  } finally {
    o.instances.splice(o.instances.indexOf(pc), 1);
    await pc.stop();
    await delay.stop();
  }
  return {
    latency: {
      method:
        'userspace TCP delay proxy (bench/lib/delay-proxy.mjs) between Portcullis and the upstream, each direction delayed ' +
        `${oneWayMs} ms (netem is not available on this kernel); a new connection's first bytes wait one more round trip. ` +
        'Each decision: GET manifest by tag of a fresh signed image with a pushed report, timed at the client. Serial round trips: ' +
        'the longest chain of upstream requests (as the delay proxy saw them) in which each started after the previous one ended.',
      rtt_ms: 2 * oneWayMs,
      decisions: rows.length,
      ms: summary(rows.map((r) => r.ms)),
      serial_round_trips: summary(rows.map((r) => r.serial_round_trips)),
      upstream_requests: summary(rows.map((r) => r.upstream_requests)),
      rows,
    },
    cold_decision_ms_at_50ms: round(median(rows.map((r) => r.ms)), 1),
    cold_decision_upstream_round_trips: median(rows.map((r) => r.serial_round_trips)),
  };
}
