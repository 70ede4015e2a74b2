/**
 * The purge after re-evaluation (src/gate/purge.ts) on a hand-built store view: what it acts on, and what it never
 * removes. The e2e (test/e2e/reeval.test.ts) runs it against a real registry and real pulls.
 */
import { describe, expect, test } from 'vitest';
import type { Digest } from '../../src/routing/reference.js';
import { purge, purgeable, type PurgeTarget } from '../../src/gate/purge.js';
import type { ReevalEntry } from '../../src/gate/reeval.js';

const d = (c: string): Digest => `sha256:${c.repeat(64)}` as Digest;
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';

function image(config: Digest, layers: Digest[]): Buffer {
  return Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: config, size: 2 },
      layers: layers.map((l) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: l, size: 2 })),
    }),
  );
}

function entry(repository: string, digest: Digest, over: Partial<ReevalEntry> = {}): ReevalEntry {
  return {
    image: `r.example/${repository}@${digest}`,
    upstream: 'u',
    registry: 'r.example',
    repository,
    tag: null,
    digest,
    outcome: 'allow',
    would_deny: false,
    mode: 'enforce',
    deny: [],
    warn: [],
    scan: { status: 'ok' },
    signatures: 'ok',
    ...over,
  };
}

const DENIED = { outcome: 'deny' as const, would_deny: true, deny: [{ rule: 'scan.limit', message: '1 CRITICAL' }] };

/** A store of manifests by (repository, digest), a blob store, and the calls purge makes. */
function fakeTarget(
  manifests: Record<string, { mediaType: string; bytes: Buffer }>,
  blobs: Digest[],
  opts: { members?: Array<{ root: Digest; member: Digest }>; downloading?: Digest[] } = {},
) {
  const present = new Set(blobs);
  const forgotten: Digest[] = [];
  const t: PurgeTarget = {
    meta: {
      getManifest: (_u, repo, digest) => {
        const m = manifests[`${repo}@${digest}`];
        return m ? { digest, ...m } : undefined;
      },
      listBlobMembers: () => opts.members ?? [],
    },
    blobs: {
      has: (x) => present.has(x),
      remove: (x) => {
        present.delete(x);
        return Promise.resolve();
      },
    },
    downloading: (x) => (opts.downloading ?? []).includes(x),
    forgetRoot: (x) => void forgotten.push(x),
  };
  return { t, present, forgotten };
}

describe('purgeable: only a deny about the image itself', () => {
  test.each([
    ['an enforced deny on scan evidence', entry('a', d('1'), DENIED), true],
    ['an allow', entry('a', d('1')), false],
    ['a deny in warn mode', entry('a', d('1'), { ...DENIED, outcome: 'warn' }), false],
    ['a dry-run deny', entry('a', d('1'), { ...DENIED, outcome: 'dry-run-deny' }), false],
    ['an evaluation error', entry('a', d('1'), { outcome: 'error', would_deny: true, error: 'upstream down' }), false],
    ['a scan that failed', entry('a', d('1'), { ...DENIED, scan: { status: 'error' }, deny: [{ rule: 'scan.error', message: 'scanner down' }] }), false],
    ['a pending scan', entry('a', d('1'), { ...DENIED, scan: { status: 'pending' }, deny: [{ rule: 'scan.pending', message: 'pending' }] }), false],
    [
      'a signature verification error',
      entry('a', d('1'), { ...DENIED, signatures: 'error', deny: [{ rule: 'signature.required', message: 'verification error' }] }),
      false,
    ],
    ['a client rule (re-evaluation is anonymous)', entry('a', d('1'), { ...DENIED, deny: [{ rule: 'client.not_allowed', message: 'anonymous' }] }), false],
    ['a policy error', entry('a', d('1'), { ...DENIED, deny: [{ rule: 'policy.error', message: 'wasm trap' }] }), false],
    [
      'a client rule next to a real one',
      entry('a', d('1'), {
        ...DENIED,
        deny: [
          { rule: 'scan.limit', message: 'x' },
          { rule: 'client.not_allowed', message: 'y' },
        ],
      }),
      false,
    ],
  ])('%s → %s', (_name, e, want) => {
    expect(purgeable(e)).toBe(want);
  });
});

describe('purge', () => {
  test('removes the denied image’s own blobs, keeps those another cached image or admitted closure lists', () => {
    const [bad, good, other] = [d('a'), d('b'), d('c')];
    const [base, badOwn, badConfig, goodConfig, otherLayer] = [d('1'), d('2'), d('3'), d('4'), d('5')];
    const { t, present, forgotten } = fakeTarget(
      {
        [`app@${bad}`]: { mediaType: OCI_MANIFEST, bytes: image(badConfig, [base, badOwn, otherLayer]) },
        [`app@${good}`]: { mediaType: OCI_MANIFEST, bytes: image(goodConfig, [base]) },
      },
      [base, badOwn, badConfig, goodConfig, otherLayer],
      // An admitted image that is not in the report (an accessory, another repository) lists otherLayer.
      {
        members: [
          { root: other, member: otherLayer },
          { root: bad, member: badOwn },
        ],
      },
    );
    const r = purge(t, [entry('app', bad, DENIED), entry('app', good)]);
    expect(forgotten).toEqual([bad]);
    expect(r.removed.sort()).toEqual([badOwn, badConfig].sort());
    expect(r.kept.sort()).toEqual([base, otherLayer].sort());
    expect([...present].sort()).toEqual([base, goodConfig, otherLayer].sort());
  });

  test('an index: the blobs of its cached children go', () => {
    const [index, child] = [d('a'), d('b')];
    const indexBytes = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: OCI_INDEX,
        manifests: [{ mediaType: OCI_MANIFEST, digest: child, size: 10, platform: { os: 'linux', architecture: 'amd64' } }],
      }),
    );
    const { t, present } = fakeTarget(
      { [`app@${index}`]: { mediaType: OCI_INDEX, bytes: indexBytes }, [`app@${child}`]: { mediaType: OCI_MANIFEST, bytes: image(d('3'), [d('4')]) } },
      [d('3'), d('4')],
    );
    expect(purge(t, [entry('app', index, DENIED)]).removed.sort()).toEqual([d('3'), d('4')].sort());
    expect(present.size).toBe(0);
  });

  test('a digest still in good standing under another tag or repository is not purged at all', () => {
    const img = d('a');
    const { t, present, forgotten } = fakeTarget(
      { [`x@${img}`]: { mediaType: OCI_MANIFEST, bytes: image(d('1'), [d('2')]) }, [`y@${img}`]: { mediaType: OCI_MANIFEST, bytes: image(d('1'), [d('2')]) } },
      [d('1'), d('2')],
    );
    const r = purge(t, [entry('x', img, DENIED), entry('y', img)]);
    expect(r).toEqual({ images: [], removed: [], kept: [] });
    expect(forgotten).toEqual([]);
    expect(present.size).toBe(2);
  });

  test('a blob being downloaded is left alone; a transient deny purges nothing', () => {
    const img = d('a');
    const { t, present } = fakeTarget({ [`x@${img}`]: { mediaType: OCI_MANIFEST, bytes: image(d('1'), [d('2')]) } }, [d('1'), d('2')], {
      downloading: [d('2')],
    });
    expect(purge(t, [entry('x', img, { ...DENIED, scan: { status: 'error' } })]).images).toEqual([]);
    expect(present.size).toBe(2);
    const r = purge(t, [entry('x', img, DENIED)]);
    expect(r.removed).toEqual([d('1')]);
    expect(r.kept).toEqual([d('2')]);
  });
});
