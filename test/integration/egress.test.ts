/**
 * Bounded egress: a hostile upstream redirecting blob downloads, and naming token realms, elsewhere.
 *
 * Every address used here is on 127.0.0.0/8. "Elsewhere" is modelled two ways that need no other network:
 *  - IPv4-mapped IPv6 (`::ffff:127.0.0.1`): a special range an upstream's own address never opens, yet one that
 *    reaches loopback, so without the check the echo server would be reached and would serve the blob;
 *  - names that only an injected resolver knows (`*.attacker.test`), resolved to the cloud metadata address or
 *    a private one: the check is in the lookup, so the refusal comes before any socket has an address.
 */
import { createHash, randomBytes } from 'node:crypto';
import type { LookupAddress } from 'node:dns';
import type { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { Metrics } from '../../src/metrics/metrics.js';
import { UpstreamClient } from '../../src/upstream/client.js';
import { EgressRefusedError, type LookupFunction } from '../../src/upstream/egress.js';
import { startEchoServer, startFakeUpstream, type EchoServer, type FakeUpstream } from '../harness/fake-upstream.js';
import { startProxy } from '../harness/proxy.js';

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const esc = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

let up: FakeUpstream;
let echo: EchoServer;
let seq = 0;

beforeAll(async () => {
  up = await startFakeUpstream();
  echo = await startEchoServer();
});
afterAll(async () => {
  await up?.stop();
  await echo?.stop();
});

/** A fresh image whose layer GET the upstream redirects to `to(layerDigest)`. */
function seedRedirected(to: (digest: string) => string): { repo: string; layer: Buffer; layerDigest: string } {
  const repo = `egress/app${++seq}`;
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] }, n: seq }));
  const layer = randomBytes(64 * 1024);
  const configDigest = up.addBlob(repo, config);
  const layerDigest = up.addBlob(repo, layer);
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: configDigest, size: config.length },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: layerDigest, size: layer.length }],
    }),
  );
  up.addManifest(repo, 'v1', manifest, OCI_MANIFEST);
  up.setFault({ method: 'GET', pathRegex: new RegExp(`/${esc(repo)}/blobs/${esc(layerDigest)}$`) }, { kind: 'redirect', to: to(layerDigest) });
  return { repo, layer, layerDigest };
}

const echoPort = (): string => new URL(echo.url).port;

describe('through the proxy', () => {
  it('a blob redirect to an IPv4-mapped address is refused before connecting: 502 naming the range, the target sees nothing', async () => {
    const p = await startProxy({ upstreams: [{ name: 'hostile', registry: up.host, url: up.url }] });
    try {
      const s = seedRedirected((d) => `http://[::ffff:127.0.0.1]:${echoPort()}/cdn/${d.slice(7)}`);
      echo.setBody(s.layer);
      echo.clearRequests();
      const m = await fetch(`${p.url}/v2/${up.host}/${s.repo}/manifests/v1`, { headers: { accept: OCI_MANIFEST } });
      expect(m.status).toBe(200);
      await m.arrayBuffer();
      const r = await fetch(`${p.url}/v2/${up.host}/${s.repo}/blobs/${s.layerDigest}`);
      const body = (await r.json()) as { errors: Array<{ code: string; message: string }> };
      expect(r.status).toBe(502);
      expect(body.errors[0]!.message).toMatch(/refusing to connect to ::ffff:7f00:1 .*ipv4-mapped/);
      expect(echo.requests()).toHaveLength(0);
      const refused = await p.proxy.app.metrics.egressRefused.get();
      expect(refused.values.find((v) => v.labels.upstream === 'hostile' && v.labels.kind === 'ipv4-mapped')?.value).toBeGreaterThanOrEqual(1);
      // Not retried: the upstream was asked once.
      expect(up.requests().filter((q) => q.path.endsWith(`/blobs/${s.layerDigest}`))).toHaveLength(1);
    } finally {
      await p.stop();
    }
  });

  it('a token realm at a refused address is never contacted: the request fails with the reason', async () => {
    const realmUp = await startFakeUpstream({ requireBearer: { realm: `http://[::ffff:127.0.0.1]:${echoPort()}/token`, service: 'fake', token: 't' } });
    const p = await startProxy({ upstreams: [{ name: 'realm', registry: realmUp.host, url: realmUp.url }] });
    try {
      echo.clearRequests();
      const r = await fetch(`${p.url}/v2/${realmUp.host}/any/repo/manifests/v1`, { headers: { accept: OCI_MANIFEST } });
      const body = (await r.json()) as { errors: Array<{ message: string }> };
      expect(r.status).toBe(502);
      expect(body.errors[0]!.message).toMatch(/refusing to connect .*ipv4-mapped/);
      expect(echo.requests()).toHaveLength(0);
    } finally {
      await p.stop();
      await realmUp.stop();
    }
  });

  it('a redirect to another loopback port is followed: the upstream itself is on loopback', async () => {
    const p = await startProxy({ upstreams: [{ name: 'local', registry: up.host, url: up.url }] });
    try {
      const s = seedRedirected((d) => `http://127.0.0.1:${echoPort()}/cdn/${d.slice(7)}`);
      echo.setBody(s.layer);
      const m = await fetch(`${p.url}/v2/${up.host}/${s.repo}/manifests/v1`, { headers: { accept: OCI_MANIFEST } });
      expect(m.status).toBe(200);
      await m.arrayBuffer();
      const r = await fetch(`${p.url}/v2/${up.host}/${s.repo}/blobs/${s.layerDigest}`);
      expect(r.status).toBe(200);
      expect(sha(Buffer.from(await r.arrayBuffer()))).toBe(s.layerDigest);
    } finally {
      await p.stop();
    }
  });
});

