/**
 * A TLS upstream: real Distribution 2.8 serving HTTPS with a test CA (its storage filled through a plain-http
 * instance, since the harness pushes with fetch), Portcullis trusting that CA through `upstreams[].ca`, and skopeo
 * pulling through it. Blob bodies take the reused-buffer transport over TLS (upstream/socket-request.ts); without the
 * CA, the upstream is refused, and nothing is served.
 */
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectOk, skopeoCopy } from '../harness/clients.js';
import { pushImage, type PushedImage } from '../harness/images.js';
import { startProxy } from '../harness/proxy.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';

const ALIAS = 'secure.upstream';
let dir: string;
let plain: RunningRegistry;
let secure: RunningRegistry;
let img: PushedImage;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'pc-tls-up-'));
  const r = spawnSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-keyout',
      join(dir, 'key.pem'),
      '-out',
      join(dir, 'cert.pem'),
      '-subj',
      '/CN=127.0.0.1',
      '-days',
      '1',
      '-addext',
      'subjectAltName=IP:127.0.0.1',
    ],
    { encoding: 'utf8' },
  );
  if (r.status !== 0) throw new Error(`openssl (installed by scripts/install-tools.sh) failed: ${r.error?.message ?? r.stderr}`);
  plain = await startRegistry();
  img = await pushImage(plain.url, 'tls/app', 'v1', { layers: 2, layerSizeMiB: 3 });
  secure = await startRegistry({ tls: { cert: join(dir, 'cert.pem'), key: join(dir, 'key.pem') }, storageFrom: plain.dataDir });
}, 60_000);

afterAll(async () => {
  await secure?.stop();
  await plain?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('an https upstream with a private CA', () => {
  it('is pulled through with the CA configured; every blob crosses TLS once and matches its digest', async () => {
    expect(secure.url).toMatch(/^https:/);
    const proxy = await startProxy({ upstreams: [{ name: 'secure', registry: secure.host, url: secure.url, aliases: [ALIAS], ca: join(dir, 'cert.pem') }] });
    try {
      expectOk(await skopeoCopy(`docker://${proxy.host}/${ALIAS}/tls/app:v1`, join(dir, 'out')), 'skopeo copy from an https upstream');
      const blobGets = (await secure.waitForRequests((q) => q.method === 'GET' && q.path.includes('/blobs/'), 3)).map((q) => q.path);
      for (const d of [img.config, ...img.layers]) expect(blobGets.filter((p) => p.endsWith(d.digest))).toHaveLength(1);
    } finally {
      await proxy.stop();
    }
  }, 120_000);

  it('without the CA, the upstream is refused and nothing is served', async () => {
    const proxy = await startProxy({ upstreams: [{ name: 'secure', registry: secure.host, url: secure.url, aliases: [ALIAS], retries: 0 }] });
    try {
      const res = await fetch(`${proxy.url}/v2/${ALIAS}/tls/app/manifests/v1`, { headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } });
      expect(res.status).toBe(503);
      expect(((await res.json()) as { errors: Array<{ message: string }> }).errors[0]!.message).toMatch(/self[- ]signed|certificate/i);
      const blob = await fetch(`${proxy.url}/v2/${ALIAS}/tls/app/blobs/${img.layers[0]!.digest}`);
      expect(blob.status).toBe(403);
    } finally {
      await proxy.stop();
    }
  });
});
