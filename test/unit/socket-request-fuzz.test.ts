/**
 * Property-based fuzzing of the hand-written HTTP/1.1 response parser (src/upstream/socket-request.ts), in the
 * manner of undici's split-read fuzzer: a response is generated from a model, its bytes are cut at random places,
 * and the pieces are fed to the connection one read at a time, through the same reused read buffer the socket
 * uses, while the consumer takes the body through pipeTo (sometimes making the connection wait) or as a stream.
 *
 *  - a valid response parses to the model's status, headers and body, whatever the cuts;
 *  - an invalid one (bad status line, header syntax, framing, lengths, truncation, oversized head) is an error,
 *    and its body never completes;
 *  - nothing throws out of the parser and nothing hangs: every run settles within a bounded number of turns.
 *
 * The socket is a fake, driven synchronously, so a run costs microseconds and the cuts are exactly the reads.
 */
import { EventEmitter } from 'node:events';
import type { IncomingHttpHeaders } from 'node:http';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { PooledSocket, type SocketPool } from '../../src/upstream/socket-pool.js';
import { socketRequest, type SocketRequestOptions, type SocketResponse } from '../../src/upstream/socket-request.js';

const NUM_RUNS = 300;
/** Turns of the event loop a run may take after its last byte before it counts as a hang. */
const MAX_IDLE_TURNS = 200;

/** What the Connection uses of a net.Socket, driven by the test. */
class FakeSocket extends EventEmitter {
  destroyed = false;
  readyState = 'open';
  flowing = true;
  written = '';
  setTimeout(): this {
    return this;
  }
  setNoDelay(): this {
    return this;
  }
  resume(): this {
    this.flowing = true;
    return this;
  }
  pause(): this {
    this.flowing = false;
    return this;
  }
  write(s: string): boolean {
    this.written += s;
    return true;
  }
  destroy(): this {
    if (!this.destroyed) {
      this.destroyed = true;
      this.readyState = 'closed';
      queueMicrotask(() => this.emit('close'));
    }
    return this;
  }
}

/** A pool of one fake connection; `released` says whether the parser judged it fit for another request. */
class FakePool {
  readonly socket = new FakeSocket();
  readonly ps = new PooledSocket('http://fuzz.test', this.socket as unknown as PooledSocket['socket']);
  released = false;
  acquire(): { socket: PooledSocket; reused: boolean } {
    return { socket: this.ps, reused: false };
  }
  connect(): PooledSocket {
    throw new Error('no second connection in the fuzzer');
  }
  release(): void {
    this.released = true;
  }
}

const turn = (): Promise<void> => new Promise((r) => setImmediate(r));

interface Outcome {
  kind: 'ok' | 'head-error' | 'body-error';
  status?: number;
  headers?: IncomingHttpHeaders;
  body?: Buffer;
  error?: string;
}

/**
 * Feeds `pieces` as successive reads (each copied into one reused buffer, as the socket does), then the peer's
 * close, and reports how the request ended.
 */
