/**
 * A keyless authority's trusted_root.json from a TUF repository (src/verify/tuf.ts, tuf-js) against a real TUF
 * repository on loopback (test/harness/tuf-repo.ts, metadata signed with @tufjs/models): the happy path, the
 * schedule on an injected clock, stale metadata, a rollback, a root rotation, a target that is not a trusted root,
 * and a mirror that goes away after a first good fetch (the last good copy stays).
 *
 * The proxy side (a new trusted root is a new trust revision, decisions made again) is in test/e2e/sigstore-tuf.test.ts.
 */
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { lastGoodPath, TufTrustedRoot, type RefreshResult } from '../../src/verify/tuf.js';
import { startLocalSigstore, type LocalSigstore } from '../harness/signature-sigstore.js';
import { startTufRepo, type TufRepo } from '../harness/tuf-repo.js';

const HOUR = 3_600_000;
let dir: string;
let a: LocalSigstore;
let b: LocalSigstore;
let repo: TufRepo;
let cacheDir: string;
let clock: number;
let results: Array<{ result: RefreshResult; error?: string }>;

const bytesOf = (s: LocalSigstore): Buffer => readFileSync(s.trustedRootPath);

function source(r: TufRepo): TufTrustedRoot {
  return new TufTrustedRoot({
    authority: 'ci',
    config: { mirror: r.url, root: r.rootPath, refresh: HOUR, cacheDir, target: 'trusted_root.json' },
    now: () => clock,
    onResult: (result, error) => results.push({ result, ...(error ? { error } : {}) }),
  });
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'pc-tuf-'));
  [a, b] = await Promise.all([startLocalSigstore(), startLocalSigstore()]);
});

afterAll(async () => {
  await Promise.all([a?.stop(), b?.stop()]);
  await rm(dir, { recursive: true, force: true });
});

beforeEach(async () => {
  repo = await startTufRepo(await mkdtemp(join(dir, 'repo-')));
  cacheDir = await mkdtemp(join(dir, 'cache-'));
  clock = 1_000_000;
  results = [];
  return () => repo.stop();
});

describe('TUF-fed trusted root', () => {
  it('fetches trusted_root.json as a verified target, and keeps it as the last good copy', async () => {
    repo.publish('trusted_root.json', bytesOf(a));
    const s = source(repo);
    expect(await s.refresh()).toBe('updated');
    expect(readFileSync(lastGoodPath({ cacheDir } as never)).equals(bytesOf(a))).toBe(true);
    // The pinned root seeded the metadata; the repository's metadata went through tuf-js's checks.
    expect(repo.requests()).toEqual(expect.arrayContaining(['/2.root.json', '/timestamp.json', '/1.snapshot.json', '/1.targets.json']));
    expect(results).toEqual([{ result: 'updated' }]);
  });

  it('refreshes on the schedule of the injected clock, and only then', async () => {
    repo.publish('trusted_root.json', bytesOf(a));
    const s = source(repo);
    expect(await s.refreshIfDue()).toBe('updated');
    const seen = repo.requests().length;
    clock += HOUR - 1;
    expect(s.refreshIfDue()).toBeUndefined();
    expect(repo.requests()).toHaveLength(seen);
    repo.publish('trusted_root.json', bytesOf(b));
    clock += 1;
    expect(await s.refreshIfDue()).toBe('updated');
    expect(readFileSync(join(cacheDir, 'trusted_root.json')).equals(bytesOf(b))).toBe(true);
    clock += HOUR;
    expect(await s.refreshIfDue()).toBe('unchanged');
  });

  it('refuses an expired timestamp or snapshot: nothing is taken from the mirror', async () => {
    repo.publish('trusted_root.json', bytesOf(a), { stale: 'timestamp' });
    expect(await source(repo).refresh()).toBe('failed');
    expect(results.at(-1)?.error).toMatch(/timestamp.*expired|expired.*timestamp/i);
    expect(existsSync(join(cacheDir, 'trusted_root.json'))).toBe(false);

    repo.publish('trusted_root.json', bytesOf(a), { stale: 'snapshot' });
    expect(await source(repo).refresh()).toBe('failed');
    expect(results.at(-1)?.error).toMatch(/snapshot.*expired|expired.*snapshot/i);
    expect(existsSync(join(cacheDir, 'trusted_root.json'))).toBe(false);
  });

  it('refuses a rollback to an earlier timestamp; the last good copy stays', async () => {
    repo.publish('trusted_root.json', bytesOf(a));
    repo.publish('trusted_root.json', bytesOf(b));
    const s = source(repo);
    expect(await s.refresh()).toBe('updated');
    repo.serveTimestamp(1);
    expect(await s.refresh()).toBe('failed');
    expect(results.at(-1)?.error).toMatch(/version/i);
    expect(readFileSync(join(cacheDir, 'trusted_root.json')).equals(bytesOf(b))).toBe(true);
  });

  it('follows a root rotation signed by the old and the new root key', async () => {
    repo.publish('trusted_root.json', bytesOf(a));
    const s = source(repo);
    expect(await s.refresh()).toBe('updated');
    repo.rotateRoot();
    repo.publish('trusted_root.json', bytesOf(b));
    expect(await s.refresh()).toBe('updated');
    expect(readFileSync(join(cacheDir, 'metadata', 'root.json'), 'utf8')).toMatch(/"version":\s*2/);
    expect(readFileSync(join(cacheDir, 'trusted_root.json')).equals(bytesOf(b))).toBe(true);
  });

  it('a verified target that is not a usable trusted root does not replace the last good copy', async () => {
    repo.publish('trusted_root.json', bytesOf(a));
    const s = source(repo);
    expect(await s.refresh()).toBe('updated');
    repo.publish('trusted_root.json', Buffer.from('{"tlogs": "nope"}'));
    expect(await s.refresh()).toBe('failed');
    expect(results.at(-1)?.error).toMatch(/not a usable trusted_root\.json/);
    expect(readFileSync(join(cacheDir, 'trusted_root.json')).equals(bytesOf(a))).toBe(true);
  });

  it('an unreachable mirror after a first good fetch keeps the last good copy, and is tried again later', async () => {
    repo.publish('trusted_root.json', bytesOf(a));
    const s = source(repo);
    expect(await s.refreshIfDue()).toBe('updated');
    repo.setDown(true);
    clock += HOUR;
    expect(await s.refreshIfDue()).toBe('failed');
    expect(readFileSync(join(cacheDir, 'trusted_root.json')).equals(bytesOf(a))).toBe(true);
    // Retried after a minute, not after the full refresh interval.
    clock += 60_000;
    repo.setDown(false);
    repo.publish('trusted_root.json', bytesOf(b));
    expect(await s.refreshIfDue()).toBe('updated');
    expect(results.map((r) => r.result)).toEqual(['updated', 'failed', 'updated']);
  });
});
