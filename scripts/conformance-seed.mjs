#!/usr/bin/env node
/**
 * Seeds a registry with the read-only content the OCI conformance suite needs, pre-warms it through Portcullis, and
 * checks the referrers fallback. Plain ESM with fetch, no dependencies, so scripts/conformance.sh runs it with the
 * bare node binary. Used only by scripts/conformance.sh.
 *
 *   node scripts/conformance-seed.mjs seed    <registry-url> <repo> <state.json>   prints OCI_RO_DATA_* lines for the shell
 *   node scripts/conformance-seed.mjs prewarm <proxy-url>    <name> <state.json>
 *
 * What `seed` pushes into <repo> (OCI media types only: the suite's Accept header lists only the OCI index and
 * image types, so Docker types would rightly be answered 404 by an Accept-honouring registry):
 *   tag v1     an image: config + 2 layers
 *   tag multi  an OCI index over linux/amd64 and linux/arm64 images (each: config + 1 layer)
 *   a referrer of the v1 image: an artifact manifest (artifactType application/vnd.portcullis.test.sbom, subject =
 *   v1, empty config, one layer), pushed by digest, plus the referrers tag-schema index at tag sha256-<hex of v1>,
 *   because Distribution 2.8 has no referrers API (testbed §2.5)
 *
 * Why `prewarm`: Portcullis serves a blob or child manifest by digest only inside the closure of an admitted root
 * image (DESIGN §1: that is what closes the by-digest bypass). The suite in read-only mode asks for blobs by digest
 * straight away, the way no real client does (a client always fetches the manifest first). So the closure is
 * admitted first by GETting, through the proxy, each root manifest by tag, each child manifest and the referrer.
 * `prewarm` then asserts that the referrers API through the proxy lists the seeded referrer (the suite itself,
 * given only subject digests, cannot know what the list should contain).
 */
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';

const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const OCI_CONFIG = 'application/vnd.oci.image.config.v1+json';
const OCI_LAYER = 'application/vnd.oci.image.layer.v1.tar';
const OCI_EMPTY = 'application/vnd.oci.empty.v1+json';
const SBOM_TYPE = 'application/vnd.portcullis.test.sbom';
const ACCEPT = [OCI_INDEX, OCI_MANIFEST].join(', ');

const sha256 = (b) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

function die(msg) {
  process.stderr.write(`conformance-seed: ${msg}\n`);
  process.exit(1);
}

async function check(res, what, want) {
  if (res.status !== want) die(`${what}: HTTP ${res.status} ${(await res.text()).slice(0, 300)}`);
  await res.arrayBuffer();
  return res;
}

/** POST then PUT ?digest= (Distribution 2.8 ignores the body of a monolithic POST, testbed §2.5). */
async function pushBlob(reg, repo, bytes) {
  const digest = sha256(bytes);
  const post = await check(await fetch(`${reg}/v2/${repo}/blobs/uploads/`, { method: 'POST' }), `POST upload ${repo}`, 202);
  const loc = new URL(post.headers.get('location'), reg);
  loc.searchParams.set('digest', digest);
  await check(await fetch(loc, { method: 'PUT', headers: { 'content-type': 'application/octet-stream' }, body: bytes }), `PUT blob ${digest}`, 201);
  return { mediaType: '', digest, size: bytes.length };
}

async function pushManifest(reg, repo, ref, obj) {
  const bytes = Buffer.from(JSON.stringify(obj));
  const res = await check(
    await fetch(`${reg}/v2/${repo}/manifests/${ref ?? sha256(bytes)}`, { method: 'PUT', headers: { 'content-type': obj.mediaType }, body: bytes }),
    `PUT manifest ${repo}:${ref}`,
    201,
  );
  const digest = sha256(bytes);
  const echoed = res.headers.get('docker-content-digest');
  if (echoed && echoed !== digest) die(`registry says ${echoed} for bytes that hash to ${digest}`);
  return { mediaType: obj.mediaType, digest, size: bytes.length };
}

