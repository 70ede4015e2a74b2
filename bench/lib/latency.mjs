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
 * @param {{ QUICK: boolean, pcOpts: object, upstream: { host: string }, seed: Function, instances: object[], log: Function, logLevel: string }} o
 */
export async function latencyPhase(o) {
  const decisions = o.QUICK ? 3 : 7;
  // The same decisions with no added delay (the same relay, 0 ms), in the same run: what is left is the upstream's
  // and the proxy's own time, so that the difference is what the round trips cost.
  const sides = {};
  for (const [name, oneWayMs] of [
    ['rtt0', 0],
    ['rtt50', 25],
  ]) {
    const delay = await startDelayProxy({ target: o.upstream.host, oneWayMs });
    const pc = await startPortcullis({
      ...o.pcOpts,
      name: `portcullis-latency-${name}`,
      logLevel: o.logLevel,
      // The registry name stays the upstream's (signatures and reports name it); only the URL goes through the relay.
      upstream: { host: o.upstream.host, url: delay.url },
    });
    o.instances.push(pc);
    sides[name] = { oneWayMs, delay, pc, rows: [] };
  }
  try {
    // Seeded first, so that the decisions run back to back (as on a busy proxy, whose upstream connections stay
    // open); one decision first that is not counted: JIT, and the pools' first connections to the upstream.
    const imgs = [];
    for (let i = -1; i < decisions; i++) {
      const repo = `bench/latency${i < 0 ? '-warmup' : i}`;
      imgs.push({ i, repo, img: await o.seed(repo, 'v1', { layers: 1, layerMiB: 1 }) });
    }
    for (const { i, repo, img } of imgs) {
      // Each image is cold on both instances (each has its own cache); which goes first alternates.
      for (const name of i % 2 === 0 ? ['rtt50', 'rtt0'] : ['rtt0', 'rtt50']) {
        const { delay, pc, rows, oneWayMs } = sides[name];
        const row = await decide(delay, pc, repo, img);
        if (i >= 0) rows.push(row);
        o.log(
          `latency ${i < 0 ? 'warm-up (not counted)' : `${i + 1}/${decisions}`}: cold decision ${row.ms} ms at ${2 * oneWayMs} ms RTT; ${row.upstream_requests} upstream requests, ` +
            `${row.serial_round_trips} serial (${row.critical_path.join(' → ')}); ${row.new_connections} new connections`,
        );
      }
    }
  } finally {
    for (const { pc, delay } of Object.values(sides)) {
      o.instances.splice(o.instances.indexOf(pc), 1);
      await pc.stop();
      await delay.stop();
    }
  }
  const fig = (rows) => ({
    ms: summary(rows.map((r) => r.ms)),
    serial_round_trips: summary(rows.map((r) => r.serial_round_trips)),
    upstream_requests: summary(rows.map((r) => r.upstream_requests)),
    new_connections: summary(rows.map((r) => r.new_connections)),
    rows,
  });
  const at50 = sides.rtt50.rows;
  const at0 = sides.rtt0.rows;
  return {
    latency: {
      method:
        'userspace TCP relay (bench/lib/delay-proxy.mjs) between Portcullis and the upstream, each direction delayed 25 ms ' +
        "(netem is not available on this kernel); a new connection's first bytes wait one more round trip. The same images are " +
        'also decided by a second instance behind the same relay with no delay (rtt0), alternating which goes first. Each decision: ' +
        'GET manifest by tag of a fresh signed image with a pushed report, timed at the client. Serial round trips: the longest ' +
        'chain of upstream requests (as the relay saw them) in which each started after the previous one ended.',
      decisions: at50.length,
      rtt50: fig(at50),
      rtt0: fig(at0),
    },
    cold_decision_ms_at_50ms: round(median(at50.map((r) => r.ms)), 1),
    cold_decision_ms_at_0ms: round(median(at0.map((r) => r.ms)), 1),
    cold_decision_upstream_round_trips: median(at50.map((r) => r.serial_round_trips)),
  };
}

/** One cold decision: GET manifest by tag through `pc`, and what the relay carried meanwhile. */
async function decide(delay, pc, repo, img) {
  const from = delay.requests.length;
  const conns = delay.connections;
  const t0 = performance.now();
  const res = await fetch(`${pc.url}/v2/${repo}/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT } });
  await res.arrayBuffer();
  const ms = performance.now() - t0;
  if (res.status !== 200) throw new Error(`latency: cold GET ${repo}:v1 through ${pc.name}: HTTP ${res.status}`);
  if (res.headers.get('docker-content-digest') !== img.digest) throw new Error(`latency: ${repo}:v1 answered another digest`);
  const reqs = delay.requests.slice(from).filter((r) => r.start >= t0);
  const { depth, chain } = serialDepth(reqs);
  const short = (path) => path.replace(/^\/v2\/bench\/latency[\w-]*\//, '');
  return {
    ms: round(ms, 1),
    upstream_requests: reqs.length,
    serial_round_trips: depth,
    new_connections: delay.connections - conns,
    critical_path: chain.map((r) => `${r.method} ${short(r.path).replace(/sha256[:-]([0-9a-f]{12})[0-9a-f]{52}/g, 'sha256-$1…')}`),
    requests: reqs.map((r) => ({ conn: r.conn, method: r.method, path: short(r.path), start_ms: round(r.start - t0, 1), end_ms: round(r.end - t0, 1) })),
  };
}
