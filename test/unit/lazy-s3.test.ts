/**
 * The AWS SDK costs about 35 MiB of resident memory once imported. A proxy on local disk (the node tier, the quick
 * start) must not load it: only `cache/open-store.ts` reaches the S3 modules, and only with a dynamic import when
 * `storage.blobs: s3` is configured. (Issue 10's bench budget: hostile_peak_rss_mib <= 300.)
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const SRC = path.resolve(__dirname, '../../src');

function* sources(dir: string): Generator<string> {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) yield* sources(p);
    else if (e.name.endsWith('.ts')) yield p;
  }
}

const S3_MODULES = /(?:from\s+|import\s+)'(?:@aws-sdk\/[^']+|[./]+(?:cache\/)?s3-[\w-]+\.js)'/;

describe('the S3 store is loaded only when configured', () => {
  it('no module outside cache/s3-* imports the SDK or the S3 store statically', () => {
    const offenders = [...sources(SRC)]
      .filter((f) => !/cache\/s3-[\w-]+\.ts$/.test(f))
      .flatMap((f) =>
        readFileSync(f, 'utf8')
          .split('\n')
          .map((line, i) => ({ line, where: `${path.relative(SRC, f)}:${i + 1}` }))
          .filter(({ line }) => S3_MODULES.test(line) && !/^\s*import type /.test(line)),
      )
      .map((o) => o.where);
    expect(offenders).toEqual([]);
  });

  it('open-store.ts imports them dynamically (a guard against a check that matches nothing)', () => {
    const text = readFileSync(path.join(SRC, 'cache/open-store.ts'), 'utf8');
    expect(text).toMatch(/await Promise\.all\(\[import\('\.\/s3-client\.js'\), import\('\.\/s3-blobstore\.js'\)\]\)/);
  });
});
