/**
 * e2e: three Portcullis replicas (separate `node dist/cli.js serve` processes) on loopback, sharing one bucket of a
 * real SeaweedFS and a cluster secret, in front of the real Distribution registry, whose access log counts the
 * upstream GETs. The upstream is reached through a throttling TCP relay (about 40 MiB/s) so that downloads take long
 * enough for a herd to overlap and for a kill to land mid-transfer.
 *
 * - 20 clients spread round-robin over the replicas pull the same cold image: exactly 1 upstream GET per blob, the
 *   right bytes everywhere, one object per blob in S3; a warm pull through every replica then costs no upstream GET.
 *   9 real `crane pull`s over the replicas show the same with a real client.
 * - The internal endpoint serves only a peer that holds the secret, for the exact path and until the token expires.
 * - kill -9 of the replica that owns a large blob while a herd reads it: the other replicas' clients get the right
 *   bytes without a break (their replicas resume from the upstream); the dead replica's clients retry elsewhere and
 *   get the right bytes; S3 shows the complete object or nothing, and the dead owner's incomplete upload is swept.
 */
import { GetObjectCommand, ListMultipartUploadsCommand, ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signPeerToken } from '../../src/cluster/peer-token.js';
import { ownerOf } from '../../src/cluster/rendezvous.js';
import { S3BlobStore } from '../../src/cache/s3-blobstore.js';
import { storageSchema } from '../../src/config/storage.js';
import { startCluster, type RunningCluster } from '../harness/cluster.js';
import { cranePull, expectOk } from '../harness/clients.js';
import { MANIFEST_ACCEPT, pushImage, type PushedImage } from '../harness/images.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';
import { startSeaweed, type RunningSeaweed } from '../harness/seaweedfs.js';

const RATE = 40 * 1024 * 1024;
const BUCKET = 'portcullis-cluster';
const PREFIX = 'e2e/';
const CLIENTS = 20;
const ALIAS = 'upstream.cluster';

let weed: RunningSeaweed;
let s3: S3Client;
let reg: RunningRegistry;
let relay: net.Server;
let cluster: RunningCluster;
let tmp: string;

/** A TCP relay to the registry that throttles the registry→proxy direction to RATE. */
async function startRelay(target: number): Promise<net.Server> {
  const srv = net.createServer((down) => {
    const up = net.connect(target, '127.0.0.1');
    down.pipe(up);
    let sent = 0;
    const t0 = Date.now();
    up.on('data', (chunk: Buffer) => {
      sent += chunk.length;
      if (!down.write(chunk)) up.pause();
      const ahead = sent / RATE - (Date.now() - t0) / 1000;
      if (ahead > 0.02) {
        up.pause();
        setTimeout(() => up.resume(), ahead * 1000);
      }
    });
    down.on('drain', () => up.resume());
    const kill = (): void => {
      up.destroy();
      down.destroy();
    };
    up.on('error', kill);
    down.on('error', kill);
    down.on('close', kill);
    up.on('close', () => down.end());
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  return srv;
}

const blobGet = (x: { method: string; path: string }): boolean => x.method === 'GET' && x.path.includes('/blobs/');

async function getManifest(base: string, repo: string, tag: string): Promise<void> {
  const res = await fetch(`${base}/v2/${repo}/manifests/${tag}?ns=${encodeURIComponent(reg.host)}`, { headers: { accept: MANIFEST_ACCEPT } });
  if (res.status !== 200) throw new Error(`manifest HTTP ${res.status} ${await res.text()}`);
  await res.arrayBuffer();
}

/** GET a blob and hash it; the error that cut it, if any. */
async function getBlob(base: string, repo: string, digest: string, onBytes?: (n: number) => void): Promise<{ digest: string; bytes: number; error?: string }> {
  const h = createHash('sha256');
  let n = 0;
  try {
    const res = await fetch(`${base}/v2/${repo}/blobs/${digest}?ns=${encodeURIComponent(reg.host)}`);
    if (res.status !== 200) return { digest: '', bytes: 0, error: `HTTP ${res.status} ${await res.text()}` };
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      h.update(value);
      n += value.length;
      onBytes?.(n);
    }
    return { digest: `sha256:${h.digest('hex')}`, bytes: n };
  } catch (e) {
    return { digest: `sha256:${h.digest('hex')}`, bytes: n, error: String((e as Error).cause ?? e) };
  }
}

/** One client of the herd: the manifest, then every blob in its own rotated order. */
async function pullImage(base: string, repo: string, img: PushedImage, i: number): Promise<Map<string, string>> {
  await getManifest(base, repo, 'v1');
  const order = [img.config.digest, ...img.layers.map((l) => l.digest)];
  const rotated = [...order.slice(i % order.length), ...order.slice(0, i % order.length)];
  const got = new Map<string, string>();
  for (const d of rotated) {
    const r = await getBlob(base, repo, d);
    if (r.error) throw new Error(`client ${i} via ${base}: blob ${d}: ${r.error}`);
    got.set(d, r.digest);
  }
  return got;
}

async function objects(): Promise<Array<{ key: string; size: number }>> {
  const r = await s3.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: PREFIX }));
  // The layout marker (cache/s3-layout.ts) sits at the prefix's root; the test counts blobs.
  return (r.Contents ?? []).filter((o) => o.Key !== `${PREFIX}layout.json`).map((o) => ({ key: o.Key ?? '', size: o.Size ?? 0 }));
}

