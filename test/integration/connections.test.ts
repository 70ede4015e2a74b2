/**
 * Bounded resources on the listener (issue 10, item 4), against a real Distribution upstream and raw TCP clients:
 *
 * - a client that stops reading a blob is cut off after limits.writeStallTimeout, and what its response held (the
 *   cached file's descriptor, a running download's temp file, slabs) is released;
 * - an idle keep-alive connection is closed after limits.idleTimeout;
 * - connection caps in all and per client address: over them, new connections are closed at once and existing
 *   ones keep working;
 * - the client address behind a load balancer: PROXY protocol v2 (required on such a listener; garbage, oversized
 *   and late headers refused) and a trusted X-Forwarded-For (ignored from anyone else), which is what the policy
 *   input and the caps then use.
 *
 * Nothing here asserts on time: timeouts are made short and the tests wait (bounded) for the proxy's own counters.
 */
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import net, { type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { slabPool, smallSlabPool } from '../../src/cache/slabs.js';
import type { PolicyInput } from '../../src/policy/contract.js';
import { MANIFEST_ACCEPT, pushImage, type PushedImage } from '../harness/images.js';
import { startProxy, type RunningProxy } from '../harness/proxy.js';
import { proxyV2 } from '../harness/proxy-header.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';

let reg: RunningRegistry;
let big: PushedImage;

beforeAll(async () => {
  reg = await startRegistry();
  // Far larger than what loopback socket buffers absorb (a few MiB each side), so a client that stops reading
  // really stalls the proxy's writes.
  big = await pushImage(reg.url, 'lim/big', 'v1', { layerSizeMiB: 48 });
  await pushImage(reg.url, 'lim/small', 'v1');
});

afterAll(async () => {
  await reg?.stop();
});

/** A self-signed certificate for 127.0.0.1 in a temp dir. */
async function selfSigned(): Promise<{ dir: string; cert: string; key: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'pc-conn-tls-'));
  const [cert, key] = [join(dir, 'cert.pem'), join(dir, 'key.pem')];
  const r = spawnSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-keyout',
      key,
      '-out',
      cert,
      '-subj',
      '/CN=127.0.0.1',
      '-days',
      '1',
      '-addext',
      'subjectAltName=IP:127.0.0.1',
    ],
    { encoding: 'utf8' },
  );
  if (r.status !== 0) throw new Error(`openssl failed: ${r.error?.message ?? r.stderr}`);
  return { dir, cert, key };
}

function start(extra: Record<string, unknown>, observers?: Array<{ onDecision(e: { input: PolicyInput }): void }>): Promise<RunningProxy> {
  return startProxy({ upstreams: [{ name: 'reg', registry: reg.host, url: reg.url }], defaultUpstream: 'reg', extra, ...(observers ? { observers } : {}) });
}

/** Polls `f` until it holds; bounded, so a missing behaviour fails the test instead of hanging it. */
async function until(f: () => boolean | Promise<boolean>, what: string, bound = 15_000): Promise<void> {
  const deadline = Date.now() + bound;
  while (!(await f())) {
    if (Date.now() > deadline) throw new Error(`still waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function counter(p: RunningProxy, name: 'connectionsClosed' | 'connectionsRefused', reason: string): Promise<number> {
  const m = await p.proxy.app.metrics[name].get();
  return m.values.find((v) => v.labels.reason === reason)?.value ?? 0;
}

function port(p: RunningProxy): number {
  return Number(p.host.split(':')[1]);
}

/** Files under `dir` this process holds open (the proxy runs in-process). */
function openFilesUnder(dir: string): string[] {
  const out: string[] = [];
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      const t = readlinkSync(`/proc/self/fd/${fd}`);
      if (t.startsWith(dir)) out.push(t);
    } catch {
      // closed meanwhile
    }
  }
  return out;
}

function connect(p: RunningProxy, localAddress = '127.0.0.1'): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port: port(p), localAddress });
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

interface RawResponse {
  status: number;
  headers: string;
  body: Buffer;
}

/** Sends one request on `s` and reads one Content-Length-framed response; rejects if the connection closes first. */
function request(s: Socket, path: string, headers: Record<string, string> = {}, prefix?: Buffer): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0);
    const onData = (c: Buffer): void => {
      buf = Buffer.concat([buf, c]);
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      const head = buf.subarray(0, end).toString('latin1');
      const len = Number(/\r\ncontent-length:\s*(\d+)/i.exec(head)?.[1] ?? 0);
      if (buf.length < end + 4 + len) return;
      s.off('data', onData);
      s.off('close', onClose);
      resolve({ status: Number(head.slice(9, 12)), headers: head, body: buf.subarray(end + 4, end + 4 + len) });
    };
    const onClose = (): void => reject(new Error('connection closed before a response'));
    s.on('data', onData);
    s.once('close', onClose);
    const lines = [`GET ${path} HTTP/1.1`, 'Host: proxy', `Accept: ${MANIFEST_ACCEPT}`, ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`)];
    const text = Buffer.from(`${lines.join('\r\n')}\r\n\r\n`);
    s.write(prefix ? Buffer.concat([prefix, text]) : text);
  });
}

