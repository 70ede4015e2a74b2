/**
 * Test harness: build synthetic images and push them straight over the OCI distribution HTTP API.
 *
 * - `pushImage()` makes N layers, each a VALID ustar archive holding `etc/portcullis-test` and
 *   `data.bin` (random bytes), so containerd/podman can really unpack them. Layers are streamed to a
 *   temp file while being hashed and are uploaded from that file as a stream (node:http + pipeline, for
 *   real backpressure): a 1 GiB image never sits in memory.
 * - Random bytes come from an AES-256-CTR keystream with a random key: unique per run (no accidental
 *   cross-test dedup), and several GB/s, much faster than the OS RNG for large layers.
 * - Blobs are uploaded as POST /blobs/uploads/ then PUT <Location>&digest= with the body: Distribution
 *   2.8 ignores the body of a single monolithic `POST ?digest=` (testbed.md §2.5).
 * - Uncompressed layers are the default (fast to build); then diff_id == layer digest. With
 *   `compressed: true` the tar is gzipped on the fly and the diff_id is the digest of the tar.
 * - `pushIndex()` pushes one image per platform (by digest) and an image index / manifest list on top.
 * - `pushRaw()` / `pushBlob()` exist for hand-crafted, possibly weird content.
 */
import { createCipheriv, createHash, randomBytes, type Hash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';

export const MT = {
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociLayerTar: 'application/vnd.oci.image.layer.v1.tar',
  ociLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayerTar: 'application/vnd.docker.image.rootfs.diff.tar',
  dockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
} as const;

/**
 * Every manifest type a modern client accepts. Distribution 2.8 answers 404 MANIFEST_UNKNOWN for an
 * OCI manifest/index if the OCI type is missing from Accept, even by digest (testbed.md §2.6).
 */
export const MANIFEST_ACCEPT = [MT.ociIndex, MT.ociManifest, MT.dockerList, MT.dockerManifest].join(', ');

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

export interface Descriptor {
  digest: string;
  size: number;
}

export interface PushImageOptions {
  /** Number of layers (default 1). */
  layers?: number;
  /** Size of data.bin per layer in MiB, may be fractional (default 0.01 ≈ 10 KiB). */
  layerSizeMiB?: number;
  /** Default linux/amd64. */
  platform?: Platform;
  /** gzip the layers (default false: plain tar). */
  compressed?: boolean;
  /** Authorization header value sent with every request (e.g. `Bearer …` or `Basic …`). */
  auth?: string;
  /** Manifest flavour (default 'oci'). */
  mediaType?: 'oci' | 'docker';
  /** Annotations for the OCI image manifest (ignored for docker). */
  annotations?: Record<string, string>;
}

export interface PushedImage {
  /** Manifest digest, as computed from the bytes and confirmed by the registry. */
  digest: string;
  manifest: Buffer;
  manifestMediaType: string;
  config: Descriptor & { bytes: Buffer };
  layers: Array<Descriptor & { diffId: string; mediaType: string }>;
  platform: Platform;
}

export interface PushedIndex {
  digest: string;
  manifest: Buffer;
  manifestMediaType: string;
  children: PushedImage[];
}

export const sha256 = (b: Uint8Array): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

function headers(auth: string | undefined, extra: Record<string, string> = {}): Record<string, string> {
  return auth ? { ...extra, Authorization: auth } : extra;
}

async function failure(what: string, res: Response): Promise<Error> {
  const body = await res.text().catch(() => '');
  return new Error(`${what}: HTTP ${res.status} ${body.slice(0, 500)}`);
}

/** Start an upload session and return the absolute upload URL. */
async function startUpload(registryUrl: string, repo: string, auth: string | undefined): Promise<URL> {
  const res = await fetch(`${registryUrl}/v2/${repo}/blobs/uploads/`, { method: 'POST', headers: headers(auth) });
  if (res.status !== 202) throw await failure(`POST ${repo}/blobs/uploads/`, res);
  await res.arrayBuffer();
  const loc = res.headers.get('location');
  if (!loc) throw new Error(`POST ${repo}/blobs/uploads/: 202 without Location`);
  // Location may be relative or absolute; the query carries Distribution's _state token.
  return new URL(loc, registryUrl);
}

/** Finish an upload with one PUT carrying the whole (small, in-memory) body. */
async function finishUpload(uploadUrl: URL, digest: string, body: Uint8Array, auth: string | undefined): Promise<void> {
  uploadUrl.searchParams.set('digest', digest);
  const res = await fetch(uploadUrl, {
    method: 'PUT',
    headers: headers(auth, { 'Content-Type': 'application/octet-stream' }),
    body,
  });
  if (res.status !== 201) throw await failure(`PUT blob ${digest}`, res);
  await res.arrayBuffer();
}

/**
 * Finish an upload by streaming a file as the PUT body. node:http rather than fetch: fetch with
 * `Readable.toWeb(fileStream)` was measured to retain ~all of a 600 MiB body in memory (no
 * backpressure through the web-stream adapter), while `pipeline(file, request)` stays flat.
 */
async function finishUploadFromFile(uploadUrl: URL, digest: string, path: string, size: number, auth: string | undefined): Promise<void> {
  uploadUrl.searchParams.set('digest', digest);
  const res = await new Promise<IncomingMessage>((resolve, reject) => {
    // https only matters if a test pushes through a TLS endpoint; the testbed itself is plain http.
    const req = (uploadUrl.protocol === 'https:' ? httpsRequest : httpRequest)(uploadUrl, {
      method: 'PUT',
      headers: headers(auth, { 'Content-Type': 'application/octet-stream', 'Content-Length': String(size) }),
    });
    req.once('response', resolve);
    req.once('error', reject);
    pipeline(createReadStream(path, { highWaterMark: 1 << 20 }), req).catch(reject);
  });
  const chunks: Buffer[] = [];
  for await (const c of res) chunks.push(c as Buffer);
  if (res.statusCode !== 201) {
    throw new Error(`PUT blob ${digest}: HTTP ${res.statusCode} ${Buffer.concat(chunks).toString().slice(0, 500)}`);
  }
}

/** Upload an in-memory blob; returns its descriptor. */
export async function pushBlob(registryUrl: string, repo: string, bytes: Uint8Array, opts: { auth?: string } = {}): Promise<Descriptor> {
  const digest = sha256(bytes);
  const url = await startUpload(registryUrl, repo, opts.auth);
  await finishUpload(url, digest, bytes, opts.auth);
  return { digest, size: bytes.length };
}

/** Upload a blob from a file as a stream (digest known in advance). */
export async function pushBlobFile(registryUrl: string, repo: string, path: string, digest: string, opts: { auth?: string } = {}): Promise<Descriptor> {
  const { size } = await stat(path);
  const url = await startUpload(registryUrl, repo, opts.auth);
  await finishUploadFromFile(url, digest, path, size, opts.auth);
  return { digest, size };
}

/**
 * PUT a manifest (any bytes, any media type) at a tag or digest. Returns the digest of the bytes;
 * throws if the registry answers anything but 201 (callers testing rejections use fetch directly).
 */
export async function pushRaw(
  registryUrl: string,
  repo: string,
  ref: string,
  bytes: Uint8Array,
  mediaType: string,
  opts: { auth?: string } = {},
): Promise<string> {
  const res = await fetch(`${registryUrl}/v2/${repo}/manifests/${ref}`, {
    method: 'PUT',
    headers: headers(opts.auth, { 'Content-Type': mediaType }),
    body: bytes,
  });
  if (res.status !== 201) throw await failure(`PUT ${repo}/manifests/${ref}`, res);
  await res.arrayBuffer();
  const digest = sha256(bytes);
  const echoed = res.headers.get('docker-content-digest');
  if (echoed && echoed !== digest) throw new Error(`registry says ${echoed}, bytes hash to ${digest}`);
  return digest;
}

// ---------------------------------------------------------------------------------------------
// tar generation

const BLOCK = 512;

function octal(value: number, width: number): string {
  // width-1 octal digits plus a NUL terminator, as ustar requires.
  return value.toString(8).padStart(width - 1, '0') + '\0';
}

/** One ustar header block. Names here are short, so the prefix field is never needed. */
function tarHeader(name: string, size: number, type: '0' | '5', mode: number): Buffer {
  const h = Buffer.alloc(BLOCK);
  h.write(name, 0, 100, 'utf8');
  h.write(octal(mode, 8), 100, 'ascii');
  h.write(octal(0, 8), 108, 'ascii'); // uid
  h.write(octal(0, 8), 116, 'ascii'); // gid
  h.write(octal(size, 12), 124, 'ascii'); // 11 octal digits: < 8 GiB, plenty
  h.write(octal(0, 12), 136, 'ascii'); // mtime 0: reproducible headers
  h.write('        ', 148, 'ascii'); // checksum is computed with this field as spaces
  h.write(type, 156, 'ascii');
  h.write('ustar\0', 257, 'ascii');
  h.write('00', 263, 'ascii');
  h.write('root', 265, 'ascii');
  h.write('root', 297, 'ascii');
  let sum = 0;
  for (const byte of h) sum += byte;
  h.write(octal(sum, 7) + ' ', 148, 'ascii');
  return h;
}

const pad = (size: number): Buffer => Buffer.alloc((BLOCK - (size % BLOCK)) % BLOCK);

/** Yields a complete tar: etc/, etc/portcullis-test, data.bin (dataSize random bytes), end marker. */
function* tarStream(dataSize: number, marker: string): Generator<Buffer> {
  const meta = Buffer.from(`PORTCULLIS_TEST=1\nid=${marker}\n`);
  yield tarHeader('etc/', 0, '5', 0o755);
  yield tarHeader('etc/portcullis-test', meta.length, '0', 0o644);
  yield Buffer.concat([meta, pad(meta.length)]);
  yield tarHeader('data.bin', dataSize, '0', 0o644);
  const cipher = createCipheriv('aes-256-ctr', randomBytes(32), randomBytes(16));
  const CHUNK = 1 << 20;
  const zeros = Buffer.alloc(CHUNK);
  for (let left = dataSize; left > 0; left -= CHUNK) {
    yield cipher.update(left >= CHUNK ? zeros : zeros.subarray(0, left));
  }
  yield pad(dataSize);
  yield Buffer.alloc(BLOCK * 2);
}

/** Pass-through stream that hashes and counts what flows through it. */
class HashTap extends Transform {
  readonly hash: Hash = createHash('sha256');
  size = 0;
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.hash.update(chunk);
    this.size += chunk.length;
    cb(null, chunk);
  }
}

