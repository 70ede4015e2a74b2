import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { afterAll, describe, expect, it } from 'vitest';
import { BY_DIGEST, SqliteMetaStore } from '../../src/cache/metastore.js';
import { cleanupTempDirs, tempDir } from './helpers.js';

afterAll(cleanupTempDirs);

/**
 * A pushed scan report forgets every root containing its digest, in every repository: with 10^4 closures and 10^5
 * decisions a table scan took 1.5 s and blocked every request (issue 16). Each lookup by digest must search an index.
 */
describe('metadata lookups by digest alone', () => {
  it.each(Object.entries(BY_DIGEST))('%s searches an index and scans no table', (_name, sql) => {
    const dir = tempDir();
    new SqliteMetaStore(dir).close();
    const db = new DatabaseSync(join(dir, 'meta.sqlite'));
    try {
      const plan = (db.prepare(`EXPLAIN QUERY PLAN ${sql}`).all('sha256:' + 'a'.repeat(64)) as Array<{ detail: string }>).map((r) => r.detail);
      expect(plan.some((d) => /^SEARCH /.test(d))).toBe(true);
      expect(plan.filter((d) => /^SCAN /.test(d))).toEqual([]);
    } finally {
      db.close();
    }
  });
});
