/**
 * Where an upstream's connections may go. A hostile or compromised upstream answers a blob GET with a redirect, or
 * names a token realm, and the proxy connects there: without a check that could be the cloud metadata service, a
 * database on the pod network, or the proxy's own admin port, and the proxy would stream the answer back to the
 * client before the digest check failed.
 *
 * The check runs in the connector, on the address the connection is about to use: the `lookup` hook that both
 * transports (undici's connector and socket-pool.ts) hand to net/tls.connect validates every address the resolver
 * returned, and the socket connects to exactly those. A second lookup after the check (DNS rebinding) cannot happen,
 * because there is no second lookup. IP literals, which net.connect does not look up, are checked before connecting.
 *
 * What is refused: every special-purpose range below (loopback, private, link-local, unique-local, IPv4-mapped and
 * other IPv4-embedding IPv6 forms, NAT64, cloud metadata, documentation, multicast…) unless
 *   - the host is the upstream's own host (the operator named it), or listed in `redirects.allow`;
 *   - the address lies in the same range as the upstream's own address (an upstream on 127.0.0.1 may redirect to
 *     another port on loopback; one on 10.1.2.3 to 10.0.0.0/8), except for the kinds in NEVER_IMPLIED, which only
 *     `redirects.allow` opens;
 *   - the address lies in a CIDR listed in `redirects.allow`.
 * Through an egress proxy (CONNECT tunnel) the proxy resolves the name, so only IP literals can be checked here.
 */
import { lookup as dnsLookup, type LookupAddress } from 'node:dns';
import net from 'node:net';

export type LookupCallback = (err: NodeJS.ErrnoException | null, address: string | LookupAddress[], family?: number) => void;
/** The shape of dns.lookup as net.connect calls it (`all` is set when it tries several addresses). */
export type LookupFunction = (hostname: string, options: { family?: number | string; all?: boolean; hints?: number }, callback: LookupCallback) => void;

export interface SpecialRange {
  /** What the range is for, e.g. 'loopback', 'metadata', 'ipv4-mapped'. */
  kind: string;
  /** The range itself, e.g. '127.0.0.0/8'. */
  cidr: string;
}

/** Refused before any connection is made; not retried (another attempt would be refused the same way). */
export class EgressRefusedError extends Error {
  readonly code = 'EGRESS_REFUSED';
  constructor(
    readonly host: string,
    readonly address: string,
    readonly range: SpecialRange,
  ) {
    super(`refusing to connect to ${host} (${address}, ${range.kind} ${range.cidr}): not allowed for this upstream (see upstreams[].redirects.allow)`);
    this.name = 'EgressRefusedError';
  }
}

/** Order matters: the first match names the range, so the narrow ones (metadata) come before their supersets. */
const RANGES: ReadonlyArray<readonly [kind: string, cidr: string]> = [
  ['metadata', '169.254.169.254/32'],
  ['metadata', '100.100.100.200/32'],
  ['metadata', 'fd00:ec2::254/128'],
  ['this-network', '0.0.0.0/8'],
  ['private', '10.0.0.0/8'],
  ['shared', '100.64.0.0/10'],
  ['loopback', '127.0.0.0/8'],
  ['link-local', '169.254.0.0/16'],
  ['private', '172.16.0.0/12'],
  ['ietf-protocol', '192.0.0.0/24'],
  ['documentation', '192.0.2.0/24'],
  ['6to4-relay', '192.88.99.0/24'],
  ['private', '192.168.0.0/16'],
  ['benchmarking', '198.18.0.0/15'],
  ['documentation', '198.51.100.0/24'],
  ['documentation', '203.0.113.0/24'],
  ['multicast', '224.0.0.0/4'],
  ['reserved', '240.0.0.0/4'],
  ['unspecified', '::/128'],
  ['loopback', '::1/128'],
  ['ipv4-mapped', '::ffff:0:0/96'],
  ['ipv4-translated', '::ffff:0:0:0/96'],
  ['ipv4-compatible', '::/96'],
  ['nat64', '64:ff9b::/96'],
  ['nat64', '64:ff9b:1::/48'],
  ['discard', '100::/64'],
  ['ietf-protocol', '2001::/23'],
  ['documentation', '2001:db8::/32'],
  ['6to4', '2002::/16'],
  ['documentation', '3fff::/20'],
  ['unique-local', 'fc00::/7'],
  ['link-local', 'fe80::/10'],
  ['site-local', 'fec0::/10'],
  ['multicast', 'ff00::/8'],
];

/**
 * Kinds an upstream's own address never opens: they reach other hosts than their face value says (IPv4 embedded in
 * IPv6, NAT64) or are never a registry's (metadata, unspecified, multicast).
 */
const NEVER_IMPLIED = new Set([
  'metadata',
  'unspecified',
  'this-network',
  'multicast',
  'ipv4-mapped',
  'ipv4-translated',
  'ipv4-compatible',
  'nat64',
  '6to4',
  '6to4-relay',
]);

type Family = 'ipv4' | 'ipv6';

interface CompiledRange extends SpecialRange {
  family: Family;
  list: net.BlockList;
}

