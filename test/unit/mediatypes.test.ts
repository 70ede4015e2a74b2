import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  accepts,
  DOCKER_LIST,
  DOCKER_MANIFEST,
  DOCKER_SCHEMA1,
  DOCKER_SCHEMA1_SIGNED,
  ManifestFormatError,
  OCI_INDEX,
  OCI_MANIFEST,
  parseManifest,
  UPSTREAM_ACCEPT,
} from '../../src/oci/mediatypes.js';
import { sha256Digest } from './arbitraries.js';

const D1 = `sha256:${'1'.repeat(64)}`;
const D2 = `sha256:${'2'.repeat(64)}`;
const D3 = `sha512:${'3'.repeat(128)}`;
const CONFIG_TYPE = 'application/vnd.oci.image.config.v1+json';
const LAYER_TYPE = 'application/vnd.oci.image.layer.v1.tar+gzip';

const buf = (o: unknown) => Buffer.from(JSON.stringify(o));

function image(extra: Record<string, unknown> = {}) {
  return {
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: { mediaType: CONFIG_TYPE, digest: D1, size: 10 },
    layers: [
      { mediaType: LAYER_TYPE, digest: D2, size: 20 },
      { mediaType: LAYER_TYPE, digest: D3, size: 0 },
    ],
    ...extra,
  };
}

