/**
 * The cluster's pure parts: rendezvous hashing (which replica owns a digest), the peer token (what the internal
 * endpoints accept), the membership (who is live, with probes run by hand) and the cluster config.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Membership } from '../../src/cluster/membership.js';
import { ownerOf, rank } from '../../src/cluster/rendezvous.js';
import { peerTokenOf, signPeerToken, verifyPeerToken } from '../../src/cluster/peer-token.js';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseConfig } from '../../src/config/load.js';
import { checkConfigFile } from '../../src/server/bootstrap.js';

const node = fc.webUrl({ withQueryParameters: false, withFragments: false });
const nodes = fc.uniqueArray(node, { minLength: 2, maxLength: 8 });
const digest = fc.uint8Array({ minLength: 32, maxLength: 32 }).map((b) => `sha256:${Buffer.from(b).toString('hex')}`);

describe('rendezvous hashing', () => {
  it('is stable: the owner depends only on the set of nodes, not on their order', () => {
    fc.assert(
      fc.property(nodes, digest, fc.integer(), (ns, d, seed) => {
        const shuffled = [...ns].sort((a, b) => ((a.length * 31 + seed) % 7) - ((b.length * 31 + seed) % 7) || a.localeCompare(b));
        expect(ownerOf(d, shuffled)).toBe(ownerOf(d, ns));
        expect(rank(d, shuffled)).toEqual(rank(d, ns));
      }),
    );
  });

  it('moves only the keys of a node that leaves, each to its runner-up', () => {
    fc.assert(
      fc.property(nodes, fc.array(digest, { minLength: 1, maxLength: 50 }), fc.nat(), (ns, keys, pick) => {
        const gone = ns[pick % ns.length]!;
        const rest = ns.filter((n) => n !== gone);
        for (const k of keys) {
          const before = rank(k, ns);
          const after = ownerOf(k, rest);
          if (before[0] !== gone) expect(after).toBe(before[0]);
          else expect(after).toBe(before[1]);
        }
      }),
    );
  });

  it('a node that joins takes only keys it now wins', () => {
    fc.assert(
      fc.property(nodes, node, fc.array(digest, { minLength: 1, maxLength: 50 }), (ns, extra, keys) => {
        fc.pre(!ns.includes(extra));
        for (const k of keys) {
          const after = ownerOf(k, [...ns, extra]);
          expect(after === extra || after === ownerOf(k, ns)).toBe(true);
        }
      }),
    );
  });

  it('spreads digests over three replicas (none owns more than half of 3,000)', () => {
    const three = ['http://10.0.0.1:5000', 'http://10.0.0.2:5000', 'http://10.0.0.3:5000'];
    const counts = new Map<string, number>();
    for (let i = 0; i < 3000; i++) {
      const o = ownerOf(`sha256:${i.toString(16).padStart(64, '0')}`, three)!;
      counts.set(o, (counts.get(o) ?? 0) + 1);
    }
    for (const n of three) expect(counts.get(n) ?? 0).toBeGreaterThan(600);
    for (const n of three) expect(counts.get(n) ?? 0).toBeLessThan(1500);
  });
});

describe('peer token', () => {
  const key = Buffer.from('k'.repeat(32));
  const path = '/internal/v1/blobs/hub/library/alpine/sha256:' + 'a'.repeat(64);
  const T0 = 1_800_000_000_000;
  const TTL = 30_000;

  it('is accepted for its method and path until it expires, and refused from then on (a replay)', () => {
    const t = signPeerToken(key, 'GET', path, T0, TTL);
    expect(verifyPeerToken(key, t, 'GET', path, T0, TTL)).toEqual({ ok: true });
    expect(verifyPeerToken(key, t, 'GET', path, T0 + TTL - 1, TTL)).toEqual({ ok: true });
    expect(verifyPeerToken(key, t, 'GET', path, T0 + TTL, TTL)).toEqual({ ok: false, code: 'EXPIRED' });
    expect(verifyPeerToken(key, t, 'GET', path, T0 + 3_600_000, TTL)).toEqual({ ok: false, code: 'EXPIRED' });
  });

  it('is bound to the path and the method', () => {
    const t = signPeerToken(key, 'GET', path, T0, TTL);
    expect(verifyPeerToken(key, t, 'GET', path.replace('alpine', 'busybox'), T0, TTL)).toEqual({ ok: false, code: 'BAD_MAC' });
    expect(verifyPeerToken(key, t, 'GET', path.replace(/a{64}$/, 'b'.repeat(64)), T0, TTL)).toEqual({ ok: false, code: 'BAD_MAC' });
    expect(verifyPeerToken(key, t, 'HEAD', path, T0, TTL)).toEqual({ ok: false, code: 'BAD_MAC' });
  });

  it('needs the key', () => {
    const t = signPeerToken(Buffer.from('x'.repeat(32)), 'GET', path, T0, TTL);
    expect(verifyPeerToken(key, t, 'GET', path, T0, TTL)).toEqual({ ok: false, code: 'BAD_MAC' });
  });

  it('cannot be stretched: a changed expiry breaks the MAC, and a signed far expiry is refused', () => {
    const t = signPeerToken(key, 'GET', path, T0, TTL);
    const [v, exp, mac] = t.split('.');
    const stretched = `${v}.${Number(exp) + 3_600_000}.${mac}`;
    expect(verifyPeerToken(key, stretched, 'GET', path, T0 + TTL, TTL)).toEqual({ ok: false, code: 'BAD_MAC' });
    const long = signPeerToken(key, 'GET', path, T0, 3_600_000);
    expect(verifyPeerToken(key, long, 'GET', path, T0, TTL)).toEqual({ ok: false, code: 'TOO_LONG' });
  });

  it('refuses malformed tokens whatever they hold', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 120 }), (s) => {
        const r = verifyPeerToken(key, s, 'GET', path, T0, TTL);
        expect(r.ok).toBe(false);
      }),
    );
    for (const s of ['', 'v1..', `v2.${T0 + 1000}.${'A'.repeat(43)}`, `v1.${T0 + 1000}.${'A'.repeat(42)}`]) {
      expect(verifyPeerToken(key, s, 'GET', path, T0, TTL).ok).toBe(false);
    }
  });

  it('is read from its own Authorization scheme only', () => {
    expect(peerTokenOf('PortcullisPeer abc')).toBe('abc');
    expect(peerTokenOf('Bearer abc')).toBeUndefined();
    expect(peerTokenOf(undefined)).toBeUndefined();
  });
});

describe('membership', () => {
  const self = 'http://a:1';
  const peers = ['http://a:1', 'http://b:1', 'http://c:1'];

  it('a peer is out after failuresToDown failed probes and back after one answer; self is always live', async () => {
    const up = new Map(peers.map((p) => [p, true]));
    let t = 1000;
    const changes: string[] = [];
    const m = new Membership({
      self,
      peers,
      probe: (p) => (up.get(p) ? Promise.resolve(true) : Promise.reject(new Error('refused'))),
      failuresToDown: 2,
      now: () => t,
      onChange: (p, live) => changes.push(`${p}:${live}`),
    });
    await m.probeAll();
    expect(m.live()).toEqual(peers);
    expect(m.lastSeen('http://b:1')).toBe(1000);
    up.set('http://b:1', false);
    t = 2000;
    await m.probeAll();
    expect(m.isLive('http://b:1')).toBe(true);
    await m.probeAll();
    expect(m.isLive('http://b:1')).toBe(false);
    expect(m.live()).toEqual(['http://a:1', 'http://c:1']);
    expect(m.lastSeen('http://b:1')).toBe(1000);
    up.set('http://b:1', true);
    t = 3000;
    await m.probeAll();
    expect(m.isLive('http://b:1')).toBe(true);
    expect(m.lastSeen('http://b:1')).toBe(3000);
    expect(changes).toEqual(['http://b:1:false', 'http://b:1:true']);
    m.markDown(self);
    expect(m.isLive(self)).toBe(true);
  });

  it('markDown takes a peer out at once, and owners() then names the runner-up', () => {
    const m = new Membership({ self, peers, probe: () => Promise.resolve(true), failuresToDown: 3 });
    const d = 'sha256:' + '1'.repeat(64);
    const ranked = rank(d, peers);
    const victim = ranked.find((p) => p !== self)!;
    m.markDown(victim);
    expect(m.owners(d)).toEqual(ranked.filter((p) => p !== victim));
  });

  it('runs at most one probe per peer at a time (a hung peer does not pile up probes)', async () => {
    let started = 0;
    const release: Array<(v: boolean) => void> = [];
    const m = new Membership({
      self,
      peers,
      probe: () => {
        started++;
        return new Promise<boolean>((r) => release.push(r));
      },
      failuresToDown: 1,
    });
    const first = m.probeAll();
    void m.probeAll();
    void m.probeAll();
    expect(started).toBe(2);
    for (const r of release) r(true);
    await first;
  });
});

describe('cluster config', () => {
  const base = (cluster: unknown): string =>
    JSON.stringify({ upstreams: [{ name: 'hub', registry: 'docker.io', url: 'https://registry-1.docker.io' }], cluster });

  it('adds self to the peers and fills the defaults', () => {
    const c = parseConfig(base({ self: 'http://10.0.0.1:5000/', peers: ['http://10.0.0.2:5000'], secret: { env: 'K' } }), 'c.yaml', {});
    expect(c.cluster?.peers).toEqual(['http://10.0.0.1:5000', 'http://10.0.0.2:5000']);
    expect(c.cluster?.self).toBe('http://10.0.0.1:5000');
    expect(c.cluster?.failuresToDown).toBe(3);
    expect(c.cluster?.tokenTTL).toBe(30_000);
  });

  it('config check refuses a missing or short secret, naming cluster.secret', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'pc-cluster-cfg-'));
    try {
      const file = join(dir, 'c.json');
      writeFileSync(file, base({ self: 'http://a:1', peers: ['http://b:1'], secret: { env: 'PC_TEST_CLUSTER_KEY' } }));
      await expect(checkConfigFile(file, {})).rejects.toThrow(/cluster\.secret/);
      await expect(checkConfigFile(file, { PC_TEST_CLUSTER_KEY: 'short' })).rejects.toThrow(/cluster\.secret: at least 32 bytes/);
      await expect(checkConfigFile(file, { PC_TEST_CLUSTER_KEY: 'k'.repeat(32) })).resolves.toBeDefined();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('names the field of a bad setting', () => {
    expect(() => parseConfig(base({ self: 'ftp://x', peers: ['http://a:1'], secret: { env: 'K' } }), 'c.yaml', {})).toThrow(/cluster\.self/);
    expect(() => parseConfig(base({ self: 'http://a:1', peers: [], secret: { env: 'K' } }), 'c.yaml', {})).toThrow(/cluster\.peers/);
    expect(() => parseConfig(base({ self: 'http://a:1', peers: ['http://a:1'], secret: 'inline' }), 'c.yaml', {})).toThrow(/cluster\.secret/);
    expect(() => parseConfig(base({ self: 'http://a:1', peers: ['http://a:1'], secret: { env: 'K' }, tokenTTL: '1h' }), 'c.yaml', {})).toThrow(
      /cluster\.tokenTTL/,
    );
  });
});