/** Resolves when `s` closes (the peer closed or reset it). */
function closed(s: Socket): Promise<void> {
  return new Promise((resolve) => {
    if (s.destroyed) return resolve();
    s.on('error', () => {});
    s.once('close', () => resolve());
    s.resume();
  });
}

/** Asks for `path` and stops reading after the first bytes of the response: a client that stalls the proxy. */
function stalledReader(s: Socket, path: string, headers: Record<string, string> = {}): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    s.once('data', (c: Buffer) => {
      s.pause();
      resolve(c);
    });
    s.once('error', reject);
    s.write(
      `GET ${path} HTTP/1.1\r\nHost: proxy\r\n${Object.entries(headers)
        .map(([k, v]) => `${k}: ${v}\r\n`)
        .join('')}\r\n`,
    );
  });
}

describe('inactivity timeouts', () => {
  it('closes a response whose client stopped reading, and releases the blob reader (cached and downloading)', async () => {
    const p = await start({ limits: { writeStallTimeout: '300ms' } });
    try {
      const m = await fetch(`${p.url}/v2/lim/big/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT, connection: 'close' } });
      expect(m.status).toBe(200);
      await m.arrayBuffer();
      const layer = `/v2/lim/big/blobs/${big.layers[0]!.digest}`;
      // 1. Cold: the first reader starts the download and stops reading; the download's temp file stays open for it.
      const cold = await connect(p);
      const first = await stalledReader(cold, layer);
      expect(first.subarray(0, 15).toString()).toBe('HTTP/1.1 200 OK');
      await until(async () => (await counter(p, 'connectionsClosed', 'write_stall')) === 1, 'the stalled cold reader to be cut off');
      await closed(cold);
      // Its reader is gone, so nothing under the data dir is held open for it (temp file, cached blob).
      await until(
        () => openFilesUnder(p.dataDir).filter((f) => !f.endsWith('.sqlite') && !/sqlite-(wal|shm)$/.test(f)).length === 0,
        'the reader to let go of its files',
      );
      await until(() => p.proxy.app.downloads.active === 0, 'the download to finish');
      // 2. Warm: a reader of the cached blob that stops reading, and holds slabs in its pending writes.
      const slabs = (): number => slabPool.inUse + smallSlabPool.inUse;
      const before = slabs();
      const warm = await connect(p);
      await stalledReader(warm, layer);
      await until(() => slabs() > before, 'the stalled response to hold its slabs');
      expect(openFilesUnder(p.dataDir).some((f) => f.includes('/blobs/'))).toBe(true);
      await until(async () => (await counter(p, 'connectionsClosed', 'write_stall')) === 2, 'the stalled warm reader to be cut off');
      await closed(warm);
      await until(() => !openFilesUnder(p.dataDir).some((f) => f.includes('/blobs/')), 'the cached blob to be closed');
      await until(() => slabs() === before, 'its slabs to be let go');
      // A reader that keeps reading is not touched, however long the transfer takes.
      const ok = await fetch(`${p.url}${layer}`);
      expect(Buffer.from(await ok.arrayBuffer()).length).toBe(big.layers[0]!.size);
      expect(await counter(p, 'connectionsClosed', 'write_stall')).toBe(2);
    } finally {
      await p.stop();
    }
  });

  it('closes an idle keep-alive connection after limits.idleTimeout', async () => {
    const p = await start({ limits: { idleTimeout: '200ms' } });
    try {
      const s = await connect(p);
      expect((await request(s, '/v2/')).status).toBe(200);
      await closed(s);
      expect(await counter(p, 'connectionsClosed', 'idle')).toBe(1);
      await until(async () => (await p.proxy.app.metrics.connectionsOpen.get()).values[0]?.value === 0, 'the connection count to drop');
    } finally {
      await p.stop();
    }
  });
});

describe('TLS listener', () => {
  it('reads the PROXY header before the TLS handshake, and cuts off a TLS client that stops reading', async () => {
    const t = await selfSigned();
    const inputs: PolicyInput[] = [];
    const p = await start(
      { tls: { cert: t.cert, key: t.key }, listener: { proxyProtocol: true }, limits: { writeStallTimeout: '300ms' }, gate: { allowTTL: 0 } },
      [{ onDecision: (e) => inputs.push(e.input) }],
    );
    try {
      const handshake = async (): Promise<tls.TLSSocket> => {
        const raw = await connect(p);
        raw.write(proxyV2({ address: '198.51.100.20', port: 1 }));
        const s = tls.connect({ socket: raw, host: '127.0.0.1', ca: readFileSync(t.cert) });
        await new Promise<void>((resolve, reject) => {
          s.once('secureConnect', () => resolve());
          s.once('error', reject);
        });
        return s;
      };
      const s = await handshake();
      const r = await request(s, '/v2/lim/big/manifests/v1');
      expect(r.status).toBe(200);
      expect(inputs.at(-1)?.request.client.ip).toBe('198.51.100.20');
      const stalled = await handshake();
      await stalledReader(stalled, `/v2/lim/big/blobs/${big.layers[0]!.digest}`);
      await until(async () => (await counter(p, 'connectionsClosed', 'write_stall')) === 1, 'the stalled TLS reader to be cut off');
      s.destroy();
    } finally {
      await p.stop();
      await rm(t.dir, { recursive: true, force: true });
    }
  });
});

describe('connection caps', () => {
  it('refuses connections over the per-client and global caps at once, and leaves existing ones alone', async () => {
    const p = await start({ limits: { maxConnections: 3, maxConnectionsPerClient: 2 } });
    const socks: Socket[] = [];
    try {
      // 127.0.0.0/8 is all loopback on Linux: different source addresses are different clients.
      for (const from of ['127.0.0.1', '127.0.0.1']) {
        const s = await connect(p, from);
        socks.push(s);
        expect((await request(s, '/v2/')).status).toBe(200);
      }
      const overClient = await connect(p, '127.0.0.1');
      await expect(request(overClient, '/v2/')).rejects.toThrow(/closed before a response/);
      expect(await counter(p, 'connectionsRefused', 'client_limit')).toBe(1);
      const other = await connect(p, '127.0.0.2');
      socks.push(other);
      expect((await request(other, '/v2/')).status).toBe(200);
      const overAll = await connect(p, '127.0.0.3');
      await expect(request(overAll, '/v2/')).rejects.toThrow(/closed before a response/);
      expect(await counter(p, 'connectionsRefused', 'global_limit')).toBe(1);
      // The admitted connections still serve.
      for (const s of socks) expect((await request(s, '/v2/lim/small/manifests/v1')).status).toBe(200);
      // A closed connection frees its place.
      socks.shift()!.destroy();
      await until(async () => (await p.proxy.app.metrics.connectionsOpen.get()).values[0]?.value === 2, 'the count to drop');
      const again = await connect(p, '127.0.0.1');
      socks.push(again);
      expect((await request(again, '/v2/')).status).toBe(200);
    } finally {
      for (const s of socks) s.destroy();
      await p.stop();
    }
  });
});

describe('client address behind a load balancer', () => {
  it('takes the client from a PROXY protocol v2 header: policy input, per-client caps', async () => {
    const inputs: PolicyInput[] = [];
    const p = await start({ listener: { proxyProtocol: true }, limits: { maxConnectionsPerClient: 1 }, gate: { allowTTL: 0 } }, [
      { onDecision: (e) => inputs.push(e.input) },
    ]);
    const socks: Socket[] = [];
    try {
      const a = await connect(p);
      socks.push(a);
      // The header and the request in one write: the bytes after the header reach the HTTP parser.
      const r = await request(a, '/v2/lim/small/manifests/v1', {}, proxyV2({ address: '203.0.113.7', port: 40000 }));
      expect(r.status).toBe(200);
      expect(inputs.at(-1)?.request.client.ip).toBe('203.0.113.7');
      // Another connection from the same client (through the same balancer) is over its cap of one...
      const a2 = await connect(p);
      await expect(request(a2, '/v2/', {}, proxyV2({ address: '203.0.113.7', port: 40001 }))).rejects.toThrow(/closed/);
      expect(await counter(p, 'connectionsRefused', 'client_limit')).toBe(1);
      // ...another client is not; and the header may arrive in pieces.
      const b = await connect(p);
      socks.push(b);
      const hdr = proxyV2({ address: '2001:db8:0:0:0:0:0:9', port: 1 });
      b.write(hdr.subarray(0, 5));
      b.write(hdr.subarray(5, 20));
      expect((await request(b, '/v2/lim/small/manifests/v1', {}, hdr.subarray(20))).status).toBe(200);
      expect(inputs.at(-1)?.request.client.ip).toBe('2001:db8::9');
      // A LOCAL header (the balancer's health check) is served as the balancer itself.
      const hc = await connect(p);
      socks.push(hc);
      expect((await request(hc, '/healthz', {}, proxyV2('local'))).status).toBe(200);
    } finally {
      for (const s of socks) s.destroy();
      await p.stop();
    }
  });

  it('refuses a connection without a valid header: plain HTTP, garbage, oversized, or nothing in time', async () => {
    const p = await start({ listener: { proxyProtocol: true, proxyProtocolTimeout: '200ms' } });
    try {
      const plain = await connect(p);
      await expect(request(plain, '/v2/')).rejects.toThrow(/closed/);
      const v1 = await connect(p);
      v1.write('PROXY TCP4 203.0.113.7 127.0.0.1 40000 5000\r\n');
      await closed(v1);
      const huge = await connect(p);
      huge.write(proxyV2({ address: '203.0.113.7', port: 1 }, { tlv: 8000 }).subarray(0, 16));
      await closed(huge);
      const silent = await connect(p);
      await closed(silent);
      expect(await counter(p, 'connectionsRefused', 'proxy_protocol')).toBe(4);
    } finally {
      await p.stop();
    }
  });

  it('refuses PROXY headers from peers outside listener.trustedProxies', async () => {
    const p = await start({ listener: { proxyProtocol: true, trustedProxies: ['127.0.0.2/32'] } });
    try {
      const wrongPeer = await connect(p, '127.0.0.1');
      await expect(request(wrongPeer, '/v2/', {}, proxyV2({ address: '203.0.113.7', port: 1 }))).rejects.toThrow(/closed/);
      expect(await counter(p, 'connectionsRefused', 'untrusted_proxy')).toBe(1);
      const lb = await connect(p, '127.0.0.2');
      expect((await request(lb, '/v2/', {}, proxyV2({ address: '203.0.113.7', port: 1 }))).status).toBe(200);
      lb.destroy();
    } finally {
      await p.stop();
    }
  });

  it("believes X-Forwarded-For only from a trusted proxy, and caps that proxy's clients by requests in flight", async () => {
    const inputs: PolicyInput[] = [];
    const observers = [{ onDecision: (e: { input: PolicyInput }) => inputs.push(e.input) }];
    const plain = await start({ gate: { allowTTL: 0 } }, observers);
    try {
      const s = await connect(plain);
      expect((await request(s, '/v2/lim/small/manifests/v1', { 'X-Forwarded-For': '198.51.100.9' })).status).toBe(200);
      expect(inputs.at(-1)?.request.client.ip).toBe('127.0.0.1');
      s.destroy();
    } finally {
      await plain.stop();
    }
    const p = await start(
      { listener: { trustedProxies: ['127.0.0.1/32'] }, limits: { maxConnectionsPerClient: 1, writeStallTimeout: 0 }, gate: { allowTTL: 0 } },
      observers,
    );
    const socks: Socket[] = [];
    try {
      const s = await connect(p);
      socks.push(s);
      expect((await request(s, '/v2/lim/big/manifests/v1', { 'X-Forwarded-For': '1.2.3.4, 198.51.100.9' })).status).toBe(200);
      expect(inputs.at(-1)?.request.client.ip).toBe('198.51.100.9');
      // One request of client A in flight (a blob it is not reading)...
      const held = await connect(p);
      socks.push(held);
      await stalledReader(held, `/v2/lim/big/blobs/${big.layers[0]!.digest}`, { 'X-Forwarded-For': '198.51.100.9' });
      // ...so its next one is over the cap, on any connection of the proxy; another client's is not.
      const r = await request(s, '/v2/lim/small/manifests/v1', { 'X-Forwarded-For': '198.51.100.9' });
      expect(r.status).toBe(429);
      expect(r.body.toString()).toContain('TOOMANYREQUESTS');
      expect((await request(s, '/v2/lim/small/manifests/v1', { 'X-Forwarded-For': '198.51.100.10' })).status).toBe(200);
      // The proxy's own connections are not capped per client (it carries many clients).
      const third = await connect(p);
      socks.push(third);
      expect((await request(third, '/v2/')).status).toBe(200);
      held.destroy();
      await until(async () => (await request(s, '/v2/', { 'X-Forwarded-For': '198.51.100.9' })).status === 200, 'the held request to end');
    } finally {
      for (const x of socks) x.destroy();
      await p.stop();
    }
  });
});
