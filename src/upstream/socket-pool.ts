/**
 * Keep-alive connections for the blob transport (socket-request.ts), per origin. A blob request that reused no
 * connection would pay a TCP and TLS handshake for every blob and, for registries that redirect blobs to a CDN,
 * for every hop: on a WAN, a round trip or three per layer.
 *
 * Each socket reads into its own buffer (`onread`) for its whole life; whoever currently owns it (one request at a
 * time) is its `reader`. Between requests it is idle: still reading, so that a close by the server is noticed at
 * once, and destroyed on any byte (a server may not speak unasked), after `idleMs`, or when the pool is closed.
 */
import net from 'node:net';
import tls from 'node:tls';
import type { LookupFunction } from './egress.js';

/** Reused for every read of one socket; reads of up to this size keep the per-read overhead low. */
const READ_BUFFER_BYTES = 256 * 1024;

export interface SocketPoolOptions {
  ca?: Buffer;
  rejectUnauthorized: boolean;
  /** A client certificate, presented to this origin only (the upstream's own; never a redirect target). */
  clientCert?: { origin: string; cert: Buffer; key: Buffer };
  /** How long an idle connection is kept (servers close theirs too; a stale one costs a retry). */
  idleMs?: number;
  maxIdlePerOrigin?: number;
  /**
   * Where connections may go (egress.ts): `checkHost` runs before connecting (it throws for an IP literal that is
   * not allowed), and `lookup` resolves names and refuses addresses that are not, so the address checked is the
   * address connected to.
   */
  egress?: { checkHost(hostname: string): void; lookup: LookupFunction };
}

/** Receives the socket's reads while a request owns it; false pauses reading. */
export type ReadHandler = (nread: number, buf: Buffer) => boolean;

export class PooledSocket {
  reader: ReadHandler | undefined;
  /** Set while idle in the pool: undoes the idle listeners and timer. */
  unidle: (() => void) | undefined;

  constructor(
    readonly origin: string,
    readonly socket: net.Socket,
  ) {}
}

export class SocketPool {
  private readonly idle = new Map<string, PooledSocket[]>();
  private closed = false;

  constructor(private readonly opts: SocketPoolOptions) {}

  /** An idle connection to the URL's origin, or a new one. */
  acquire(url: URL): { socket: PooledSocket; reused: boolean } {
    const origin = url.origin;
    const list = this.idle.get(origin);
    while (list && list.length > 0) {
      const ps = list.pop() as PooledSocket;
      ps.unidle?.();
      if (!ps.socket.destroyed && ps.socket.readyState === 'open') return { socket: ps, reused: true };
    }
    return { socket: this.connect(url), reused: false };
  }

  /** A new connection, never an idle one (after a reused one turned out stale). */
  connect(url: URL): PooledSocket {
    const port = Number(url.port) || (url.protocol === 'https:' ? 443 : 80);
    const host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
    this.opts.egress?.checkHost(host);
    const lookup: { lookup?: net.LookupFunction } = this.opts.egress ? { lookup: this.opts.egress.lookup } : {};
    let ps: PooledSocket | undefined;
    const onread = {
      buffer: Buffer.allocUnsafe(READ_BUFFER_BYTES),
      callback: (nread: number, buf: Buffer): boolean => {
        if (ps?.reader) return ps.reader(nread, buf);
        // Bytes nobody asked for, on an idle connection: the framing is lost, so is the connection.
        ps?.socket.destroy();
        return false;
      },
    };
    const socket =
      url.protocol === 'https:'
        ? tls.connect({
            host,
            port,
            // SNI carries host names only.
            ...(net.isIP(host) ? {} : { servername: host }),
            ...(this.opts.ca ? { ca: this.opts.ca } : {}),
            ...(this.opts.clientCert?.origin === url.origin ? { cert: this.opts.clientCert.cert, key: this.opts.clientCert.key } : {}),
            rejectUnauthorized: this.opts.rejectUnauthorized,
            ALPNProtocols: ['http/1.1'],
            ...lookup,
            // Supported by tls.connect at runtime (it is passed on to net.Socket) but missing from @types/node.
            onread,
          } as tls.ConnectionOptions)
        : net.connect({ host, port, onread, ...lookup });
    socket.setNoDelay(true);
    ps = new PooledSocket(url.origin, socket);
    return ps;
  }

  /** Takes back a connection whose last response was read to its end; it may serve the next request. */
  release(ps: PooledSocket): void {
    ps.reader = undefined;
    const list = this.idle.get(ps.origin) ?? [];
    if (this.closed || ps.socket.destroyed || list.length >= (this.opts.maxIdlePerOrigin ?? 8)) {
      ps.socket.destroy();
      return;
    }
    const drop = (): void => {
      ps.unidle?.();
      const l = this.idle.get(ps.origin);
      const i = l?.indexOf(ps) ?? -1;
      if (l && i >= 0) l.splice(i, 1);
      ps.socket.destroy();
    };
    const timer = setTimeout(drop, this.opts.idleMs ?? 10_000);
    timer.unref();
    ps.socket.on('close', drop);
    ps.socket.on('error', drop);
    ps.unidle = () => {
      ps.unidle = undefined;
      clearTimeout(timer);
      ps.socket.off('close', drop);
      ps.socket.off('error', drop);
    };
    // Reading while idle is how a close by the server shows up.
    ps.socket.resume();
    list.push(ps);
    this.idle.set(ps.origin, list);
  }

  get idleCount(): number {
    let n = 0;
    for (const l of this.idle.values()) n += l.length;
    return n;
  }

  close(): void {
    this.closed = true;
    for (const list of this.idle.values()) for (const ps of list.splice(0)) ps.socket.destroy();
    this.idle.clear();
  }
}
