/**
 * OwnerSource (src/cluster/owner-source.ts) with the real PeerClient against a loopback HTTP server playing the
 * owner, which misbehaves on purpose: refuses, answers an error, or dies mid-stream. The "upstream" is a function
 * over a buffer that records the offsets it was asked for.
 */
import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import type { DownloadSource } from '../../src/cache/download.js';
import { Membership } from '../../src/cluster/membership.js';
import { OwnerSource, type ClusterEvent } from '../../src/cluster/owner-source.js';
import { PeerClient } from '../../src/cluster/peer-client.js';
import { peerTokenOf, verifyPeerToken } from '../../src/cluster/peer-token.js';
import { rank } from '../../src/cluster/rendezvous.js';
import type { Digest } from '../../src/routing/reference.js';
import { byteSourceOf } from '../../src/util/byte-source.js';

const KEY = Buffer.from('s'.repeat(32));
const blob = randomBytes(3 * 1024 * 1024 + 17);
const digest = `sha256:${createHash('sha256').update(blob).digest('hex')}` as Digest;
const servers: http.Server[] = [];

afterEach(async () => {
  for (const s of servers.splice(0)) await new Promise((r) => s.close(r));
});

type Behaviour = 'whole' | 'die-half' | 'status-502';

/** A fake owner: checks the peer token, then behaves as told. */
async function owner(behaviour: Behaviour, seen: string[]): Promise<string> {
  const srv = http.createServer((req, res) => {
    const tok = peerTokenOf(req.headers.authorization);
    seen.push(req.url ?? '');
    if (!tok || !verifyPeerToken(KEY, tok, 'GET', req.url ?? '', Date.now(), 30_000).ok) {
      res.statusCode = 401;
      res.end();
      return;
    }
    if (behaviour === 'status-502') {
      res.statusCode = 502;
      res.end('upstream failed');
      return;
    }
    res.setHeader('content-length', blob.length);
    if (behaviour === 'whole') {
      res.end(blob);
      return;
    }
    res.write(blob.subarray(0, 1024 * 1024 + 5), () => res.socket?.destroy());
  });
  servers.push(srv);
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  return `http://127.0.0.1:${(srv.address() as AddressInfo).port}`;
}

/** A port nobody listens on. */
async function deadPeer(): Promise<string> {
  const srv = http.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const url = `http://127.0.0.1:${(srv.address() as AddressInfo).port}`;
  await new Promise((r) => srv.close(r));
  return url;
}

function upstream(offsets: number[]): (offset: number) => Promise<DownloadSource> {
  return (offset) => {
    offsets.push(offset);
    return Promise.resolve({
      size: blob.length,
      body: {
        pipeTo: async (onChunk) => {
          for (let i = offset; i < blob.length; i += 65536) {
            const wait = onChunk(blob.subarray(i, Math.min(blob.length, i + 65536)));
            if (wait) await wait;
          }
        },
      },
      cancel: () => {},
    });
  };
}

async function drain(src: DownloadSource): Promise<Buffer> {
  const parts: Buffer[] = [];
  await byteSourceOf(src.body).pipeTo((c) => {
    parts.push(Buffer.from(c));
  });
  return Buffer.concat(parts);
}

function setup(self: string, peers: string[]) {
  const events: ClusterEvent[] = [];
  const client = new PeerClient({ key: () => KEY, tokenTTL: 30_000, ownerTimeout: 5_000, ownerIdleTimeout: 5_000, probeTimeout: 1_000 });
  const membership = new Membership({ self, peers, probe: () => Promise.resolve(true), failuresToDown: 3 });
  return { events, client, membership, source: new OwnerSource({ membership, client, onEvent: (e) => events.push(e) }) };
}

/** A self URL that ranks below `above` for the digest (so `above` is the owner). */
function selfBelow(above: string[]): string {
  for (let i = 0; i < 1000; i++) {
    const cand = `http://self-${i}.invalid:1`;
    if (rank(digest, [...above, cand]).at(-1) === cand) return cand;
  }
  throw new Error('no self ranks last');
}

