/**
 * Serial upstream round trips of a cold decision (issue 16, item 5). Over a real network every round trip costs the
 * upstream's RTT, so the requests a decision makes must go out together wherever one does not need another's
 * answer. The fake upstream holds every response (a manual sleep) until the test releases the round, so the requests
 * held at once are one round trip, and a request that went serial again would never arrive while its predecessor
 * is held: the wait for the round's requests then fails (no clock is measured).
 */
import { generateKeyPairSync } from 'node:crypto';
import { createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { manualSleep, startFakeUpstream, type FakeUpstream, type ManualSleep } from '../harness/fake-upstream.js';
import { MANIFEST_ACCEPT } from '../harness/images.js';
import { startProxy } from '../harness/proxy.js';

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const SIMPLE_SIGNING = 'application/vnd.dev.cosign.simplesigning.v1+json';
const EMPTY = { mediaType: 'application/vnd.oci.empty.v1+json', digest: 'sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a', size: 2 };
const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

let dir: string;
let keyPath: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'pc-rounds-'));
  keyPath = join(dir, 'release.pub');
  const { publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  await writeFile(keyPath, publicKey.export({ format: 'pem', type: 'spki' }) as string);
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A one-layer image at `tag` and a legacy cosign `.sig` tag for it with one simple-signing layer. */
function seed(up: FakeUpstream, repo: string, tag: string): { digest: string; sigLayer: string } {
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] }, nonce: Math.random() }));
  const layer = Buffer.from(`layer ${Math.random()}`);
  up.addBlob(repo, config);
  up.addBlob(repo, layer);
  up.addBlob(repo, Buffer.from('{}'));
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha(config), size: config.length },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: sha(layer), size: layer.length }],
    }),
  );
  const digest = up.addManifest(repo, tag, manifest, OCI_MANIFEST);
  const payload = Buffer.from(
    JSON.stringify({ critical: { type: 'cosign container image signature', image: { 'docker-manifest-digest': digest } }, optional: {} }),
  );
  const sigLayer = up.addBlob(repo, payload);
  const sig = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: EMPTY,
      layers: [{ mediaType: SIMPLE_SIGNING, digest: sigLayer, size: payload.length, annotations: { 'dev.cosignproject.cosign/signature': 'AAAA' } }],
    }),
  );
  up.addManifest(repo, `sha256-${digest.slice(7)}.sig`, sig, OCI_MANIFEST);
  return { digest, sigLayer };
}

/** Resolves once `n` upstream requests in all are being held; fails (naming what came) if they do not come. */
async function held(clock: ManualSleep, up: FakeUpstream, n: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      const seen = up.requests().map((r) => `${r.method} ${r.path}`);
      reject(new Error(`expected ${n} upstream requests held at once by now, got ${seen.length}:\n${seen.join('\n')}`));
    }, 15_000);
  });
  try {
    await Promise.race([clock.called(n), deadline]);
  } finally {
    clearTimeout(timer);
  }
}

describe('cold decision: upstream round trips', () => {
  it('a legacy-signed image is decided in 4 rounds: tag, manifest, the three lookups, then the .sig blob alongside the referrers fallback', async () => {
    const clock = manualSleep();
    // Like Distribution 2.8: no referrers API (404), so the tag-schema fallback is looked up too.
    const up = await startFakeUpstream({ sleep: clock.sleep });
    up.setFault({ pathRegex: /^\/v2\/.+/ }, { kind: 'delay', ms: 50 });
    const p = await startProxy({
      upstreams: [{ name: 'up', registry: up.host, url: up.url }],
      settings: { no_match: 'deny', scopes: [{ name: 'signed', images: ['**'], signatures: { authorities: ['release'] } }] },
      extra: { signatures: { authorities: [{ name: 'release', kind: 'key', key: keyPath }] } },
    });
    try {
      const repo = 'team/app';
      const img = seed(up, repo, 'v1');
      up.clearRequests();
      const pending = fetch(`${p.url}/v2/${up.host}/${repo}/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT } });
      const rounds: number[] = [];
      let total = 0;
      for (const width of [1, 1, 3, 2]) {
        total += width;
        await held(clock, up, total);
        rounds.push(width);
        clock.release();
      }
      clock.open();
      const res = await pending;
      await res.arrayBuffer();
      // The signature does not verify (its bytes are junk): the decision is a deny, after the same requests.
      expect(res.status).toBe(403);
      const hex = img.digest.slice(7);
      const seen = up.requests().map((r) => `${r.method} ${r.path.replace(`/v2/${repo}/`, '')}`);
      const round = (from: number, n: number): string[] => seen.slice(from, from + n).sort();
      expect(round(0, 1)).toEqual(['HEAD manifests/v1']);
      expect(round(1, 1)).toEqual([`GET manifests/${img.digest}`]);
      // Signature tags are looked up with one GET each (no HEAD first): a found one's manifest is needed anyway.
      expect(round(2, 3)).toEqual([`GET manifests/sha256-${hex}.att`, `GET manifests/sha256-${hex}.sig`, `GET referrers/${img.digest}`].sort());
      // The .sig blob does not wait for the referrers API's 404 and its tag-schema fallback.
      expect(round(5, 2)).toEqual([`GET blobs/${img.sigLayer}`, `GET manifests/sha256-${hex}`].sort());
      expect(seen).toHaveLength(7);
      expect(rounds).toHaveLength(4);
    } finally {
      clock.open();
      await p.stop();
      await up.stop();
    }
  }, 60_000);
});
