/**
 * Huge images (issue 16, item 4): "no request holds more than one manifest's bytes in memory at a time beyond the
 * configured caps". A hostile index lists N children, each as large as limits.maxManifestSize allows; a client asks
 * for the index and then every child. Each child decision may hold the child, its parent and its root (three
 * manifests); nothing may keep a child once its decision is over, or hold the children all at once.
 *
 * Method: what is reachable, read after a full GC (heapUsed + arrayBuffers: manifest bytes are Buffers off the heap,
 * their parse is on it), at the points a decision is in flight (every manifest the gate reads back, every policy
 * evaluation) and after each decision. The test itself builds every manifest afresh from its index and keeps only
 * digests, so what stays reachable is what the gate keeps.
 */
import { createHash } from 'node:crypto';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SqliteMetaStore, type MetaStore } from '../../src/cache/metastore.js';
import { Gate } from '../../src/gate/gate.js';
import { OCI_INDEX, OCI_MANIFEST, parseManifest } from '../../src/oci/mediatypes.js';
import type { Decider, PolicyInput, PolicyResult } from '../../src/policy/contract.js';
import type { Manifest } from '../../src/proxy/manifests.js';
import type { Digest } from '../../src/routing/reference.js';
import { Router } from '../../src/routing/route.js';
import { cleanupTempDirs, makeConfig, tempDir } from './helpers.js';

afterAll(cleanupTempDirs);

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

/** The configured cap in this test (limits.maxManifestSize), and how many children the hostile index lists. */
const CAP = 256 * 1024;
const N = 32;

const hex = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');
const manifestOf = (bytes: Buffer): Manifest => {
  const parsed = parseManifest(bytes, undefined);
  return { digest: `sha256:${hex(bytes)}`, mediaType: parsed.mediaType, bytes, parsed };
};

/** Child i, padded (an annotation) to just under the cap; built afresh on every call. */
function childBytes(i: number): Buffer {
  const doc = {
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: `sha256:${hex(`config-${i}`)}`, size: 100 },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: `sha256:${hex(`layer-${i}`)}`, size: 100 }],
    annotations: { pad: '' },
  };
  doc.annotations.pad = String(i % 10).repeat(CAP - 1024 - JSON.stringify(doc).length);
  return Buffer.from(JSON.stringify(doc));
}
const childDigests = Array.from({ length: N }, (_, i) => `sha256:${hex(childBytes(i))}` as Digest);
function indexBytes(): Buffer {
  return Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_INDEX,
      manifests: childDigests.map((digest, i) => ({
        mediaType: OCI_MANIFEST,
        digest,
        size: childBytes(i).length,
        platform: { os: 'linux', architecture: 'amd64', variant: `v${i}` },
      })),
    }),
  );
}

const reachable = () => {
  gc();
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
};

const ALLOW: PolicyResult = { allow: true, deny: [], warn: [], scope: 'all', mode: 'enforce' };

let meta: MetaStore;
beforeEach(() => {
  meta = new SqliteMetaStore(tempDir());
});
afterEach(() => meta.close());

describe('huge images: a decision holds at most a bounded number of manifests, never all children of an index', () => {
  it(`an index of ${N} children each at the ${CAP / 1024} KiB cap: at most three manifests reachable during a decision, none kept after`, async () => {
    const config = makeConfig({ upstreams: [{ name: 'hub', registry: 'docker.io', url: 'https://registry-1.docker.io' }], defaultUpstream: 'hub' });
    const r = new Router(config).resolve('library/huge', undefined);
    if ('code' in r) throw new Error(r.message);
    const indexDigest = `sha256:${hex(indexBytes())}` as Digest;
    const samples: { during: number[] } = { during: [] };
    const decider: Decider = {
      revision: 'r1',
      evaluate: (_input: PolicyInput) => {
        samples.during.push(reachable());
        return Promise.resolve(ALLOW);
      },
    };
    const gate = new Gate({
      decider,
      meta,
      options: {
        allowTTL: 600_000,
        denyTTL: 30_000,
        closureTTL: 3_600_000,
        // What the gate reads back (the root and parent of a child): built afresh, as the manifest service does.
        manifests: {
          get: (_r, digest) => {
            if (digest === indexDigest) return Promise.resolve(manifestOf(indexBytes()));
            const i = childDigests.indexOf(digest);
            return i >= 0 ? Promise.resolve(manifestOf(childBytes(i))) : Promise.reject(new Error(`unknown ${digest}`));
          },
        },
      },
    });
    const client = { ip: '10.0.0.1', user: null, groups: [], method: 'anonymous', userAgent: 'containerd/2' };
    const root = await gate.admitRoot({ route: r, method: 'GET', tag: 'v1', manifest: manifestOf(indexBytes()), kind: 'manifest', client });
    expect(root.serve).toBe(true);
    const decideChild = async (i: number) => {
      const a = await gate.admitByDigest({ route: r, method: 'GET', client, manifest: manifestOf(childBytes(i)) });
      expect(a.serve).toBe(true);
    };
    // The first child warms every code path (compiled code and caches are on the heap too): the baseline follows it.
    await decideChild(0);
    samples.during.length = 0;
    const baseline = reachable();
    const after: number[] = [];
    for (let i = 1; i < N; i++) {
      await decideChild(i);
      after.push(reachable());
    }
    // The children were decided one by one (each has a decision of its own), through the read-back path.
    expect(samples.during.length).toBe(N - 1);
    const manifests = (bytes: number) => (bytes - baseline) / CAP;
    // In flight (at the policy evaluation): the child, its parent and its root (here the same index), with their parse.
    expect(manifests(Math.max(...samples.during))).toBeLessThan(3 * 2);
    // Between decisions: no child kept (a leak of one child per decision would reach N here).
    expect(manifests(Math.max(...after))).toBeLessThan(2);
  });
});