const keyOf = (digest: string): string => `${PREFIX}v1/blobs/sha256/${digest.slice('sha256:'.length)}`;

beforeAll(async () => {
  tmp = await mkdtemp('/tmp/pccluster-');
  weed = await startSeaweed();
  await weed.createBucket(BUCKET);
  s3 = weed.client();
  reg = await startRegistry();
  relay = await startRelay(Number(reg.host.split(':')[1]));
  const relayPort = (relay.address() as net.AddressInfo).port;
  cluster = await startCluster({
    replicas: 3,
    dir: path.join(tmp, 'cluster'),
    upstream: { name: 'local', registry: reg.host, url: `http://127.0.0.1:${relayPort}`, aliases: [ALIAS] },
    weed,
    bucket: BUCKET,
    prefix: PREFIX,
  });
}, 180_000);

afterAll(async () => {
  await cluster?.stop();
  await new Promise<void>((r) => (relay ? relay.close(() => r()) : r()));
  await reg?.stop();
  s3?.destroy();
  await weed?.stop();
  if (tmp) await rm(tmp, { recursive: true, force: true });
}, 60_000);

describe('a cluster of three replicas', () => {
  it(`${CLIENTS} clients over 3 replicas pull one cold image: 1 upstream GET per blob, right bytes, then warm from S3 everywhere`, async () => {
    const img = await pushImage(reg.url, 'cluster/app', 'v1', { layers: 4, layerSizeMiB: 8 });
    const expected = [img.config.digest, ...img.layers.map((l) => l.digest)];
    const peers = cluster.replicas.map((r) => r.url);
    // Every replica owns something, or the test would not show a transfer between replicas.
    const owners = new Set(expected.map((d) => ownerOf(d, [...peers].sort())));
    expect(owners.size, 'blobs owned by more than one replica').toBeGreaterThan(1);
    reg.clearLog();
    const results = await Promise.all(Array.from({ length: CLIENTS }, (_, i) => pullImage(cluster.replicas[i % 3]!.url, 'cluster/app', img, i)));
    for (const r of results) for (const d of expected) expect(r.get(d)).toBe(d);
    await reg.waitForRequests(blobGet, expected.length, 5000);
    await reg.settleLog();
    const gets = reg.requests().filter(blobGet);
    for (const d of expected)
      expect(
        gets.filter((x) => x.path.endsWith(`/blobs/${d}`)),
        `upstream GETs of ${d}`,
      ).toHaveLength(1);
    expect(gets).toHaveLength(expected.length);

    // One object per blob lands in the shared bucket (the owner's; another replica's identical copy is refused).
    const sizes = new Map([...img.layers.map((l) => [l.digest, l.size] as const), [img.config.digest, img.config.size] as const]);
    const deadline = Date.now() + 30_000;
    while ((await objects()).length < expected.length && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    const objs = await objects();
    expect(objs.map((o) => o.key).sort()).toEqual(expected.map(keyOf).sort());
    for (const o of objs) expect(o.size).toBe(sizes.get(`sha256:${o.key.split('/').pop()}`));

    // Warm: a fresh client through every replica; S3 serves, the upstream sees no blob GET.
    reg.clearLog();
    for (const [i, r] of cluster.replicas.entries()) {
      const got = await pullImage(r.url, 'cluster/app', img, i);
      for (const d of expected) expect(got.get(d)).toBe(d);
    }
    await reg.settleLog();
    expect(reg.requests().filter(blobGet)).toEqual([]);
  }, 180_000);

  it('9 crane pulls of a fresh image over 3 replicas (3 each): 1 upstream GET per blob', async () => {
    const img = await pushImage(reg.url, 'cluster/crane', 'v1', { layers: 3, layerSizeMiB: 4 });
    reg.clearLog();
    const runs = await Promise.all(
      Array.from({ length: 9 }, (_, i) =>
        cranePull(`${cluster.replicas[i % 3]!.host}/${ALIAS}/cluster/crane:v1`, path.join(tmp, `crane-${i}`), { format: 'oci' }),
      ),
    );
    runs.forEach((r, i) => expectOk(r, `crane pull ${i}`));
    const expected = [img.config.digest, ...img.layers.map((l) => l.digest)];
    await reg.waitForRequests(blobGet, expected.length, 5000);
    await reg.settleLog();
    const gets = reg.requests().filter(blobGet);
    for (const d of expected)
      expect(
        gets.filter((x) => x.path.endsWith(`/blobs/${d}`)),
        `upstream GETs of ${d}`,
      ).toHaveLength(1);
    // crane verifies every blob against its digest while writing the layout, so exit 0 means correct bytes.
  }, 180_000);

  it('the internal endpoint serves a peer with a valid token for that path only, until it expires', async () => {
    const img = await pushImage(reg.url, 'cluster/internal', 'v1', { layers: 1, layerSizeMiB: 1 });
    const layer = img.layers[0]!;
    const r0 = cluster.replicas[0]!;
    const p = `/internal/v1/blobs/local/cluster/internal/${layer.digest}`;
    // node:http sends the path exactly as given (fetch would resolve `..` before sending).
    const get = (pth: string, auth?: string, method = 'GET'): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: Buffer }> =>
      new Promise((resolve, reject) => {
        const [host, port] = r0.host.split(':');
        const req = http.request({ host, port: Number(port), path: pth, method, headers: auth ? { authorization: auth } : {} }, (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
          res.on('error', reject);
        });
        req.on('error', reject);
        req.end();
      });
    const tok = (pth: string, key = cluster.secret, now = Date.now(), ttl = 20_000, method = 'GET'): string =>
      `PortcullisPeer ${signPeerToken(key, method, pth, now, ttl)}`;

    reg.clearLog();
    const none = await get(p);
    expect(none.status).toBe(401);
    expect(none.headers['www-authenticate']).toBe('PortcullisPeer');
    expect((await get(p, tok(p, Buffer.from('0'.repeat(64))))).status).toBe(401);
    expect((await get(p, tok(p.replace('internal/sha', 'other/sha')))).status).toBe(401);
    expect(await get(p, tok(p, cluster.secret, Date.now() - 120_000))).toHaveProperty('status', 401);
    expect(await get(p, `Bearer ${signPeerToken(cluster.secret, 'GET', p, Date.now(), 20_000)}`)).toHaveProperty('status', 401);
    expect((await get(p, tok(p, cluster.secret, Date.now(), 20_000, 'POST'), 'POST')).status).not.toBe(200);
    // Refused requests cost the upstream nothing.
    await reg.settleLog();
    expect(reg.requests().filter(blobGet)).toEqual([]);

    for (const bad of [
      '/internal/v1/blobs/nosuch/cluster/internal/' + layer.digest,
      '/internal/v1/blobs/local/cluster/../etc/' + layer.digest,
      '/internal/v1/blobs/local/' + layer.digest,
      '/internal/v1/blobs/local/cluster/internal/sha256:xyz',
    ]) {
      expect((await get(bad, tok(bad))).status, bad).toBe(404);
    }

    const ok = await get(p, tok(p));
    expect(ok.status).toBe(200);
    expect(`sha256:${createHash('sha256').update(ok.body).digest('hex')}`).toBe(layer.digest);
    const health = await get('/internal/v1/health', tok('/internal/v1/health'));
    expect(health.status).toBe(200);

    // The client-facing gate is where it was: a blob of an image this replica never admitted is refused there.
    const direct = await fetch(`${cluster.replicas[1]!.url}/v2/cluster/internal/blobs/${layer.digest}?ns=${encodeURIComponent(reg.host)}`);
    expect(direct.status).toBeGreaterThanOrEqual(400);
  }, 60_000);

  it('kill -9 of the owner of a large blob mid-herd: right bytes for every client, nothing partial in S3', async () => {
    const img = await pushImage(reg.url, 'cluster/big', 'v1', { layers: 1, layerSizeMiB: 64 });
    const layer = img.layers[0]!;
    const peers = cluster.replicas.map((r) => r.url);
    const ownerUrl = ownerOf(layer.digest, [...peers].sort())!;
    const owner = cluster.replicas.find((r) => r.url === ownerUrl)!;
    const others = cluster.replicas.filter((r) => r !== owner);
    // Every client is admitted on its replica first.
    const assignments = Array.from({ length: 9 }, (_, i) => cluster.replicas[i % 3]!);
    await Promise.all(cluster.replicas.map((r) => getManifest(r.url, 'cluster/big', 'v1')));
    reg.clearLog();

    let killed = false;
    const kill = (n: number): void => {
      if (!killed && n >= 8 * 1024 * 1024) {
        killed = true;
        owner.kill('SIGKILL');
      }
    };
    const first = await Promise.all(assignments.map((r) => getBlob(r.url, 'cluster/big', layer.digest, r === owner ? undefined : kill)));
    expect(killed, 'the owner was killed while the others were reading').toBe(true);
    await owner.exited;

    // Clients of the surviving replicas: not a single break, the right bytes.
    first.forEach((r, i) => {
      if (assignments[i] !== owner) expect(r, `client ${i} of a surviving replica`).toEqual({ digest: layer.digest, bytes: layer.size });
    });
    // Clients of the dead owner: whatever they got ended in an error, never in a wrong complete blob; a retry elsewhere works.
    for (const [i, r] of first.entries()) {
      if (assignments[i] !== owner) continue;
      if (r.error === undefined) expect(r.digest).toBe(layer.digest);
      const retryVia = others[i % others.length]!;
      const again = await getBlob(retryVia.url, 'cluster/big', layer.digest);
      expect(again, `client ${i} retried via another replica`).toEqual({ digest: layer.digest, bytes: layer.size });
    }

    // S3: the complete, correct object, or nothing (here: the survivors' copy lands); never a partial one.
    const deadline = Date.now() + 30_000;
    while (!(await objects()).some((o) => o.key === keyOf(layer.digest)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    const obj = (await objects()).find((o) => o.key === keyOf(layer.digest));
    expect(obj?.size).toBe(layer.size);
    const body = (await s3.send(new GetObjectCommand({ Bucket: BUCKET, Key: keyOf(layer.digest) }))).Body as AsyncIterable<Buffer>;
    const h = createHash('sha256');
    for await (const c of body) h.update(c);
    expect(`sha256:${h.digest('hex')}`).toBe(layer.digest);

    // The dead owner's incomplete multipart upload is never visible, and the sweeper of any replica aborts it once
    // it is older than abandonedUploadAge (here: a store whose clock runs two days ahead).
    const store = new S3BlobStore({
      client: weed.client(),
      config: storageSchema.parse({
        blobs: 's3',
        s3: {
          endpoint: weed.endpoint,
          bucket: BUCKET,
          prefix: PREFIX,
          forcePathStyle: true,
          allowInsecureHttp: true,
        },
      }).s3!,
      tmpDir: path.join(tmp, 'sweep-tmp'),
      maxSize: 1024 ** 3,
      redirectExpiry: 60_000,
      now: () => Date.now() + 2 * 86_400_000,
    });
    await store.ready;
    await store.close();
    const left = await s3.send(new ListMultipartUploadsCommand({ Bucket: BUCKET, Prefix: PREFIX }));
    expect(left.Uploads ?? []).toEqual([]);
    await reg.settleLog();
    console.info(`replica kill: upstream blob GETs (the owner's, then resumes and retries): ${reg.requests().filter(blobGet).length}`);
  }, 180_000);
});
