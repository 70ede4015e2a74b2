/**
 * A userspace TCP delay proxy for the `latency` phase: it stands in for `tc qdisc … netem delay`, which this kernel
 * does not have ("Specified qdisc kind is unknown"). Every chunk of data is forwarded `oneWayMs` after it arrived, in
 * each direction, so a request/response exchange costs 2 × oneWayMs more (a 50 ms round trip for 25 ms); a new
 * connection's first bytes wait one more round trip, as a TCP handshake over that link would.
 *
 * It also watches the HTTP/1.1 traffic it carries (requests without bodies: the decision path is GETs and HEADs) and
 * records each request's start (its first byte reached the proxy) and end (the last response byte before the
 * connection's next request, or its close), which is what serialDepth() turns into the number of round trips that
 * followed one another.
 */
import { createServer, connect } from 'node:net';

const METHOD = /^(GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS) (\S+) HTTP\/1\.[01]\r\n/;

/**
 * @param {{ target: string, oneWayMs: number }} o  target "host:port"
 * @returns {Promise<{ host: string, url: string, requests: Array<{conn: number, method: string, path: string, start: number, end: number}>, connections: number, stop(): Promise<void> }>}
 */
export async function startDelayProxy({ target, oneWayMs }) {
  const [thost, tport] = [target.slice(0, target.lastIndexOf(':')), Number(target.slice(target.lastIndexOf(':') + 1))];
  const requests = [];
  const sockets = new Set();
  let connections = 0;
  const server = createServer((client) => {
    const id = ++connections;
    const accepted = performance.now();
    const upstream = connect({ host: thost, port: tport });
    sockets.add(client);
    sockets.add(upstream);
    let current; // the request whose response is flowing
    let pendingHead = ''; // a request line split across chunks
    const close = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', close);
    upstream.on('error', close);
    client.on('close', close);
    upstream.on('close', () => setTimeout(close, oneWayMs));
    // Each direction keeps its order: the delay is constant and timers with equal delays fire in order. The
    // handshake round trip is added to the client's first bytes only (later ones are later anyway).
    let lastDue = 0;
    client.on('data', (chunk) => {
      const now = performance.now();
      const text = pendingHead + chunk.toString('latin1', 0, Math.min(chunk.length, 2048));
      const m = METHOD.exec(text);
      if (m) {
        pendingHead = '';
        current = { conn: id, method: m[1], path: m[2], start: now, end: now };
        requests.push(current);
      } else if (!current || text.length < 16) pendingHead = text.slice(-64);
      const due = Math.max(now + oneWayMs, accepted + 2 * oneWayMs + oneWayMs, lastDue);
      lastDue = due;
      setTimeout(() => upstream.write(chunk), due - now);
    });
    upstream.on('data', (chunk) => {
      const req = current;
      setTimeout(() => {
        if (req) req.end = performance.now();
        client.write(chunk);
      }, oneWayMs);
    });
    client.on('end', () => setTimeout(() => upstream.end(), oneWayMs));
    upstream.on('end', () => setTimeout(() => client.end(), oneWayMs));
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const { port } = server.address();
  return {
    host: `127.0.0.1:${port}`,
    url: `http://127.0.0.1:${port}`,
    requests,
    get connections() {
      return connections;
    },
    async stop() {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}

/**
 * The number of round trips that had to follow one another: the longest chain of requests in which each started
 * after the previous one ended (greedy interval scheduling by earliest end gives the longest such chain). Requests
 * that overlapped count once; a request that needed another's answer starts after it ended, so the chain is the
 * critical path.
 */
export function serialDepth(reqs) {
  const sorted = [...reqs].sort((a, b) => a.end - b.end);
  let depth = 0;
  let lastEnd = -Infinity;
  const chain = [];
  for (const r of sorted) {
    if (r.start >= lastEnd) {
      depth++;
      lastEnd = r.end;
      chain.push(r);
    }
  }
  return { depth, chain };
}
