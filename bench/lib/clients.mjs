/**
 * The pulling clients: skopeo (copy to dir:, as testbed.md §6 timed it), curl (the 1 GiB herd, discarding the bytes
 * so that 20 GiB of client output never touches a disk), and wrk for manifest throughput.
 */
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { MANIFEST_ACCEPT } from './images.mjs';
import { requireTool, run } from './proc.mjs';

/**
 * `skopeo copy docker://host/repo:tag dir:DEST` and returns wall ms (process start to exit). The destination is
 * removed afterwards. Throws when skopeo fails (skopeo verifies every blob's digest, so exit 0 means correct bytes).
 */
export async function skopeoPull(host, ref, dest, { all = false, timeoutMs = 180_000 } = {}) {
  const args = ['--insecure-policy', 'copy', '--src-tls-verify=false', '--retry-times', '0'];
  if (all) args.push('--all');
  args.push(`docker://${host}/${ref}`, `dir:${dest}`);
  const r = await run(requireTool('skopeo'), args, { timeoutMs });
  await rm(dest, { recursive: true, force: true });
  if (r.code !== 0) throw new Error(`skopeo pull ${host}/${ref} failed (exit ${r.code}${r.timedOut ? ', timed out' : ''}): ${r.stderr.slice(-1500)}`);
  return r.ms;
}

/** n skopeo pulls of the same reference started at once; resolves { wallMs, each: [ms] }. */
export async function skopeoHerd(host, ref, destDir, n, opts = {}) {
  await mkdir(destDir, { recursive: true });
  const t0 = performance.now();
  // allSettled: when one pull fails, the others still finish (or time out) before this returns, so that no client
  // of a failed herd keeps running into the next measurement.
  const settled = await Promise.allSettled(Array.from({ length: n }, (_, i) => skopeoPull(host, ref, join(destDir, `h${i}`), opts)));
  const failed = settled.find((x) => x.status === 'rejected');
  if (failed) throw failed.reason;
  return { wallMs: performance.now() - t0, each: settled.map((x) => x.value) };
}

/**
 * One client = one curl process that GETs the manifest by tag and then every blob in turn, writing to /dev/null.
 * Returns per-URL status and size so the caller can check every byte arrived.
 */
export async function curlPull(base, repo, tag, blobs, { timeoutMs = 300_000 } = {}) {
  const args = ['-sS', '--http1.1', '-H', `Accept: ${MANIFEST_ACCEPT}`, '-w', '%{http_code} %{size_download}\\n'];
  args.push(`${base}/v2/${repo}/manifests/${tag}`, '-o', '/dev/null');
  for (const b of blobs) args.push(`${base}/v2/${repo}/blobs/${b.digest}`, '-o', '/dev/null');
  const r = await run(requireTool('curl'), args, { timeoutMs });
  const lines = r.stdout.trim().split('\n');
  const bad = [];
  lines.forEach((l, i) => {
    const [code, size] = l.split(' ').map(Number);
    if (code !== 200) bad.push(`#${i} HTTP ${code}`);
    else if (i > 0 && size !== blobs[i - 1].size) bad.push(`#${i} got ${size} of ${blobs[i - 1].size} bytes`);
  });
  if (r.code !== 0 || lines.length !== blobs.length + 1 || bad.length) {
    throw new Error(`curl pull of ${repo}:${tag} failed (exit ${r.code}): ${bad.join(', ')} ${r.stderr.slice(-500)}`);
  }
  return r.ms;
}

const UNIT = { us: 0.001, ms: 1, s: 1000, m: 60_000 };
const toMs = (v, u) => Number(v) * UNIT[u];

/** wrk -t2 -c16 -d<sec>s --latency with the OCI Accept header; loopback targets only. */
export async function wrkManifest(url, { seconds = 5, connections = 16, threads = 2, headers = {} } = {}) {
  if (!/^http:\/\/127\.0\.0\.1:\d+\//.test(url)) throw new Error(`wrk target must be on 127.0.0.1: ${url}`);
  const extra = Object.entries(headers).flatMap(([k, v]) => ['-H', `${k}: ${v}`]);
  const args = [`-t${threads}`, `-c${connections}`, `-d${seconds}s`, '--latency', '-H', `Accept: ${MANIFEST_ACCEPT}`, ...extra, url];
  const r = await run(requireTool('wrk'), args, { timeoutMs: (seconds + 30) * 1000 });
  if (r.code !== 0) throw new Error(`wrk failed: ${r.stderr} ${r.stdout}`);
  const out = r.stdout;
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1]);
  const lat = (p) => {
    const m = new RegExp(`^\\s+${p}%\\s+([\\d.]+)(us|ms|s|m)\\s*$`, 'm').exec(out);
    return m ? toMs(m[1], m[2]) : undefined;
  };
  const non2xx = Number(/Non-2xx or 3xx responses:\s+(\d+)/.exec(out)?.[1] ?? 0);
  const errorsLine = /Socket errors:.*$/m.exec(out)?.[0];
  const requests = Number(/(\d+) requests in/.exec(out)?.[1]);
  return { rps, p50: lat(50), p75: lat(75), p90: lat(90), p99: lat(99), non2xx, requests, socketErrors: errorsLine ?? null };
}
