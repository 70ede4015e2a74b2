/**
 * One HTTP/1.1 request on a pooled connection (socket-pool.ts) whose response body is read from the socket into
 * one reused buffer. Used for blob bodies only (UpstreamRequest.bulk); everything else goes through undici.
 *
 * Why: Node's socket layer allocates a fresh 64 KiB buffer for every read, and undici (like node:http) passes those
 * on. For a blob download that is the whole transfer in short-lived external memory, and it set off a major GC every
 * ~20 MiB: about 40% of the proxy's CPU on a cold pull went to V8's marking threads (bench/README.md). With `onread`
 * the socket reads into a buffer we own, and the body is handed on as a ByteSource whose consumer copies each chunk
 * into its download slabs before the buffer is reused. Receiving 200 MiB this way costs a fraction of the CPU.
 *
 * Deliberately small: GET and HEAD, Content-Length, chunked and close-delimited bodies, keep-alive through a
 * SocketPool (a connection goes back only when its response was read exactly to its end). Redirects,
 * authentication and retries stay in UpstreamClient, which calls this once per hop.
 */
import type { IncomingHttpHeaders } from 'node:http';
import tls from 'node:tls';
import { HttpFramingError, parseField, parseHead } from './http-head.js';
import { SocketBody, type BodyFeed } from './socket-body.js';
import type { PooledSocket, SocketPool } from './socket-pool.js';

export interface SocketRequestOptions {
  method: 'GET' | 'HEAD';
  headers: Record<string, string>;
  signal?: AbortSignal;
  /** Milliseconds of silence allowed while connecting, while waiting for the response head, and within the body. */
  connectTimeout: number;
  headersTimeout: number;
  bodyTimeout: number;
}

export interface SocketResponse {
  statusCode: number;
  /** The reason phrase (a chained Portcullis puts a denial's reason there). */
  statusText: string;
  headers: IncomingHttpHeaders;
  body: SocketBody;
}

const MAX_HEAD_BYTES = 64 * 1024;
const MAX_CHUNK_LINE = 1024;
const CRLFCRLF = Buffer.from('\r\n\r\n');
const EMPTY = Buffer.alloc(0);

/**
 * Sends one request on a connection from `pool` and resolves with the response head. A reused connection that the
 * server closed while it sat idle fails before any response byte; that request is sent once more on a new one.
 */
export async function socketRequest(url: URL, opts: SocketRequestOptions, pool: SocketPool): Promise<SocketResponse> {
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error(`unsupported scheme ${url.protocol}`);
  const head = requestHead(url, opts.method, opts.headers);
  const { socket, reused } = pool.acquire(url);
  const first = exchange(socket, reused, head, opts, pool);
  if (!reused) return first.response;
  try {
    return await first.response;
  } catch (e) {
    if (first.answered() || opts.signal?.aborted) throw e;
    return exchange(pool.connect(url), false, head, opts, pool).response;
  }
}

function exchange(
  ps: PooledSocket,
  reused: boolean,
  head: string,
  opts: SocketRequestOptions,
  pool: SocketPool,
): { response: Promise<SocketResponse>; answered: () => boolean } {
  let conn: Connection | undefined;
  const response = new Promise<SocketResponse>((resolve, reject) => {
    conn = new Connection(opts, pool, resolve, reject);
    conn.attach(ps, reused, head);
  });
  return { response, answered: () => conn?.answered ?? false };
}

