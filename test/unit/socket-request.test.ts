/**
 * The blob-body transport (src/upstream/socket-request.ts) against loopback servers: node:http and node:https for
 * well-formed responses, and raw `net` servers for exact bytes (framing split across reads, truncation, bad heads).
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer as createHttpsServer } from 'node:https';
import net, { type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { SocketPool } from '../../src/upstream/socket-pool.js';
import { socketRequest as send, type SocketRequestOptions, type SocketResponse } from '../../src/upstream/socket-request.js';
import { cleanupTempDirs, startServer, tempDir, type LocalServer } from './helpers.js';

const OPTS: SocketRequestOptions = { method: 'GET', headers: {}, connectTimeout: 5_000, headersTimeout: 5_000, bodyTimeout: 5_000 };
const pools: SocketPool[] = [];

/** One request on a pool of its own unless one is given (TLS settings live in the pool). */
function socketRequest(
  url: URL,
  opts: SocketRequestOptions,
  pool?: SocketPool,
  tls: { ca?: Buffer; rejectUnauthorized?: boolean } = {},
): Promise<SocketResponse> {
  const p = pool ?? new SocketPool({ rejectUnauthorized: tls.rejectUnauthorized ?? true, ...(tls.ca ? { ca: tls.ca } : {}) });
  if (!pool) pools.push(p);
  return send(url, opts, p);
}

