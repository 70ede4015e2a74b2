/** The `storage` section (src/config/storage.ts): defaults, and errors that name the field. */
import { describe, expect, it } from 'vitest';
import { s3Client } from '../../src/cache/s3-client.js';
import { parseConfig, readSecret } from '../../src/config/load.js';

const MIN = `
upstreams:
  - name: dockerhub
    registry: docker.io
    url: https://registry-1.docker.io
`;

const S3 = `${MIN}storage:
  blobs: s3
  s3:
    endpoint: https://s3.internal.example:9000
    bucket: portcullis
    prefix: central/
    forcePathStyle: true
    credentials: { accessKeyId: { env: S3_AK }, secretAccessKey: { file: /run/secrets/s3 } }
`;

describe('storage config', () => {
  it('defaults to the filesystem store without redirects', () => {
    const c = parseConfig(MIN, 'p.yaml', {});
    expect(c.storage).toEqual({ blobs: 'filesystem', meta: 'sqlite', redirect: false, redirectExpiry: 60_000 });
  });

  it('parses an s3 store with its defaults', () => {
    const c = parseConfig(S3, 'p.yaml', {});
    expect(c.storage.blobs).toBe('s3');
    expect(c.storage.s3).toMatchObject({
      endpoint: 'https://s3.internal.example:9000',
      region: 'us-east-1',
      bucket: 'portcullis',
      prefix: 'central/',
      forcePathStyle: true,
      partSize: 16 * 1024 * 1024,
      abandonedUploadAge: 86_400_000,
      credentials: { accessKeyId: { env: 'S3_AK' }, secretAccessKey: { file: '/run/secrets/s3' } },
    });
  });

  it('names the field of every mistake', () => {
    const bad: Array<[string, RegExp]> = [
      [`${MIN}storage: { blobs: s3 }\n`, /storage\.s3: blobs: s3 needs an s3 section/],
      [`${MIN}storage: { blobs: gcs }\n`, /storage\.blobs/],
      [`${MIN}storage: { redirect: true }\n`, /storage\.redirect: redirect needs blobs: s3/],
      [`${S3}  redirectExpiry: 2h\n`, /storage\.redirectExpiry: between 1s and 1h/],
      [S3.replace('https://s3.internal', 'http://s3.internal'), /storage\.s3\.endpoint: plain http/],
      [S3.replace('https://s3.internal', 'https://user:pw@s3.internal'), /storage\.s3\.endpoint: no credentials in the URL/],
      [S3.replace('bucket: portcullis', 'bucket: Bad_Bucket'), /storage\.s3\.bucket/],
      [S3.replace('prefix: central/', 'prefix: central'), /storage\.s3\.prefix/],
      [S3.replace('forcePathStyle: true', 'forcePathStyle: true\n    partSize: 4MiB'), /storage\.s3\.partSize: between 5MiB/],
      [S3.replace('{ env: S3_AK }', '{ env: S3_AK, file: /x }'), /storage\.s3\.credentials\.accessKeyId: give exactly one of env or file/],
      [S3.replace('forcePathStyle: true', 'forcePathStyle: true\n    abandonedUploadAge: 10s'), /storage\.s3\.abandonedUploadAge: at least 1m/],
    ];
    for (const [text, re] of bad) expect(() => parseConfig(text, 'p.yaml', {})).toThrow(re);
  });
});

describe('S3 credentials at start', () => {
  it('a missing secret stops the start naming the field', () => {
    const c = parseConfig(S3, 'p.yaml', {});
    expect(() => s3Client(c.storage.s3!, (ref) => readSecret(ref, {}))).toThrow(/storage\.s3\.credentials\.accessKeyId: environment variable S3_AK is not set/);
    expect(() => s3Client(c.storage.s3!, (ref) => readSecret(ref, { S3_AK: 'x' }))).toThrow(
      /storage\.s3\.credentials\.secretAccessKey: secret file \/run\/secrets\/s3 cannot be read/,
    );
  });
});

describe('storage.s3.localCache', () => {
  it('parses a size and names the field of a bad one', () => {
    const c = parseConfig(S3.replace('forcePathStyle: true', 'forcePathStyle: true\n    localCache: { maxSize: 2GiB }'), 'p.yaml', {});
    expect(c.storage.s3?.localCache).toEqual({ maxSize: 2 * 1024 ** 3 });
    expect(() => parseConfig(S3.replace('forcePathStyle: true', 'forcePathStyle: true\n    localCache: { maxSize: 2GB }'), 'p.yaml', {})).toThrow(
      /storage\.s3\.localCache\.maxSize/,
    );
  });
});
