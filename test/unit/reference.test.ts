import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  digestAlgorithm,
  digestHex,
  isDigest,
  isValidName,
  isValidTag,
  looksLikeDigest,
  looksLikeHost,
  MAX_NAME_LENGTH,
  parseReference,
} from '../../src/routing/reference.js';
import { hexOf, validName, wideString } from './arbitraries.js';

const upper = fc.constantFrom(...'ABCDEFGHIJKLMNOPQRSTUVWXYZ');

describe('isValidName', () => {
  it('accepts every name generated from the distribution-spec grammar', () => {
    fc.assert(
      fc.property(validName, (n) => isValidName(n)),
      { numRuns: 500 },
    );
  });

  it('accepts typical names', () => {
    for (const n of ['nginx', 'library/nginx', 'a/b/c/d', 'my-app', 'my--app', 'my_app', 'my__app', 'my.app', 'a0/b1.c2_d3__e4-f5', 'x']) {
      expect(isValidName(n), n).toBe(true);
    }
  });

  it('rejects a name with an uppercase letter anywhere', () => {
    fc.assert(
      fc.property(validName, fc.nat(), upper, (n, pos, u) => {
        const i = pos % (n.length + 1);
        expect(isValidName(n.slice(0, i) + u + n.slice(i))).toBe(false);
        // Replacing a character, not just inserting, must also fail.
        const j = pos % n.length;
        expect(isValidName(n.slice(0, j) + u + n.slice(j + 1))).toBe(false);
      }),
      { numRuns: 300 },
    );
  });

  it('rejects a name containing ".." or "//" anywhere', () => {
    fc.assert(
      fc.property(validName, fc.nat(), fc.constantFrom('..', '//', '/./', '/../', '../'), (n, pos, bad) => {
        const i = pos % (n.length + 1);
        expect(isValidName(n.slice(0, i) + bad + n.slice(i))).toBe(false);
      }),
      { numRuns: 300 },
    );
  });

  it('rejects leading and trailing separators', () => {
    fc.assert(
      fc.property(validName, fc.constantFrom('.', '_', '__', '-', '/'), (n, sep) => {
        expect(isValidName(sep + n)).toBe(false);
        expect(isValidName(n + sep)).toBe(false);
      }),
      { numRuns: 300 },
    );
  });

  it('rejects names longer than 255 characters, and accepts exactly 255', () => {
    fc.assert(
      fc.property(validName, fc.integer({ min: 1, max: 300 }), (n, extra) => {
        let long = n;
        while (long.length <= MAX_NAME_LENGTH) long += '/a';
        expect(long.length).toBeGreaterThan(MAX_NAME_LENGTH);
        expect(isValidName(long)).toBe(false);
        expect(isValidName(`${long}${'b'.repeat(extra)}`)).toBe(false);
      }),
      { numRuns: 100 },
    );
    expect(isValidName('a'.repeat(255))).toBe(true);
    expect(isValidName('a'.repeat(256))).toBe(false);
    expect(isValidName(`${'a'.repeat(127)}/${'b'.repeat(127)}`)).toBe(true);
  });

  it('rejects other separators and odd characters', () => {
    for (const n of ['', '/', 'a b', 'a:b', 'a@b', 'a\\b', 'a%2fb', 'a\0b', 'a\nb', 'é', 'a+b', 'a/-b', 'a/b_', 'a___b', 'a._b', 'a-.b', 'ｎginx']) {
      expect(isValidName(n), JSON.stringify(n)).toBe(false);
    }
  });

  it('never accepts a string outside [a-z0-9._/-]', () => {
    fc.assert(
      fc.property(wideString(40), (s) => {
        if (isValidName(s)) expect(s).toMatch(/^[a-z0-9._/-]+$/);
      }),
      { numRuns: 300 },
    );
  });
});

describe('isValidTag', () => {
  it('accepts tags from the grammar up to 128 characters', () => {
    fc.assert(
      fc.property(fc.stringMatching(/^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$/), (t) => isValidTag(t)),
      { numRuns: 500 },
    );
    expect(isValidTag('a'.repeat(128))).toBe(true);
    expect(isValidTag('latest')).toBe(true);
    expect(isValidTag('1.27.0-alpine')).toBe(true);
    expect(isValidTag('_x')).toBe(true);
    expect(isValidTag('v1.0_RC-2')).toBe(true);
  });

  it('rejects 129 characters and more', () => {
    fc.assert(
      fc.property(fc.integer({ min: 129, max: 400 }), (n) => {
        expect(isValidTag('a'.repeat(n))).toBe(false);
      }),
    );
  });

  it('rejects a leading . or -, and characters outside the grammar', () => {
    for (const t of ['', '.hidden', '-x', 'a:b', 'a/b', 'a@b', 'a b', 'sha256:' + 'a'.repeat(64), 'a+b', 'é']) {
      expect(isValidTag(t), t).toBe(false);
    }
  });
});

