/**
 * ioredis is loaded only with `storage.meta: redis`, as the AWS SDK only with `storage.blobs: s3` (lazy-s3.test.ts):
 * a node instance on SQLite carries none of it. Only cache/open-shared.ts reaches the Redis modules, dynamically.
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

const REDIS_MODULES = /(?:from\s+|import\s+)'(?:ioredis|[./]+(?:cache\/)?(?:redis-[\w-]+|epoch|s3-epoch)\.js)'/;

describe('the Redis layer is loaded only when configured', () => {
  it('no module outside cache/redis-* (and the epoch it drives) imports ioredis or those modules statically', () => {
    const offenders = [...sources(SRC)]
      .filter((f) => !/cache\/(redis-[\w-]+|epoch|s3-epoch)\.ts$/.test(f))
      .flatMap((f) =>
        readFileSync(f, 'utf8')
          .split('\n')
          .map((line, i) => ({ line, where: `${path.relative(SRC, f)}:${i + 1}` }))
          .filter(({ line }) => REDIS_MODULES.test(line) && !/^\s*import type /.test(line)),
      )
      .map((o) => o.where);
    expect(offenders).toEqual([]);
  });

  it('open-shared.ts imports them dynamically (a guard against a check that matches nothing)', () => {
    const text = readFileSync(path.join(SRC, 'cache/open-shared.ts'), 'utf8');
    expect(text).toMatch(/import\('\.\/redis-client\.js'\),\s*import\('\.\/redis-shared\.js'\)/);
  });

  it('storage.meta: sqlite shares nothing and has no epoch (the basis stays what one node uses)', async () => {
    const { openShared } = await import('../../src/cache/open-shared.js');
    const { parseConfig } = await import('../../src/config/load.js');
    const c = parseConfig('upstreams: [{ name: d, registry: docker.io, url: "https://registry-1.docker.io" }]\n', 'p.yaml', {});
    const s = await openShared(c, { onError: () => undefined });
    expect(s.epoch).toBeUndefined();
    expect(s.shared.healthy).toBe(false);
    await s.close();
  });
});