async function run(pieces: Buffer[], consume: { pipe: boolean; waitEvery: number }, method: 'GET' | 'HEAD' = 'GET'): Promise<Outcome> {
  const pool = new FakePool();
  const opts: SocketRequestOptions = { method, headers: {}, connectTimeout: 1000, headersTimeout: 1000, bodyTimeout: 1000 };
  let outcome: Outcome | undefined;
  const done = socketRequest(new URL('http://fuzz.test/v2/x/blobs/y'), opts, pool as unknown as SocketPool).then(
    async (res: SocketResponse) => {
      const copies: Buffer[] = [];
      try {
        if (consume.pipe) {
          let n = 0;
          await res.body.pipeTo((chunk) => {
            copies.push(Buffer.from(chunk));
            // Sometimes the consumer makes the connection wait, as a download does when the disk is behind.
            return consume.waitEvery > 0 && ++n % consume.waitEvery === 0 ? turn() : undefined;
          });
        } else {
          for await (const c of res.body) copies.push(c as Buffer);
        }
        outcome = { kind: 'ok', status: res.statusCode, headers: res.headers, body: Buffer.concat(copies) };
      } catch (e) {
        outcome = { kind: 'body-error', status: res.statusCode, error: (e as Error).message };
      }
    },
    (e: unknown) => {
      outcome = { kind: 'head-error', error: (e as Error).message };
    },
  );
  void done;
  const shared = Buffer.alloc(Math.max(1, ...pieces.map((p) => p.length)));
  for (const piece of pieces) {
    // The connection pauses the socket when the consumer is behind (or has not started): wait for its resume.
    for (let t = 0; !pool.socket.flowing && t < MAX_IDLE_TURNS && outcome === undefined; t++) await turn();
    if (outcome !== undefined || pool.ps.reader === undefined) break;
    if (!pool.socket.flowing) throw new Error('the connection never resumed reading (hang)');
    // The next read overwrites the buffer: anything still holding a view of the last one sees garbage. (A read
    // that returned false stops the socket, so the buffer stays as it was until the connection resumes it.)
    shared.fill(0xee);
    piece.copy(shared);
    if (pool.ps.reader(piece.length, shared) === false) pool.socket.flowing = false;
  }
  // The peer closes.
  for (let t = 0; !pool.socket.flowing && t < MAX_IDLE_TURNS && outcome === undefined && pool.ps.reader !== undefined; t++) await turn();
  pool.socket.emit('end');
  pool.socket.emit('close');
  for (let t = 0; outcome === undefined && t < MAX_IDLE_TURNS; t++) await turn();
  if (outcome === undefined) throw new Error('the request never settled (hang)');
  return outcome;
}

// ---- Generators ----------------------------------------------------------------------------------------------

const tchar = fc.constantFrom(..."abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+.^_`|~-");
const token = fc.string({ unit: tchar, minLength: 1, maxLength: 12 });
const fieldValue = fc
  .string({
    unit: fc.oneof(
      fc.integer({ min: 0x21, max: 0x7e }).map((c) => String.fromCharCode(c)),
      fc.constantFrom(' ', '\t', 'é', '\xff'),
    ),
    maxLength: 30,
  })
  .map((v) => v.trim());
/** Header names the parser gives meaning to are kept out of the free-form ones. */
const RESERVED = new Set(['content-length', 'transfer-encoding', 'connection', 'set-cookie']);
const freeHeader = fc.tuple(token, fieldValue).filter(([n]) => !RESERVED.has(n.toLowerCase()));
const body = fc.uint8Array({ maxLength: 3000 }).map((a) => Buffer.from(a));

type Framing = { kind: 'length' } | { kind: 'chunked'; sizes: number[]; ext: string[]; upper: boolean; trailers: Array<[string, string]> } | { kind: 'close' };

interface Model {
  status: number;
  reason: string;
  headers: Array<[string, string]>;
  informational: Array<{ status: number; headers: Array<[string, string]> }>;
  body: Buffer;
  framing: Framing;
  trailing: Buffer;
}

const chunkExt = fc.oneof(
  fc.constant(''),
  token.map((t) => `;${t}`),
  fc.tuple(token, token).map(([a, b]) => `;${a}=${b}`),
  fc.tuple(token, token).map(([a, b]) => ` ;${a}="${b} x"`),
);

const framing: fc.Arbitrary<Framing> = fc.oneof(
  fc.constant<Framing>({ kind: 'length' }),
  fc.constant<Framing>({ kind: 'close' }),
  fc.record({
    kind: fc.constant('chunked' as const),
    sizes: fc.array(fc.integer({ min: 1, max: 900 }), { maxLength: 8 }),
    ext: fc.array(chunkExt, { minLength: 9, maxLength: 9 }),
    upper: fc.boolean(),
    trailers: fc.array(freeHeader, { maxLength: 3 }),
  }),
);