/**
 * One BlockList per range, each checked only for addresses of its own family: BlockList maps IPv4-mapped IPv6
 * addresses onto IPv4 rules (and the reverse), which would hide which range an address is really in.
 */
const COMPILED: CompiledRange[] = RANGES.map(([kind, cidr]) => {
  const [base, bits] = cidr.split('/') as [string, string];
  const family: Family = net.isIPv6(base) ? 'ipv6' : 'ipv4';
  const list = new net.BlockList();
  list.addSubnet(base, Number(bits), family);
  return { kind, cidr, family, list };
});

/** The special-purpose range an IP address is in, or undefined for an ordinary (global unicast) address. */
export function classifyAddress(address: string): SpecialRange | undefined {
  const ip = stripBrackets(address);
  const v = net.isIP(ip);
  if (v === 0) throw new Error(`not an IP address: ${address}`);
  const family: Family = v === 4 ? 'ipv4' : 'ipv6';
  for (const r of COMPILED) if (r.family === family && r.list.check(ip, family)) return { kind: r.kind, cidr: r.cidr };
  return undefined;
}

function stripBrackets(host: string): string {
  return host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
}

export interface EgressGuardOptions {
  /** The upstream's own URL: its host is always allowed, and its address's range is allowed for others. */
  upstream: URL;
  /** `upstreams[].redirects.allow`: CIDRs, IP addresses or host names that may be reached whatever their range. */
  allow?: readonly string[];
  /** The resolver; dns.lookup unless a test injects one. */
  lookup?: LookupFunction;
}

export class EgressGuard {
  private readonly ownHost: string;
  private readonly allowHosts = new Set<string>();
  /** Per family: BlockList would otherwise let an IPv4 rule match IPv4-mapped IPv6 addresses and the reverse. */
  private readonly allowLists = { ipv4: new net.BlockList(), ipv6: new net.BlockList() };
  /** Ranges the upstream's own addresses are in (learned from its IP literal, or when its name is resolved). */
  private readonly ownRanges = new Set<string>();
  private readonly resolve: LookupFunction;

  constructor(opts: EgressGuardOptions) {
    this.ownHost = stripBrackets(opts.upstream.hostname).toLowerCase();
    this.resolve = opts.lookup ?? (dnsLookup as unknown as LookupFunction);
    for (const entry of opts.allow ?? []) {
      const [base, bits] = entry.split('/') as [string, string | undefined];
      const v = net.isIP(stripBrackets(base));
      const family: Family = v === 4 ? 'ipv4' : 'ipv6';
      if (v === 0) this.allowHosts.add(entry.toLowerCase());
      else if (bits === undefined) this.allowLists[family].addAddress(stripBrackets(base), family);
      else this.allowLists[family].addSubnet(base, Number(bits), family);
    }
    if (net.isIP(this.ownHost)) this.learnOwn(this.ownHost);
  }

  /** Whether a connection to this host needs no address check at all. */
  private trusted(host: string): boolean {
    return host === this.ownHost || this.allowHosts.has(host);
  }

  private learnOwn(address: string): void {
    const r = classifyAddress(address);
    if (r && !NEVER_IMPLIED.has(r.kind)) this.ownRanges.add(r.cidr);
  }

  /** Throws EgressRefusedError when `address`, reached under the name `host`, is not allowed. */
  checkAddress(host: string, address: string): void {
    const ip = stripBrackets(address);
    const range = classifyAddress(ip);
    if (!range || this.ownRanges.has(range.cidr)) return;
    const family: Family = net.isIPv4(ip) ? 'ipv4' : 'ipv6';
    if (this.allowLists[family].check(ip, family)) return;
    throw new EgressRefusedError(host, ip, range);
  }

  /**
   * Before a connection to `hostname`: an IP literal is checked here (net.connect does not look it up); a name is
   * checked by `lookup` when it resolves.
   */
  checkHost(hostname: string): void {
    const host = stripBrackets(hostname).toLowerCase();
    if (this.trusted(host) || net.isIP(host) === 0) return;
    this.checkAddress(host, host);
  }

  /** A dns.lookup replacement for net/tls.connect: resolves, then refuses if any address is not allowed. */
  readonly lookup: LookupFunction = (hostname, options, callback) => {
    const host = hostname.toLowerCase();
    this.resolve(hostname, { ...options, all: true }, (err, addresses) => {
      if (err) return callback(err, options.all ? [] : '');
      const list = Array.isArray(addresses) ? addresses : [{ address: addresses, family: net.isIP(addresses) }];
      if (list.length === 0) return callback(Object.assign(new Error(`no address for ${hostname}`), { code: 'ENOTFOUND' }), options.all ? [] : '');
      if (host === this.ownHost) for (const a of list) this.learnOwn(a.address);
      else if (!this.trusted(host)) {
        // Every address, not only the first: with autoSelectFamily the socket may try any of them.
        try {
          for (const a of list) this.checkAddress(host, a.address);
        } catch (e) {
          return callback(e as NodeJS.ErrnoException, options.all ? [] : '');
        }
      }
      if (options.all) return callback(null, list);
      const first = list[0] as LookupAddress;
      return callback(null, first.address, first.family);
    });
  };
}