function index(extra: Record<string, unknown> = {}) {
  return {
    schemaVersion: 2,
    mediaType: OCI_INDEX,
    manifests: [
      { mediaType: OCI_MANIFEST, digest: D1, size: 500, platform: { os: 'linux', architecture: 'amd64' } },
      { mediaType: OCI_MANIFEST, digest: D2, size: 501, platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
    ],
    ...extra,
  };
}

function expectRefused(bytes: Buffer, ct: string | undefined, msg?: RegExp): void {
  let err: unknown;
  try {
    parseManifest(bytes, ct);
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(ManifestFormatError);
  if (msg) expect((err as Error).message).toMatch(msg);
}

describe('parseManifest: accepted shapes', () => {
  it('parses an OCI image: config first, then layers', () => {
    const m = parseManifest(buf(image({ annotations: { a: 'b' }, artifactType: 'x/y' })), OCI_MANIFEST);
    expect(m.kind).toBe('image');
    expect(m.mediaType).toBe(OCI_MANIFEST);
    expect(m.blobs.map((b) => b.digest)).toEqual([D1, D2, D3]);
    expect(m.config?.digest).toBe(D1);
    expect(m.manifests).toEqual([]);
    expect(m.annotations).toEqual({ a: 'b' });
    expect(m.artifactType).toBe('x/y');
  });

  it('parses an OCI index with platforms', () => {
    const m = parseManifest(buf(index()), `${OCI_INDEX}; charset=utf-8`);
    expect(m.kind).toBe('index');
    expect(m.manifests.map((d) => d.digest)).toEqual([D1, D2]);
    expect(m.manifests[1]?.platform).toEqual({ os: 'linux', architecture: 'arm64', variant: 'v8' });
    expect(m.blobs).toEqual([]);
  });

  it('parses Docker v2 image manifests and manifest lists', () => {
    expect(parseManifest(buf(image({ mediaType: DOCKER_MANIFEST })), DOCKER_MANIFEST)).toMatchObject({ kind: 'image', mediaType: DOCKER_MANIFEST });
    expect(parseManifest(buf(index({ mediaType: DOCKER_LIST })), DOCKER_LIST)).toMatchObject({ kind: 'index', mediaType: DOCKER_LIST });
  });

  it('takes the media type from Content-Type when the body has none', () => {
    const { mediaType: _, ...noType } = image();
    expect(parseManifest(buf(noType), DOCKER_MANIFEST).mediaType).toBe(DOCKER_MANIFEST);
  });

  it('infers the OCI type from the shape when neither names a supported type', () => {
    const { mediaType: _a, ...img } = image();
    const { mediaType: _b, ...idx } = index();
    expect(parseManifest(buf(img), undefined)).toMatchObject({ kind: 'image', mediaType: OCI_MANIFEST });
    expect(parseManifest(buf(idx), undefined)).toMatchObject({ kind: 'index', mediaType: OCI_INDEX });
    expect(parseManifest(buf(img), 'application/json')).toMatchObject({ kind: 'image', mediaType: OCI_MANIFEST });
    expect(parseManifest(buf(idx), 'application/octet-stream')).toMatchObject({ kind: 'index', mediaType: OCI_INDEX });
  });

  it('accepts a generic Content-Type that differs from the body mediaType', () => {
    expect(parseManifest(buf(image()), 'application/json').mediaType).toBe(OCI_MANIFEST);
  });

  it('keeps a subject descriptor (referrers)', () => {
    const m = parseManifest(buf(image({ subject: { mediaType: OCI_MANIFEST, digest: D2, size: 7 } })), OCI_MANIFEST);
    expect(m.subject).toEqual({ mediaType: OCI_MANIFEST, digest: D2, size: 7 });
  });

  it('parses an index with no children', () => {
    expect(parseManifest(buf(index({ manifests: [] })), OCI_INDEX).manifests).toEqual([]);
  });
});

describe('parseManifest: refusals', () => {
  it('refuses schema1, whether by schemaVersion or Content-Type', () => {
    expectRefused(buf({ schemaVersion: 1, name: 'x', tag: 'y', fsLayers: [] }), undefined, /schema1/);
    expectRefused(buf(image()), DOCKER_SCHEMA1, /schema1/);
    expectRefused(buf(image()), `${DOCKER_SCHEMA1_SIGNED}; charset=utf-8`, /schema1/);
  });

  it('refuses a Content-Type that disagrees with the body mediaType', () => {
    expectRefused(buf(image()), OCI_INDEX, /disagrees/);
    expectRefused(buf(image({ mediaType: DOCKER_MANIFEST })), OCI_MANIFEST, /disagrees/);
    expectRefused(buf(index()), DOCKER_LIST, /disagrees/);
  });

  it('refuses a body whose shape contradicts its type', () => {
    expectRefused(buf(image({ mediaType: OCI_INDEX })), OCI_INDEX, /index without manifests/);
    expectRefused(buf(index({ mediaType: OCI_MANIFEST })), OCI_MANIFEST, /without config/);
    expectRefused(buf({ ...image(), layers: undefined }), OCI_MANIFEST, /without layers/);
  });

  it('refuses non-JSON, non-objects and unknown schema versions', () => {
    expectRefused(Buffer.from('not json'), OCI_MANIFEST, /JSON/);
    expectRefused(Buffer.from('[1,2]'), OCI_MANIFEST, /object/);
    expectRefused(Buffer.from('null'), OCI_MANIFEST, /object/);
    expectRefused(Buffer.from('"x"'), OCI_MANIFEST);
    expectRefused(buf({ ...image(), schemaVersion: 3 }), OCI_MANIFEST, /schemaVersion/);
    expectRefused(buf({ ...image(), schemaVersion: '2' }), OCI_MANIFEST, /schemaVersion/);
    expectRefused(buf({ schemaVersion: 2 }), undefined, /unsupported manifest media type/);
  });

  it('refuses bad descriptors, naming where', () => {
    const bad: Array<[unknown, RegExp]> = [
      [{ mediaType: LAYER_TYPE, digest: 'sha256:abc', size: 1 }, /layers\[0\]: invalid digest/],
      [{ mediaType: LAYER_TYPE, digest: `md5:${'a'.repeat(32)}`, size: 1 }, /invalid digest/],
      [{ mediaType: LAYER_TYPE, digest: `sha256:${'A'.repeat(64)}`, size: 1 }, /invalid digest/],
      [{ mediaType: LAYER_TYPE, digest: D1, size: -1 }, /invalid size/],
      [{ mediaType: LAYER_TYPE, digest: D1, size: 1.5 }, /invalid size/],
      [{ mediaType: LAYER_TYPE, digest: D1, size: '1' }, /invalid size/],
      [{ mediaType: LAYER_TYPE, digest: D1, size: 2 ** 60 }, /invalid size/],
      [{ mediaType: LAYER_TYPE, digest: D1 }, /invalid size/],
      [{ digest: D1, size: 1 }, /missing mediaType/],
      [null, /not an object/],
      ['sha256:x', /not an object/],
    ];
    for (const [d, re] of bad) expectRefused(buf(image({ layers: [d] })), OCI_MANIFEST, re);
    expectRefused(buf(image({ config: { mediaType: CONFIG_TYPE, digest: 'nope', size: 1 } })), OCI_MANIFEST, /config: invalid digest/);
    expectRefused(buf(index({ manifests: [{ mediaType: OCI_MANIFEST, digest: D1 }] })), OCI_INDEX, /manifests\[0\]: invalid size/);
    expectRefused(buf(image({ subject: { mediaType: OCI_MANIFEST, digest: 'x', size: 1 } })), OCI_MANIFEST, /subject/);
  });
});

describe('parseManifest: properties', () => {
  const descriptor = fc.record({ mediaType: fc.constantFrom(LAYER_TYPE, OCI_MANIFEST, 'x/y'), digest: sha256Digest, size: fc.nat() });

  it('returns exactly the descriptors of a generated image or index, in order', () => {
    fc.assert(
      fc.property(descriptor, fc.array(descriptor, { maxLength: 8 }), fc.boolean(), fc.boolean(), (config, list, isIndex, withType) => {
        const doc: Record<string, unknown> = isIndex ? { schemaVersion: 2, manifests: list } : { schemaVersion: 2, config, layers: list };
        if (withType) doc.mediaType = isIndex ? OCI_INDEX : OCI_MANIFEST;
        const m = parseManifest(buf(doc), withType ? undefined : 'application/json');
        if (isIndex) {
          expect(m.kind).toBe('index');
          expect(m.manifests).toEqual(list);
        } else {
          expect(m.kind).toBe('image');
          expect(m.blobs).toEqual([config, ...list]);
        }
      }),
      { numRuns: 300 },
    );
  });

  it('throws nothing but ManifestFormatError, whatever the bytes', () => {
    const jsonish = fc.oneof(
      fc.jsonValue().map((v) => JSON.stringify(v)),
      fc
        .record({
          schemaVersion: fc.constantFrom(1, 2, '2', null),
          mediaType: fc.option(fc.constantFrom(OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST, DOCKER_SCHEMA1, 'x'), { nil: undefined }),
          manifests: fc.option(fc.array(fc.oneof(descriptor, fc.jsonValue())), { nil: undefined }),
          config: fc.option(fc.oneof(descriptor, fc.jsonValue()), { nil: undefined }),
          layers: fc.option(fc.oneof(fc.array(fc.oneof(descriptor, fc.jsonValue())), fc.jsonValue()), { nil: undefined }),
          subject: fc.option(fc.jsonValue(), { nil: undefined }),
        })
        .map((o) => JSON.stringify(o)),
      fc.string(),
    );
    const ct = fc.option(fc.constantFrom(OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST, DOCKER_SCHEMA1, 'application/json', '', ';'), {
      nil: undefined,
    });
    fc.assert(
      fc.property(jsonish, ct, (text, c) => {
        try {
          const m = parseManifest(Buffer.from(text), c);
          // Whatever it accepted is internally consistent.
          expect(['index', 'image']).toContain(m.kind);
          if (m.kind === 'image') expect(m.blobs[0]).toBe(m.config);
        } catch (e) {
          expect(e).toBeInstanceOf(ManifestFormatError);
        }
      }),
      { numRuns: 500 },
    );
  });
});

describe('accepts', () => {
  it('accepts anything when there is no Accept header', () => {
    expect(accepts(undefined, OCI_INDEX)).toBe(true);
    expect(accepts('', OCI_INDEX)).toBe(true);
  });

  it('honours wildcards', () => {
    expect(accepts('*/*', OCI_INDEX)).toBe(true);
    expect(accepts(`${DOCKER_MANIFEST}, */*`, OCI_INDEX)).toBe(true);
    expect(accepts('application/*', OCI_MANIFEST)).toBe(true);
  });

  it('ignores parameters, whitespace and case', () => {
    expect(accepts(`${DOCKER_MANIFEST};q=0.5 ,  ${OCI_INDEX} ; q=0.9`, OCI_INDEX)).toBe(true);
    expect(accepts(OCI_INDEX.toUpperCase(), OCI_INDEX)).toBe(true);
    expect(accepts('Application/Vnd.Docker.Distribution.Manifest.V2+Json', DOCKER_MANIFEST)).toBe(true);
  });

  it('refuses types that are not listed', () => {
    expect(accepts(DOCKER_MANIFEST, OCI_INDEX)).toBe(false);
    expect(accepts(`${DOCKER_MANIFEST}, ${DOCKER_LIST}`, OCI_MANIFEST)).toBe(false);
    expect(accepts('text/*', OCI_MANIFEST)).toBe(false);
    expect(accepts('text/plain, image/png', OCI_MANIFEST)).toBe(false);
    expect(accepts(`${OCI_INDEX}x`, OCI_INDEX)).toBe(false);
  });

  it('always asks the upstream for every modern type', () => {
    for (const t of [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST]) expect(accepts(UPSTREAM_ACCEPT, t)).toBe(true);
    expect(UPSTREAM_ACCEPT).not.toContain('v1+prettyjws');
  });
});