/** A small but real image: config + `layers` tar-ish layers of random bytes. */
async function pushImage(reg, repo, tag, platform, layers, blobs) {
  const ls = [];
  for (let i = 0; i < layers; i++) {
    const b = await pushBlob(reg, repo, Buffer.concat([Buffer.from(`layer ${i} `), createHash('sha512').update(String(Math.random())).digest()]));
    blobs.push(b.digest);
    ls.push({ ...b, mediaType: OCI_LAYER });
  }
  const config = Buffer.from(
    JSON.stringify({ architecture: platform.architecture, os: platform.os, rootfs: { type: 'layers', diff_ids: ls.map((l) => l.digest) } }),
  );
  const c = await pushBlob(reg, repo, config);
  blobs.push(c.digest);
  return pushManifest(reg, repo, tag, { schemaVersion: 2, mediaType: OCI_MANIFEST, config: { ...c, mediaType: OCI_CONFIG }, layers: ls });
}

async function seed(reg, repo, stateFile) {
  const blobs = [];
  const v1 = await pushImage(reg, repo, 'v1', { os: 'linux', architecture: 'amd64' }, 2, blobs);
  const children = [];
  for (const architecture of ['amd64', 'arm64']) {
    const m = await pushImage(reg, repo, undefined, { os: 'linux', architecture }, 1, blobs);
    children.push({ ...m, platform: { os: 'linux', architecture } });
  }
  const index = await pushManifest(reg, repo, 'multi', { schemaVersion: 2, mediaType: OCI_INDEX, manifests: children });

  // The referrer: an OCI 1.1 artifact with a subject. Distribution 2.8 stores it but sends no OCI-Subject, so the
  // referrers tag schema index is the client's (here: the seed's) job.
  const empty = await pushBlob(reg, repo, Buffer.from('{}'));
  const sbom = await pushBlob(reg, repo, Buffer.from(JSON.stringify({ spdxVersion: 'SPDX-2.3', name: 'conformance' })));
  blobs.push(empty.digest, sbom.digest);
  const referrer = await pushManifest(reg, repo, undefined, {
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    artifactType: SBOM_TYPE,
    config: { ...empty, mediaType: OCI_EMPTY },
    layers: [{ ...sbom, mediaType: 'application/spdx+json' }],
    subject: v1,
    annotations: { 'org.opencontainers.image.created': '2026-01-01T00:00:00Z' },
  });
  const referrerDesc = { ...referrer, artifactType: SBOM_TYPE, annotations: { 'org.opencontainers.image.created': '2026-01-01T00:00:00Z' } };
  const fallbackTag = `sha256-${v1.digest.slice('sha256:'.length)}`;
  await pushManifest(reg, repo, fallbackTag, { schemaVersion: 2, mediaType: OCI_INDEX, manifests: [referrerDesc] });

  const refIndex = await fetch(`${reg}/v2/${repo}/manifests/${fallbackTag}`, { headers: { accept: OCI_INDEX } });
  const refIndexDigest = sha256(Buffer.from(await refIndex.arrayBuffer()));
  const state = {
    repo,
    tags: ['v1', 'multi', fallbackTag],
    tagDigests: { v1: v1.digest, multi: index.digest, [fallbackTag]: refIndexDigest },
    roots: ['v1', 'multi'],
    children: children.map((c) => c.digest),
    referrer: referrerDesc,
    subject: v1.digest,
    manifests: [v1.digest, index.digest, ...children.map((c) => c.digest), referrer.digest],
    blobs: [...new Set(blobs)],
    // v1 has a referrer; the index has none (the suite then expects an empty, valid index).
    referrers: [v1.digest, index.digest],
  };
  writeFileSync(stateFile, JSON.stringify(state, null, 2));
  const q = (a) => `'${a.join(' ')}'`;
  process.stdout.write(
    [
      `OCI_RO_DATA_TAGS=${q(state.tags)}`,
      `OCI_RO_DATA_MANIFESTS=${q(state.manifests)}`,
      `OCI_RO_DATA_BLOBS=${q(state.blobs)}`,
      `OCI_RO_DATA_REFERRERS=${q(state.referrers)}`,
      '',
    ].join('\n'),
  );
}

