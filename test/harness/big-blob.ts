/**
 * Test harness: blobs too big to hold in memory (issue 13's and issue 16's 12 GiB layer). The content is a
 * deterministic AES-256-CTR stream of a seed, generated and hashed as it is pushed (one chunked PATCH into the real
 * Distribution registry, then the closing PUT with the digest), so that neither the test nor the registry push holds
 * more than a chunk; clients hash what they receive and throw the bytes away. Peak RSS of a process comes from the
 * kernel (VmHWM), polled so that a process killed later still has its last figure.
 */
import { createCipheriv, createHash, type Hash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http, { type IncomingMessage } from 'node:http';
import { MT, pushBlob, pushRaw } from './images.js';

const CHUNK = 1024 * 1024;
export const GiB = 1024 ** 3;
export const MiB = 1024 ** 2;

/** The size under test: `PORTCULLIS_BIG_BLOB_GIB` (fractions allowed), else `fallbackGiB`. */
export function bigBlobSize(fallbackGiB: number): number {
  const raw = process.env.PORTCULLIS_BIG_BLOB_GIB;
  const gib = raw === undefined || raw === '' ? fallbackGiB : Number(raw);
  if (!Number.isFinite(gib) || gib <= 0) throw new Error(`PORTCULLIS_BIG_BLOB_GIB must be a positive number of GiB, not ${raw}`);
  return Math.round(gib * GiB);
}

/** `size` bytes of the seed's stream, 1 MiB at a time. */
function* blobChunks(seed: string, size: number): Generator<Buffer> {
  const key = createHash('sha256').update(seed).digest();
  const cipher = createCipheriv('aes-256-ctr', key, Buffer.alloc(16));
  const zeros = Buffer.alloc(CHUNK);
  for (let at = 0; at < size; at += CHUNK) yield cipher.update(zeros.subarray(0, Math.min(CHUNK, size - at)));
}

interface BigLayer {
  digest: string;
  size: number;
  /** sha256 of bytes [0, split) and [split, size), for a resumed transfer. */
  split: number;
  headDigest: string;
  tailDigest: string;
}

export interface BigImage {
  repo: string;
  tag: string;
  layer: BigLayer;
}

const hex = (h: Hash): string => `sha256:${h.digest('hex')}`;

/** Streams the seed's blob into the registry as one chunked PATCH, hashing it (and its two halves) on the way. */
async function pushStreamedBlob(registryUrl: string, repo: string, seed: string, size: number, split: number): Promise<BigLayer> {
  const started = await fetch(`${registryUrl}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
  await started.arrayBuffer();
  const loc = started.headers.get('location');
  if (started.status !== 202 || !loc) throw new Error(`POST ${repo}/blobs/uploads/: HTTP ${started.status}`);
  const all = createHash('sha256');
  const head = createHash('sha256');
  const tail = createHash('sha256');
  const patched = await new Promise<{ res: IncomingMessage; body: string }>((resolve, reject) => {
    const req = http.request(new URL(loc, registryUrl), { method: 'PATCH', headers: { 'content-type': 'application/octet-stream' } });
    req.once('error', reject);
    req.once('response', (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.once('end', () => resolve({ res, body }));
      res.once('error', reject);
    });
    const chunks = blobChunks(seed, size);
    let at = 0;
    const pump = (): void => {
      for (let n = chunks.next(); !n.done; n = chunks.next()) {
        const c = n.value;
        all.update(c);
        if (at + c.length <= split) head.update(c);
        else if (at >= split) tail.update(c);
        else {
          head.update(c.subarray(0, split - at));
          tail.update(c.subarray(split - at));
        }
        at += c.length;
        if (!req.write(c)) {
          req.once('drain', pump);
          return;
        }
      }
      req.end();
    };
    pump();
  });
  if (patched.res.statusCode !== 202) throw new Error(`PATCH ${repo} upload: HTTP ${patched.res.statusCode} ${patched.body.slice(0, 300)}`);
  const digest = hex(all);
  const put = new URL(patched.res.headers.location ?? loc, registryUrl);
  put.searchParams.set('digest', digest);
  const done = await fetch(put, { method: 'PUT', headers: { 'content-length': '0' } });
  const text = await done.text();
  if (done.status !== 201) throw new Error(`PUT ${repo} upload ${digest}: HTTP ${done.status} ${text.slice(0, 300)}`);
  return { digest, size, split, headDigest: hex(head), tailDigest: hex(tail) };
}

/** Pushes a one-layer image whose layer is the seed's `size` bytes, tagged `tag`. */
export async function pushBigImage(registryUrl: string, repo: string, tag: string, o: { seed: string; size: number; split?: number }): Promise<BigImage> {
  const split = o.split ?? Math.floor(o.size / 2);
  const layer = await pushStreamedBlob(registryUrl, repo, o.seed, o.size, split);
  const configBytes = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [layer.digest] }, config: {} }));
  const config = await pushBlob(registryUrl, repo, configBytes);
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MT.ociManifest,
      config: { mediaType: MT.ociConfig, digest: config.digest, size: config.size },
      layers: [{ mediaType: MT.ociLayerTar, digest: layer.digest, size: layer.size }],
    }),
  );
  await pushRaw(registryUrl, repo, tag, manifest, MT.ociManifest);
  return { repo, tag, layer };
}

interface HashedGet {
  status: number;
  bytes: number;
  digest: string;
  /** What cut the transfer (or the status line of a refusal). */
  error?: string;
  headers: http.IncomingHttpHeaders;
}

/**
 * GETs `url` and hashes the body, throwing the bytes away. `stopAfter`: disconnect once that many body bytes have
 * arrived, hashing exactly that many (a client that goes away half way). `onBytes` sees the running total.
 */
export function hashedGet(url: string, o: { range?: string; stopAfter?: number; onBytes?: (n: number) => void } = {}): Promise<HashedGet> {
  return new Promise((resolve) => {
    const h = createHash('sha256');
    let n = 0;
    let settled = false;
    const finish = (r: Omit<HashedGet, 'digest'>): void => {
      if (settled) return;
      settled = true;
      resolve({ ...r, digest: hex(h) });
    };
    const req = http.get(url, { headers: o.range ? { range: o.range } : {} }, (res) => {
      const status = res.statusCode ?? 0;
      res.on('data', (c: Buffer) => {
        if (settled) return;
        if (o.stopAfter !== undefined && n + c.length >= o.stopAfter) {
          h.update(c.subarray(0, o.stopAfter - n));
          n = o.stopAfter;
          o.onBytes?.(n);
          finish({ status, bytes: n, error: 'client disconnected', headers: res.headers });
          req.destroy();
          return;
        }
        h.update(c);
        n += c.length;
        o.onBytes?.(n);
      });
      res.once('end', () => finish({ status, bytes: n, headers: res.headers, ...(res.complete ? {} : { error: 'response ended early' }) }));
      res.once('error', (e) => finish({ status, bytes: n, error: String(e), headers: res.headers }));
      res.once('aborted', () => finish({ status, bytes: n, error: 'aborted', headers: res.headers }));
    });
    req.once('error', (e) => finish({ status: 0, bytes: n, error: String(e), headers: {} }));
  });
}

/** The kernel's peak resident set of a process in MiB (VmHWM), or undefined once it is gone. */
function peakRssMiB(pid: number): number | undefined {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : undefined;
  } catch {
    return undefined;
  }
}

/** Polls the peak RSS of processes every `everyMs` and keeps the highest seen for each (a killed one keeps its last). */
export function watchPeakRss(pids: number[], everyMs = 200): { peaks(): number[]; stop(): number[] } {
  const peaks = pids.map(() => 0);
  const poll = (): void => {
    pids.forEach((pid, i) => {
      const v = peakRssMiB(pid);
      if (v !== undefined && v > peaks[i]!) peaks[i] = v;
    });
  };
  poll();
  const t = setInterval(poll, everyMs);
  return {
    peaks: () => [...peaks],
    stop: () => {
      poll();
      clearInterval(t);
      return [...peaks];
    },
  };
}
