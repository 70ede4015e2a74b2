/**
 * The egress range classifier and guard (src/upstream/egress.ts): every special-purpose range in its IPv4 and IPv6
 * forms, the upstream's own range, the allow list, and the lookup hook that checks exactly the addresses the socket
 * will use. No connection is made here: the resolver is injected.
 */
import type { LookupAddress } from 'node:dns';
import { describe, expect, it } from 'vitest';
import { classifyAddress, EgressGuard, EgressRefusedError, type LookupFunction } from '../../src/upstream/egress.js';

describe('classifyAddress', () => {
  const special: Array<[address: string, kind: string]> = [
    ['0.0.0.0', 'this-network'],
    ['0.1.2.3', 'this-network'],
    ['10.0.0.1', 'private'],
    ['10.255.255.255', 'private'],
    ['100.64.0.1', 'shared'],
    ['100.127.255.254', 'shared'],
    ['100.100.100.200', 'metadata'],
    ['127.0.0.1', 'loopback'],
    ['127.0.0.2', 'loopback'],
    ['127.255.255.254', 'loopback'],
    ['169.254.169.254', 'metadata'],
    ['169.254.0.1', 'link-local'],
    ['169.254.170.2', 'link-local'],
    ['172.16.0.1', 'private'],
    ['172.31.255.255', 'private'],
    ['192.0.0.8', 'ietf-protocol'],
    ['192.0.2.1', 'documentation'],
    ['192.88.99.1', '6to4-relay'],
    ['192.168.1.1', 'private'],
    ['198.18.0.1', 'benchmarking'],
    ['198.19.255.255', 'benchmarking'],
    ['198.51.100.7', 'documentation'],
    ['203.0.113.9', 'documentation'],
    ['224.0.0.1', 'multicast'],
    ['239.255.255.250', 'multicast'],
    ['240.0.0.1', 'reserved'],
    ['255.255.255.255', 'reserved'],
    ['::', 'unspecified'],
    ['::1', 'loopback'],
    ['0:0:0:0:0:0:0:1', 'loopback'],
    ['::ffff:127.0.0.1', 'ipv4-mapped'],
    ['::ffff:7f00:1', 'ipv4-mapped'],
    ['::ffff:169.254.169.254', 'ipv4-mapped'],
    ['::ffff:8.8.8.8', 'ipv4-mapped'],
    ['::ffff:0:a00:1', 'ipv4-translated'],
    ['::127.0.0.1', 'ipv4-compatible'],
    ['64:ff9b::a9fe:a9fe', 'nat64'],
    ['64:ff9b::169.254.169.254', 'nat64'],
    ['64:ff9b:1::1', 'nat64'],
    ['100::1', 'discard'],
    ['2001::1', 'ietf-protocol'],
    ['2001:db8::1', 'documentation'],
    ['2002:a9fe:a9fe::1', '6to4'],
    ['3fff::1', 'documentation'],
    ['fc00::1', 'unique-local'],
    ['fd12:3456::1', 'unique-local'],
    ['fd00:ec2::254', 'metadata'],
    ['fe80::1', 'link-local'],
    ['febf:ffff::1', 'link-local'],
    ['fec0::1', 'site-local'],
    ['ff02::1', 'multicast'],
    ['[::1]', 'loopback'],
  ];
  for (const [address, kind] of special) {
    it(`${address} is ${kind}`, () => {
      expect(classifyAddress(address)?.kind).toBe(kind);
    });
  }

  it('ordinary unicast addresses are in no special range', () => {
    for (const a of [
      '8.8.8.8',
      '1.1.1.1',
      '93.184.216.34',
      '172.32.0.1',
      '172.15.255.255',
      '100.128.0.1',
      '169.255.0.1',
      '11.0.0.1',
      '2606:4700::1111',
      '2a00:1450:4001::200e',
      '64:ff9c::1',
    ]) {
      expect(classifyAddress(a), a).toBeUndefined();
    }
  });

  it('names the range itself', () => {
    expect(classifyAddress('10.1.2.3')).toEqual({ kind: 'private', cidr: '10.0.0.0/8' });
    expect(classifyAddress('::ffff:10.1.2.3')).toEqual({ kind: 'ipv4-mapped', cidr: '::ffff:0:0/96' });
  });

  it('refuses what is not an address', () => {
    expect(() => classifyAddress('example.com')).toThrow(/not an IP/);
  });
});

/** A resolver from a table; records every name asked. */
function resolver(table: Record<string, string[]>, asked: string[] = []): LookupFunction {
  return (hostname, options, callback) => {
    asked.push(hostname);
    const list = table[hostname];
    if (!list) return callback(Object.assign(new Error(`ENOTFOUND ${hostname}`), { code: 'ENOTFOUND' }), options.all ? [] : '');
    const addresses: LookupAddress[] = list.map((address) => ({ address, family: address.includes(':') ? 6 : 4 }));
    if (options.all) return callback(null, addresses);
    return callback(null, addresses[0]!.address, addresses[0]!.family);
  };
}

function lookupAll(g: EgressGuard, host: string): Promise<LookupAddress[]> {
  return new Promise((resolve, reject) => g.lookup(host, { all: true }, (err, addresses) => (err ? reject(err) : resolve(addresses as LookupAddress[]))));
}

function lookupOne(g: EgressGuard, host: string): Promise<[string, number | undefined]> {
  return new Promise((resolve, reject) => g.lookup(host, {}, (err, address, family) => (err ? reject(err) : resolve([address as string, family]))));
}

