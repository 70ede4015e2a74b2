/**
 * Hostile clients for the `hostile` phase: many idle keep-alive connections, and readers that ask for a large blob
 * and then stop reading. Both are raw TCP sockets in the bench process (no child per connection), on 127.0.0.1 only,
 * each with a deadline, and all destroyed by close().
 */
import { readFileSync } from 'node:fs';
import net from 'node:net';

/** The soft limit on open files of this process (Node raises it to the hard limit at start-up). */
export function openFileLimit(pid = 'self') {
  try {
    const m = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync(`/proc/${pid}/limits`, 'utf8'));
    return m ? (m[1] === 'unlimited' ? Infinity : Number(m[1])) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Opens a connection, sends `request` and resolves once `ready(socket, firstChunk)` says so, with the socket; rejects
 * on error, early close or after `timeoutMs`.
 */
function connect(port, request, ready, timeoutMs) {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port });
    let got = Buffer.alloc(0);
    const fail = (e) => {
      clearTimeout(timer);
      s.destroy();
      reject(e);
    };
    const timer = setTimeout(() => fail(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
    s.once('error', fail);
    s.once('close', () => fail(new Error('closed before the answer')));
    s.on('data', (chunk) => {
      got = Buffer.concat([got, chunk]);
      let done;
      try {
        done = ready(s, got);
      } catch (e) {
        fail(e);
        return;
      }
      if (!done) return;
      clearTimeout(timer);
      s.removeAllListeners('data');
      s.removeAllListeners('error');
      s.removeAllListeners('close');
      resolve(s);
    });
    s.write(request);
  });
}

/** A complete HTTP/1.1 response with a Content-Length body is in `buf`. */
function completeResponse(buf) {
  const end = buf.indexOf('\r\n\r\n');
  if (end < 0) return false;
  const len = Number(/\r\ncontent-length:\s*(\d+)/i.exec(buf.subarray(0, end).toString('latin1'))?.[1] ?? 0);
  return buf.length >= end + 4 + len;
}

/**
 * A set of hostile connections: `idle` ones that made one request (GET /v2/) and stay open between requests, and
 * `stalled` ones that asked for a blob, took its first chunk, and stopped reading (the socket is paused, so the
 * kernel's buffers fill and the proxy's writes block).
 */
export class HostileClients {
  constructor(port) {
    this.port = port;
    this.idle = [];
    this.stalled = [];
    this.closedEarly = { idle: 0, stalled: 0 };
  }

  track(kind, s) {
    this[kind].push(s);
    s.on('error', () => {});
    s.once('close', () => {
      if (!this.closing) this.closedEarly[kind]++;
    });
  }

  /** Opens `n` idle keep-alive connections, `batch` at a time (the listen backlog is finite). */
  async openIdle(n, { batch = 100, timeoutMs = 15_000 } = {}) {
    const req = 'GET /v2/ HTTP/1.1\r\nHost: bench\r\nConnection: keep-alive\r\n\r\n';
    for (let i = 0; i < n; i += batch) {
      const socks = await Promise.all(
        Array.from({ length: Math.min(batch, n - i) }, () => connect(this.port, req, (_s, buf) => completeResponse(buf), timeoutMs)),
      );
      for (const s of socks) {
        // Keep reading (nothing more should come): an idle keep-alive client, not a stalled one.
        s.on('data', () => {});
        this.track('idle', s);
      }
    }
  }

  /** Opens `n` readers of `path` (a large blob) that stop reading after their first chunk. */
  async openStalled(n, path, { batch = 20, timeoutMs = 30_000 } = {}) {
    const req = `GET ${path} HTTP/1.1\r\nHost: bench\r\nConnection: keep-alive\r\n\r\n`;
    for (let i = 0; i < n; i += batch) {
      const socks = await Promise.all(
        Array.from({ length: Math.min(batch, n - i) }, () =>
          connect(
            this.port,
            req,
            (s, buf) => {
              if (!/^HTTP\/1\.1 200 /.test(buf.subarray(0, 16).toString('latin1')))
                throw new Error(`stalled reader got ${buf.subarray(0, 40).toString('latin1')}`);
              s.pause();
              return true;
            },
            timeoutMs,
          ),
        ),
      );
      for (const s of socks) this.track('stalled', s);
    }
  }

  get openCounts() {
    const open = (list) => list.filter((s) => !s.destroyed).length;
    return { idle: open(this.idle), stalled: open(this.stalled) };
  }

  close() {
    this.closing = true;
    for (const s of [...this.idle, ...this.stalled]) s.destroy();
    this.idle = [];
    this.stalled = [];
  }
}
