/**
 * The `cluster` phase (issue 13): three Portcullis replicas as separate processes sharing one bucket of a real
 * SeaweedFS (`weed server -s3`, scripts/install-tools.sh) and a cluster secret, in front of the same upstream as the
 * other phases. Measures a cold and a warm pull through the cluster against direct pulls, counts upstream GETs per
 * blob in a 20-client herd spread over the replicas, and kills the owner of a large blob (kill -9) while a herd
 * reads it; and compares warm manifest GETs/s of a Redis-backed replica with an embedded-store one (meta-rps.mjs).
 * See bench/README.md.
 */
import { CreateBucketCommand, GetObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, openSync, closeSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { skopeoPull } from './clients.mjs';
import { MANIFEST_ACCEPT } from './images.mjs';
import { metaRpsPhase } from './meta-rps.mjs';
import { startPortcullis } from './portcullis.mjs';
import { requireTool, runOk, startDaemon } from './proc.mjs';
import { freePort } from './registry.mjs';
import { median, round, summary } from './stats.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** SeaweedFS with S3 on loopback ports (every port explicit: the defaults are fixed and some bind every interface). */
export async function startSeaweed(dir) {
  const weed = requireTool('weed');
  const home = join(dir, 'seaweedfs');
  mkdirSync(home, { recursive: true });
  // S3 over https, as a production store is: the replicas then send blob parts unsigned (src/cache/s3-client.ts)
  // and pay for TLS instead, which is what a deployment measures.
  const caFile = join(home, 's3-cert.pem');
  const keyFile = join(home, 's3-key.pem');
  await runOk(requireTool('openssl'), [
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:P-256',
    '-nodes',
    '-keyout',
    keyFile,
    '-out',
    caFile,
    '-days',
    '2',
    '-subj',
    '/CN=127.0.0.1',
    '-addext',
    'subjectAltName=IP:127.0.0.1',
  ]);
  const accessKeyId = `AK${randomBytes(8).toString('hex')}`;
  const secretAccessKey = randomBytes(20).toString('hex');
  const s3config = join(home, 's3.json');
  writeFileSync(
    s3config,
    JSON.stringify({
      identities: [
        { name: 'bench', credentials: [{ accessKey: accessKeyId, secretKey: secretAccessKey }], actions: ['Admin', 'Read', 'Write', 'List', 'Tagging'] },
      ],
    }),
  );
  const ports = [];
  while (ports.length < 9) {
    const p = await freePort();
    if (!ports.includes(p)) ports.push(p);
  }
  const [master, masterGrpc, volume, volumeGrpc, filer, filerGrpc, s3, s3Grpc, s3Https] = ports;
  const fd = openSync(join(home, 'weed.log'), 'a');
  const d = startDaemon(
    weed,
    [
      'server',
      `-dir=${home}`,
      '-ip=127.0.0.1',
      '-ip.bind=127.0.0.1',
      `-master.port=${master}`,
      `-master.port.grpc=${masterGrpc}`,
      '-master.volumeSizeLimitMB=1024',
      `-volume.port=${volume}`,
      `-volume.port.grpc=${volumeGrpc}`,
      '-volume.max=16',
      '-filer',
      `-filer.port=${filer}`,
      `-filer.port.grpc=${filerGrpc}`,
      '-s3',
      `-s3.port=${s3}`,
      `-s3.port.grpc=${s3Grpc}`,
      '-s3.port.iceberg=0',
      '-s3.port.lance=0',
      `-s3.config=${s3config}`,
      `-s3.localSocket=${join(home, 's3.sock')}`,
      `-s3.port.https=${s3Https}`,
      `-s3.cert.file=${caFile}`,
      `-s3.key.file=${keyFile}`,
    ],
    { stdio: ['ignore', fd, fd], cwd: home },
  );
  closeSync(fd);
  const endpoint = `http://127.0.0.1:${s3}`;
  const client = () =>
    new S3Client({
      region: 'us-east-1',
      endpoint,
      forcePathStyle: true,
      credentials: { accessKeyId, secretAccessKey },
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    });
  const c = client();
  const deadline = Date.now() + 120_000;
  for (let i = 0; ; i++) {
    if (d.exitInfo) throw new Error(`weed exited during start-up (see ${home}/weed.log)`);
    try {
      await c.send(new CreateBucketCommand({ Bucket: `ready-${i}` }));
      break;
    } catch (e) {
      if (Date.now() > deadline) throw new Error(`weed not ready in 120 s: ${e}`, { cause: e });
      await sleep(Math.min(1000, 100 * (i + 1)));
    }
  }
  c.destroy();
  const https = { endpoint: `https://127.0.0.1:${s3Https}`, caFile };
  return { endpoint, https, accessKeyId, secretAccessKey, client, pid: d.pid, stop: () => d.stop(5000) };
}

/** n replicas, each listing all as peers, on one bucket. pcOpts: what the other phases start Portcullis with. */
async function startReplicas({ n, dir, weed, bucket, pcOpts, logLevel }) {
  const home = join(dir, 'cluster');
  mkdirSync(home, { recursive: true });
  const secretFile = join(home, 'secret');
  writeFileSync(secretFile, randomBytes(32).toString('hex'), { mode: 0o600 });
  const ports = [];
  while (ports.length < n) {
    const p = await freePort();
    if (!ports.includes(p)) ports.push(p);
  }
  const urls = ports.map((p) => `http://127.0.0.1:${p}`);
  const storage = {
    blobs: 's3',
    s3: {
      endpoint: weed.https.endpoint,
      caFile: weed.https.caFile,
      bucket,
      forcePathStyle: true,
      credentials: { accessKeyId: { env: 'PC_S3_AK' }, secretAccessKey: { env: 'PC_S3_SK' } },
    },
  };
  return Promise.all(
    ports.map((port, i) =>
      startPortcullis({
        ...pcOpts,
        name: `replica-${i}`,
        dir: home,
        port,
        logLevel,
        env: { ...pcOpts.env, PC_S3_AK: weed.accessKeyId, PC_S3_SK: weed.secretAccessKey },
        extra: { ...pcOpts.extra, storage, cluster: { self: urls[i], peers: urls, secret: { file: secretFile } } },
      }),
    ),
  );
}

/** The owner of key among nodes: the same rendezvous hashing as src/cluster/rendezvous.ts (48-bit sha256 scores). */
function ownerOf(key, nodes) {
  const score = (n) => createHash('sha256').update(n).update('\0').update(key).digest().readUIntBE(0, 6);
  return [...nodes].sort((a, b) => score(b) - score(a) || (a < b ? -1 : 1))[0];
}

async function getManifest(url, repo) {
  const res = await fetch(`${url}/v2/${repo}/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT } });
  if (res.status !== 200) throw new Error(`manifest ${repo} via ${url}: HTTP ${res.status} ${(await res.text()).slice(0, 300)}`);
  await res.arrayBuffer();
}

/** GET a blob and hash it; the error that cut it, if any. */
async function getBlob(url, repo, digest, onBytes) {
  const h = createHash('sha256');
  let n = 0;
  try {
    const res = await fetch(`${url}/v2/${repo}/blobs/${digest}`);
    if (res.status !== 200) return { digest: '', bytes: 0, error: `HTTP ${res.status}` };
    for await (const chunk of res.body) {
      h.update(chunk);
      n += chunk.length;
      onBytes?.(n);
    }
    return { digest: `sha256:${h.digest('hex')}`, bytes: n };
  } catch (e) {
    return { digest: `sha256:${h.digest('hex')}`, bytes: n, error: String(e.cause ?? e) };
  }
}

/**
 * @param {{ P: object, QUICK: boolean, dir: string, clients: string, upstream: object, seed: Function,
 *           pcOpts: object, instances: object[], log: Function, logLevel: string }} ctx
 */
export async function clusterPhase(ctx) {
  const { P, QUICK, dir, clients, upstream, seed, pcOpts, instances, log } = ctx;
  const weed = await startSeaweed(dir);
  const bucket = 'bench';
  const s3 = weed.client();
  await s3.send(new CreateBucketCommand({ Bucket: bucket }));
  const replicas = await startReplicas({ n: 3, dir, weed, bucket, pcOpts, logLevel: ctx.logLevel });
  // Images seeded from now on get their scan reports pushed to the replicas too.
  instances.push(...replicas);
  const out = { replicas: 3, store: 'SeaweedFS (S3), one bucket', note: 'three replicas on the same 2-core machine as the upstream, S3 server and clients' };
  try {
    log(`cluster: SeaweedFS ${weed.endpoint}; replicas ${replicas.map((r) => r.url).join(', ')}`);
    const dest = join(clients, 'cluster');
    {
      const repo = 'bench/cluster-warmup';
      await seed(repo, 'v1', P.image);
      for (const r of replicas) await skopeoPull(r.host, `${repo}:v1`, dest);
      log('cluster warm-up done (not counted)');
    }

    // Cold through one replica (its share of the blobs from their owners), warm through the two others (from S3).
    const reps = QUICK ? 2 : 3;
    const ratios = { cold: [], warm: [] };
    const ms = { direct: [], cold: [], warm: [] };
    for (let rep = 0; rep < reps; rep++) {
      const repo = `bench/cluster${rep}`;
      await seed(repo, 'v1', P.image);
      const ref = `${repo}:v1`;
      const d1 = await skopeoPull(upstream.host, ref, dest);
      const coldVia = replicas[rep % 3];
      const cold = await skopeoPull(coldVia.host, ref, dest);
      const warm = [];
      for (const r of replicas) if (r !== coldVia) warm.push(await skopeoPull(r.host, ref, dest));
      const d2 = await skopeoPull(upstream.host, ref, dest);
      const direct = (d1 + d2) / 2;
      ms.direct.push(d1, d2);
      ms.cold.push(cold);
      ms.warm.push(...warm);
      ratios.cold.push(cold / direct);
      ratios.warm.push(median(warm) / direct);
      log(
        `cluster rep ${rep + 1}/${reps}: direct ${d1.toFixed(0)}/${d2.toFixed(0)} ms; cold ${cold.toFixed(0)}; warm from S3 via the others ${warm.map((x) => x.toFixed(0)).join('/')}`,
      );
    }
    out.pulls = {
      image_mib: P.image.layers * P.image.layerMiB,
      reps,
      ms: Object.fromEntries(Object.entries(ms).map(([k, v]) => [k, summary(v.map((x) => round(x, 1)))])),
    };
    out.cold_ratio = summary(ratios.cold);
    out.warm_ratio = summary(ratios.warm);

    // Herd: 20 skopeo pulls of one cold image, spread round-robin over the replicas.
    {
      const repo = 'bench/cluster-herd';
      const img = await seed(repo, 'v1', P.image);
      const mark = upstream.mark();
      const t0 = performance.now();
      const settled = await Promise.allSettled(
        Array.from({ length: P.herdClients }, (_, i) => skopeoPull(replicas[i % 3].host, `${repo}:v1`, join(clients, `cluster-herd-${i}`))),
      );
      const wallMs = performance.now() - t0;
      const failed = settled.filter((x) => x.status === 'rejected');
      if (failed.length) throw failed[0].reason;
      await sleep(300); // the access-log line trails the response
      const gets = upstream.requestsSince(mark).filter((r) => r.method === 'GET' && r.path.startsWith(`/v2/${repo}/blobs/`));
      const perBlob = img.blobs.map((b) => gets.filter((r) => r.path.endsWith(`/blobs/${b.digest}`)).length);
      out.herd = { clients: P.herdClients, wall_ms: round(wallMs, 1), upstream_gets_per_blob: perBlob, replica_warnings: clusterWarnings(replicas) };
      out.herd_upstream_gets_per_blob = Math.max(...perBlob);
      log(`cluster herd: ${P.herdClients} × skopeo over 3 replicas in ${wallMs.toFixed(0)} ms; upstream GETs per blob ${perBlob.join(',')}`);
    }

    // Warm manifest GETs/s of a storage.meta: redis replica ÷ an embedded-store one (bench/lib/meta-rps.mjs); before
    // the kill, which leaves a dead replica among the instances that every seeded image's report goes to.
    out.manifest_rps = await metaRpsPhase({ QUICK, dir, seed, pcOpts, instances, log, logLevel: ctx.logLevel });
    out.kill = await killPhase({ QUICK, replicas, upstream, seed, s3, bucket, log });
    return out;
  } finally {
    for (const r of replicas) await r.stop(2000);
    instances.splice(instances.length - replicas.length, replicas.length);
    s3.destroy();
    await weed.stop();
  }
}

/** The replicas' cluster warnings so far, counted by message (why a blob was fetched more than once, if it was). */
function clusterWarnings(replicas) {
  const counts = {};
  for (const r of replicas) {
    let text;
    try {
      text = readFileSync(r.logPath, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n')) {
      if (!line.includes('"peer"')) continue;
      try {
        const msg = JSON.parse(line).msg;
        counts[msg] = (counts[msg] ?? 0) + 1;
      } catch {
        // not a JSON line
      }
    }
  }
  return counts;
}

/** kill -9 of the owner of one large blob while 9 clients (3 per replica) read it; the dead one's clients retry. */
async function killPhase({ QUICK, replicas, upstream, seed, s3, bucket, log }) {
  const repo = 'bench/cluster-kill';
  const img = await seed(repo, 'v1', { layers: 1, layerMiB: QUICK ? 128 : 512 });
  const layer = img.blobs[1];
  const owner = replicas.find((r) => r.url === ownerOf(layer.digest, replicas.map((x) => x.url).sort()));
  const others = replicas.filter((r) => r !== owner);
  for (const r of replicas) await getManifest(r.url, repo);
  const mark = upstream.mark();
  const assigned = Array.from({ length: 9 }, (_, i) => replicas[i % 3]);
  let killedAt;
  let completedBeforeKill = 0;
  const trigger = (n) => {
    if (killedAt === undefined && n >= 8 * 1024 * 1024) {
      killedAt = n;
      void owner.kill9();
    }
  };
  const first = await Promise.all(
    assigned.map(async (r) => {
      const res = await getBlob(r.url, repo, layer.digest, r === owner ? undefined : trigger);
      if (killedAt === undefined) completedBeforeKill++;
      return res;
    }),
  );
  const final = [];
  let survivorsWithoutBreak = 0;
  let retried = 0;
  for (const [i, r] of first.entries()) {
    if (assigned[i] !== owner) {
      if (!r.error && r.digest === layer.digest) survivorsWithoutBreak++;
      final.push(r.error ? await getBlob(others[i % 2].url, repo, layer.digest) : r);
      continue;
    }
    if (!r.error) {
      final.push(r);
      continue;
    }
    retried++;
    final.push(await getBlob(others[i % 2].url, repo, layer.digest));
  }
  const allCorrect = final.every((r) => !r.error && r.digest === layer.digest && r.bytes === layer.size);
  // What S3 shows under the digest: the complete object or nothing, never a partial one.
  const key = `v1/blobs/sha256/${layer.digest.slice(7)}`;
  let objectOk = true;
  let object = 'absent';
  for (let i = 0; i < 100; i++) {
    try {
      const o = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
      const h = createHash('sha256');
      for await (const c of o.Body) h.update(c);
      object = `sha256:${h.digest('hex')}`;
      objectOk = object === layer.digest;
      break;
    } catch {
      await sleep(200);
    }
  }
  await sleep(300);
  const gets = upstream.requestsSince(mark).filter((r) => r.method === 'GET' && r.path.endsWith(`/blobs/${layer.digest}`)).length;
  const ok = killedAt !== undefined && allCorrect && objectOk;
  log(
    `cluster kill: owner killed after a follower had ${((killedAt ?? 0) / 2 ** 20).toFixed(0)} MiB; ${survivorsWithoutBreak}/6 survivors' clients unbroken, ` +
      `${retried} retried; all correct ${allCorrect}; S3 object ${object === 'absent' ? 'absent' : objectOk ? 'complete and correct' : 'WRONG'}; upstream GETs ${gets}`,
  );
  return {
    blob_mib: QUICK ? 128 : 512,
    killed_after_bytes: killedAt ?? null,
    clients_completed_before_kill: completedBeforeKill,
    survivor_clients_without_break: survivorsWithoutBreak,
    dead_owner_clients_retried: retried,
    all_clients_correct: allCorrect,
    s3_object: object === 'absent' ? 'absent' : objectOk ? 'complete' : 'wrong',
    upstream_gets: gets,
    replica_kill_ok: ok,
  };
}
