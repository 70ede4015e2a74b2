/**
 * Connection accounting for the listener: caps on connections (in all and per client), the client address behind a
 * load balancer (PROXY protocol v2), and the write-stall watchdog that closes responses a client stopped reading.
 *
 * Why a watchdog rather than a socket timeout: Node's socket timeout is refreshed only when a write is handed to the
 * socket or completes, and blob bytes go out in 1 MiB writes, so a slow client that is still reading would be cut
 * off while a write is half done, and a response waiting on a slow upstream (nothing to write) would be cut off
 * too. The watchdog instead looks, every few seconds, at what each connection still owes its client: a socket with
 * bytes queued whose queue has not moved for `writeStallTimeout` is stalled, and is destroyed. Destroying it is what
 * releases everything the response holds (the slabs in its pending writes, the cached file's descriptor and lease,
 * its place as a reader of a running download): each of those is let go when the response closes.
 *
 * On plain TCP, progress inside a write is visible (libuv's write queue shrinks as the kernel takes bytes); on TLS only
 * whole writes complete, so there a client must take one write (256 KiB, 1 MiB after its first 16 MiB, see
 * cache/sendfile.ts) per writeStallTimeout: 17 KiB/s at the 60 s default.
 *
 * Idle keep-alive connections are Node's keepAliveTimeout (`limits.idleTimeout`); a connection that never completes
 * its request headers is Node's headersTimeout.
 */
import { readFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import type { Config } from '../config/schema.js';
import type { Metrics } from '../metrics/metrics.js';
import { clientKey, normalizeAddress, type AddressSet } from '../util/address.js';
import { readProxyHeader, type ProxyHeader } from './proxy-protocol.js';

export interface ConnectionLimits {
  /** Open connections in all; over it, new ones are closed at once. 0: no cap. */
  maxConnections: number;
  /** Open connections (or, behind a trusted X-Forwarded-For proxy, requests in flight) per client. 0: no cap. */
  maxConnectionsPerClient: number;
  /** A response whose queued bytes have not moved for this long is closed. 0: never. */
  writeStallTimeout: number;
  proxyProtocol: boolean;
  proxyProtocolTimeout: number;
  /** Load balancers and proxies whose PROXY headers and X-Forwarded-For are believed. */
  trustedProxies: AddressSet;
}

export type RefusedReason = 'global_limit' | 'client_limit' | 'proxy_protocol' | 'untrusted_proxy';
export type ClosedReason = 'write_stall' | 'idle';

/** What the guard reports (metrics and logs); every hook is optional. */
export interface ConnectionEvents {
  opened?(open: number): void;
  closed?(open: number): void;
  refused?(reason: RefusedReason, client: string): void;
  /** A connection the guard (or Node's idle timeout) closed. */
  ended?(reason: ClosedReason, client: string): void;
}

interface Watched {
  /** What the socket's queue looked like at the last sweep that saw it move. */
  mark: string;
  since: number;
}

/** Where a connection comes from: the TCP peer, or the client its PROXY protocol header names. */
export interface Peer {
  address: string;
  /** The key its connection is counted under (`clientKey`); undefined when it is not counted (a trusted proxy). */
  counted: string | undefined;
}

type Handle = { writeQueueSize?: unknown };

export class ConnectionGuard {
  private open = 0;
  private readonly perClient = new Map<string, number>();
  /** Raw connections by `remoteAddress|remotePort`, which a TLS socket over them reports too. */
  private readonly peers = new Map<string, Peer>();
  private readonly watched = new Map<Socket, Watched>();
  /** Every accepted connection, so that shutdown can end those HTTP never saw (mid-handshake, mid-header). */
  private readonly sockets = new Set<Socket>();
  private readonly inflightPerClient = new Map<string, number>();
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly limits: ConnectionLimits,
    private readonly events: ConnectionEvents = {},
    private readonly now: () => number = Date.now,
  ) {
    if (limits.writeStallTimeout > 0) {
      // A quarter of the timeout between sweeps: a stall is caught between 1× and 1.25× the timeout.
      const every = Math.min(5_000, Math.max(10, Math.floor(limits.writeStallTimeout / 4)));
      this.timer = setInterval(() => this.sweep(), every);
      this.timer.unref();
    }
  }

  get connections(): number {
    return this.open;
  }

  /**
   * Takes a freshly accepted connection: refuses it over a cap (destroyed at once, before TLS or HTTP cost anything)
   * or when its PROXY header is missing or wrong; otherwise counts it and hands it to `deliver` (the HTTP server).
   */
  accept(socket: Socket, deliver: (socket: Socket) => void): void {
    if (socket.remoteAddress === undefined) {
      // Reset before it was accepted: nothing to serve, and no address to count it under.
      socket.destroy();
      return;
    }
    const tcpPeer = normalizeAddress(socket.remoteAddress);
    if (this.limits.maxConnections > 0 && this.open >= this.limits.maxConnections) {
      this.refuse(socket, 'global_limit', tcpPeer);
      return;
    }
    // Counted from here, so that connections still sending their PROXY header count against the global cap too.
    this.open++;
    this.sockets.add(socket);
    this.events.opened?.(this.open);
    const id = `${socket.remoteAddress}|${socket.remotePort}`;
    let counted: string | undefined;
    socket.once('close', () => {
      this.open--;
      this.sockets.delete(socket);
      this.peers.delete(id);
      if (counted !== undefined) this.release(this.perClient, counted);
      this.events.closed?.(this.open);
    });
    const admit = (address: string): void => {
      // Gone while its PROXY header was read: its close was counted already, and nothing more must be.
      if (socket.destroyed) return;
      const trusted = this.limits.trustedProxies.has(address);
      // A trusted proxy carries many clients over its connections: its clients are counted per request instead.
      const key = trusted ? undefined : clientKey(address);
      if (key !== undefined && !this.take(this.perClient, key)) {
        this.refuse(socket, 'client_limit', address);
        return;
      }
      counted = key;
      this.peers.set(id, { address, counted: key });
      deliver(socket);
    };
    if (!this.limits.proxyProtocol) {
      admit(tcpPeer);
      return;
    }
    if (this.limits.trustedProxies.size > 0 && !this.limits.trustedProxies.has(tcpPeer)) {
      this.refuse(socket, 'untrusted_proxy', tcpPeer);
      return;
    }
    // Until the header is in, a peer that sends nothing holds one socket for at most proxyProtocolTimeout.
    socket.on('error', noop);
    readProxyHeader(socket, this.limits.proxyProtocolTimeout).then(
      (h: ProxyHeader) => {
        socket.off('error', noop);
        admit(h.kind === 'proxy' ? normalizeAddress(h.address) : tcpPeer);
      },
      () => this.refuse(socket, 'proxy_protocol', tcpPeer),
    );
  }

  /** The connection's client before any X-Forwarded-For (the PROXY header's source, or the TCP peer). */
  peerOf(socket: Socket): Peer {
    return this.peers.get(`${socket.remoteAddress}|${socket.remotePort}`) ?? { address: normalizeAddress(socket.remoteAddress ?? ''), counted: undefined };
  }

  /**
   * Behind a trusted proxy, counts a request of `client` (its forwarded address) against the per-client cap.
   * Returns the function that ends it, or undefined when the client is over the cap.
   */
  enterRequest(client: string): (() => void) | undefined {
    const key = clientKey(client);
    if (!this.take(this.inflightPerClient, key)) {
      this.events.refused?.('client_limit', client);
      return undefined;
    }
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.release(this.inflightPerClient, key);
    };
  }

  /** Watches a socket that responses are written to (for TLS, the TLS socket) for write stalls. */
  watch(socket: Socket): void {
    if (this.timer === undefined || this.watched.has(socket) || socket.destroyed) return;
    this.watched.set(socket, { mark: '', since: this.now() });
    socket.once('close', () => this.watched.delete(socket));
    // Node's idle keep-alive timeout ends a connection through the socket's 'timeout' event.
    socket.once('timeout', () => {
      if (socket.writableLength === 0) this.events.ended?.('idle', this.peerOf(socket).address);
    });
  }

  /** One pass of the watchdog (runs on its own timer; tests may call it). */
  sweep(): void {
    const now = this.now();
    for (const [socket, w] of this.watched) {
      if (socket.destroyed) {
        this.watched.delete(socket);
        continue;
      }
      const owed = socket.writableLength;
      // Bytes whose writes completed, plus the kernel's progress inside the write still in flight (libuv's queue).
      const queue = (socket as unknown as { _handle?: Handle | null })._handle?.writeQueueSize;
      const mark = `${socket.bytesWritten - owed}/${typeof queue === 'number' ? queue : ''}`;
      if (owed === 0 || mark !== w.mark) {
        w.mark = mark;
        w.since = now;
        continue;
      }
      if (now - w.since >= this.limits.writeStallTimeout) {
        this.watched.delete(socket);
        this.events.ended?.('write_stall', this.peerOf(socket).address);
        socket.destroy();
      }
    }
  }

  /** Destroys every connection still open (the last step of a shutdown). */
  destroyAll(): void {
    for (const s of this.sockets) s.destroy();
  }

  close(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.watched.clear();
  }

  private refuse(socket: Socket, reason: RefusedReason, client: string): void {
    this.events.refused?.(reason, client);
    socket.on('error', noop);
    socket.destroy();
  }

  private take(counts: Map<string, number>, key: string): boolean {
    const n = counts.get(key) ?? 0;
    if (this.limits.maxConnectionsPerClient > 0 && n >= this.limits.maxConnectionsPerClient) return false;
    counts.set(key, n + 1);
    return true;
  }

  private release(counts: Map<string, number>, key: string): void {
    const n = (counts.get(key) ?? 1) - 1;
    // Entries go when they reach zero, so the maps never hold more keys than there are connections.
    if (n <= 0) counts.delete(key);
    else counts.set(key, n);
  }
}

