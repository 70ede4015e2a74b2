/**
 * Who a client is, by address: the key connection caps count under, trusted-proxy ranges, and the client address
 * behind a trusted proxy's `X-Forwarded-For`.
 *
 * IPv6 clients are counted per /64: one host usually holds a whole /64 (SLAAC, privacy addresses), so a cap per
 * address would be a cap per 2^64 addresses. IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`, what a dual-stack
 * listener reports for IPv4 peers) are the IPv4 address they carry, for caps and ranges alike.
 */
import { BlockList, isIP, isIPv4 } from 'node:net';

export interface AddressSet {
  has(address: string): boolean;
  readonly size: number;
}

/** `::ffff:a.b.c.d` → `a.b.c.d`; anything else unchanged (zone ids dropped). */
export function normalizeAddress(address: string): string {
  const a = address.replace(/%.*$/, '');
  const m = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/i.exec(a);
  return m ? m[1]! : a;
}

/** The eight 16-bit groups of an IPv6 address, or undefined when it is not one. */
function ipv6Groups(address: string): number[] | undefined {
  if (isIP(address) !== 6) return undefined;
  let text = address.toLowerCase();
  const tail: number[] = [];
  const v4 = /(\d{1,3}(?:\.\d{1,3}){3})$/.exec(text);
  if (v4) {
    const b = v4[1]!.split('.').map(Number);
    tail.push((b[0]! << 8) | b[1]!, (b[2]! << 8) | b[3]!);
    text = text.slice(0, -v4[1]!.length) + '0:0';
  }
  const [head, rest] = text.includes('::') ? (text.split('::') as [string, string]) : [text, undefined];
  const parse = (s: string): number[] => (s ? s.split(':').map((g) => parseInt(g, 16)) : []);
  const h = parse(head);
  const r = rest === undefined ? [] : parse(rest);
  const groups = rest === undefined ? h : [...h, ...new Array<number>(8 - h.length - r.length).fill(0), ...r];
  if (groups.length !== 8) return undefined;
  if (tail.length) groups.splice(6, 2, ...tail);
  return groups;
}

/**
 * The key a client's connections are counted under: the IPv4 address, or the IPv6 /64 (`2001:db8:1:2::/64`).
 * Unparsable input (a closed socket has no address) is its own key, so it can never share another client's count.
 */
export function clientKey(address: string): string {
  const a = normalizeAddress(address);
  if (isIPv4(a)) return a;
  const g = ipv6Groups(a);
  if (!g) return `?${a}`;
  return `${g
    .slice(0, 4)
    .map((x) => x.toString(16))
    .join(':')}::/64`;
}

/** Parses `10.0.0.0/8`, `2001:db8::/32` or a single address; throws a message naming the entry. */
function parseCidr(entry: string): { net: string; prefix: number; type: 'ipv4' | 'ipv6' } {
  const [net = '', p] = entry.trim().split('/');
  const kind = isIP(net);
  if (kind === 0) throw new Error(`"${entry}" is not an address or CIDR range`);
  const max = kind === 4 ? 32 : 128;
  const prefix = p === undefined ? max : Number(p);
  if (!/^\d{1,3}$/.test(p ?? String(max)) || prefix > max) throw new Error(`"${entry}": prefix length must be 0–${max}`);
  return { net, prefix, type: kind === 4 ? 'ipv4' : 'ipv6' };
}

/** Checks a list of CIDR ranges; returns the first problem, for config validation. */
export function cidrProblem(entries: string[]): string | undefined {
  for (const e of entries) {
    try {
      parseCidr(e);
    } catch (err) {
      return (err as Error).message;
    }
  }
  return undefined;
}

/** A set of CIDR ranges (node:net BlockList), matched against normalized addresses. */
export function addressSet(entries: string[]): AddressSet {
  const list = new BlockList();
  for (const e of entries) {
    const c = parseCidr(e);
    list.addSubnet(c.net, c.prefix, c.type);
  }
  return {
    size: entries.length,
    has(address: string): boolean {
      if (entries.length === 0) return false;
      const a = normalizeAddress(address);
      const kind = isIP(a);
      return kind !== 0 && list.check(a, kind === 4 ? 'ipv4' : 'ipv6');
    },
  };
}

/**
 * The client behind `peer` when `peer` is a trusted proxy: the right-most `X-Forwarded-For` entry that is not
 * itself a trusted proxy (entries to its left were written by the client and prove nothing). Without trusted
 * proxies, or from any other peer, the header is ignored and the peer is the client.
 */
export function forwardedClient(peer: string, header: string | string[] | undefined, trusted: AddressSet): string {
  const p = normalizeAddress(peer);
  if (trusted.size === 0 || header === undefined || !trusted.has(p)) return p;
  const hops = (Array.isArray(header) ? header.join(',') : header)
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
    .slice(-32);
  for (let i = hops.length - 1; i >= 0; i--) {
    const hop = normalizeAddress(hops[i]!.replace(/^\[([^\]]+)\](?::\d+)?$/, '$1').replace(/^(\d{1,3}(?:\.\d{1,3}){3}):\d+$/, '$1'));
    if (isIP(hop) === 0) return p;
    if (!trusted.has(hop)) return hop;
  }
  return p;
}