const model: fc.Arbitrary<Model> = fc.record({
  status: fc.oneof(fc.constantFrom(200, 206, 307, 404, 500), fc.integer({ min: 200, max: 599 })),
  reason: fc.oneof(
    fc.constant(''),
    fc.constant(' OK'),
    fieldValue.map((v) => ` ${v}`),
  ),
  headers: fc.array(freeHeader, { maxLength: 8 }),
  informational: fc.array(fc.record({ status: fc.constantFrom(100, 102, 103), headers: fc.array(freeHeader, { maxLength: 2 }) }), { maxLength: 2 }),
  body,
  framing,
  trailing: fc.oneof(
    fc.constant(Buffer.alloc(0)),
    fc.uint8Array({ minLength: 1, maxLength: 20 }).map((a) => Buffer.from(a)),
  ),
});

function headLines(status: number, reason: string, headers: Array<[string, string]>): string {
  return `HTTP/1.1 ${status}${reason}\r\n${headers.map(([n, v]) => `${n}: ${v}\r\n`).join('')}\r\n`;
}

/** The bytes of a valid response, and what the parser must make of them. */
function encode(m: Model, method: 'GET' | 'HEAD' = 'GET'): { wire: Buffer; status: number; headers: IncomingHttpHeaders; body: Buffer } {
  const noBody = method === 'HEAD' || m.status === 204 || m.status === 304;
  const headers: Array<[string, string]> = [...m.headers];
  let payload: Buffer = Buffer.alloc(0);
  const f = m.framing;
  if (f.kind === 'length') {
    headers.push(['Content-Length', String(m.body.length)]);
    if (!noBody) payload = m.body;
  } else if (f.kind === 'chunked') {
    headers.push(['Transfer-Encoding', 'chunked']);
    if (!noBody) {
      const parts: Buffer[] = [];
      let off = 0;
      f.sizes.forEach((size, i) => {
        const piece = m.body.subarray(off, Math.min(m.body.length, off + size));
        off += piece.length;
        if (piece.length === 0) return;
        const hex = piece.length.toString(16);
        parts.push(Buffer.from(`${f.upper ? hex.toUpperCase() : hex}${f.ext[i] ?? ''}\r\n`, 'latin1'), piece, Buffer.from('\r\n'));
      });
      if (off < m.body.length) {
        const rest = m.body.subarray(off);
        parts.push(Buffer.from(`${rest.length.toString(16)}\r\n`), rest, Buffer.from('\r\n'));
      }
      parts.push(Buffer.from(`0${f.ext[8] ?? ''}\r\n${f.trailers.map(([n, v]) => `${n}: ${v}\r\n`).join('')}\r\n`, 'latin1'));
      payload = Buffer.concat(parts);
    }
  } else {
    headers.push(['Connection', 'close']);
    if (!noBody) payload = m.body;
  }
  const info = m.informational.map((i) => headLines(i.status, '', i.headers)).join('');
  const wire = Buffer.concat([
    Buffer.from(info + headLines(m.status, m.reason, headers), 'latin1'),
    payload,
    f.kind === 'close' ? Buffer.alloc(0) : m.trailing,
  ]);
  // Expected headers: names lower-cased, repeated ones joined with ", " (set-cookie is kept out of the model).
  const expected: IncomingHttpHeaders = {};
  for (const [n, v] of headers) {
    const k = n.toLowerCase();
    expected[k] = expected[k] === undefined ? v : `${String(expected[k])}, ${v}`;
  }
  const expectedBody = noBody ? Buffer.alloc(0) : f.kind === 'close' ? Buffer.concat([payload, Buffer.alloc(0)]) : m.body;
  return { wire, status: m.status, headers: expected, body: expectedBody };
}