describe('OwnerSource', () => {
  it('streams the blob from its owner, with no upstream fetch', async () => {
    const seen: string[] = [];
    const o = await owner('whole', seen);
    const self = selfBelow([o]);
    const { source, client } = setup(self, [o, self]);
    const offsets: number[] = [];
    const src = await source.source('hub', 'library/app', digest, upstream(offsets));
    expect(src.size).toBe(blob.length);
    expect((await drain(src)).equals(blob)).toBe(true);
    expect(offsets).toEqual([]);
    expect(seen).toEqual([`/internal/v1/blobs/hub/library/app/${digest}`]);
    // The owner stores it: this replica waits for that copy instead of uploading its own.
    expect(src.writtenElsewhere?.()).toBe(true);
    await client.close();
  });

  it('resumes from the upstream at the byte reached when the owner dies mid-stream, and marks it down', async () => {
    const o = await owner('die-half', []);
    const self = selfBelow([o]);
    const { source, membership, events, client } = setup(self, [o, self]);
    const offsets: number[] = [];
    const src = await source.source('hub', 'library/app', digest, upstream(offsets));
    const got = await drain(src);
    expect(got.equals(blob)).toBe(true);
    expect(offsets).toHaveLength(1);
    expect(offsets[0]).toBeGreaterThan(0);
    expect(membership.isLive(o)).toBe(false);
    expect(events.map((e) => e.kind)).toEqual(['owner', 'resume']);
    // The owner is gone: this replica must store the blob itself.
    expect(src.writtenElsewhere?.()).toBe(false);
    await client.close();
  });

  it('an unreachable owner is marked down and the next replica in rendezvous order is asked', async () => {
    const seen: string[] = [];
    const alive = await owner('whole', seen);
    // A dead port that outranks the live owner for this digest (bounded search over fresh ports).
    let dead = await deadPeer();
    for (let i = 0; i < 100 && rank(digest, [dead, alive])[0] !== dead; i++) dead = await deadPeer();
    expect(rank(digest, [dead, alive])[0]).toBe(dead);
    const self = selfBelow([dead, alive]);
    const { source, membership, events, client } = setup(self, [dead, alive, self]);
    const offsets: number[] = [];
    const src = await source.source('hub', 'library/app', digest, upstream(offsets));
    expect((await drain(src)).equals(blob)).toBe(true);
    expect(offsets).toEqual([]);
    expect(seen).toHaveLength(1);
    expect(membership.isLive(dead)).toBe(false);
    expect(events.map((e) => e.kind)).toEqual(['unreachable', 'owner']);
    await client.close();
  });

  it('an owner that answers an error is not retried elsewhere: this replica fetches from the upstream', async () => {
    const o = await owner('status-502', []);
    const self = selfBelow([o]);
    const { source, membership, events, client } = setup(self, [o, self]);
    const offsets: number[] = [];
    const src = await source.source('hub', 'library/app', digest, upstream(offsets));
    expect((await drain(src)).equals(blob)).toBe(true);
    expect(offsets).toEqual([0]);
    expect(membership.isLive(o)).toBe(true);
    expect(events).toEqual([{ kind: 'refused', peer: o, digest, status: 502 }]);
    await client.close();
  });

  it('a consumer failure is not resumed (it is not the owner’s fault)', async () => {
    const o = await owner('whole', []);
    const self = selfBelow([o]);
    const { source, membership, client } = setup(self, [o, self]);
    const offsets: number[] = [];
    const src = await source.source('hub', 'library/app', digest, upstream(offsets));
    await expect(
      byteSourceOf(src.body).pipeTo(() => {
        throw new Error('disk full');
      }),
    ).rejects.toThrow('disk full');
    expect(offsets).toEqual([]);
    expect(membership.isLive(o)).toBe(true);
    src.cancel();
    await client.close();
  });

  it('when this replica is the owner, it fetches from the upstream without asking anyone', async () => {
    const seen: string[] = [];
    const o = await owner('whole', seen);
    const self = selfAbove(o);
    const { source, client } = setup(self, [o, self]);
    const offsets: number[] = [];
    const src = await source.source('hub', 'library/app', digest, upstream(offsets));
    expect((await drain(src)).equals(blob)).toBe(true);
    expect(offsets).toEqual([0]);
    expect(seen).toEqual([]);
    await client.close();
  });
});

function selfAbove(other: string): string {
  for (let i = 0; i < 1000; i++) {
    const cand = `http://self-${i}.invalid:1`;
    if (rank(digest, [other, cand])[0] === cand) return cand;
  }
  throw new Error('no self ranks first');
}