/** A resolver that knows only the test's names, and records each lookup. */
function fakeDns(table: Record<string, string>, asked: string[]): LookupFunction {
  return (hostname, options, callback) => {
    asked.push(hostname);
    const address = table[hostname];
    if (!address) return callback(Object.assign(new Error(`getaddrinfo ENOTFOUND ${hostname}`), { code: 'ENOTFOUND' }), options.all ? [] : '');
    const family = address.includes(':') ? 6 : 4;
    const list: LookupAddress[] = [{ address, family }];
    return options.all ? callback(null, list) : callback(null, address, family);
  };
}

async function readAll(body: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of body) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

describe('the upstream client, both transports, with an injected resolver', () => {
  const asked: string[] = [];
  const dns = (): LookupFunction =>
    fakeDns(
      {
        // The upstream itself, by name.
        'registry.test': '127.0.0.1',
        'mapped.attacker.test': '::ffff:127.0.0.1',
        'cdn.attacker.test': '127.0.0.1',
      },
      asked,
    );

  function client(extra: Record<string, unknown> = {}): UpstreamClient {
    const cfg = parseConfig(
      JSON.stringify({ upstreams: [{ name: 'hostile', registry: up.host, url: `http://registry.test:${new URL(up.url).port}`, retries: 0, ...extra }] }),
      'egress.yaml',
      {},
    );
    return new UpstreamClient(cfg.upstreams[0]!, { metrics: new Metrics(), lookup: dns() });
  }

  for (const bulk of [true, false]) {
    const transport = bulk ? 'socket transport' : 'undici';

    // Only a special address that still lands on loopback if the check ever regressed: a test must never send a
    // packet off this machine. Metadata, private and the other ranges are classified in test/unit/egress.test.ts,
    // through the same lookup hook.
    for (const [name, kind] of [['mapped.attacker.test', 'ipv4-mapped']] as const) {
      it(`${transport}: a redirect to ${name} is refused in the lookup (${kind}), before any connection`, async () => {
        const c = client();
        try {
          const s = seedRedirected((d) => `http://${name}:${echoPort()}/cdn/${d.slice(7)}`);
          echo.setBody(s.layer);
          echo.clearRequests();
          asked.length = 0;
          const err = await c
            .send({ method: 'GET', path: `/v2/${s.repo}/blobs/${s.layerDigest}`, kind: 'blob', repository: s.repo, bulk })
            .catch((e: unknown) => e);
          expect(err).toBeInstanceOf(EgressRefusedError);
          expect((err as EgressRefusedError).range.kind).toBe(kind);
          // The name was resolved once, by the hook that refused it: no socket ever had the address.
          expect(asked.filter((h) => h === name)).toEqual([name]);
          expect(echo.requests()).toHaveLength(0);
        } finally {
          await c.destroy();
        }
      });
    }

    it(`${transport}: a name resolving into the upstream's own range is followed, to the address the hook checked`, async () => {
      const c = client();
      try {
        // Userinfo in the Location is shed: it would otherwise ride along in the URL into logs.
        const s = seedRedirected((d) => `http://user:hunter2@cdn.attacker.test:${echoPort()}/cdn/${d.slice(7)}`);
        echo.setBody(s.layer);
        echo.clearRequests();
        const res = await c.send({ method: 'GET', path: `/v2/${s.repo}/blobs/${s.layerDigest}`, kind: 'blob', repository: s.repo, bulk });
        expect(res.status).toBe(200);
        expect(sha(await readAll(res.body))).toBe(s.layerDigest);
        expect(res.url).toBe(`http://cdn.attacker.test:${echoPort()}/cdn/${s.layerDigest.slice(7)}`);
        expect(echo.requests()[0]?.headers.authorization).toBeUndefined();
        // No system resolver knows this name: the connection used the hook's answer.
        expect(asked).toContain('cdn.attacker.test');
      } finally {
        await c.destroy();
      }
    });

    it(`${transport}: redirects.allow opens a range explicitly`, async () => {
      const c = client({ redirects: { allow: ['::ffff:0:0/96'] } });
      try {
        const s = seedRedirected((d) => `http://mapped.attacker.test:${echoPort()}/cdn/${d.slice(7)}`);
        echo.setBody(s.layer);
        const res = await c.send({ method: 'GET', path: `/v2/${s.repo}/blobs/${s.layerDigest}`, kind: 'blob', repository: s.repo, bulk });
        expect(res.status).toBe(200);
        expect(sha(await readAll(res.body))).toBe(s.layerDigest);
      } finally {
        await c.destroy();
      }
    });
  }
});