/** Cut points: each read is a piece between two of them. */
function cut(wire: Buffer, points: readonly number[]): Buffer[] {
  const at = [...new Set(points.map((p) => p % (wire.length + 1)))].sort((a, b) => a - b);
  const pieces: Buffer[] = [];
  let prev = 0;
  for (const p of [...at, wire.length]) {
    if (p > prev) pieces.push(wire.subarray(prev, p));
    prev = Math.max(prev, p);
  }
  return pieces;
}

const cuts = fc.oneof(
  fc.array(fc.nat(), { maxLength: 12 }),
  // Now and then, one byte per read.
  fc.constant([-1]),
);
const consumer = fc.record({ pipe: fc.boolean(), waitEvery: fc.integer({ min: 0, max: 3 }) });

/** One-byte reads cover the first 4 KiB (every head boundary of a small response); the rest comes in one read. */
function pieces(wire: Buffer, points: readonly number[]): Buffer[] {
  if (points.length === 1 && points[0] === -1) {
    const n = Math.min(wire.length, 4096);
    return [...[...wire.subarray(0, n)].map((b) => Buffer.from([b])), ...(wire.length > n ? [wire.subarray(n)] : [])];
  }
  return cut(wire, points);
}

// ---- Invalid responses ------------------------------------------------------------------------------------------

/** A response that must be refused, by construction; `why` names the defect. */
const invalid: fc.Arbitrary<{ why: string; wire: Buffer }> = fc.oneof(
  fc
    .constantFrom(
      'HTTP/1.1 2000 OK\r\ncontent-length: 0\r\n\r\n',
      'HTTP/1.1 20 OK\r\ncontent-length: 0\r\n\r\n',
      'HTTP/2 200 OK\r\ncontent-length: 0\r\n\r\n',
      'HTTP/1.2 200 OK\r\ncontent-length: 0\r\n\r\n',
      'XTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n',
      'HTTP/1.1 099 Low\r\ncontent-length: 0\r\n\r\n',
      'HTTP/1.1 600 High\r\ncontent-length: 0\r\n\r\n',
      'HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\n\r\n',
      ' HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n',
      'HTTP/1.1 200 OK\rX\r\ncontent-length: 0\r\n\r\n',
      'HTTP/1.1 200 OK\r\nno colon here\r\n\r\n',
      'HTTP/1.1 200 OK\r\n: empty name\r\n\r\n',
      'HTTP/1.1 200 OK\r\nbad name: x\r\ncontent-length: 0\r\n\r\n',
      'HTTP/1.1 200 OK\r\nname : x\r\ncontent-length: 0\r\n\r\n',
      'HTTP/1.1 200 OK\r\nx: a\r\n folded\r\ncontent-length: 0\r\n\r\n',
      'HTTP/1.1 200 OK\r\nx: a\nb: c\r\ncontent-length: 0\r\n\r\n',
      'HTTP/1.1 200 OK\r\nx: a\rb\r\ncontent-length: 0\r\n\r\n',
      'HTTP/1.1 200 OK\r\nx: a\0b\r\ncontent-length: 0\r\n\r\n',
      'HTTP/1.1 200 OK\r\ncontent-length: abc\r\n\r\n',
      'HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n',
      'HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\nhello',
      'HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\nhello',
      'HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello',
      'HTTP/1.1 200 OK\r\ncontent-length:\r\n\r\n',
      'HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort',
      'HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nxx',
      'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n0\r\n\r\n',
      'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n',
      'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n',
      'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n',
      'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\r\nhello\r\n0\r\n\r\n',
      'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhelloX\r\n0\r\n\r\n',
      'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n',
      'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n',
      'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\n',
      'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nbad trailer\r\n\r\n',
      'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n',
      'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel',
      'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n',
      'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nfffffffffffffff\r\nhello\r\n0\r\n\r\n',
      'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;\x01ext\r\nhello\r\n0\r\n\r\n',
      'HTTP/1.1 200 OK\r\ncontent-length: 0\r\n',
      'HTTP/1.1 200 OK',
      '',
    )
    .map((s) => ({ why: JSON.stringify(s.slice(0, 60)), wire: Buffer.from(s, 'latin1') })),
  // A head past the 64 KiB limit, in one header or many.
  fc
    .integer({ min: 64 * 1024, max: 80 * 1024 })
    .map((n) => ({ why: `head of ${n} bytes`, wire: Buffer.from(`HTTP/1.1 200 OK\r\nx-big: ${'a'.repeat(n)}\r\ncontent-length: 0\r\n\r\n`) })),
  fc.integer({ min: 1120, max: 1400 }).map((n) => ({
    why: `${n} headers`,
    wire: Buffer.from(`HTTP/1.1 200 OK\r\n${'x-h: 0123456789012345678901234567890123456789012345678901\r\n'.repeat(n)}content-length: 0\r\n\r\n`),
  })),
  // A valid framed response truncated anywhere before its end.
  fc
    .tuple(
      model.filter((m) => m.framing.kind !== 'close' && m.status !== 204 && m.status !== 304),
      fc.double({ min: 0, max: 1, noNaN: true }),
    )
    .map(([m, f]) => {
      const { wire } = encode({ ...m, trailing: Buffer.alloc(0), body: m.body.length === 0 ? Buffer.from('x') : m.body });
      return { why: 'truncated', wire: wire.subarray(0, Math.floor(wire.length * f * 0.999)) };
    }),
);

