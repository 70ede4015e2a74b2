import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { gzipSync } from 'node:zlib';
import { pack } from 'tar-stream';
import { beforeAll, describe, expect, it } from 'vitest';
import type { PolicyInput } from '../../src/policy/contract.js';
import { BundleError, readBundle, type PolicyBundle } from '../../src/policy/bundle.js';
import { ENTRYPOINT, parseResult, WasmDecider } from '../../src/policy/wasm.js';

async function tarGz(files: Record<string, string | Buffer>): Promise<Buffer> {
  const p = pack();
  for (const [name, content] of Object.entries(files)) p.entry({ name }, content);
  p.finalize();
  const chunks: Buffer[] = [];
  for await (const c of p) chunks.push(c as Buffer);
  return gzipSync(Buffer.concat(chunks));
}

describe('parseResult', () => {
  it('accepts the SDK result-set shape and fills defaults', () => {
    expect(parseResult([{ result: { allow: true } }])).toEqual({ allow: true, deny: [], warn: [], scope: null, mode: 'enforce' });
    expect(parseResult({ result: { allow: false, deny: [{ rule: 'r', message: 'm' }], warn: [], scope: 's', mode: 'warn' } })).toEqual({
      allow: false,
      deny: [{ rule: 'r', message: 'm' }],
      warn: [],
      scope: 's',
      mode: 'warn',
    });
    expect(parseResult([{ result: { allow: true, mode: 'dry-run' } }]).mode).toBe('dry-run');
  });

  it('turns an unknown mode into enforce (never a more permissive one)', () => {
    for (const mode of ['WARN', 'off', 'allow', 42, null]) expect(parseResult([{ result: { allow: false, mode } }]).mode).toBe('enforce');
  });

  it('normalises malformed violation entries instead of dropping them', () => {
    const r = parseResult([{ result: { allow: false, deny: [{ rule: 5 }, 'text', null, { message: 'only message' }] } }]);
    expect(r.deny).toHaveLength(4);
    expect(r.deny.map((v) => v.rule)).toEqual(['unknown', 'unknown', 'unknown', 'unknown']);
    expect(r.deny[3]?.message).toBe('only message');
    expect(r.deny[1]?.message).toBe('"text"');
  });

  it('throws on an undefined decision or a wrong shape', () => {
    expect(() => parseResult([])).toThrow(/undefined/);
    expect(() => parseResult(undefined)).toThrow(/undefined/);
    expect(() => parseResult([{}])).toThrow(/undefined/);
    expect(() => parseResult([{ result: true }])).toThrow(/not an object/);
    expect(() => parseResult([{ result: null }])).toThrow(/not an object/);
    expect(() => parseResult([{ result: { allow: 'yes' } }])).toThrow(/allow is not a boolean/);
    expect(() => parseResult([{ result: { deny: [] } }])).toThrow(/allow/);
    expect(() => parseResult([{ result: { allow: true, deny: 'x' } }])).toThrow(/deny is not an array/);
    expect(() => parseResult([{ result: { allow: true, warn: {} } }])).toThrow(/warn is not an array/);
  });
});

