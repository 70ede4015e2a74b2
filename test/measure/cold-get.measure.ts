/**
 * The path of one manifest GET through src/: which files and functions run for it, and how often the manifest is
 * parsed. Method: V8 precise coverage with call counts (node:inspector), reset just before the request and read
 * just after it, so only what ran for that request counts; a file counts when a named function in it ran. The
 * parser is counted by a wrapper around parseManifest. Signatures (a key authority) and scans (pushed reports) are
 * configured so that both evidence providers take part; the upstream is the fake registry (no referrers API, so
 * signature discovery falls back to the tag schema and finds nothing).
 *
 *   npx vitest run -c test/measure/vitest.config.ts
 */
import { createHash, generateKeyPairSync } from 'node:crypto';
import { Session } from 'node:inspector/promises';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative, resolve } from 'node:path';
import { afterAll, beforeAll, expect, it, vi } from 'vitest';
import { startFakeUpstream, type FakeUpstream } from '../harness/fake-upstream.js';
import { MANIFEST_ACCEPT } from '../harness/images.js';
import { startProxy, type RunningProxy } from '../harness/proxy.js';

const calls = vi.hoisted(() => ({ parse: [] as string[] }));
vi.mock('../../src/oci/mediatypes.js', async (orig) => {
  const m = await orig<typeof import('../../src/oci/mediatypes.js')>();
  return {
    ...m,
    parseManifest: (b: Buffer, ct: string | undefined) => {
      calls.parse.push(
        new Error()
          .stack!.split('\n')
          .slice(2, 5)
          .map((s) => s.trim())
          .join(' < '),
      );
      return m.parseManifest(b, ct);
    },
  };
});

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
let dir: string;
const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;
let up: FakeUpstream;
let px: RunningProxy;
const session = new Session();

function addImage(repo: string, tag: string | undefined, arch = 'amd64'): { digest: string; bytes: Buffer } {
  const config = Buffer.from(JSON.stringify({ architecture: arch, os: 'linux', rootfs: { type: 'layers', diff_ids: [] } }));
  const layer = Buffer.from(`layer ${arch}`);
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
  dir = await mkdtemp(join(tmpdir(), 'pc-measure-'));
  const key = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const keyPath = join(dir, 'release.pub');
  await writeFile(keyPath, key.publicKey.export({ format: 'pem', type: 'spki' }) as string);
  up = await startFakeUpstream();
  addImage('demo/app', 'v1');
  const a = addImage('demo/multi', undefined, 'amd64');
  const b = addImage('demo/multi', undefined, 'arm64');
  const idx = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_INDEX,
      manifests: [a, b].map((x, i) => ({
        mediaType: OCI_MANIFEST,
        digest: x.digest,
        size: x.bytes.length,
        platform: { os: 'linux', architecture: i ? 'arm64' : 'amd64' },
      })),
    }),
  );
  up.addManifest('demo/multi', 'v1', idx, OCI_INDEX);
  process.env.PC_MEASURE_TOKEN = 'x'.repeat(32);
  px = await startProxy({
    upstreams: [{ name: 'up', registry: up.host, url: up.url }],
    settings: { no_match: 'deny', scopes: [{ name: 'all', images: ['**'] }] },
    extra: {
      signatures: { authorities: [{ name: 'release', kind: 'key', key: keyPath }] },
      scan: { order: ['reports'], reports: { token: { env: 'PC_MEASURE_TOKEN' }, maxSize: '64KiB' } },
    },
  });
  session.connect();
  await session.post('Profiler.enable');
  await session.post('Profiler.startPreciseCoverage', { callCount: true, detailed: false });
});
afterAll(async () => {
  session.disconnect();
  await px?.stop();
  await up?.stop();
  await rm(dir, { recursive: true, force: true });
});

async function measure(label: string, path: string): Promise<void> {
  await session.post('Profiler.takePreciseCoverage'); // reset counters
  calls.parse.length = 0;
  const res = await fetch(`${px.url}${path}`, { headers: { accept: MANIFEST_ACCEPT } });
  await res.arrayBuffer();
  const cov = (await session.post('Profiler.takePreciseCoverage')) as {
    result: Array<{ url: string; functions: Array<{ functionName: string; ranges: Array<{ count: number }> }> }>;
  };
  const src = resolve('src');
  const files = new Map<string, { fns: number; calls: number }>();
  for (const s of cov.result) {
    const p = s.url.replace(/^file:\/\//, '').split('?')[0]!;
    if (!p.startsWith(src)) continue;
    let fns = 0;
    let n = 0;
    for (const f of s.functions) {
      const c = f.ranges[0]?.count ?? 0;
      if (c > 0 && f.functionName !== '') {
        fns++;
        n += c;
      }
    }
    if (fns) files.set(relative(src, p), { fns, calls: n });
  }
  const folders = new Set([...files.keys()].map((f) => f.split('/')[0]));
  console.log(
    `${label}: status ${res.status}; parseManifest x${calls.parse.length}; ${files.size} src files in ${folders.size} folders; ${[...files.values()].reduce((a, b) => a + b.fns, 0)} distinct named functions, ${[...files.values()].reduce((a, b) => a + b.calls, 0)} calls`,
  );
  console.log('  files:', [...files.keys()].sort().join(' '));
  for (const c of calls.parse) console.log('  parse <', c);
  expect(res.status).toBe(200);
}

it('cold and warm manifest GETs by tag', async () => {
  await measure('cold image by tag', `/v2/${up.host}/demo/app/manifests/v1`);
  await measure('warm image by tag', `/v2/${up.host}/demo/app/manifests/v1`);
  await measure('cold index by tag', `/v2/${up.host}/demo/multi/manifests/v1`);
  await measure('warm index by tag', `/v2/${up.host}/demo/multi/manifests/v1`);
});
