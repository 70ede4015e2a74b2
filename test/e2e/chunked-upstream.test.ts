/**
 * e2e: an upstream that sends blobs with chunked transfer encoding (no Content-Length), as some CDNs and proxies
 * in front of registries do. A tiny forwarder in front of the real Distribution drops Content-Length from blob
 * bodies; skopeo and concurrent plain clients then pull through Portcullis and must get correct bytes.
 *
 * Without a length the proxy can only answer once the whole blob is in and verified, so this also exercises the
 * path where every waiting client is served after the download has completed.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectOk, skopeoCopy } from '../harness/clients.js';
import { MANIFEST_ACCEPT, pushImage } from '../harness/images.js';
import { startProxy, type RunningProxy } from '../harness/proxy.js';
import { type RunningRegistry, startRegistry } from '../harness/registry.js';

const ALIAS = 'upstream.chunked';
let reg: RunningRegistry;
let fwd: http.Server;
let proxy: RunningProxy;
let tmp: string;
let chunkedBlobs = 0;

beforeAll(async () => {
  tmp = await mkdtemp('/tmp/pcchunk-');
  reg = await startRegistry();
  const target = new URL(reg.url);
  fwd = http.createServer((req, res) => {
    const up = http.request({ host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers }, (ur) => {
      const headers = { ...ur.headers };
      if (req.method === 'GET' && req.url?.includes('/blobs/') && ur.statusCode === 200) {
        delete headers['content-length'];
        chunkedBlobs++;
      }
      res.writeHead(ur.statusCode ?? 502, headers);
      ur.pipe(res);
    });
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  await new Promise<void>((r) => fwd.listen(0, '127.0.0.1', () => r()));
  const port = (fwd.address() as AddressInfo).port;
  proxy = await startProxy({ upstreams: [{ name: 'chunked', registry: reg.host, url: `http://127.0.0.1:${port}`, aliases: [ALIAS] }] });
}, 60_000);

afterAll(async () => {
  await proxy?.stop();
  fwd?.closeAllConnections();
  await new Promise<void>((r) => (fwd ? fwd.close(() => r()) : r()));
  await reg?.stop();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const c of createReadStream(file)) h.update(c as Buffer);
  return `sha256:${h.digest('hex')}`;
}

describe('upstream without Content-Length on blobs', () => {
  it('skopeo pulls through the proxy with correct bytes', async () => {
    const img = await pushImage(reg.url, 'chunk/app', 'v1', { layers: 2, layerSizeMiB: 2 });
    const dest = path.join(tmp, 'sk');
    expectOk(await skopeoCopy(`docker://${proxy.host}/${ALIAS}/chunk/app:v1`, dest), 'skopeo copy');
    expect(chunkedBlobs).toBeGreaterThanOrEqual(3);
    for (const d of [img.config.digest, ...img.layers.map((l) => l.digest)]) {
      expect((await readdir(dest)).includes(d.slice(7))).toBe(true);
      expect(await sha256File(path.join(dest, d.slice(7)))).toBe(d);
    }
  });

  it('concurrent clients of one chunked download all get the bytes', async () => {
    const img = await pushImage(reg.url, 'chunk/herd', 'v1', { layers: 1, layerSizeMiB: 8 });
    const layer = img.layers[0]!;
    const base = `${proxy.url}/v2/${ALIAS}/chunk/herd`;
    expect((await fetch(`${base}/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT } })).status).toBe(200);
    const got = await Promise.all(
      Array.from({ length: 6 }, async () => {
        const res = await fetch(`${base}/blobs/${layer.digest}`);
        const b = Buffer.from(await res.arrayBuffer());
        return { status: res.status, digest: `sha256:${createHash('sha256').update(b).digest('hex')}` };
      }),
    );
    for (const g of got) expect(g).toEqual({ status: 200, digest: layer.digest });
  });
});
