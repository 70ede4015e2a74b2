/**
 * The `bigblob` phase (issue 16 item 5): one layer of 12 GiB (1 GiB with --quick, or --bigblob-gib) pulled through a
 * Portcullis whose filesystem cache is a quarter of the layer's size. The layer must stream through (never held in
 * memory, never kept over the bound), and a client that disconnects half way resumes with a Range and gets the right
 * second half.
 *
 * The layer is an AES-256-CTR stream of a fixed seed, pushed into the real registry as one chunked PATCH while it is
 * generated and hashed (the bench holds one MiB of it at a time). Clients are node:http GETs in this process that
 * hash what they receive and throw it away, the same code for the direct pull and the pull through Portcullis, so the
 * throughput ratio compares the proxies, not the clients. Every big file goes with the phase (registry storage is
 * the bench's work dir; the instance's data dir is removed at the end).
 */
import { createCipheriv, createHash } from 'node:crypto';
import { readdirSync, statSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import http from 'node:http';
import { join } from 'node:path';
import { MANIFEST_ACCEPT, MT, sha256 } from './images.mjs';
import { startPortcullis } from './portcullis.mjs';
import { round } from './stats.mjs';

const CHUNK = 1024 * 1024;
const GiB = 2 ** 30;
const MiB = 2 ** 20;

function* blobChunks(seed, size) {
  const cipher = createCipheriv('aes-256-ctr', createHash('sha256').update(seed).digest(), Buffer.alloc(16));
  const zeros = Buffer.alloc(CHUNK);
  for (let at = 0; at < size; at += CHUNK) yield cipher.update(zeros.subarray(0, Math.min(CHUNK, size - at)));
}

/** Streams the seed's `size` bytes into the registry (POST, one chunked PATCH, PUT ?digest=); hashes both halves too. */
async function pushStreamed(registryUrl, repo, seed, size, split) {
  const started = await fetch(`${registryUrl}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
  await started.arrayBuffer();
  const loc = started.headers.get('location');
  if (started.status !== 202 || !loc) throw new Error(`POST ${repo}/blobs/uploads/: HTTP ${started.status}`);
  const all = createHash('sha256');
  const head = createHash('sha256');
  const tail = createHash('sha256');
  const res = await new Promise((resolve, reject) => {
    const req = http.request(new URL(loc, registryUrl), { method: 'PATCH', headers: { 'content-type': 'application/octet-stream' } });
    req.once('error', reject);
    req.once('response', (r) => {
      r.resume();
      r.once('end', () => resolve(r));
    });
    const chunks = blobChunks(seed, size);
    let at = 0;
    const pump = () => {
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
        if (!req.write(c)) return void req.once('drain', pump);
      }
      req.end();
    };
    pump();
  });
  if (res.statusCode !== 202) throw new Error(`PATCH ${repo} upload: HTTP ${res.statusCode}`);
  const digest = `sha256:${all.digest('hex')}`;
  const put = new URL(res.headers.location ?? loc, registryUrl);
  put.searchParams.set('digest', digest);
  const done = await fetch(put, { method: 'PUT', headers: { 'content-length': '0' } });
  const text = await done.text();
  if (done.status !== 201) throw new Error(`PUT ${repo} ${digest}: HTTP ${done.status} ${text.slice(0, 300)}`);
  return { digest, size, split, headDigest: `sha256:${head.digest('hex')}`, tailDigest: `sha256:${tail.digest('hex')}` };
}

async function putBlob(registryUrl, repo, bytes) {
  const digest = sha256(bytes);
  const started = await fetch(`${registryUrl}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
  await started.arrayBuffer();
  const url = new URL(started.headers.get('location'), registryUrl);
  url.searchParams.set('digest', digest);
  const res = await fetch(url, { method: 'PUT', headers: { 'content-type': 'application/octet-stream' }, body: bytes });
  await res.arrayBuffer();
  if (res.status !== 201) throw new Error(`PUT blob ${digest}: HTTP ${res.status}`);
  return { digest, size: bytes.length };
}

/** A one-layer image whose layer is the seed's stream; returns its manifest digest and the layer. */
async function pushBigImage(registryUrl, repo, tag, seed, size) {
  const layer = await pushStreamed(registryUrl, repo, seed, size, Math.floor(size / 2));
  const config = await putBlob(
    registryUrl,
    repo,
    Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [layer.digest] } })),
  );
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MT.ociManifest,
      config: { mediaType: MT.ociConfig, digest: config.digest, size: config.size },
      layers: [{ mediaType: MT.ociLayerTar, digest: layer.digest, size: layer.size }],
    }),
  );
  const res = await fetch(`${registryUrl}/v2/${repo}/manifests/${tag}`, { method: 'PUT', headers: { 'content-type': MT.ociManifest }, body: manifest });
  await res.arrayBuffer();
  if (res.status !== 201) throw new Error(`PUT manifest ${repo}:${tag}: HTTP ${res.status}`);
  return { digest: sha256(manifest), layer };
}

