/**
 * Client addresses (src/util/address.ts) and the PROXY protocol v2 header parser (src/server/proxy-protocol.ts):
 * the keys connection caps count under (IPv6 per /64), trusted ranges, X-Forwarded-For behind a trusted proxy only,
 * and a header parser that refuses garbage at the first wrong byte and never reads past its bound.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MAX_PROXY_HEADER, parseProxyHeader, ProxyProtocolError } from '../../src/server/proxy-protocol.js';
import { addressSet, cidrProblem, clientKey, forwardedClient } from '../../src/util/address.js';
import { proxyV2 } from '../harness/proxy-header.js';

describe('clientKey', () => {
  it('groups IPv6 clients per /64, whatever the spelling, and keeps IPv4 clients apart', () => {
    expect(clientKey('2001:db8:1:2::5')).toBe('2001:db8:1:2::/64');
    expect(clientKey('2001:0db8:0001:0002:ffff:ffff:ffff:1')).toBe('2001:db8:1:2::/64');
    expect(clientKey('2001:db8:1:3::5')).not.toBe(clientKey('2001:db8:1:2::5'));
    expect(clientKey('fe80::1%eth0')).toBe('fe80:0:0:0::/64');
    expect(clientKey('::1')).toBe('0:0:0:0::/64');
    expect(clientKey('::ffff:10.0.0.1')).toBe('10.0.0.1');
    expect(clientKey('10.0.0.1')).not.toBe(clientKey('10.0.0.2'));
    expect(clientKey('64:ff9b::192.0.2.1')).toBe('64:ff9b:0:0::/64');
    expect(clientKey('')).toBe('?');
  });

  it('every address inside one /64 has the /64 key', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: 0xffff }), { minLength: 8, maxLength: 8 }), (g) => {
        const addr = g.map((x) => x.toString(16)).join(':');
        const sameNet = [...g.slice(0, 4), 0, 0, 0, 1].map((x) => x.toString(16)).join(':');
        expect(clientKey(addr)).toBe(clientKey(sameNet));
      }),
      { numRuns: 200 },
    );
  });
});

describe('trusted proxies and X-Forwarded-For', () => {
  const trusted = addressSet(['10.0.0.0/8', '2001:db8:ff::/48']);

  it('matches ranges, IPv4-mapped addresses included', () => {
    expect(trusted.has('10.1.2.3')).toBe(true);
    expect(trusted.has('::ffff:10.1.2.3')).toBe(true);
    expect(trusted.has('11.0.0.1')).toBe(false);
    expect(trusted.has('2001:db8:ff:1::1')).toBe(true);
    expect(trusted.has('2001:db8:fe::1')).toBe(false);
    expect(trusted.has('not an address')).toBe(false);
    expect(addressSet([]).has('10.0.0.1')).toBe(false);
  });

  it('names bad entries', () => {
    expect(cidrProblem(['10.0.0.0/8', '2001:db8::/32', '192.0.2.1'])).toBeUndefined();
    expect(cidrProblem(['10.0.0.0/33'])).toMatch(/10\.0\.0\.0\/33.*0–32/);
    expect(cidrProblem(['example.com'])).toMatch(/"example\.com" is not an address/);
    expect(cidrProblem(['10.0.0.0/x'])).toMatch(/prefix length/);
  });

  it('believes X-Forwarded-For only from a trusted peer, and only its right-most untrusted entry', () => {
    expect(forwardedClient('10.0.0.5', '198.51.100.9', trusted)).toBe('198.51.100.9');
    // Entries left of the first untrusted one were written by the client: a spoofed 1.2.3.4 changes nothing.
    expect(forwardedClient('10.0.0.5', '1.2.3.4, 198.51.100.9, 10.0.0.7', trusted)).toBe('198.51.100.9');
    expect(forwardedClient('10.0.0.5', ['1.2.3.4', '198.51.100.9:4711'], trusted)).toBe('198.51.100.9');
    expect(forwardedClient('10.0.0.5', '[2001:db8::1]:443', trusted)).toBe('2001:db8::1');
    // From an untrusted peer, or without trusted proxies at all, the header is ignored.
    expect(forwardedClient('192.0.2.10', '198.51.100.9', trusted)).toBe('192.0.2.10');
    expect(forwardedClient('10.0.0.5', '198.51.100.9', addressSet([]))).toBe('10.0.0.5');
    // Garbage where an address should be: the proxy itself is the client.
    expect(forwardedClient('10.0.0.5', 'unknown', trusted)).toBe('10.0.0.5');
    expect(forwardedClient('::ffff:10.0.0.5', undefined, trusted)).toBe('10.0.0.5');
  });
});

describe('PROXY protocol v2 header', () => {
  it('reads IPv4, IPv6 and LOCAL headers, TLVs included, and says how long the header was', () => {
    const v4 = proxyV2({ address: '203.0.113.7', port: 40000 }, { tlv: 20 });
    expect(parseProxyHeader(Buffer.concat([v4, Buffer.from('GET / HTTP/1.1\r\n')]))).toEqual({
      header: { kind: 'proxy', address: '203.0.113.7', port: 40000 },
      length: v4.length,
    });
    const v6 = proxyV2({ address: '2001:db8:0:0:0:0:0:9', port: 1234 });
    expect(parseProxyHeader(v6)).toEqual({ header: { kind: 'proxy', address: '2001:db8::9', port: 1234 }, length: 52 });
    expect(parseProxyHeader(proxyV2('local'))).toEqual({ header: { kind: 'local' }, length: 16 });
  });

  it('refuses garbage at the first wrong byte, other versions, datagrams and oversized headers', () => {
    const err = (b: Buffer): string => {
      try {
        parseProxyHeader(b);
        return 'parsed';
      } catch (e) {
        expect(e).toBeInstanceOf(ProxyProtocolError);
        return (e as Error).message;
      }
    };
    expect(err(Buffer.from('GET /v2/ HTTP/1.1\r\n\r\n'))).toMatch(/does not start with a PROXY protocol v2 header/);
    expect(err(Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n'))).toMatch(/does not start/);
    expect(err(Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0b]))).toMatch(/does not start/);
    expect(err(Buffer.from([0x0d, 0x0a, 0x0d]))).toMatch(/truncated/);
    expect(err(proxyV2({ address: '1.2.3.4', port: 1 }, { version: 1 }))).toMatch(/version 1/);
    expect(err(proxyV2({ address: '1.2.3.4', port: 1 }, { transport: 2 }))).toMatch(/datagram/);
    expect(err(proxyV2({ address: '1.2.3.4', port: 1 }, { tlv: MAX_PROXY_HEADER }))).toMatch(/at most 4096/);
    expect(err(proxyV2({ address: '1.2.3.4', port: 1 }).subarray(0, 20))).toMatch(/truncated/);
  });

  it('never throws anything but a ProxyProtocolError, whatever the bytes', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), fc.boolean(), (bytes, withSig) => {
        const b = withSig ? Buffer.concat([proxyV2('local').subarray(0, 12), Buffer.from(bytes)]) : Buffer.from(bytes);
        try {
          const r = parseProxyHeader(b);
          expect(r.length).toBeLessThanOrEqual(b.length);
        } catch (e) {
          expect(e).toBeInstanceOf(ProxyProtocolError);
        }
      }),
      { numRuns: 500 },
    );
  });
});
