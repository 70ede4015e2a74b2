/**
 * Regression tests for bugs found while writing the unit tests (each failed before its fix in src/).
 */
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { FileBlobStore } from '../../src/cache/blobstore.js';
import { SqliteMetaStore } from '../../src/cache/metastore.js';
import { ConfigError, parseConfig } from '../../src/config/load.js';
import { Gate } from '../../src/gate/gate.js';
import type { PolicyInput } from '../../src/policy/contract.js';
import { readBundle } from '../../src/policy/bundle.js';
import { WasmDecider } from '../../src/policy/wasm.js';
import { parseManifest } from '../../src/oci/mediatypes.js';
import { isValidName } from '../../src/routing/reference.js';
import { Router } from '../../src/routing/route.js';
import { Semaphore } from '../../src/util/semaphore.js';
import { resolve } from 'node:path';
import { cleanupTempDirs, makeConfig, sha256, tempDir } from './helpers.js';

afterAll(cleanupTempDirs);

describe('regressions', () => {
  // BUG 1 (src/cache/blobstore.ts): lru-cache silently refuses an entry larger than maxSize, but track() has
  // already added its size to `bytes`, and the renamed file stays on disk, untracked: totalBytes (and the
  // cache_bytes metric) drift upward for good and the file is never evicted.
  it('a blob larger than maxSize is neither counted nor left on disk', async () => {
    const store = new FileBlobStore(tempDir(), 100);
    const data = randomBytes(500);
    await store.putBuffer(sha256(data), data);
    await store.idle();
    expect(store.has(sha256(data))).toBe(false);
    expect(store.totalBytes).toBe(0);
    expect(existsSync(store.pathFor(sha256(data)))).toBe(false);
  });

  // BUG 2 (src/util/semaphore.ts): an already-aborted signal never fires 'abort', so acquire() with one queues
  // and, worse, is granted later: the request of a client that already went away still takes an upstream slot.
  it('acquire() with an already-aborted signal rejects at once when it would queue', async () => {
    const s = new Semaphore(1);
    const held = await s.acquire();
    const ac = new AbortController();
    ac.abort(new Error('gone'));
    const outcome = s.acquire(ac.signal).then(
      () => 'granted',
      () => 'rejected',
    );
    // Freeing the slot grants a queued waiter: the buggy acquire() would now be 'granted' (no timer needed to tell).
    held();
    expect(await outcome).toBe('rejected');
  });

  // BUG 3 (src/config/load.ts): env values are parsed as YAML, so `PORTCULLIS__listen=[::1]:5000` (a listen value
  // the schema explicitly allows) is a YAML syntax error, and it escapes as a bare YAMLParseError naming neither
  // the file nor the variable.
  const MIN = JSON.stringify({ upstreams: [{ name: 'a', registry: 'a.io', url: 'https://a.io' }] });
  it('an IPv6 listen address can be set from the environment', () => {
    expect(parseConfig(MIN, 'c.yaml', { PORTCULLIS__listen: '[::1]:5000' }).listen).toBe('[::1]:5000');
  });
  it('a bad env value gives a ConfigError, not a YAMLParseError', () => {
    // The value is not a URL either, so it must throw: the question is only which error.
    expect(() => parseConfig(MIN, 'c.yaml', { PORTCULLIS__upstreams__0__url: '{unclosed' })).toThrow(ConfigError);
  });

  // BUG 4 (src/routing/route.ts): the name is validated before the library/ prefix is added, so a 250-character
  // single-component name becomes a 258-character repository that fails the name grammar's length limit.
  it('the routed repository always satisfies isValidName, library/ prefix included', () => {
    const router = new Router(makeConfig({ upstreams: [{ name: 'hub', registry: 'docker.io', url: 'https://registry-1.docker.io' }], defaultUpstream: 'hub' }));
    // 247 + 'library/' is exactly the 255-character limit: routed, and valid.
    const fits = router.resolve('a'.repeat(247), undefined);
    if ('code' in fits) throw new Error(fits.message);
    expect(fits.repository).toBe(`library/${'a'.repeat(247)}`);
    expect(isValidName(fits.repository)).toBe(true);
    // One more and the prefixed name is too long: refused as NAME_INVALID, never routed invalid.
    expect(router.resolve('a'.repeat(248), undefined)).toMatchObject({ code: 'NAME_INVALID' });
  });

  // BUG 5 (src/policy/wasm.ts): the time.parse_rfc3339_ns stand-in accepts any string that starts with a date and
  // a 'T' and hands it to Date.parse. A timestamp without an offset ("2026-06-02T00:00:00") is not RFC 3339 (OPA's
  // builtin, and so `opa test`, reject it), but Date.parse reads it as LOCAL time: an exception's expiry then
  // depends on the server's TZ, and a malformed expiry activates the exception instead of failing closed.
  async function exceptionApplies(expires: string, now: string): Promise<boolean> {
    const bundle = await readBundle(readFileSync(resolve('policies/bundle.tar.gz')));
    const d = await WasmDecider.create(bundle, {
      scopes: [{ name: 'all', images: ['**'], deny_tags: ['latest'] }],
      exceptions: [{ images: ['**'], owner: 'o', reason: 'r', expires }],
    });
    const input = {
      version: 1,
      now,
      request: { kind: 'manifest', method: 'GET', client: { ip: 'x', user: null, groups: [], method: 'anonymous', user_agent: null }, routing: 'default' },
      image: {
        registry: 'docker.io',
        repository: 'library/nginx',
        tag: 'latest',
        digest: `sha256:${'a'.repeat(64)}`,
        media_type: 'x',
        platforms: [],
        labels: {},
        created: null,
      },
      upstream: { name: 'hub', url: 'https://x' },
      signatures: { status: 'not_configured', verified: [], rejected: [] },
      attestations: [],
      scan: { status: 'not_configured' },
    } satisfies PolicyInput;
    return (await d.evaluate(input)).allow;
  }
  it('(control) a well-formed unexpired exception applies', async () => {
    expect(await exceptionApplies('2099-01-01T00:00:00Z', '2026-06-01T00:00:00Z')).toBe(true);
  });
  it('an exception whose expiry has no UTC offset does not apply (fail closed, like OPA)', async () => {
    expect(await exceptionApplies('2099-01-01T00:00:00', '2026-06-01T00:00:00Z')).toBe(false);
  });
  it('an exception whose expiry is an impossible date (Feb 30) does not apply', async () => {
    // Date.parse rolls 2026-02-30 over to 2026-03-02; Go's time.Parse, and so OPA, rejects it.
    expect(await exceptionApplies('2026-02-30T00:00:00Z', '2026-03-01T12:00:00Z')).toBe(false);
  });

  // BUG 6 (src/gate/gate.ts): observers' onDecision is wrapped in try/catch ("logging must never change a
  // decision"), but onCacheHit is not: an observer that throws there turns every cached decision into a rejection.
  it('an observer throwing in onCacheHit does not break a cached decision', async () => {
    const meta = new SqliteMetaStore(tempDir());
    try {
      const config = makeConfig({ upstreams: [{ name: 'hub', registry: 'docker.io', url: 'https://registry-1.docker.io' }], defaultUpstream: 'hub' });
      const route = new Router(config).resolve('nginx', undefined);
      if ('code' in route) throw new Error(route.message);
      const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: [] }));
      const parsed = parseManifest(bytes, undefined);
      const manifest = { digest: sha256(bytes), mediaType: parsed.mediaType, bytes, parsed };
      const decider = { revision: 'r', evaluate: () => Promise.resolve({ allow: true, deny: [], warn: [], scope: null, mode: 'enforce' as const }) };
      const observer = {
        onDecision: () => {},
        onCacheHit: () => {
          throw new Error('metrics exploded');
        },
      };
      const g = new Gate({ decider, meta, options: { allowTTL: 60_000, denyTTL: 1000, closureTTL: 60_000 }, observers: [observer] });
      const rq = {
        route,
        method: 'GET' as const,
        tag: 'latest',
        manifest,
        kind: 'manifest' as const,
        client: { ip: 'x', user: null, groups: [], method: 'anonymous', userAgent: null },
      };
      await g.admitRoot(rq);
      expect((await g.admitRoot(rq)).serve).toBe(true);
    } finally {
      meta.close();
    }
  });
});