/** GET and hash, bytes thrown away; `stopAfter`: disconnect after exactly that many bytes. */
function hashedGet(url, { range, stopAfter } = {}) {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    let n = 0;
    let settled = false;
    const t0 = performance.now();
    const finish = (status, headers, error) => {
      if (settled) return;
      settled = true;
      const r = { status, bytes: n, digest: `sha256:${h.digest('hex')}`, ms: performance.now() - t0, headers, error };
      if (error && stopAfter === undefined) reject(new Error(`GET ${url}: ${error} after ${n} bytes`));
      else resolve(r);
    };
    const req = http.get(url, { headers: range ? { range } : {} }, (res) => {
      res.on('data', (c) => {
        if (settled) return;
        if (stopAfter !== undefined && n + c.length >= stopAfter) {
          h.update(c.subarray(0, stopAfter - n));
          n = stopAfter;
          finish(res.statusCode, res.headers, 'client disconnected');
          req.destroy();
          return;
        }
        h.update(c);
        n += c.length;
      });
      res.once('end', () => finish(res.statusCode, res.headers, res.complete ? undefined : 'ended early'));
      res.once('aborted', () => finish(res.statusCode, res.headers, 'aborted'));
    });
    req.once('error', (e) => (settled ? undefined : ((settled = true), reject(e))));
  });
}

function dirBytes(dir) {
  let total = 0;
  let files = 0;
  try {
    for (const e of readdirSync(dir, { recursive: true, withFileTypes: true })) {
      if (!e.isFile()) continue;
      files++;
      total += statSync(join(e.parentPath, e.name), { throwIfNoEntry: false })?.size ?? 0;
    }
  } catch {
    // gone
  }
  return { bytes: total, files };
}

/**
 * @param {{ dir: string, upstream: object, pcOpts: object, log: (m: string) => void, size: number,
 *           attest: (repo: string, digest: string, instances: object[]) => Promise<void> }} o
 */