describe('socket-request HTTP/1.1 response parser (property-based, split reads)', () => {
  it('parses every valid response to the same status, headers and body, whatever the reads', async () => {
    await fc.assert(
      fc.asyncProperty(model, cuts, consumer, async (m, points, how) => {
        const e = encode(m);
        const got = await run(pieces(e.wire, points), how);
        expect(got.error).toBeUndefined();
        expect(got.kind).toBe('ok');
        expect(got.status).toBe(e.status);
        expect(got.headers).toEqual(e.headers);
        expect(got.body!.equals(e.body), `body of ${got.body!.length} bytes, expected ${e.body.length}`).toBe(true);
      }),
      { numRuns: NUM_RUNS },
    );
  });

  it('HEAD responses have no body, whatever their framing headers say', async () => {
    await fc.assert(
      fc.asyncProperty(model, cuts, async (m, points) => {
        const e = encode({ ...m, trailing: Buffer.alloc(0) }, 'HEAD');
        const got = await run(pieces(e.wire, points), { pipe: true, waitEvery: 0 }, 'HEAD');
        expect(got.kind).toBe('ok');
        expect(got.status).toBe(e.status);
        expect(got.body!.length).toBe(0);
      }),
      { numRuns: 100 },
    );
  });

  it('refuses every invalid response: an error, never a completed body', async () => {
    await fc.assert(
      fc.asyncProperty(invalid, cuts, consumer, async (bad, points, how) => {
        const got = await run(pieces(bad.wire, points), how);
        expect(got.kind, `${bad.why} parsed as ${got.status} with ${got.body?.length} body bytes`).not.toBe('ok');
      }),
      { numRuns: NUM_RUNS },
    );
  });

  it('never throws out of the read callback nor hangs, whatever the bytes', async () => {
    const bytes = fc.oneof(
      fc.uint8Array({ maxLength: 400 }).map((a) => Buffer.from(a)),
      // Mostly-HTTP noise: a valid response with bytes flipped.
      fc.tuple(model, fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 6 })).map(([m, flips]) => {
        const w = Buffer.from(encode(m).wire);
        for (const [i, b] of flips) if (w.length > 0) w[i % w.length] = b;
        return w;
      }),
    );
    await fc.assert(
      fc.asyncProperty(bytes, cuts, consumer, async (wire, points, how) => {
        const got = await run(pieces(wire, points), how);
        expect(['ok', 'head-error', 'body-error']).toContain(got.kind);
      }),
      { numRuns: NUM_RUNS },
    );
  });
});