function digest(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

function randomish(n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = (i * 2654435761) >>> 24;
  return b;
}

/** Collects a body through pipeTo, copying every chunk (the transport reuses their memory). */
async function pipeAll(
  body: { pipeTo(f: (c: Buffer) => Promise<void> | void): Promise<void> },
  onChunk?: (n: number) => Promise<void> | void,
): Promise<{ data: Buffer; chunks: Buffer[] }> {
  const copies: Buffer[] = [];
  const views: Buffer[] = [];
  await body.pipeTo((c) => {
    copies.push(Buffer.from(c));
    views.push(c);
    return onChunk?.(copies.length);
  });
  return { data: Buffer.concat(copies), chunks: views };
}

/** A raw TCP server that answers every connection with `script` (writes with a macrotask between them). */
async function rawServer(script: (socket: net.Socket, request: string) => Promise<void> | void): Promise<{ url: string; close(): Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    let req = '';
    socket.on('data', (d: Buffer) => {
      req += d.toString('latin1');
      if (req.includes('\r\n\r\n')) void Promise.resolve(script(socket, req)).catch(() => socket.destroy());
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

describe('socketRequest', () => {
  const closers: Array<() => Promise<void>> = [];
  afterEach(async () => {
    for (const p of pools.splice(0)) p.close();
    for (const c of closers.splice(0)) await c();
  });
  afterAll(() => cleanupTempDirs());

  it('delivers a Content-Length body intact through pipeTo, in reused memory, holding the socket while the consumer waits', async () => {
    const data = randomish(6 * 1024 * 1024 + 123);
    const srv: LocalServer = await startServer((_req, _body, res) => {
      res.setHeader('content-length', data.length);
      res.end(data);
    });
    closers.push(() => srv.close());
    const res = await socketRequest(new URL(`${srv.url}/v2/a/blobs/x?y=1`), { ...OPTS, headers: { authorization: 'Bearer t', 'user-agent': 'ua' } });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-length']).toBe(String(data.length));
    let closed = false;
    res.body.once('close', () => (closed = true));
    // Every fourth chunk makes the transport wait, as the download does when the disk falls behind.
    const { data: got, chunks } = await pipeAll(res.body, (n) => (n % 4 === 0 ? new Promise((r) => setTimeout(r, 2)) : undefined));
    expect(digest(got)).toBe(digest(data));
    // The chunks were views of one read buffer, not fresh allocations.
    expect(new Set(chunks.map((c) => c.buffer)).size).toBeLessThanOrEqual(2);
    await tick();
    expect(closed).toBe(true);
    const sent = srv.requests[0]!;
    expect(sent.url).toBe('/v2/a/blobs/x?y=1');
    expect(sent.headers.authorization).toBe('Bearer t');
    expect(sent.headers['accept-encoding']).toBe('identity');
  });

  it('decodes chunked framing split at every awkward place, with extensions and trailers', async () => {
    const parts = [Buffer.from('hello '), randomish(70_000), Buffer.from('!')];
    const wire = Buffer.concat([
      Buffer.from('HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: application/octet-stream\r\n\r\n'),
      ...parts.flatMap((p, i) => [Buffer.from(`${p.length.toString(16)}${i === 1 ? ';ext=1' : ''}\r\n`), p, Buffer.from('\r\n')]),
      Buffer.from('0\r\nx-trailer: yes\r\n\r\n'),
    ]);
    const srv = await rawServer(async (socket) => {
      // Odd-sized writes with a macrotask between them, so that heads, size lines and CRLFs straddle reads.
      for (let off = 0; off < wire.length; off += 7 + (off % 13)) {
        socket.write(wire.subarray(off, Math.min(wire.length, off + 7 + (off % 13))));
        if (off % 5 === 0) await new Promise((r) => setTimeout(r, 0));
      }
      socket.end();
    });
    closers.push(() => srv.close());
    const res = await socketRequest(new URL(srv.url), OPTS);
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toBe('application/octet-stream');
    const { data } = await pipeAll(res.body);
    expect(digest(data)).toBe(digest(Buffer.concat(parts)));
  });

  it('reads a body delimited by the connection closing', async () => {
    const srv = await rawServer((socket) => {
      socket.end('HTTP/1.1 200 OK\r\n\r\nall of it');
    });
    closers.push(() => srv.close());
    const res = await socketRequest(new URL(srv.url), OPTS);
    expect((await pipeAll(res.body)).data.toString()).toBe('all of it');
  });

  it('fails a body cut short of its Content-Length, naming the bytes still due', async () => {
    const srv = await rawServer((socket) => {
      socket.end('HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly forty bytes..........................');
    });
    closers.push(() => srv.close());
    const res = await socketRequest(new URL(srv.url), OPTS);
    await expect(pipeAll(res.body)).rejects.toThrow(/closed the connection with \d+ body bytes still due/);
  });

  it('fails a chunked body cut short, and one with a malformed size line', async () => {
    const cut = await rawServer((socket) => {
      socket.end('HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10\r\nabc');
    });
    closers.push(() => cut.close());
    const res = await socketRequest(new URL(cut.url), OPTS);
    await expect(pipeAll(res.body)).rejects.toThrow(/inside a chunked body/);

    const bad = await rawServer((socket) => {
      socket.end('HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n');
    });
    closers.push(() => bad.close());
    const res2 = await socketRequest(new URL(bad.url), OPTS);
    await expect(pipeAll(res2.body)).rejects.toThrow(/bad chunk size line/);
  });

  it('refuses malformed heads: status line, folded header, conflicting lengths, other transfer codings', async () => {
    const heads = [
      ['ICY 200 OK\r\n\r\n', /bad status line/],
      ['HTTP/1.1 200 OK\r\nx: a\r\n folded\r\n\r\n', /bad header line/],
      ['HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello', /bad content-length/],
      ['HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n', /bad content-length/],
      ['HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n', /unsupported transfer-encoding/],
    ] as const;
    for (const [head, error] of heads) {
      const srv = await rawServer((socket) => {
        socket.end(head);
      });
      closers.push(() => srv.close());
      await expect(socketRequest(new URL(srv.url), OPTS)).rejects.toThrow(error);
    }
  });

  it('refuses a response head that never ends within the size limit', async () => {
    const srv = await rawServer((socket) => {
      socket.write(`HTTP/1.1 200 OK\r\nx-big: ${'a'.repeat(70 * 1024)}`);
    });
    closers.push(() => srv.close());
    await expect(socketRequest(new URL(srv.url), OPTS)).rejects.toThrow(/response head larger than/);
  });

  it('refuses request header values that would inject headers', async () => {
    await expect(socketRequest(new URL('http://127.0.0.1:9/'), { ...OPTS, headers: { authorization: 'Bearer x\r\nx-evil: 1' } })).rejects.toThrow(
      /invalid request header/,
    );
  });

  it('serves an error body as an ordinary Readable (copies), and a HEAD response with no body', async () => {
    const srv = await startServer((req, _body, res) => {
      res.statusCode = req.method === 'HEAD' ? 200 : 404;
      res.setHeader('content-type', 'application/json');
      res.setHeader('content-length', req.method === 'HEAD' ? '12345' : '27');
      res.end(req.method === 'HEAD' ? undefined : '{"errors":[{"code":"NOPE"}]}'.slice(0, 27));
    });
    closers.push(() => srv.close());
    const res = await socketRequest(new URL(srv.url), OPTS);
    expect(res.statusCode).toBe(404);
    const chunks: Buffer[] = [];
    for await (const c of res.body) chunks.push(c as Buffer);
    expect(Buffer.concat(chunks).toString()).toBe('{"errors":[{"code":"NOPE"}]'.slice(0, 27));

    const head = await socketRequest(new URL(srv.url), { ...OPTS, method: 'HEAD' });
    expect(head.headers['content-length']).toBe('12345');
    expect((await pipeAll(head.body)).data.length).toBe(0);
  });

  it('a discarded body (resume) drains to the end and closes', async () => {
    const srv = await startServer((_req, _body, res) => {
      res.statusCode = 307;
      res.setHeader('location', '/elsewhere');
      res.end(randomish(300_000));
    });
    closers.push(() => srv.close());
    const res = await socketRequest(new URL(srv.url), OPTS);
    expect(res.statusCode).toBe(307);
    const closed = new Promise((r) => res.body.once('close', r));
    res.body.resume();
    await closed;
  });

  it('stops on abort mid-body and on a stalled upstream', async () => {
    const srv = await rawServer((socket) => {
      // Headers and part of the body, then silence.
      socket.write('HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n');
      socket.write(randomish(1000));
    });
    closers.push(() => srv.close());
    const controller = new AbortController();
    const res = await socketRequest(new URL(srv.url), { ...OPTS, signal: controller.signal });
    const piping = pipeAll(res.body, () => controller.abort(new Error('client went away')));
    await expect(piping).rejects.toThrow(/client went away/);

    const stalled = await socketRequest(new URL(srv.url), { ...OPTS, bodyTimeout: 200 });
    await expect(pipeAll(stalled.body)).rejects.toThrow(/body timed out/);
    await expect(socketRequest(new URL('http://127.0.0.1:1/'), OPTS)).rejects.toThrow(/ECONNREFUSED/);
  });

  describe('keep-alive', () => {
    /** Counts TCP connections; answers each request with its path, framed by Content-Length unless told otherwise. */
    async function counting(
      handler?: (socket: net.Socket, n: number, total: number) => void,
    ): Promise<{ url: string; connections: () => number; close(): Promise<void> }> {
      let connections = 0;
      let total = 0;
      const sockets = new Set<net.Socket>();
      const server = net.createServer((socket) => {
        connections++;
        sockets.add(socket);
        socket.on('close', () => sockets.delete(socket));
        socket.on('error', () => {});
        let buf = '';
        let n = 0;
        socket.on('data', (d: Buffer) => {
          buf += d.toString('latin1');
          let at: number;
          while ((at = buf.indexOf('\r\n\r\n')) >= 0) {
            const request = buf.slice(0, at);
            buf = buf.slice(at + 4);
            n++;
            total++;
            if (handler) handler(socket, n, total);
            else {
              const [method, path = ''] = request.split(' ');
              socket.write(`HTTP/1.1 200 OK\r\ncontent-length: ${path.length}\r\n\r\n${method === 'HEAD' ? '' : path}`);
            }
          }
        });
      });
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      const close = (): Promise<void> =>
        new Promise<void>((r) => {
          for (const so of sockets) so.destroy();
          server.close(() => r());
        });
      closers.push(close);
      return { url, connections: () => connections, close };
    }

    it('sends the next request on the same connection once a response has been read to its end', async () => {
      const srv = await counting();
      const pool = new SocketPool({ rejectUnauthorized: true });
      pools.push(pool);
      for (const path of ['/a', '/bb', '/ccc']) {
        const res = await socketRequest(new URL(srv.url + path), OPTS, pool);
        expect((await pipeAll(res.body)).data.toString()).toBe(path);
      }
      const head = await socketRequest(new URL(`${srv.url}/dddd`), { ...OPTS, method: 'HEAD' }, pool);
      await pipeAll(head.body);
      expect(srv.connections()).toBe(1);
      expect(pool.idleCount).toBe(1);
    });

    it('does not reuse a connection after Connection: close, a close-delimited body, extra bytes, or an abort', async () => {
      const replies = [
        'HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok',
        'HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok',
        'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokJUNK',
      ];
      for (const reply of replies) {
        const srv = await counting((socket) => socket.write(reply));
        const pool = new SocketPool({ rejectUnauthorized: true });
        pools.push(pool);
        for (let i = 0; i < 2; i++) expect((await pipeAll((await socketRequest(new URL(srv.url), OPTS, pool)).body)).data.toString()).toBe('ok');
        expect(srv.connections()).toBe(2);
        expect(pool.idleCount).toBe(0);
      }
      // Aborted mid-body: that connection is gone, the next request opens another.
      const slow = await counting((socket, _n, total) =>
        socket.write(total === 1 ? 'HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial' : 'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok'),
      );
      const pool = new SocketPool({ rejectUnauthorized: true });
      pools.push(pool);
      const controller = new AbortController();
      const res = await socketRequest(new URL(slow.url), { ...OPTS, signal: controller.signal }, pool);
      await expect(pipeAll(res.body, () => controller.abort(new Error('gone')))).rejects.toThrow(/gone/);
      expect((await pipeAll((await socketRequest(new URL(slow.url), OPTS, pool)).body)).data.toString()).toBe('ok');
      expect(slow.connections()).toBe(2);
    });

    it('retries once on a new connection when a reused one turns out closed before any answer', async () => {
      // The server takes the second request on a connection and closes it without a word, as a server does when
      // its idle timeout and our request cross.
      const srv = await counting((socket, n) => {
        if (n === 1) socket.write('HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst');
        else socket.destroy();
      });
      const pool = new SocketPool({ rejectUnauthorized: true });
      pools.push(pool);
      expect((await pipeAll((await socketRequest(new URL(srv.url), OPTS, pool)).body)).data.toString()).toBe('first');
      expect(pool.idleCount).toBe(1);
      // Reused, found closed, sent again on a new connection (whose first request is answered).
      expect((await pipeAll((await socketRequest(new URL(srv.url), OPTS, pool)).body)).data.toString()).toBe('first');
      expect(srv.connections()).toBe(2);
    });

    it('drops an idle connection that the server closes, and closes idle ones with the pool', async () => {
      const srv = await counting();
      const pool = new SocketPool({ rejectUnauthorized: true });
      pools.push(pool);
      await pipeAll((await socketRequest(new URL(`${srv.url}/x`), OPTS, pool)).body);
      expect(pool.idleCount).toBe(1);
      await srv.close();
      const deadline = Date.now() + 5_000;
      while (pool.idleCount > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
      expect(pool.idleCount).toBe(0);

      const srv2 = await counting();
      await pipeAll((await socketRequest(new URL(`${srv2.url}/y`), OPTS, pool)).body);
      expect(pool.idleCount).toBe(1);
      pool.close();
      expect(pool.idleCount).toBe(0);
    });
  });

  describe('over TLS', () => {
    let dir: string;
    beforeAll(() => {
      dir = tempDir('pc-tls-');
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
          join(dir, 'key.pem'),
          '-out',
          join(dir, 'cert.pem'),
          '-subj',
          '/CN=localhost',
          '-days',
          '1',
          '-addext',
          'subjectAltName=DNS:localhost,IP:127.0.0.1',
        ],
        { encoding: 'utf8' },
      );
      if (r.status !== 0) throw new Error(`openssl (installed by scripts/install-tools.sh) failed: ${r.error?.message ?? r.stderr}`);
    });

    it('verifies the server against the configured CA, sends SNI, and reads the body in reused memory', async () => {
      const data = randomish(3 * 1024 * 1024);
      let sni: string | undefined;
      const server = createHttpsServer({ key: readFileSync(join(dir, 'key.pem')), cert: readFileSync(join(dir, 'cert.pem')) }, (_req, res) => {
        res.setHeader('content-length', data.length);
        res.end(data);
      });
      server.on('secureConnection', (s) => (sni = (s as unknown as { servername?: string }).servername));
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      closers.push(
        () =>
          new Promise<void>((r) => {
            server.closeAllConnections();
            server.close(() => r());
          }),
      );
      const port = (server.address() as AddressInfo).port;
      const ca = readFileSync(join(dir, 'cert.pem'));

      const res = await socketRequest(new URL(`https://localhost:${port}/blob`), OPTS, undefined, { ca });
      const { data: got, chunks } = await pipeAll(res.body);
      expect(digest(got)).toBe(digest(data));
      // One read buffer (plus, at most, the copy of body bytes that came in with the head).
      expect(new Set(chunks.map((c) => c.buffer)).size).toBeLessThanOrEqual(2);
      expect(chunks.length).toBeGreaterThan(10);
      expect(sni).toBe('localhost');

      await expect(socketRequest(new URL(`https://127.0.0.1:${port}/blob`), OPTS)).rejects.toThrow(/self[- ]signed|unable to verify/i);
      const insecure = await socketRequest(new URL(`https://127.0.0.1:${port}/blob`), OPTS, undefined, { rejectUnauthorized: false });
      expect((await pipeAll(insecure.body)).data.length).toBe(data.length);
    });
  });
});
