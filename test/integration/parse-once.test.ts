/**
 * Pass what is known: a manifest is parsed once where it enters the proxy (fetched upstream, or read from the
 * metadata store) and the parse travels with it, through the gate, to the signature and scan providers. A spy on
 * the parser counts how often the requested manifest's bytes are parsed for one request, with signatures and scans
 * configured so that every evidence provider takes part: once on a cold decision, and not at all on a warm request
 * (the parsed manifest is kept in memory with its verified bytes, src/proxy/manifests.ts; issue 12).
 */
import { createHash, generateKeyPairSync } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test, vi } from 'vitest';
import { startFakeUpstream, type FakeUpstream } from '../harness/fake-upstream.js';
import { MANIFEST_ACCEPT } from '../harness/images.js';
import { startProxy, type RunningProxy } from '../harness/proxy.js';

/** The sha256 of the bytes of every parseManifest call, in order. */
const parsed = vi.hoisted(() => [] as string[]);
vi.mock('../../src/oci/mediatypes.js', async (importOriginal) => {
  const { createHash: hash } = await import('node:crypto');
  const m = await importOriginal<typeof import('../../src/oci/mediatypes.js')>();
  return {
    ...m,
    parseManifest: (bytes: Buffer, contentType: string | undefined) => {
      parsed.push(`sha256:${hash('sha256').update(bytes).digest('hex')}`);
      return m.parseManifest(bytes, contentType);
    },
  };
});

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

let dir: string;
let up: FakeUpstream;
let px: RunningProxy;
let image: { digest: string; bytes: Buffer };
let byDigest: { digest: string; bytes: Buffer };
let index: string;
let children: Array<{ digest: string; bytes: Buffer }>;

function addImage(repo: string, tag: string | undefined, arch: string): { digest: string; bytes: Buffer } {
  const config = Buffer.from(JSON.stringify({ architecture: arch, os: 'linux', rootfs: { type: 'layers', diff_ids: [] } }));
  const layer = Buffer.from(`layer of ${repo} ${arch}`);
  up.addBlob(repo, config);
  up.addBlob(repo, layer);
  const bytes = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha(config), size: config.length },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: sha(layer), size: layer.length }],
    }),
  );
  return { digest: up.addManifest(repo, tag, bytes, OCI_MANIFEST), bytes };
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'pc-parse-once-'));
  const key = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const keyPath = join(dir, 'release.pub');
  await writeFile(keyPath, key.publicKey.export({ format: 'pem', type: 'spki' }) as string);
  up = await startFakeUpstream();
  image = addImage('demo/app', 'v1', 'amd64');
  byDigest = addImage('demo/pinned', undefined, 'amd64');
  children = [addImage('demo/multi', undefined, 'amd64'), addImage('demo/multi', undefined, 'arm64')];
  const idx = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_INDEX,
      manifests: children.map((c, i) => ({
        mediaType: OCI_MANIFEST,
        digest: c.digest,
        size: c.bytes.length,
        platform: { os: 'linux', architecture: i ? 'arm64' : 'amd64' },
      })),
    }),
  );
  index = up.addManifest('demo/multi', 'v1', idx, OCI_INDEX);
  process.env.PC_PARSE_ONCE_TOKEN = 'parse-once-report-token-0123456789';
  px = await startProxy({
    upstreams: [{ name: 'up', registry: up.host, url: up.url }],
    // Signatures are looked for (and none found) and the scan is asked (and missing), on every decision; the
    // policy itself requires neither, so every request here is served.
    extra: {
      signatures: { authorities: [{ name: 'release', kind: 'key', key: keyPath }] },
      scan: { order: ['reports'], reports: { token: { env: 'PC_PARSE_ONCE_TOKEN' }, maxSize: '64KiB' } },
    },
  });
});

afterAll(async () => {
  await px?.stop();
  await up?.stop();
  await rm(dir, { recursive: true, force: true });
});

/** How often the manifest `digest` was parsed while serving one request (which must succeed). */
async function parsesFor(path: string, digest: string, method = 'GET'): Promise<number> {
  parsed.length = 0;
  const res = await fetch(`${px.url}${path}`, { method, headers: { accept: MANIFEST_ACCEPT } });
  await res.arrayBuffer();
  expect(res.status).toBe(200);
  expect(res.headers.get('docker-content-digest')).toBe(digest);
  return parsed.filter((d) => d === digest).length;
}

describe('one parse per request', () => {
  test('an image by tag: once on the cold decision, never on a warm request', async () => {
    const path = `/v2/${up.host}/demo/app/manifests/v1`;
    expect(await parsesFor(path, image.digest)).toBe(1);
    expect(await parsesFor(path, image.digest)).toBe(0);
    expect(await parsesFor(path, image.digest, 'HEAD')).toBe(0);
  });

  test('an index by tag (the scan reads its platform list): once cold, never warm', async () => {
    const path = `/v2/${up.host}/demo/multi/manifests/v1`;
    expect(await parsesFor(path, index)).toBe(1);
    expect(await parsesFor(path, index)).toBe(0);
  });

  test('a platform manifest of an admitted index, by digest (decided as its child): once cold, never warm', async () => {
    await parsesFor(`/v2/${up.host}/demo/multi/manifests/v1`, index);
    const child = children[1]!;
    const path = `/v2/${up.host}/demo/multi/manifests/${child.digest}`;
    expect(await parsesFor(path, child.digest)).toBe(1);
    expect(await parsesFor(path, child.digest)).toBe(0);
  });

  test('a root by digest: once cold, never warm', async () => {
    const path = `/v2/${up.host}/demo/pinned/manifests/${byDigest.digest}`;
    expect(await parsesFor(path, byDigest.digest)).toBe(1);
    expect(await parsesFor(path, byDigest.digest)).toBe(0);
  });
});
