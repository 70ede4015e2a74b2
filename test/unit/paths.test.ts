import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { isValidName } from '../../src/routing/reference.js';
import { parseEndpoint, type Endpoint } from '../../src/server/paths.js';
import { validName } from './arbitraries.js';

const DIG = `sha256:${'a'.repeat(64)}`;

describe('parseEndpoint', () => {
  it('recognises the base and catalog endpoints', () => {
    expect(parseEndpoint('/v2/')).toEqual({ kind: 'base' });
    expect(parseEndpoint('/v2')).toEqual({ kind: 'base' });
    expect(parseEndpoint('/v2/_catalog')).toEqual({ kind: 'catalog' });
  });

  it('recognises endpoints from the end, so names keep their slashes', () => {
    expect(parseEndpoint('/v2/library/nginx/manifests/latest')).toEqual({ kind: 'manifest', name: 'library/nginx', reference: 'latest' });
    expect(parseEndpoint(`/v2/ghcr.io/a/b/c/manifests/${DIG}`)).toEqual({ kind: 'manifest', name: 'ghcr.io/a/b/c', reference: DIG });
    expect(parseEndpoint(`/v2/a/b/blobs/${DIG}`)).toEqual({ kind: 'blob', name: 'a/b', digest: DIG });
    expect(parseEndpoint('/v2/a/b/tags/list')).toEqual({ kind: 'tags', name: 'a/b' });
    expect(parseEndpoint(`/v2/a/b/referrers/${DIG}`)).toEqual({ kind: 'referrers', name: 'a/b', digest: DIG });
    // A repository whose path contains an endpoint word is still split at the last one.
    expect(parseEndpoint('/v2/a/manifests/b/manifests/c')).toEqual({ kind: 'manifest', name: 'a/manifests/b', reference: 'c' });
    expect(parseEndpoint(`/v2/blobs/blobs/${DIG}`)).toEqual({ kind: 'blob', name: 'blobs', digest: DIG });
  });

  it('tells uploads from blob digests', () => {
    expect(parseEndpoint('/v2/a/b/blobs/uploads/')).toEqual({ kind: 'upload', name: 'a/b' });
    expect(parseEndpoint('/v2/a/b/blobs/uploads')).toEqual({ kind: 'upload', name: 'a/b' });
    expect(parseEndpoint('/v2/a/b/blobs/uploads/0c3a-uuid')).toEqual({ kind: 'upload', name: 'a/b' });
    expect(parseEndpoint('/v2/a/b/blobs/uploads/0c3a/x')).toEqual({ kind: 'upload', name: 'a/b' });
    expect(parseEndpoint(`/v2/a/b/blobs/${DIG}`)).toMatchObject({ kind: 'blob' });
    expect(parseEndpoint('/v2/a/b/blobs/uploadsx')).toEqual({ kind: 'blob', name: 'a/b', digest: 'uploadsx' });
  });

  it('returns undefined for paths that are not registry endpoints', () => {
    for (const p of [
      '/',
      '/v1/_ping',
      '/v2/a',
      '/v2/a/manifests/',
      '/v2/a/blobs/',
      '/v2/a/tags',
      '/v2/a/tags/list/x',
      '/v2//manifests',
      '/v22/a/manifests/x',
      '/v2/manifests/x',
    ]) {
      expect(parseEndpoint(p), p).toBeUndefined();
    }
  });

  it('decodes percent-escapes once and rejects malformed ones and NUL', () => {
    expect(parseEndpoint('/v2/library%2Fnginx/manifests/latest')).toEqual({ kind: 'manifest', name: 'library/nginx', reference: 'latest' });
    expect(parseEndpoint(`/v2/a/manifests/sha256%3A${'a'.repeat(64)}`)).toEqual({ kind: 'manifest', name: 'a', reference: DIG });
    expect(parseEndpoint('/v2/a%zz/manifests/latest')).toBeUndefined();
    expect(parseEndpoint('/v2/a%/manifests/latest')).toBeUndefined();
    expect(parseEndpoint('/v2/a%00b/manifests/latest')).toBeUndefined();
    expect(parseEndpoint('/v2/a/manifests/latest%00')).toBeUndefined();
    // Double encoding stays encoded after one decode, and then fails the name grammar.
    const dbl = parseEndpoint('/v2/a/%252e%252e/b/manifests/latest') as Extract<Endpoint, { name: string }>;
    expect(dbl.name).toBe('a/%2e%2e/b');
    expect(isValidName(dbl.name)).toBe(false);
  });

  it('an encoded traversal never yields a valid name', () => {
    for (const p of [
      '/v2/%2e%2e/%2e%2e/etc/manifests/latest',
      '/v2/a/%2E%2E/b/blobs/' + DIG,
      '/v2/a%2f..%2fb/tags/list',
      '/v2/a/.%2e/b/manifests/x',
      '/v2/..%2f..%2fetc/manifests/x',
      '/v2/a/..%5cb/manifests/x',
    ]) {
      const e = parseEndpoint(p);
      if (e && 'name' in e) expect(isValidName(e.name), p).toBe(false);
    }
  });

  const tricky = fc.constantFrom(
    '%2e',
    '%2E',
    '.',
    '..',
    '%2f',
    '%2F',
    '/',
    '%5c',
    '\\',
    '%25',
    '%252e',
    '%00',
    '%',
    'a',
    'b',
    '0',
    '-',
    '_',
    'A',
    '%41',
    '%C0%AE',
    '%c0%ae',
    '\u2024',
    '%e2%80%a4',
    'manifests',
    'blobs',
  );
  const rawName = fc.array(tricky, { minLength: 1, maxLength: 12 }).map((p) => p.join(''));
  const suffix = fc.constantFrom('/manifests/latest', `/blobs/${DIG}`, '/tags/list', '/blobs/uploads/', `/referrers/${DIG}`, `/manifests/${DIG}`);

  it('property: no parsed name that passes isValidName contains "." or ".." segments or "%"', () => {
    fc.assert(
      fc.property(rawName, suffix, (n, s) => {
        const e = parseEndpoint(`/v2/${n}${s}`);
        if (!e || !('name' in e) || !isValidName(e.name)) return;
        expect(e.name).not.toContain('..');
        expect(e.name.split('/')).not.toContain('.');
        expect(e.name).not.toContain('%');
        expect(e.name).not.toContain('\\');
        expect(e.name.startsWith('/')).toBe(false);
      }),
      { numRuns: 2000 },
    );
  });

  it('property: a valid name, in any mix of literal and encoded slashes, parses back to itself', () => {
    fc.assert(
      fc.property(validName, fc.boolean(), suffix, (n, encode, s) => {
        const raw = encode ? n.replace(/\//g, '%2F') : n;
        const e = parseEndpoint(`/v2/${raw}${s}`);
        expect(e && 'name' in e ? e.name : undefined).toBe(n);
      }),
      { numRuns: 500 },
    );
  });
});
