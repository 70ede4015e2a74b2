/**
 * The warm manifest path's cost (issue 12): a manifest served again by tag or by digest is not read back from the
 * metastore and re-parsed on every request, and a tag within its TTL is not sent through the single flight. Counted
 * through a spy on the real SQLite metastore and on the upstream client, never timed.
 */
import { Readable } from 'node:stream';
import { afterEach, describe, expect, test, vi } from 'vitest';
import { SqliteMetaStore } from '../../src/cache/metastore.js';
import { Metrics } from '../../src/metrics/metrics.js';
import { OCI_MANIFEST } from '../../src/oci/mediatypes.js';
import { ProxyManifestService } from '../../src/proxy/manifests.js';
import { Router, type Route } from '../../src/routing/route.js';
import type { UpstreamClient, UpstreamRequest, UpstreamResponse } from '../../src/upstream/client.js';
import { cleanupTempDirs, makeConfig, sha256, tempDir } from './helpers.js';

const HOST = 'registry.test';

afterEach(cleanupTempDirs);

function image(n: number): Buffer {
  const d = sha256(`layer ${n}`);
  return Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: d, size: 2 },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: d, size: 2 }],
    }),
  );
}

function setup() {
  const config = makeConfig({ upstreams: [{ name: 'up', registry: HOST, url: `https://${HOST}` }], defaultUpstream: 'up' });
  const meta = new SqliteMetaStore(tempDir());
  const bodies = new Map<string, Buffer>();
  const sent: UpstreamRequest[] = [];
  const client = {
    send(req: UpstreamRequest): Promise<UpstreamResponse> {
      sent.push(req);
      const ref = req.path.split('/manifests/')[1]!;
      const body = bodies.get(ref);
      const headers = body ? { 'content-type': OCI_MANIFEST, 'content-length': String(body.length), 'docker-content-digest': sha256(body) } : {};
      return Promise.resolve({ status: body ? 200 : 404, statusText: '', headers, body: Readable.from(req.method === 'HEAD' || !body ? [] : [body]), url: '' });
    },
  } as unknown as UpstreamClient;
  const now = { t: 1_000_000 };
  const svc = new ProxyManifestService({ config, meta, clientFor: () => client, metrics: new Metrics({ defaultMetrics: false }), now: () => now.t });
  const route = new Router(config).resolve('lib/app', undefined) as Route;
  return { config, meta, bodies, sent, svc, route, now };
}

describe('warm manifest path', () => {
  test('a manifest served again by digest or by tag is read from the metastore once, and is the same verified bytes', async () => {
    const s = setup();
    const bytes = image(1);
    const digest = sha256(bytes);
    s.bodies.set('v1', bytes);
    s.bodies.set(digest, bytes);
    const first = await s.svc.resolveTag(s.route, 'v1');
    expect(first.manifest.digest).toBe(digest);
    const reads = vi.spyOn(s.meta, 'getManifest');
    for (let i = 0; i < 50; i++) {
      const byTag = await s.svc.resolveTag(s.route, 'v1');
      expect(byTag.manifest.digest).toBe(digest);
      expect(byTag.manifest.bytes.equals(bytes)).toBe(true);
      const byDigest = await s.svc.get(s.route, digest);
      expect(byDigest.parsed.mediaType).toBe(OCI_MANIFEST);
    }
    // Upstream asked only for the first resolution (a HEAD and a GET), never on the warm path.
    expect(s.sent.length).toBeLessThanOrEqual(2);
    expect(reads).toHaveBeenCalledTimes(0);
    s.meta.close();
  });

  test('a manifest first seen in the metastore (another process wrote it) is read once, then served from memory', async () => {
    const s = setup();
    const bytes = image(2);
    const digest = sha256(bytes);
    s.meta.putManifest('up', 'lib/app', { digest, mediaType: OCI_MANIFEST, bytes });
    const reads = vi.spyOn(s.meta, 'getManifest');
    for (let i = 0; i < 20; i++) expect((await s.svc.get(s.route, digest)).digest).toBe(digest);
    expect(reads).toHaveBeenCalledTimes(1);
    expect(s.sent).toHaveLength(0);
    s.meta.close();
  });

  test('the in-memory copy is scoped like the metastore: cached for one repository, not served for another', async () => {
    const s = setup();
    const bytes = image(3);
    const digest = sha256(bytes);
    s.meta.putManifest('up', 'lib/app', { digest, mediaType: OCI_MANIFEST, bytes });
    await s.svc.get(s.route, digest);
    const other = new Router(s.config).resolve('lib/other', undefined) as Route;
    await expect(s.svc.get(other, digest)).rejects.toThrow(/not found upstream/);
    expect(s.sent.map((r) => r.path)).toEqual([`/v2/lib/other/manifests/${digest}`]);
    s.meta.close();
  });

  test('a tag past its TTL still goes upstream (the fast path only takes fresh mappings)', async () => {
    const s = setup();
    const bytes = image(4);
    s.bodies.set('v1', bytes);
    s.bodies.set(sha256(bytes), bytes);
    await s.svc.resolveTag(s.route, 'v1');
    const before = s.sent.length;
    await s.svc.resolveTag(s.route, 'v1');
    expect(s.sent.length).toBe(before);
    s.now.t += s.config.cache.tagTTL;
    await s.svc.resolveTag(s.route, 'v1');
    expect(s.sent.length).toBe(before + 1);
    expect(s.sent.at(-1)!.method).toBe('HEAD');
    s.meta.close();
  });

  test('a fresh tag is resolved without a metastore read; a tag gone upstream is forgotten in memory too', async () => {
    const s = setup();
    const bytes = image(5);
    s.bodies.set('v1', bytes);
    s.bodies.set(sha256(bytes), bytes);
    await s.svc.resolveTag(s.route, 'v1');
    const tagReads = vi.spyOn(s.meta, 'getTag');
    for (let i = 0; i < 50; i++) await s.svc.resolveTag(s.route, 'v1');
    expect(tagReads).toHaveBeenCalledTimes(0);
    // Past the TTL the upstream says 404: the mapping goes, from the metastore and from memory.
    s.bodies.delete('v1');
    s.now.t += s.config.cache.tagTTL;
    await expect(s.svc.resolveTag(s.route, 'v1')).rejects.toThrow(/not found upstream/);
    expect(s.meta.getTag('up', 'lib/app', 'v1')).toBeUndefined();
    s.now.t -= s.config.cache.tagTTL;
    const before = s.sent.length;
    await expect(s.svc.resolveTag(s.route, 'v1')).rejects.toThrow(/not found upstream/);
    expect(s.sent.length).toBe(before + 1);
    s.meta.close();
  });
});
