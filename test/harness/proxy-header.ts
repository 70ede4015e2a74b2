/** Test harness: PROXY protocol v2 headers as a load balancer writes them (HAProxy's proxy-protocol.txt §2.2). */

/** A v2 header: PROXY TCP4/TCP6 (or LOCAL), with `tlv` extra bytes. */
export function proxyV2(src: { address: string; port: number } | 'local', opts: { tlv?: number; version?: number; transport?: number } = {}): Buffer {
  const sig = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
  const v6 = src !== 'local' && src.address.includes(':');
  let addr = Buffer.alloc(0);
  if (src !== 'local') {
    if (v6) {
      addr = Buffer.alloc(36);
      const groups = src.address.split(':');
      groups.forEach((g, i) => addr.writeUInt16BE(parseInt(g || '0', 16), 2 * i));
      addr.writeUInt16BE(0x1, 16 + 14);
      addr.writeUInt16BE(src.port, 32);
      addr.writeUInt16BE(5000, 34);
    } else {
      addr = Buffer.alloc(12);
      src.address.split('.').forEach((b, i) => (addr[i] = Number(b)));
      Buffer.from([127, 0, 0, 1]).copy(addr, 4);
      addr.writeUInt16BE(src.port, 8);
      addr.writeUInt16BE(5000, 10);
    }
  }
  const extra = Buffer.alloc(opts.tlv ?? 0, 0x04);
  const head = Buffer.alloc(4);
  head[0] = ((opts.version ?? 2) << 4) | (src === 'local' ? 0 : 1);
  head[1] = src === 'local' ? 0 : ((v6 ? 2 : 1) << 4) | (opts.transport ?? 1);
  head.writeUInt16BE(addr.length + extra.length, 2);
  return Buffer.concat([sig, head, addr, extra]);
}