describe('readBundle', () => {
  it('refuses garbage, non-gzip and non-tar content with BundleError', async () => {
    await expect(readBundle(Buffer.from('definitely not a bundle'))).rejects.toBeInstanceOf(BundleError);
    await expect(readBundle(Buffer.alloc(0))).rejects.toBeInstanceOf(BundleError);
    await expect(readBundle(gzipSync(Buffer.from('x'.repeat(2000))))).rejects.toBeInstanceOf(BundleError);
  });

  it('refuses a bundle without /policy.wasm', async () => {
    const gz = await tarGz({ 'data.json': '{}', '.manifest': '{"revision":"r1"}', 'policies/x.rego': 'package x' });
    await expect(readBundle(gz)).rejects.toThrow(/policy\.wasm/);
    await expect(readBundle(gz)).rejects.toBeInstanceOf(BundleError);
  });

  it('refuses bad data.json and .manifest', async () => {
    await expect(readBundle(await tarGz({ 'policy.wasm': Buffer.from([0, 97, 115, 109]), 'data.json': '{nope' }))).rejects.toThrow(/data\.json/);
    await expect(readBundle(await tarGz({ 'policy.wasm': Buffer.from([0, 97, 115, 109]), '.manifest': 'nope' }))).rejects.toThrow(/\.manifest/);
  });

  it('uses the manifest revision, else a content hash', async () => {
    const wasm = Buffer.from([0, 97, 115, 109, 1, 0, 0, 0]);
    const withRev = await readBundle(await tarGz({ '/policy.wasm': wasm, '.manifest': '{"revision":"abc"}', 'data.json': '{"a":1}' }));
    expect(withRev.revision).toBe('abc');
    expect(withRev.data).toEqual({ a: 1 });
    expect(withRev.wasm.equals(wasm)).toBe(true);
    const noRev = await readBundle(await tarGz({ 'policy.wasm': wasm }));
    expect(noRev.revision).toMatch(/^sha256:[0-9a-f]{16}$/);
    expect(noRev.data).toEqual({});
    const other = await readBundle(await tarGz({ 'policy.wasm': Buffer.concat([wasm, Buffer.from([0])]) }));
    expect(other.revision).not.toBe(noRev.revision);
  });

  it('reads the committed bundle', async () => {
    const b = await readBundle(readFileSync(resolve('policies/bundle.tar.gz')));
    expect(b.wasm.subarray(0, 4)).toEqual(Buffer.from([0, 97, 115, 109]));
    expect(b.revision.length).toBeGreaterThan(0);
  });
});