describe('digests', () => {
  it('accepts sha256 with 64 and sha512 with 128 lowercase hex digits', () => {
    fc.assert(
      fc.property(hexOf(64), hexOf(128), (h64, h128) => {
        expect(isDigest(`sha256:${h64}`)).toBe(true);
        expect(isDigest(`sha512:${h128}`)).toBe(true);
        expect(digestAlgorithm(`sha256:${h64}`)).toBe('sha256');
        expect(digestAlgorithm(`sha512:${h128}`)).toBe('sha512');
        expect(digestHex(`sha512:${h128}`)).toBe(h128);
      }),
    );
  });

  it('rejects wrong lengths, swapped lengths, uppercase hex and other algorithms', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 200 }).filter((n) => n !== 64),
        hexOf(64),
        fc.nat(63),
        (len, h, pos) => {
          expect(isDigest(`sha256:${'a'.repeat(len)}`)).toBe(false);
          const up = h.slice(0, pos) + 'A' + h.slice(pos + 1);
          expect(isDigest(`sha256:${up}`)).toBe(false);
        },
      ),
    );
    expect(isDigest(`sha512:${'a'.repeat(64)}`)).toBe(false);
    expect(isDigest(`sha256:${'a'.repeat(128)}`)).toBe(false);
    expect(isDigest(`md5:${'a'.repeat(32)}`)).toBe(false);
    expect(isDigest(`sha384:${'a'.repeat(96)}`)).toBe(false);
    expect(isDigest(`SHA256:${'a'.repeat(64)}`)).toBe(false);
    expect(isDigest(`sha256:${'g'.repeat(64)}`)).toBe(false);
    expect(isDigest(`sha256:${'a'.repeat(64)}\n`)).toBe(false);
    expect(isDigest(` sha256:${'a'.repeat(64)}`)).toBe(false);
  });

  it('looksLikeDigest tells a bad digest from a bad tag', () => {
    expect(looksLikeDigest(`md5:${'a'.repeat(32)}`)).toBe(true);
    expect(looksLikeDigest('sha256:short')).toBe(true);
    expect(looksLikeDigest('latest')).toBe(false);
    expect(looksLikeDigest('a:b:c')).toBe(false);
    expect(looksLikeDigest(':abc')).toBe(false);
  });
});

describe('parseReference', () => {
  it('parses digests and tags, and nothing else', () => {
    const d = `sha256:${'0'.repeat(64)}`;
    expect(parseReference(d)).toEqual({ kind: 'digest', digest: d });
    expect(parseReference('latest')).toEqual({ kind: 'tag', tag: 'latest' });
    expect(parseReference('sha256:abc')).toBeUndefined();
    expect(parseReference(`md5:${'a'.repeat(32)}`)).toBeUndefined();
    expect(parseReference('')).toBeUndefined();
    expect(parseReference('a'.repeat(129))).toBeUndefined();
  });

  it('is total and consistent with isDigest / isValidTag', () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.string({ maxLength: 140 }),
          hexOf(64).map((h) => `sha256:${h}`),
        ),
        (s) => {
          const r = parseReference(s);
          if (isDigest(s)) expect(r).toEqual({ kind: 'digest', digest: s });
          else if (isValidTag(s)) expect(r).toEqual({ kind: 'tag', tag: s });
          else expect(r).toBeUndefined();
        },
      ),
      { numRuns: 500 },
    );
  });
});

describe('looksLikeHost', () => {
  it('is true for a dot, a colon or localhost', () => {
    for (const h of ['docker.io', 'ghcr.io', '127.0.0.1:5000', 'localhost', 'localhost:5000', 'registry:5000', 'a.b']) expect(looksLikeHost(h), h).toBe(true);
    for (const h of ['library', 'nginx', 'my-org', 'localhostx', '']) expect(looksLikeHost(h), h).toBe(false);
  });
});