describe('EgressGuard', () => {
  const table = {
    'cdn.example': ['93.184.216.34', '2606:4700::1111'],
    'meta.attacker.test': ['169.254.169.254'],
    'mixed.attacker.test': ['93.184.216.34', '10.0.0.5'],
    'mapped.attacker.test': ['::ffff:127.0.0.1'],
    'nat64.attacker.test': ['64:ff9b::a9fe:a9fe'],
    'lo.attacker.test': ['127.0.0.2'],
    'ten.attacker.test': ['10.9.9.9'],
    'registry.internal': ['10.1.2.3'],
    'blobs.internal.corp': ['192.168.7.7'],
  };

  it('public addresses pass, and are handed on exactly as resolved (one lookup)', async () => {
    const asked: string[] = [];
    const g = new EgressGuard({ upstream: new URL('https://registry.example'), lookup: resolver(table, asked) });
    expect(await lookupAll(g, 'cdn.example')).toEqual([
      { address: '93.184.216.34', family: 4 },
      { address: '2606:4700::1111', family: 6 },
    ]);
    expect(await lookupOne(g, 'cdn.example')).toEqual(['93.184.216.34', 4]);
    expect(asked).toEqual(['cdn.example', 'cdn.example']);
  });

  it('a name resolving to a special address is refused in the lookup, whichever address is special', async () => {
    const g = new EgressGuard({ upstream: new URL('https://registry.example'), lookup: resolver(table) });
    for (const [host, kind] of [
      ['meta.attacker.test', 'metadata'],
      ['mixed.attacker.test', 'private'],
      ['mapped.attacker.test', 'ipv4-mapped'],
      ['nat64.attacker.test', 'nat64'],
      ['lo.attacker.test', 'loopback'],
    ] as const) {
      const err = await lookupAll(g, host).catch((e: unknown) => e);
      expect(err, host).toBeInstanceOf(EgressRefusedError);
      expect((err as EgressRefusedError).range.kind).toBe(kind);
      expect((err as EgressRefusedError).message).toContain(host);
      await expect(lookupOne(g, host)).rejects.toBeInstanceOf(EgressRefusedError);
    }
  });

  it('IP literals are checked before connecting', () => {
    const g = new EgressGuard({ upstream: new URL('https://registry.example'), lookup: resolver(table) });
    expect(() => g.checkHost('169.254.169.254')).toThrow(EgressRefusedError);
    expect(() => g.checkHost('[::ffff:a9fe:a9fe]')).toThrow(/ipv4-mapped/);
    expect(() => g.checkHost('[fd00:ec2::254]')).toThrow(/metadata/);
    expect(() => g.checkHost('8.8.8.8')).not.toThrow();
    // Names are left to the lookup.
    expect(() => g.checkHost('meta.attacker.test')).not.toThrow();
  });

  it("the upstream's own host is always allowed, and its range opens that range only", async () => {
    const g = new EgressGuard({ upstream: new URL('http://127.0.0.1:5000'), lookup: resolver(table) });
    expect(() => g.checkHost('127.0.0.1')).not.toThrow();
    expect(() => g.checkHost('127.0.0.2')).not.toThrow();
    expect(await lookupOne(g, 'lo.attacker.test')).toEqual(['127.0.0.2', 4]);
    // Not another special range, and never the kinds that hide another address.
    await expect(lookupOne(g, 'ten.attacker.test')).rejects.toThrow(/private/);
    await expect(lookupOne(g, 'mapped.attacker.test')).rejects.toThrow(/ipv4-mapped/);
    expect(() => g.checkHost('::ffff:127.0.0.1')).toThrow(/ipv4-mapped/);
    expect(() => g.checkHost('169.254.169.254')).toThrow(/metadata/);
  });

  it("a named upstream's range is learned when its own name resolves", async () => {
    const g = new EgressGuard({ upstream: new URL('https://registry.internal'), lookup: resolver(table) });
    await expect(lookupOne(g, 'ten.attacker.test')).rejects.toThrow(/private/);
    expect(await lookupOne(g, 'registry.internal')).toEqual(['10.1.2.3', 4]);
    expect(await lookupOne(g, 'ten.attacker.test')).toEqual(['10.9.9.9', 4]);
    await expect(lookupOne(g, 'blobs.internal.corp')).rejects.toThrow(/private 192\.168/);
  });

  it('redirects.allow opens CIDRs, addresses and host names', async () => {
    const g = new EgressGuard({
      upstream: new URL('https://registry.example'),
      allow: ['10.0.0.0/8', '::ffff:0:0/96', '169.254.169.254', 'blobs.internal.corp'],
      lookup: resolver(table),
    });
    expect(await lookupOne(g, 'ten.attacker.test')).toEqual(['10.9.9.9', 4]);
    expect(await lookupOne(g, 'mapped.attacker.test')).toEqual(['::ffff:127.0.0.1', 6]);
    expect(await lookupOne(g, 'meta.attacker.test')).toEqual(['169.254.169.254', 4]);
    expect(await lookupOne(g, 'blobs.internal.corp')).toEqual(['192.168.7.7', 4]);
    await expect(lookupOne(g, 'lo.attacker.test')).rejects.toThrow(/loopback/);
    await expect(lookupOne(g, 'nat64.attacker.test')).rejects.toThrow(/nat64/);
  });

  it('resolver errors pass through unchanged', async () => {
    const g = new EgressGuard({ upstream: new URL('https://registry.example'), lookup: resolver(table) });
    await expect(lookupOne(g, 'nowhere.test')).rejects.toMatchObject({ code: 'ENOTFOUND' });
  });
});