interface BuiltLayer {
  path: string;
  digest: string;
  size: number;
  diffId: string;
}

/** Write one layer to `path`, returning digest, size and diff_id, without buffering the layer. */
async function buildLayer(path: string, dataSize: number, compressed: boolean): Promise<BuiltLayer> {
  const tarTap = new HashTap();
  const src = Readable.from(tarStream(dataSize, randomBytes(8).toString('hex')));
  if (compressed) {
    const blobTap = new HashTap();
    // level 1: the payload is random anyway, so higher levels only cost time.
    await pipeline(src, tarTap, createGzip({ level: 1 }), blobTap, createWriteStream(path));
    return {
      path,
      digest: `sha256:${blobTap.hash.digest('hex')}`,
      size: blobTap.size,
      diffId: `sha256:${tarTap.hash.digest('hex')}`,
    };
  }
  await pipeline(src, tarTap, createWriteStream(path));
  const digest = `sha256:${tarTap.hash.digest('hex')}`;
  return { path, digest, size: tarTap.size, diffId: digest };
}

// ---------------------------------------------------------------------------------------------
// images

/** Build and push one image; the manifest is tagged `tag` (pass a digest-free tag or `undefined`). */
export async function pushImage(registryUrl: string, repo: string, tag: string | undefined, opts: PushImageOptions = {}): Promise<PushedImage> {
  const layerCount = opts.layers ?? 1;
  const dataSize = Math.round((opts.layerSizeMiB ?? 0.01) * 1024 * 1024);
  const platform = opts.platform ?? { os: 'linux', architecture: 'amd64' };
  const compressed = opts.compressed ?? false;
  const docker = opts.mediaType === 'docker';
  const layerMediaType = docker ? (compressed ? MT.dockerLayerGzip : MT.dockerLayerTar) : compressed ? MT.ociLayerGzip : MT.ociLayerTar;

  const dir = await mkdtemp(join(tmpdir(), 'portcullis-image-'));
  try {
    const layers: PushedImage['layers'] = [];
    // One layer at a time: build, upload, delete, so disk use stays at one layer.
    for (let i = 0; i < layerCount; i++) {
      const built = await buildLayer(join(dir, `layer-${i}`), dataSize, compressed);
      await pushBlobFile(registryUrl, repo, built.path, built.digest, { auth: opts.auth });
      await rm(built.path, { force: true });
      layers.push({ digest: built.digest, size: built.size, diffId: built.diffId, mediaType: layerMediaType });
    }

    const configJson = {
      created: '1970-01-01T00:00:00Z',
      architecture: platform.architecture,
      os: platform.os,
      ...(platform.variant ? { variant: platform.variant } : {}),
      config: { Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'] },
      rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffId) },
      history: layers.map((_, i) => ({ created: '1970-01-01T00:00:00Z', created_by: `portcullis test layer ${i}` })),
    };
    const configBytes = Buffer.from(JSON.stringify(configJson));
    const config = await pushBlob(registryUrl, repo, configBytes, { auth: opts.auth });

    const manifestMediaType = docker ? MT.dockerManifest : MT.ociManifest;
    const manifestJson = {
      schemaVersion: 2,
      mediaType: manifestMediaType,
      config: { mediaType: docker ? MT.dockerConfig : MT.ociConfig, digest: config.digest, size: config.size },
      layers: layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size })),
      ...(!docker && opts.annotations ? { annotations: opts.annotations } : {}),
    };
    const manifest = Buffer.from(JSON.stringify(manifestJson));
    const digest = await pushRaw(registryUrl, repo, tag ?? sha256(manifest), manifest, manifestMediaType, {
      auth: opts.auth,
    });
    return { digest, manifest, manifestMediaType, config: { ...config, bytes: configBytes }, layers, platform };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * Push one image per platform (by digest, untagged) and an index over them at `tag`.
 * OCI flavour gives an OCI image index; docker flavour a Docker manifest list.
 */
export async function pushIndex(
  registryUrl: string,
  repo: string,
  tag: string,
  platforms: Platform[],
  opts: Omit<PushImageOptions, 'platform'> = {},
): Promise<PushedIndex> {
  const children: PushedImage[] = [];
  for (const platform of platforms) children.push(await pushImage(registryUrl, repo, undefined, { ...opts, platform }));
  const docker = opts.mediaType === 'docker';
  const manifestMediaType = docker ? MT.dockerList : MT.ociIndex;
  const indexJson = {
    schemaVersion: 2,
    mediaType: manifestMediaType,
    manifests: children.map((c) => ({
      mediaType: c.manifestMediaType,
      digest: c.digest,
      size: c.manifest.length,
      platform: {
        architecture: c.platform.architecture,
        os: c.platform.os,
        ...(c.platform.variant ? { variant: c.platform.variant } : {}),
      },
    })),
  };
  const manifest = Buffer.from(JSON.stringify(indexJson));
  const digest = await pushRaw(registryUrl, repo, tag, manifest, manifestMediaType, { auth: opts.auth });
  return { digest, manifest, manifestMediaType, children };
}