export async function bigblobPhase(o) {
  const { size, log } = o;
  const maxSize = Math.floor(size / 4);
  const repo = 'bench/bigblob';
  const t0 = performance.now();
  const img = await pushBigImage(o.upstream.url, repo, 'v1', 'portcullis-bench-bigblob', size);
  const pushS = (performance.now() - t0) / 1000;
  log(`bigblob: pushed ${(size / GiB).toFixed(2)} GiB (generated and hashed as streamed) in ${pushS.toFixed(1)} s`);
  const pc = await startPortcullis({ ...o.pcOpts, name: 'portcullis-bigblob', logLevel: 'warn', extra: { ...o.pcOpts.extra, cache: { maxSize } } });
  try {
    await o.attest(repo, img.digest, [pc]);
    const m = await fetch(`${pc.url}/v2/${repo}/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT } });
    await m.arrayBuffer();
    if (m.status !== 200) throw new Error(`bigblob: manifest through Portcullis: HTTP ${m.status}`);
    const { layer } = img;
    const blob = (base) => `${base}/v2/${repo}/blobs/${layer.digest}`;
    const baseline = pc.memory().rssMiB;
    const reset = pc.resetPeak();
    let sampled = 0;
    let spool = 0;
    const timer = setInterval(() => {
      try {
        sampled = Math.max(sampled, pc.memory().rssMiB);
        spool = Math.max(spool, dirBytes(join(pc.dataDir, 'tmp')).bytes);
      } catch {
        // gone: the pull fails
      }
    }, 250);
    let direct, cold, first, rest;
    const mark = o.upstream.mark();
    try {
      // Direct first (the registry's file is in the page cache as far as it fits, for both alike), then through.
      direct = await hashedGet(blob(o.upstream.url));
      log(`bigblob: direct ${(direct.ms / 1000).toFixed(1)} s (${(size / MiB / (direct.ms / 1000)).toFixed(0)} MiB/s)`);
      cold = await hashedGet(blob(pc.url));
      log(
        `bigblob: through Portcullis (cache ${(maxSize / GiB).toFixed(2)} GiB) ${(cold.ms / 1000).toFixed(1)} s (${(size / MiB / (cold.ms / 1000)).toFixed(0)} MiB/s)`,
      );
      // A client that goes away half way, then resumes where it stopped.
      first = await hashedGet(blob(pc.url), { stopAfter: layer.split });
      rest = await hashedGet(blob(pc.url), { range: `bytes=${layer.split}-` });
      log(
        `bigblob: disconnect at ${(layer.split / GiB).toFixed(2)} GiB after ${(first.ms / 1000).toFixed(1)} s, Range resume ${(rest.ms / 1000).toFixed(1)} s`,
      );
    } finally {
      clearInterval(timer);
    }
    const mem = pc.memory();
    const peak = reset ? mem.hwmMiB : sampled;
    await new Promise((r) => setTimeout(r, 500));
    const reqs = o.upstream.requestsSince(mark).filter((r) => r.method === 'GET' && r.path.endsWith(`/blobs/${layer.digest}`));
    const cacheAfter = dirBytes(join(pc.dataDir, 'blobs'));
    const tmpAfter = dirBytes(join(pc.dataDir, 'tmp'));
    const ok = {
      whole: cold.status === 200 && cold.bytes === size && cold.digest === layer.digest,
      head: first.status === 200 && first.bytes === layer.split && first.digest === layer.headDigest,
      tail:
        rest.status === 206 &&
        rest.bytes === size - layer.split &&
        rest.digest === layer.tailDigest &&
        rest.headers['content-range'] === `bytes ${layer.split}-${size - 1}/${size}`,
    };
    return {
      blob_gib: round(size / GiB, 2),
      cache_max_gib: round(maxSize / GiB, 2),
      push_s: round(pushS, 1),
      direct_s: round(direct.ms / 1000, 1),
      portcullis_s: round(cold.ms / 1000, 1),
      direct_mib_per_s: round(size / MiB / (direct.ms / 1000), 0),
      portcullis_mib_per_s: round(size / MiB / (cold.ms / 1000), 0),
      throughput_ratio: round(direct.ms / cold.ms, 3),
      disconnect_s: round(first.ms / 1000, 1),
      resume_s: round(rest.ms / 1000, 1),
      correct: ok,
      resume_ok: ok.head && ok.tail,
      baseline_rss_mib: round(baseline, 1),
      peak_rss_mib: round(peak, 1),
      sampled_max_rss_mib: round(sampled, 1),
      hwm_reset: reset,
      max_spool_gib: round(spool / GiB, 2),
      cache_after_mib: round(cacheAfter.bytes / MiB, 1),
      tmp_files_after: tmpAfter.files,
      upstream_blob_gets: reqs.length,
      upstream_blob_gib: round(reqs.reduce((a, r) => a + r.bytes, 0) / GiB, 2),
      wall_s: round((performance.now() - t0) / 1000, 1),
    };
  } finally {
    await pc.stop();
    await rm(pc.dataDir, { recursive: true, force: true });
  }
}
