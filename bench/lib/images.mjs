/**
 * Seed images for the bench, pushed straight over the distribution HTTP API (a JS port of test/harness/images.ts,
 * which is TypeScript and not compiled). Each layer is a valid uncompressed tar holding random bytes from an
 * AES-256-CTR keystream with a random key, so every run and every image is unique (nothing dedups across reps);
 * it is written to a temp file while hashed and uploaded from that file as a stream with backpressure, so a 1 GiB
 * image never sits in memory.
 */
import { createCipheriv, createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { join } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';

export const MT = {
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociLayerTar: 'application/vnd.oci.image.layer.v1.tar',
};
export const MANIFEST_ACCEPT = [
  MT.ociIndex,
  MT.ociManifest,
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.docker.distribution.manifest.v2+json',
].join(', ');

export const sha256 = (b) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

async function startUpload(registryUrl, repo) {
  const res = await fetch(`${registryUrl}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
  await res.arrayBuffer();
  if (res.status !== 202) throw new Error(`POST ${repo}/blobs/uploads/: HTTP ${res.status}`);
  return new URL(res.headers.get('location'), registryUrl);
}

async function putBlobBytes(registryUrl, repo, bytes) {
  const digest = sha256(bytes);
  const url = await startUpload(registryUrl, repo);
  url.searchParams.set('digest', digest);
  const res = await fetch(url, { method: 'PUT', headers: { 'content-type': 'application/octet-stream' }, body: bytes });
  await res.arrayBuffer();
  if (res.status !== 201) throw new Error(`PUT blob ${digest}: HTTP ${res.status}`);
  return { digest, size: bytes.length };
}

/** Distribution ignores the body of a monolithic POST ?digest= (testbed.md §2.5): POST, then PUT the file. */
async function putBlobFile(registryUrl, repo, path, digest) {
  const { size } = await stat(path);
  const url = await startUpload(registryUrl, repo);
  url.searchParams.set('digest', digest);
  const res = await new Promise((resolve, reject) => {
    const req = httpRequest(url, { method: 'PUT', headers: { 'content-type': 'application/octet-stream', 'content-length': String(size) } });
    req.once('response', resolve);
    req.once('error', reject);
    pipeline(createReadStream(path, { highWaterMark: 1 << 20 }), req).catch(reject);
  });
  const chunks = [];
  for await (const c of res) chunks.push(c);
  if (res.statusCode !== 201) throw new Error(`PUT blob ${digest}: HTTP ${res.statusCode} ${Buffer.concat(chunks).toString().slice(0, 300)}`);
  return { digest, size };
}

async function putManifest(registryUrl, repo, ref, bytes, mediaType) {
  const res = await fetch(`${registryUrl}/v2/${repo}/manifests/${ref}`, { method: 'PUT', headers: { 'content-type': mediaType }, body: bytes });
  const body = await res.text();
  if (res.status !== 201) throw new Error(`PUT ${repo}/manifests/${ref}: HTTP ${res.status} ${body.slice(0, 300)}`);
  return sha256(bytes);
}

const BLOCK = 512;
const octal = (v, w) => v.toString(8).padStart(w - 1, '0') + '\0';
function tarHeader(name, size, type, mode) {
  const h = Buffer.alloc(BLOCK);
  h.write(name, 0, 100, 'utf8');
  h.write(octal(mode, 8), 100, 'ascii');
  h.write(octal(0, 8), 108, 'ascii');
  h.write(octal(0, 8), 116, 'ascii');
  h.write(octal(size, 12), 124, 'ascii');
  h.write(octal(0, 12), 136, 'ascii');
  h.write('        ', 148, 'ascii');
  h.write(type, 156, 'ascii');
  h.write('ustar\0', 257, 'ascii');
  h.write('00', 263, 'ascii');
  let sum = 0;
  for (const b of h) sum += b;
  h.write(octal(sum, 7) + ' ', 148, 'ascii');
  return h;
}
const pad = (n) => Buffer.alloc((BLOCK - (n % BLOCK)) % BLOCK);

async function* tarStream(dataSize) {
  const meta = Buffer.from(`PORTCULLIS_BENCH=1\nid=${randomBytes(8).toString('hex')}\n`);
  yield tarHeader('etc/', 0, '5', 0o755);
  yield tarHeader('etc/portcullis-bench', meta.length, '0', 0o644);
  yield Buffer.concat([meta, pad(meta.length)]);
  yield tarHeader('data.bin', dataSize, '0', 0o644);
  const cipher = createCipheriv('aes-256-ctr', randomBytes(32), randomBytes(16));
  const CHUNK = 1 << 20;
  const zeros = Buffer.alloc(CHUNK);
  for (let left = dataSize; left > 0; left -= CHUNK) yield cipher.update(left >= CHUNK ? zeros : zeros.subarray(0, left));
  yield pad(dataSize);
  yield Buffer.alloc(BLOCK * 2);
}

class HashTap extends Transform {
  hash = createHash('sha256');
  size = 0;
  _transform(chunk, _enc, cb) {
    this.hash.update(chunk);
    this.size += chunk.length;
    cb(null, chunk);
  }
}

/**
 * Builds and pushes one image of `layers` uncompressed layers of `layerMiB` MiB each; tagged `tag` (or untagged
 * when tag is undefined). Returns { repo, tag, digest, manifest, blobs: [{digest,size}], bytes }.
 */
export async function pushImage(registryUrl, repo, tag, { layers = 1, layerMiB = 1, platform = { os: 'linux', architecture: 'amd64' }, tmpDir }) {
  const dir = await mkdtemp(join(tmpDir, 'layer-'));
  try {
    const pushed = [];
    for (let i = 0; i < layers; i++) {
      const path = join(dir, `l${i}`);
      const tap = new HashTap();
      await pipeline(Readable.from(tarStream(Math.round(layerMiB * 1024 * 1024))), tap, createWriteStream(path));
      const digest = `sha256:${tap.hash.digest('hex')}`;
      await putBlobFile(registryUrl, repo, path, digest);
      await rm(path, { force: true });
      pushed.push({ mediaType: MT.ociLayerTar, digest, size: tap.size });
    }
    const configJson = {
      created: '1970-01-01T00:00:00Z',
      architecture: platform.architecture,
      os: platform.os,
      config: { Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'] },
      rootfs: { type: 'layers', diff_ids: pushed.map((l) => l.digest) },
      history: pushed.map((_, i) => ({ created: '1970-01-01T00:00:00Z', created_by: `portcullis bench layer ${i}` })),
    };
    const config = await putBlobBytes(registryUrl, repo, Buffer.from(JSON.stringify(configJson)));
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MT.ociManifest,
        config: { mediaType: MT.ociConfig, digest: config.digest, size: config.size },
        layers: pushed,
      }),
    );
    const digest = await putManifest(registryUrl, repo, tag ?? sha256(manifest), manifest, MT.ociManifest);
    const blobs = [config, ...pushed.map(({ digest: d, size }) => ({ digest: d, size }))];
    return { repo, tag, digest, manifest, mediaType: MT.ociManifest, platform, blobs, bytes: blobs.reduce((a, b) => a + b.size, 0) + manifest.length };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** One image per platform (untagged) and an OCI index over them at `tag`. */
export async function pushIndex(registryUrl, repo, tag, platforms, opts) {
  const children = [];
  for (const platform of platforms) children.push(await pushImage(registryUrl, repo, undefined, { ...opts, platform }));
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MT.ociIndex,
      manifests: children.map((c) => ({ mediaType: c.mediaType, digest: c.digest, size: c.manifest.length, platform: c.platform })),
    }),
  );
  const digest = await putManifest(registryUrl, repo, tag, manifest, MT.ociIndex);
  const blobs = children.flatMap((c) => c.blobs);
  return { repo, tag, digest, manifest, children, blobs, bytes: children.reduce((a, c) => a + c.bytes, 0) + manifest.length };
}