function requestHead(url: URL, method: string, headers: Record<string, string>): string {
  const lines = [`${method} ${url.pathname}${url.search} HTTP/1.1`, `host: ${url.host}`];
  for (const [name, value] of Object.entries(headers)) {
    const n = name.toLowerCase();
    if (n === 'host' || n === 'connection' || n === 'accept-encoding') continue;
    // Values come from configuration and token servers; a CR or LF would let them inject headers.
    if (!/^[!#$%&'*+.^_`|~0-9a-z-]+$/.test(n) || /[\r\n\0]/.test(value)) throw new Error(`invalid request header ${JSON.stringify(name)}`);
    lines.push(`${n}: ${value}`);
  }
  // Identity, so that the bytes hashed are the bytes the upstream stored. HTTP/1.1 keeps the connection alive.
  lines.push('accept-encoding: identity', '', '');
  return lines.join('\r\n');
}

type Phase = 'head' | 'length' | 'chunk-size' | 'chunk-data' | 'chunk-crlf' | 'trailers' | 'close' | 'done';

/** The state of one request: the response head, then the body framing, feeding a SocketBody. */
class Connection implements BodyFeed {
  private ps: PooledSocket | undefined;
  /** Listeners and the reader are off the socket: it is back in the pool, or destroyed. */
  private detached = false;
  private readonly undo: Array<() => void> = [];
  private phase: Phase = 'head';
  private headParts: Buffer[] = [];
  private headBytes = 0;
  /** The last (up to 3) bytes of the head so far: the blank line may straddle two reads. */
  private headTail: Buffer = EMPTY;
  /** Bytes of trailer section so far (bounded like a head). */
  private trailerBytes = 0;
  private readonly isHead: boolean;
  /** Body bytes still expected in the current Content-Length body or chunk. */
  private remaining = 0;
  private line = '';
  private body: SocketBody | undefined;
  /** The response head has been handed over (or the request has failed before it). */
  private headSettled = false;
  /** The unprocessed rest of the read buffer while the consumer applies backpressure. */
  private pending: { buf: Buffer; pos: number; end: number } | undefined;
  /** The peer went away while bytes were still held for the consumer. */
  private eofDeferred = false;
  /** Any byte of a response has arrived (a reused connection that fails before this was stale). */
  answered = false;
  /** The response allows another request on this connection (HTTP/1.1, no `Connection: close`, framed body). */
  private keepAlive = false;
  /** Bytes followed the response in the same read: the framing cannot be trusted for another request. */
  private leftover = false;

  constructor(
    private readonly opts: SocketRequestOptions,
    private readonly pool: SocketPool,
    private readonly resolveHead: (r: SocketResponse) => void,
    private readonly rejectHead: (e: Error) => void,
  ) {
    this.isHead = opts.method === 'HEAD';
  }

  attach(ps: PooledSocket, reused: boolean, head: string): void {
    this.ps = ps;
    const socket = ps.socket;
    const { signal } = this.opts;
    if (signal?.aborted) {
      this.fail(abortError(signal));
      return;
    }
    const on = (event: string, listener: (e: Error) => void): void => {
      socket.on(event, listener);
      this.undo.push(() => socket.off(event, listener));
    };
    if (signal) {
      const onAbort = (): void => this.fail(abortError(signal));
      signal.addEventListener('abort', onAbort, { once: true });
      this.undo.push(() => signal.removeEventListener('abort', onAbort));
    }
    on('timeout', () => this.fail(new Error(`upstream ${this.headSettled ? 'body' : 'response'} timed out`)));
    on('error', (e: Error) => this.fail(e));
    // With onread no 'data' is emitted, and 'end' only when the stream machinery is asked to read: 'close' is
    // the dependable signal that the peer is gone.
    on('end', () => this.onEof());
    on('close', () => this.onEof());
    ps.reader = this.onRead;
    if (reused) {
      socket.setTimeout(this.opts.headersTimeout);
      socket.resume();
    } else {
      socket.setTimeout(this.opts.connectTimeout);
      on(socket instanceof tls.TLSSocket ? 'secureConnect' : 'connect', () => socket.setTimeout(this.opts.headersTimeout));
    }
    socket.write(head);
  }

  /** Takes the listeners and the reader off the socket, which from now on belongs to the pool or to nobody. */
  private detach(): void {
    if (this.detached) return;
    this.detached = true;
    for (const f of this.undo.splice(0)) f();
    if (this.ps) {
      this.ps.reader = undefined;
      this.ps.socket.setTimeout(0);
    }
  }

  /** The socket's onread callback: false pauses reading until the consumer has caught up. */
  readonly onRead = (nread: number, buf: Buffer): boolean => {
    if (this.phase === 'done') return false;
    this.answered = true;
    this.guarded(() => this.process(buf, 0, nread));
    return !this.isDone() && this.pending === undefined && !this.body?.wantsPause();
  };

  /** Continues after backpressure: finishes the held part of the last read, then reads from the socket again. */
  resume(): void {
    const p = this.pending;
    if (p) {
      this.pending = undefined;
      this.guarded(() => this.process(p.buf, p.pos, p.end));
    }
    if (this.pending || this.body?.blocked) return;
    if (this.eofDeferred) {
      this.onEof();
      return;
    }
    if (this.phase !== 'done' && !this.detached) {
      this.ps?.socket.setTimeout(this.opts.bodyTimeout);
      this.ps?.socket.resume();
    }
  }

  /** Holds reading, and the idle timer, which must not count our own backpressure as upstream silence. */
  pause(): void {
    if (this.detached) return;
    this.ps?.socket.setTimeout(0);
    this.ps?.socket.pause();
  }

  /** A method, because the calls in between move the phase on where TypeScript's narrowing cannot see it. */
  private isDone(): boolean {
    return this.phase === 'done';
  }

  private guarded(f: () => void): void {
    try {
      f();
    } catch (e) {
      this.fail(e instanceof Error ? e : new Error(String(e)));
    }
  }

  private process(buf: Buffer, pos: number, end: number): void {
    while (pos < end && this.phase !== 'done') {
      if (this.body?.blocked) {
        this.pending = { buf, pos, end };
        return;
      }
      switch (this.phase) {
        case 'head':
          pos = this.readHead(buf, pos, end);
          break;
        case 'length':
        case 'chunk-data': {
          const n = Math.min(this.remaining, end - pos);
          this.remaining -= n;
          const chunk = buf.subarray(pos, pos + n);
          pos += n;
          if (this.remaining === 0) this.phase = this.phase === 'length' ? 'done' : 'chunk-crlf';
          this.deliver(chunk);
          break;
        }
        case 'close':
          this.deliver(buf.subarray(pos, end));
          pos = end;
          break;
        case 'chunk-size':
        case 'trailers': {
          const nl = buf.indexOf(10, pos);
          const stop = nl === -1 || nl >= end ? end : nl + 1;
          this.line += buf.toString('latin1', pos, stop);
          if (this.phase === 'trailers') this.trailerBytes += stop - pos;
          pos = stop;
          if (this.line.length > MAX_CHUNK_LINE) throw new HttpFramingError('chunk header line too long');
          if (this.trailerBytes > MAX_HEAD_BYTES) throw new HttpFramingError(`trailer section larger than ${MAX_HEAD_BYTES} bytes`);
          if (this.line.endsWith('\n')) {
            // CRLF only: a bare LF is read as a line end by some parsers and not by others, a way to desync them.
            if (!this.line.endsWith('\r\n')) throw new HttpFramingError('chunk line not terminated by CRLF');
            this.onLine(this.line.slice(0, -2));
          }
          break;
        }
        case 'chunk-crlf': {
          this.line += buf.toString('latin1', pos, pos + 1);
          pos += 1;
          if (this.line === '\r') continue;
          if (this.line !== '\r\n') throw new HttpFramingError('missing CRLF after chunk data');
          this.line = '';
          this.phase = 'chunk-size';
          break;
        }
      }
    }
    if (this.isDone()) {
      if (pos < end) this.leftover = true;
      this.finish();
    }
  }

  private onLine(line: string): void {
    this.line = '';
    if (this.phase === 'trailers') {
      if (line === '') this.phase = 'done';
      // Trailers are not used, but a malformed one means the framing is not what it seems.
      else parseField(line);
      return;
    }
    // eslint-disable-next-line no-control-regex -- a chunk extension must not contain control characters
    const m = /^([0-9a-fA-F]{1,13})[ \t]*(;[^\0-\x08\x0a-\x1f\x7f]*)?$/.exec(line);
    if (!m) throw new HttpFramingError(`bad chunk size line ${JSON.stringify(line.slice(0, 40))}`);
    this.remaining = Number.parseInt(m[1] as string, 16);
    this.phase = this.remaining === 0 ? 'trailers' : 'chunk-data';
  }

  private readHead(buf: Buffer, pos: number, end: number): number {
    // The head is small and usually arrives in one read; it is copied out of the reused buffer. The blank line is
    // looked for in this piece plus the last 3 bytes before it, so a head trickled in byte by byte costs linear time.
    const piece = Buffer.from(buf.subarray(pos, end));
    const window = this.headTail.length > 0 ? Buffer.concat([this.headTail, piece]) : piece;
    const rel = window.indexOf(CRLFCRLF);
    if (rel === -1) {
      this.headParts.push(piece);
      this.headBytes += piece.length;
      if (this.headBytes > MAX_HEAD_BYTES) throw new HttpFramingError(`response head larger than ${MAX_HEAD_BYTES} bytes`);
      this.headTail = Buffer.from(window.subarray(Math.max(0, window.length - 3)));
      return end;
    }
    const at = this.headBytes - this.headTail.length + rel;
    if (at + 4 > MAX_HEAD_BYTES) throw new HttpFramingError(`response head larger than ${MAX_HEAD_BYTES} bytes`);
    const all = this.headParts.length > 0 ? Buffer.concat([...this.headParts, piece]) : piece;
    const consumed = at + 4 - this.headBytes;
    this.headParts = [];
    this.headBytes = 0;
    this.headTail = EMPTY;
    const { status, statusText, headers, minor } = parseHead(all.toString('latin1', 0, at));
    // 1xx responses (100 Continue, 103 Early Hints) precede the real one.
    if (status >= 200) {
      const connection = String(headers.connection ?? '')
        .toLowerCase()
        .split(',')
        .map((t) => t.trim());
      this.keepAlive = minor === 1 && !connection.includes('close');
      this.startBody(status, statusText, headers);
    }
    return pos + consumed;
  }

  private startBody(status: number, statusText: string, headers: IncomingHttpHeaders): void {
    const te = headers['transfer-encoding'];
    const cl = headers['content-length'];
    if (this.isHead || status === 204 || status === 304) {
      this.phase = 'done';
    } else if (te !== undefined) {
      // Both framings at once is how responses are smuggled (RFC 9112 §6.3: "ought to be handled as an error").
      if (cl !== undefined) throw new HttpFramingError('both transfer-encoding and content-length');
      // Any coding other than chunked cannot be hashed as stored.
      if (String(te).trim().toLowerCase() !== 'chunked') throw new HttpFramingError(`unsupported transfer-encoding ${JSON.stringify(te)}`);
      this.phase = 'chunk-size';
    } else if (cl !== undefined) {
      const values = [
        ...new Set(
          String(cl)
            .split(',')
            .map((v) => v.trim()),
        ),
      ];
      if (values.length !== 1 || !/^\d{1,15}$/.test(values[0] as string)) throw new HttpFramingError(`bad content-length ${JSON.stringify(cl)}`);
      this.remaining = Number(values[0]);
      this.phase = this.remaining === 0 ? 'done' : 'length';
    } else {
      this.phase = 'close';
    }
    this.body = new SocketBody(this);
    this.ps?.socket.setTimeout(this.opts.bodyTimeout);
    this.headSettled = true;
    this.resolveHead({ statusCode: status, statusText, headers, body: this.body });
  }

  private deliver(chunk: Buffer): void {
    if (chunk.length > 0) this.body?.receive(chunk);
  }

  private onEof(): void {
    if (this.phase === 'done') return;
    if (this.pending || this.body?.blocked) {
      // Bytes of the last read are still being handed over; judge the end once they are.
      this.eofDeferred = true;
      return;
    }
    if (this.phase === 'close') {
      this.phase = 'done';
      this.finish();
      return;
    }
    const what =
      this.phase === 'head' ? 'before the response head' : this.phase === 'length' ? `with ${this.remaining} body bytes still due` : 'inside a chunked body';
    this.fail(new Error(`upstream closed the connection ${what}`));
  }

  private finish(): void {
    const ps = this.ps;
    // Only a response read exactly to its framed end leaves the connection fit for the next request.
    const reuse = this.keepAlive && this.phase === 'done' && !this.leftover && !this.eofDeferred && ps !== undefined && !ps.socket.destroyed;
    this.detach();
    if (ps && reuse) this.pool.release(ps);
    else ps?.socket.destroy();
    this.body?.end();
  }

  fail(e: Error): void {
    const wasDone = this.phase === 'done';
    this.phase = 'done';
    this.pending = undefined;
    // A connection already handed back to the pool may be serving another request by now: leave it be.
    if (!this.detached) {
      this.detach();
      this.ps?.socket.destroy();
    }
    if (wasDone && this.body?.complete) return;
    if (!this.headSettled) {
      this.headSettled = true;
      this.rejectHead(e);
    } else {
      this.body?.fail(e);
    }
  }
}

function abortError(signal: AbortSignal): Error {
  return signal.reason instanceof Error ? signal.reason : new DOMException('This operation was aborted', 'AbortError');
}