function noop(): void {}

/** The registry listener's guard, from the config's limits and listener settings, reporting to metrics and the log. */
export function guardFor(config: Config, trustedProxies: AddressSet, m: Metrics, log: Logger, now: () => number = Date.now): ConnectionGuard {
  const { limits } = config;
  return new ConnectionGuard(
    {
      maxConnections: limits.maxConnections,
      maxConnectionsPerClient: limits.maxConnectionsPerClient,
      writeStallTimeout: limits.writeStallTimeout,
      proxyProtocol: config.listener.proxyProtocol,
      proxyProtocolTimeout: config.listener.proxyProtocolTimeout,
      trustedProxies,
    },
    {
      opened: (n) => m.connectionsOpen.set(n),
      closed: (n) => m.connectionsOpen.set(n),
      refused: (reason) => m.connectionsRefused.inc({ reason }),
      ended: (reason, client) => {
        m.connectionsClosed.inc({ reason });
        if (reason === 'write_stall') log.info({ client, after_ms: limits.writeStallTimeout }, 'closed a connection whose client stopped reading');
      },
    },
    now,
  );
}

/** A kernel setting under /proc/sys (`net/ipv4/tcp_migrate_req`), or undefined where it cannot be read. */
export function readSysctl(path: string): string | undefined {
  try {
    return readFileSync(`/proc/sys/${path}`, 'utf8').trim();
  } catch {
    return undefined;
  }
}
