/**
 * Fills a Portcullis data directory to realistic sizes for the `scale` phase (issue 16), through the product's own
 * store (dist/cache/metastore.js) so the rows are what the product writes:
 *   - blobs: sparse files under blobs/sha256/xx/<hex> (size set, no bytes written). Their bytes never match their
 *     names, which is fine: the phase never serves them; what it measures is how the index, the start and eviction
 *     behave with this many entries. The blobs the phase does serve are real, pulled from the real upstream.
 *   - meta.sqlite: tags, admitted closures (a manifest, a root admission, a config and layers each) and decisions.
 */
import { closeSync, ftruncateSync, mkdirSync, openSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const hex = (s) => createHash('sha256').update(s).digest('hex');

/** Sparse files; sizes 1–64 KiB (so the logical total stays in tens of GiB). Returns the logical bytes. */
export function fillBlobs(dataDir, n) {
  const made = new Set();
  let bytes = 0;
  for (let i = 0; i < n; i++) {
    const h = hex(`scale-blob-${i}`);
    const d = join(dataDir, 'blobs', 'sha256', h.slice(0, 2));
    if (!made.has(d)) {
      mkdirSync(d, { recursive: true });
      made.add(d);
    }
    const size = 1024 * (1 + (i % 64));
    const fd = openSync(join(d, h), 'w');
    ftruncateSync(fd, size);
    closeSync(fd);
    bytes += size;
  }
  return bytes;
}

/**
 * Rows through SqliteMetaStore: `tags` tag mappings, `closures` admitted roots (each: manifest bytes, a root
 * admission, 1 config + 4 layer members), and `decisions` admissions in all (the closures' own, plus more tags of
 * the same roots). Everything unexpired for a day, under a basis the running product will not have (so none of it
 * short-cuts a measured decision).
 */
export async function fillMeta(distDir, dataDir, { upstream, tags, closures, decisions }) {
  const { SqliteMetaStore } = await import(pathToFileURL(join(distDir, 'cache', 'metastore.js')).href);
  const meta = new SqliteMetaStore(dataDir);
  const now = Date.now();
  const day = now + 86_400_000;
  const roots = [];
  try {
    for (let i = 0; i < closures; i++) {
      const repo = `scale/r${i % 1000}`;
      const layers = Array.from({ length: 4 }, (_, k) => `sha256:${hex(`scale-layer-${i}-${k}`)}`);
      const config = `sha256:${hex(`scale-config-${i}`)}`;
      const body = Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: config, size: 1000 },
          layers: layers.map((digest) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest, size: 4096 })),
        }),
      );
      const digest = `sha256:${hex(body)}`;
      roots.push({ repo, digest });
      meta.putManifest(upstream, repo, { digest, mediaType: 'application/vnd.oci.image.manifest.v1+json', bytes: body });
      meta.putMembers(upstream, repo, digest, digest, [{ digest: config, role: 'config' }, ...layers.map((d) => ({ digest: d, role: 'layer' }))], day);
    }
    for (let i = 0; i < decisions; i++) {
      const r = roots[i % roots.length];
      meta.putAdmission(upstream, r.repo, {
        digest: r.digest,
        under: '',
        tag: i < roots.length ? '' : `t${Math.floor(i / roots.length)}`,
        kind: 'manifest',
        basis: 'scale-fill',
        serve: i % 10 !== 0,
        decisionId: `scale-${i}`,
        reason: i % 10 !== 0 ? '' : 'filled deny',
        decidedAt: now,
        expiresAt: day,
      });
    }
    for (let i = 0; i < tags; i++) {
      const r = roots[i % roots.length];
      meta.putTag(upstream, r.repo, `t${Math.floor(i / roots.length)}`, {
        digest: r.digest,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        size: 600,
        checkedAt: now,
      });
    }
  } finally {
    meta.close();
  }
}
