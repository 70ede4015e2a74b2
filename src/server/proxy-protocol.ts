/**
 * PROXY protocol version 2 (the binary header a load balancer puts before the client's bytes; HAProxy's
 * proxy-protocol.txt §2.2): the client's address when the proxy sits behind an L4 load balancer.
 *
 * Written here rather than taken from npm: the part that matters for safety is the framing (read at most the
 * announced length, give up after a timeout, refuse anything that is not a v2 header at the first wrong byte, and
 * hand the bytes after the header back to the socket), which the parsers on npm leave to the caller; the address
 * block itself is a few fixed offsets.
 *
 * Only v2 is accepted (the text v1 format is not): a listener with `proxyProtocol: true` refuses a connection that
 * does not start with a v2 header, so a client that reaches the port directly cannot claim an address.
 */
import type { Socket } from 'node:net';

/** `\r\n\r\n\0\r\nQUIT\n` */
const SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
const FIXED = 16;
/**
 * Longest header accepted (fixed part, addresses and TLVs). The address block is at most 216 bytes (two Unix paths);
 * TLVs from cloud load balancers (VPC endpoint ids, TLS details) add a few hundred. Anything near the 64 KiB the
 * length field allows is not a load balancer.
 */
export const MAX_PROXY_HEADER = 4096;

export type ProxyHeader =
  /** LOCAL (the balancer's own health check), or an address family without an IP address: use the real peer. */
  { kind: 'local' } | { kind: 'proxy'; address: string; port: number };

export class ProxyProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProxyProtocolError';
  }
}

/**
 * Parses a complete header (`buf` holds at least its FIXED + length bytes). Exported for tests; the listener
 * uses readProxyHeader.
 */
export function parseProxyHeader(buf: Buffer): { header: ProxyHeader; length: number } {
  const prefix = Math.min(buf.length, SIGNATURE.length);
  if (!buf.subarray(0, prefix).equals(SIGNATURE.subarray(0, prefix))) throw new ProxyProtocolError('connection does not start with a PROXY protocol v2 header');
  if (buf.length < FIXED) throw new ProxyProtocolError('truncated PROXY protocol header');
  const verCmd = buf[12]!;
  if (verCmd >> 4 !== 2) throw new ProxyProtocolError(`PROXY protocol version ${verCmd >> 4} (only 2 is accepted)`);
  const command = verCmd & 0x0f;
  if (command > 1) throw new ProxyProtocolError(`unknown PROXY protocol command ${command}`);
  const family = buf[13]! >> 4;
  const transport = buf[13]! & 0x0f;
  const len = buf.readUInt16BE(14);
  const length = FIXED + len;
  if (length > MAX_PROXY_HEADER) throw new ProxyProtocolError(`PROXY protocol header of ${length} bytes (at most ${MAX_PROXY_HEADER})`);
  if (buf.length < length) throw new ProxyProtocolError('truncated PROXY protocol header');
  if (command === 0) return { header: { kind: 'local' }, length };
  if (transport === 2) throw new ProxyProtocolError('PROXY protocol header for a datagram connection');
  if (family === 1) {
    if (len < 12) throw new ProxyProtocolError('PROXY protocol IPv4 address block too short');
    const a = buf.subarray(FIXED, FIXED + 4);
    return { header: { kind: 'proxy', address: [...a].join('.'), port: buf.readUInt16BE(FIXED + 8) }, length };
  }
  if (family === 2) {
    if (len < 36) throw new ProxyProtocolError('PROXY protocol IPv6 address block too short');
    const groups: string[] = [];
    for (let i = 0; i < 8; i++) groups.push(buf.readUInt16BE(FIXED + 2 * i).toString(16));
    // The canonical text form (RFC 5952, as WHATWG URLs serialize it), as the socket would report the address.
    const address = new URL(`http://[${groups.join(':')}]/`).hostname.slice(1, -1);
    return { header: { kind: 'proxy', address, port: buf.readUInt16BE(FIXED + 32) }, length };
  }
  if (family === 0 || family === 3) return { header: { kind: 'local' }, length };
  throw new ProxyProtocolError(`unknown PROXY protocol address family ${family}`);
}

/**
 * Reads the header from the start of `socket`, then puts any bytes that followed it back (unshift), pauses the
 * socket, and resolves. Rejects, leaving the socket to the caller to destroy, on garbage, an oversized header, an
 * early close, or when `timeoutMs` passes first.
 */
export function readProxyHeader(socket: Socket, timeoutMs: number): Promise<ProxyHeader> {
  return new Promise((resolve, reject) => {
    let buf: Buffer = Buffer.alloc(0);
    const finish = (err: Error | undefined, header?: ProxyHeader): void => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('close', onClose);
      socket.off('error', onClose);
      if (err) reject(err);
      else resolve(header!);
    };
    const onData = (chunk: Buffer): void => {
      buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
      let parsed: { header: ProxyHeader; length: number };
      try {
        parsed = parseProxyHeader(buf);
      } catch (e) {
        // Not complete yet: wait for more, unless what has come so far is already wrong.
        if (e instanceof ProxyProtocolError && e.message === 'truncated PROXY protocol header' && buf.length < MAX_PROXY_HEADER) return;
        finish(e instanceof Error ? e : new ProxyProtocolError(String(e)));
        return;
      }
      socket.pause();
      const rest = buf.subarray(parsed.length);
      if (rest.length) socket.unshift(rest);
      finish(undefined, parsed.header);
    };
    const onClose = (): void => finish(new ProxyProtocolError('connection closed before its PROXY protocol header'));
    const timer = setTimeout(() => finish(new ProxyProtocolError(`no PROXY protocol header within ${timeoutMs} ms`)), timeoutMs);
    timer.unref();
    socket.on('data', onData);
    socket.once('close', onClose);
    socket.once('error', onClose);
  });
}
