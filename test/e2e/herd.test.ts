/**
 * e2e: a thundering herd. 20 clients cold-pull the same image through Portcullis at once; the real upstream
 * (CNCF Distribution) must serve each blob exactly once, and every client must get exactly the pushed bytes.
 *
 * The clients are plain fetch loops in this process (manifest by tag, then every blob), like a registry client
 * would do: half name the upstream with containerd's `?ns=`, half with the path prefix, and they start staggered
 * over ~150 ms so that some join a download that is already running. A second herd of 8 real `crane pull`
 * processes checks the same with a real client on another fresh image.
 */
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cranePull, expectOk } from '../harness/clients.js';
import { MANIFEST_ACCEPT, pushImage, sha256 } from '../harness/images.js';
import { startProxy, type RunningProxy } from '../harness/proxy.js';
import { type RunningRegistry, startRegistry } from '../harness/registry.js';

const ALIAS = 'upstream.herd';
const CLIENTS = 20;

let reg: RunningRegistry;
let proxy: RunningProxy;
let tmp: string;

beforeAll(async () => {
  tmp = await mkdtemp('/tmp/pcherd-');
  reg = await startRegistry();
  proxy = await startProxy({ upstreams: [{ name: 'local', registry: reg.host, url: reg.url, aliases: [ALIAS] }] });
}, 60_000);

afterAll(async () => {
  await proxy?.stop();
  await reg?.stop();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

/** One client: GET the manifest by tag, then each blob; returns the digest of every blob's bytes as received. */
async function pullOnce(i: number): Promise<{ manifest: string; blobs: string[] }> {
  await new Promise((r) => setTimeout(r, (i * 150) / CLIENTS));
  const viaNs = i % 2 === 0;
  const base = viaNs ? `${proxy.url}/v2/herd/app` : `${proxy.url}/v2/${ALIAS}/herd/app`;
  const qs = viaNs ? `?ns=${encodeURIComponent(reg.host)}` : '';
  const mres = await fetch(`${base}/manifests/v1${qs}`, { headers: { accept: MANIFEST_ACCEPT } });
  if (mres.status !== 200) throw new Error(`client ${i}: manifest HTTP ${mres.status} ${await mres.text()}`);
  const mbytes = Buffer.from(await mres.arrayBuffer());
  const m = JSON.parse(mbytes.toString('utf8')) as { config: { digest: string }; layers: Array<{ digest: string }> };
  const blobs: string[] = [];
  // Each client walks the blobs in its own order (rotated), as parallel layer downloads would interleave them.
  const order = [m.config.digest, ...m.layers.map((l) => l.digest)];
  const rotated = [...order.slice(i % order.length), ...order.slice(0, i % order.length)];
  const got = new Map<string, string>();
  for (const d of rotated) {
    const res = await fetch(`${base}/blobs/${d}${qs}`);
    if (res.status !== 200) throw new Error(`client ${i}: blob ${d} HTTP ${res.status}`);
    const h = createHash('sha256');
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      h.update(value);
    }
    got.set(d, `sha256:${h.digest('hex')}`);
  }
  for (const d of order) blobs.push(got.get(d)!);
  return { manifest: sha256(mbytes), blobs };
}

describe('herd of cold pulls', () => {
  it(`${CLIENTS} concurrent clients: one upstream GET per blob, correct bytes for all`, async () => {
    const img = await pushImage(reg.url, 'herd/app', 'v1', { layers: 4, layerSizeMiB: 8 });
    reg.clearLog();
    const t0 = performance.now();
    const results = await Promise.all(Array.from({ length: CLIENTS }, (_, i) => pullOnce(i)));
    const ms = performance.now() - t0;
    const expected = [img.config.digest, ...img.layers.map((l) => l.digest)];
    for (const r of results) {
      expect(r.manifest).toBe(img.digest);
      expect(r.blobs).toEqual(expected);
    }
    // The access-log line lands after the response: wait for one GET per blob, then for every line to be in.
    const blobGet = (x: { method: string; path: string }) => x.method === 'GET' && x.path.includes('/blobs/');
    await reg.waitForRequests(blobGet, expected.length, 5000);
    await reg.settleLog();
    const gets = reg.requests().filter(blobGet);
    for (const d of expected)
      expect(
        gets.filter((x) => x.path.endsWith(`/blobs/${d}`)),
        `upstream GETs of ${d}`,
      ).toHaveLength(1);
    expect(gets).toHaveLength(expected.length);
    // The manifest too: one resolution of the tag and one fetch by digest for all 20 clients.
    const man = reg.requests().filter((x) => x.path.includes('/manifests/'));
    expect(man.filter((x) => x.method === 'GET')).toHaveLength(1);
    expect(man.filter((x) => x.method === 'HEAD')).toHaveLength(1);
    const bytes = img.layers.reduce((a, l) => a + l.size, 0);
    console.info(`herd: ${CLIENTS} clients × ${(bytes / 2 ** 20).toFixed(0)} MiB in ${ms.toFixed(0)} ms; upstream served ${gets.length} blob GETs`);
  }, 60_000);

  it('8 concurrent crane pulls of a fresh image: one upstream GET per blob', async () => {
    const img = await pushImage(reg.url, 'herd/crane', 'v1', { layers: 3, layerSizeMiB: 4 });
    reg.clearLog();
    const runs = await Promise.all(
      Array.from({ length: 8 }, (_, i) => cranePull(`${proxy.host}/${ALIAS}/herd/crane:v1`, path.join(tmp, `crane-${i}`), { format: 'oci' })),
    );
    runs.forEach((r, i) => expectOk(r, `crane pull ${i}`));
    const expected = [img.config.digest, ...img.layers.map((l) => l.digest)];
    const blobGet = (x: { method: string; path: string }) => x.method === 'GET' && x.path.includes('/blobs/');
    await reg.waitForRequests(blobGet, expected.length, 5000);
    await reg.settleLog();
    const gets = reg.requests().filter(blobGet);
    for (const d of expected) expect(gets.filter((x) => x.path.endsWith(`/blobs/${d}`))).toHaveLength(1);
    // crane verifies every blob against its digest while writing the layout, so exit 0 means correct bytes.
  }, 60_000);
});