describe('WasmDecider with the committed bundle', () => {
  let bundle: PolicyBundle;
  beforeAll(async () => {
    bundle = await readBundle(readFileSync(resolve('policies/bundle.tar.gz')));
  });

  const NOW = '2026-06-01T12:00:00Z';
  function input(over: { tag?: string | null; now?: string } = {}): PolicyInput {
    return {
      version: 1,
      now: over.now ?? NOW,
      request: { kind: 'manifest', method: 'GET', client: { ip: '127.0.0.1', user: null, groups: [], method: 'anonymous', user_agent: 'test' }, routing: 'ns' },
      image: {
        registry: 'docker.io',
        repository: 'library/nginx',
        tag: over.tag === undefined ? '1.27' : over.tag,
        digest: `sha256:${'a'.repeat(64)}`,
        media_type: 'application/vnd.oci.image.index.v1+json',
        platforms: ['linux/amd64'],
        labels: {},
        created: null,
      },
      upstream: { name: 'dockerhub', url: 'https://registry-1.docker.io' },
      signatures: { status: 'not_configured', verified: [], rejected: [] },
      attestations: [],
      scan: { status: 'not_configured' },
    };
  }
  const ALLOW_ALL = { no_match: 'deny', scopes: [{ name: 'all', images: ['**'] }] };
  const DENY_LATEST = { no_match: 'deny', scopes: [{ name: 'all', images: ['**'], deny_tags: ['latest'] }] };

  it('allows with a catch-all scope', async () => {
    const d = await WasmDecider.create(bundle, ALLOW_ALL);
    expect(d.revision).toBe(bundle.revision);
    expect(await d.evaluate(input())).toEqual({ allow: true, deny: [], warn: [], scope: 'all', mode: 'enforce' });
  });

  it('denies with an empty configuration (scope.no_match)', async () => {
    const d = await WasmDecider.create(bundle, {});
    const r = await d.evaluate(input());
    expect(r.allow).toBe(false);
    expect(r.deny.map((v) => v.rule)).toContain('scope.no_match');
  });

  it('denies a tag in deny_tags, and not a pull by digest', async () => {
    const d = await WasmDecider.create(bundle, DENY_LATEST);
    const r = await d.evaluate(input({ tag: 'latest' }));
    expect(r.allow).toBe(false);
    expect(r.deny).toEqual([{ rule: 'tag.denied', message: expect.stringContaining('latest') as string }]);
    expect((await d.evaluate(input({ tag: '1.27' }))).allow).toBe(true);
    expect((await d.evaluate(input({ tag: null }))).allow).toBe(true);
  });

  it('an unexpired exception turns the deny into a warn (time.parse_rfc3339_ns works)', async () => {
    const exception = { images: ['docker.io/library/*'], rules: ['tag.*'], owner: 'alice', reason: 'INC-42' };
    const active = await WasmDecider.create(bundle, { ...DENY_LATEST, exceptions: [{ ...exception, expires: '2026-06-02T00:00:00Z' }] });
    const r = await active.evaluate(input({ tag: 'latest' }));
    expect(r.allow).toBe(true);
    expect(r.deny).toEqual([]);
    expect(r.warn).toHaveLength(1);
    expect(r.warn[0]).toMatchObject({ rule: 'tag.denied' });
    expect(r.warn[0]?.message).toMatch(/excepted by alice until 2026-06-02T00:00:00Z: INC-42/);

    // One second past expiry, it no longer applies: the comparison is real, not "any valid time".
    const late = await active.evaluate(input({ tag: 'latest', now: '2026-06-02T00:00:01Z' }));
    expect(late.allow).toBe(false);
    // Offsets are honoured: 01:00+02:00 is 23:00Z the day before, still before expiry.
    expect((await active.evaluate(input({ tag: 'latest', now: '2026-06-02T01:00:00+02:00' }))).allow).toBe(true);

    const expired = await WasmDecider.create(bundle, { ...DENY_LATEST, exceptions: [{ ...exception, expires: '2026-05-31T23:59:59Z' }] });
    expect((await expired.evaluate(input({ tag: 'latest' }))).allow).toBe(false);

    // A malformed expiry, or a missing now, fails closed.
    const bad = await WasmDecider.create(bundle, { ...DENY_LATEST, exceptions: [{ ...exception, expires: 'next tuesday' }] });
    expect((await bad.evaluate(input({ tag: 'latest' }))).allow).toBe(false);
    expect((await active.evaluate(input({ tag: 'latest', now: 'garbage' }))).allow).toBe(false);
  });

  it("computes a scan's age from scanned_at and now in seconds (nanosecond builtin units)", async () => {
    const d = await WasmDecider.create(bundle, { scopes: [{ name: 'all', images: ['**'], scan: { limits: {}, max_age_seconds: 3600, on_stale: 'deny' } }] });
    const withScan = (scanned_at: string): PolicyInput => ({ ...input(), scan: { status: 'ok', scanned_at, counts: {} } });
    expect((await d.evaluate(withScan('2026-06-01T11:30:00Z'))).allow).toBe(true); // 30 min old
    const stale = await d.evaluate(withScan('2026-06-01T10:59:59Z')); // 1 h 1 s old
    expect(stale.allow).toBe(false);
    expect(stale.deny.map((v) => v.rule)).toContain('scan.stale');
  });

  it('reports the scope mode without relaxing allow', async () => {
    const d = await WasmDecider.create(bundle, { scopes: [{ name: 'lib', images: ['docker.io/library/*'], mode: 'warn', deny_tags: ['latest'] }] });
    const r = await d.evaluate(input({ tag: 'latest' }));
    expect(r).toMatchObject({ allow: false, scope: 'lib', mode: 'warn' });
  });

  it('settings override the bundle data without mutating the bundle', async () => {
    const before = JSON.stringify(bundle.data);
    await WasmDecider.create(bundle, { scopes: [] });
    expect(JSON.stringify(bundle.data)).toBe(before);
  });

  it('refuses a bundle without the entrypoint', async () => {
    const fake: PolicyBundle = { ...bundle, wasm: Buffer.from([0, 97, 115, 109, 1, 0, 0, 0]) };
    await expect(WasmDecider.create(fake, {})).rejects.toThrow();
    expect(ENTRYPOINT).toBe('portcullis/decision');
  });
});