async function prewarm(proxy, name, stateFile) {
  const state = JSON.parse(readFileSync(stateFile, 'utf8'));
  const get = async (ref) => {
    const res = await fetch(`${proxy}/v2/${name}/manifests/${ref}`, { headers: { accept: ACCEPT } });
    if (res.status !== 200) die(`prewarm GET ${name}:${ref} through the proxy: HTTP ${res.status} ${(await res.text()).slice(0, 300)}`);
    await res.arrayBuffer();
  };
  for (const tag of state.roots) await get(tag);
  for (const d of state.children) await get(d);
  await get(state.referrer.digest);

  // The suite, given only digests, cannot check manifest response headers in read-only mode (it captures them only
  // when it knows the bytes), so check them here: HEAD and GET, by tag and by digest, with the suite's Accept.
  const expect = [...Object.entries(state.tagDigests), ...state.manifests.map((d) => [d, d])];
  for (const [ref, digest] of expect) {
    for (const method of ['HEAD', 'GET']) {
      const res = await fetch(`${proxy}/v2/${name}/manifests/${ref}`, { method, headers: { accept: ACCEPT } });
      const body = Buffer.from(await res.arrayBuffer());
      const what = `${method} manifests/${ref}`;
      if (res.status !== 200) die(`${what}: HTTP ${res.status}`);
      if (res.headers.get('docker-content-digest') !== digest)
        die(`${what}: Docker-Content-Digest ${res.headers.get('docker-content-digest')}, want ${digest}`);
      if (![OCI_INDEX, OCI_MANIFEST].includes(res.headers.get('content-type'))) die(`${what}: Content-Type ${res.headers.get('content-type')}`);
      const len = Number(res.headers.get('content-length'));
      if (method === 'GET' && (sha256(body) !== digest || len !== body.length)) die(`${what}: body does not match its digest or length`);
      if (method === 'HEAD' && (body.length !== 0 || !(len > 0))) die(`${what}: HEAD must have no body and a Content-Length`);
    }
  }

  // The referrers API through the proxy must list the seeded referrer, unfiltered and filtered.
  for (const qs of ['', `?artifactType=${encodeURIComponent(SBOM_TYPE)}`]) {
    const res = await fetch(`${proxy}/v2/${name}/referrers/${state.subject}${qs}`);
    const body = await res.text();
    if (res.status !== 200) die(`referrers${qs}: HTTP ${res.status} ${body.slice(0, 300)}`);
    if (res.headers.get('content-type') !== OCI_INDEX) die(`referrers${qs}: content-type ${res.headers.get('content-type')}`);
    const idx = JSON.parse(body);
    const hit = (idx.manifests ?? []).find((d) => d.digest === state.referrer.digest);
    if (!hit || hit.artifactType !== SBOM_TYPE || hit.size !== state.referrer.size || hit.mediaType !== OCI_MANIFEST) {
      die(`referrers${qs} does not list the seeded referrer: ${body.slice(0, 500)}`);
    }
    if (qs && !(res.headers.get('oci-filters-applied') ?? '').includes('artifactType')) die('filtered referrers without OCI-Filters-Applied');
  }
  const res = await fetch(`${proxy}/v2/${name}/referrers/${state.subject}?artifactType=application/vnd.none`);
  const none = JSON.parse(await res.text());
  if (res.status !== 200 || none.manifests.length !== 0) die('referrers filtered by an absent artifactType must be empty');
  process.stderr.write(
    `conformance-seed: prewarmed ${state.roots.length} roots, ${state.children.length} children, 1 referrer; manifest headers and referrers API ok\n`,
  );
}

const [cmd, url, name, stateFile] = process.argv.slice(2);
if (!cmd || !url || !name || !stateFile) die('usage: conformance-seed.mjs seed|prewarm <url> <repo|name> <state.json>');
if (cmd === 'seed') await seed(url.replace(/\/+$/, ''), name, stateFile);
else if (cmd === 'prewarm') await prewarm(url.replace(/\/+$/, ''), name, stateFile);
else die(`unknown command ${cmd}`);
