import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parseChallenges, parseScope } from '../../src/upstream/challenge.js';
import { wideString } from './arbitraries.js';

function quote(v: string): string {
  return `"${v.replace(/[\\"]/g, (c) => `\\${c}`)}"`;
}

function format(challenges: Array<{ scheme: string; params: Record<string, string> }>, sep = ', '): string {
  return challenges
    .map((c) => {
      const ps = Object.entries(c.params).map(([k, v]) => `${k}=${quote(v)}`);
      return ps.length ? `${c.scheme} ${ps.join(sep)}` : c.scheme;
    })
    .join(', ');
}

describe('parseChallenges', () => {
  it('parses a Docker Hub bearer challenge', () => {
    expect(parseChallenges('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull"')).toEqual([
      { scheme: 'bearer', params: { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:library/nginx:pull' } },
    ]);
  });

  it('keeps commas, spaces and escaped quotes inside quoted values', () => {
    const [c] = parseChallenges(
      'Bearer realm="https://a/token?x=1,2", scope="repository:a:pull,push repository:b:pull", error="say \\"hi\\", ok", x="back\\\\slash"',
    );
    expect(c).toEqual({
      scheme: 'bearer',
      params: { realm: 'https://a/token?x=1,2', scope: 'repository:a:pull,push repository:b:pull', error: 'say "hi", ok', x: 'back\\slash' },
    });
  });

  it('parses several challenges in one header', () => {
    expect(parseChallenges('Bearer realm="x", Basic realm="y"')).toEqual([
      { scheme: 'bearer', params: { realm: 'x' } },
      { scheme: 'basic', params: { realm: 'y' } },
    ]);
    expect(parseChallenges('Basic realm="Registry Realm",charset="UTF-8", Bearer realm="https://t/token",service="s"')).toEqual([
      { scheme: 'basic', params: { realm: 'Registry Realm', charset: 'UTF-8' } },
      { scheme: 'bearer', params: { realm: 'https://t/token', service: 's' } },
    ]);
    expect(parseChallenges('Negotiate, Bearer realm="r"')).toEqual([
      { scheme: 'negotiate', params: {} },
      { scheme: 'bearer', params: { realm: 'r' } },
    ]);
  });

  it('accepts unquoted values and spaces around =', () => {
    expect(parseChallenges('Bearer realm=https://auth.example/token,service=reg.example, scope = repository:x:pull')).toEqual([
      { scheme: 'bearer', params: { realm: 'https://auth.example/token', service: 'reg.example', scope: 'repository:x:pull' } },
    ]);
  });

  it('lower-cases the scheme and the parameter names, not the values', () => {
    expect(parseChallenges('BEARER Realm="HTTPS://A/Token", SERVICE="Reg"')).toEqual([
      { scheme: 'bearer', params: { realm: 'HTTPS://A/Token', service: 'Reg' } },
    ]);
    expect(parseChallenges('bAsIc rEaLm="x"')[0]?.scheme).toBe('basic');
  });

  it('handles empty and degenerate input without throwing', () => {
    expect(parseChallenges('')).toEqual([]);
    expect(parseChallenges('   ,, ')).toEqual([]);
    expect(parseChallenges('Bearer')).toEqual([{ scheme: 'bearer', params: {} }]);
    expect(parseChallenges('Bearer realm="unterminated')).toEqual([{ scheme: 'bearer', params: { realm: 'unterminated' } }]);
    expect(parseChallenges('Bearer realm=""')).toEqual([{ scheme: 'bearer', params: { realm: '' } }]);
  });

  it('never throws, whatever the header', () => {
    fc.assert(
      fc.property(wideString(120), (h) => {
        const out = parseChallenges(h);
        for (const c of out) {
          expect(c.scheme).toBe(c.scheme.toLowerCase());
          for (const k of Object.keys(c.params)) expect(k).toBe(k.toLowerCase());
        }
      }),
      { numRuns: 500 },
    );
  });

  const scheme = fc.stringMatching(/^[A-Za-z][A-Za-z0-9_-]{0,10}$/);
  const key = fc.stringMatching(/^[a-z][a-z0-9_-]{0,12}$/);
  // Header values are latin1 in practice; any printable ASCII, including quotes, backslashes, commas and '='.
  const value = fc.string({ unit: fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)), maxLength: 40 });
  const challenge = fc.record({ scheme, params: fc.dictionary(key, value, { maxKeys: 5 }) });

  it('round-trips: formatting a param map then parsing gives it back', () => {
    fc.assert(
      fc.property(fc.array(challenge, { minLength: 1, maxLength: 4 }), fc.constantFrom(', ', ',', ' , '), (cs, sep) => {
        const parsed = parseChallenges(format(cs, sep));
        expect(parsed).toEqual(cs.map((c) => ({ scheme: c.scheme.toLowerCase(), params: c.params })));
      }),
      { numRuns: 500 },
    );
  });

  it('round-trips unquoted token values', () => {
    const token = fc.stringMatching(/^[A-Za-z0-9._~+/:-]{1,30}$/);
    fc.assert(
      fc.property(scheme, fc.dictionary(key, token, { minKeys: 1, maxKeys: 5 }), (s, params) => {
        const h = `${s} ${Object.entries(params)
          .map(([k, v]) => `${k}=${v}`)
          .join(',')}`;
        expect(parseChallenges(h)).toEqual([{ scheme: s.toLowerCase(), params }]);
      }),
      { numRuns: 300 },
    );
  });
});

describe('parseScope', () => {
  it('parses one repository scope', () => {
    expect(parseScope('repository:library/nginx:pull')).toEqual([{ type: 'repository', name: 'library/nginx', actions: ['pull'] }]);
  });

  it('keeps a host:port inside the name', () => {
    expect(parseScope('repository:127.0.0.1:5000/team/app:pull,push')).toEqual([
      { type: 'repository', name: '127.0.0.1:5000/team/app', actions: ['pull', 'push'] },
    ]);
  });

  it('parses several space-separated scopes and skips extra spaces', () => {
    expect(parseScope('repository:a/b:pull  repository:c:pull,push registry:catalog:*')).toEqual([
      { type: 'repository', name: 'a/b', actions: ['pull'] },
      { type: 'repository', name: 'c', actions: ['pull', 'push'] },
      { type: 'registry', name: 'catalog', actions: ['*'] },
    ]);
  });

  it('drops malformed scopes', () => {
    expect(parseScope('')).toEqual([]);
    expect(parseScope('garbage')).toEqual([]);
    expect(parseScope('repository:onlyone')).toEqual([]);
    expect(parseScope('repository:a:')).toEqual([{ type: 'repository', name: 'a', actions: [] }]);
  });

  it('round-trips generated scopes', () => {
    const part = fc.stringMatching(/^[a-z0-9][a-z0-9._/-]{0,20}$/);
    const name = fc.oneof(
      part,
      fc.tuple(part, fc.integer({ min: 1, max: 65535 }), part).map(([h, p, r]) => `${h}:${p}/${r}`),
    );
    const scope = fc.record({
      type: fc.constantFrom('repository', 'registry', 'repository(plugin)'),
      name,
      actions: fc.uniqueArray(fc.constantFrom('pull', 'push', 'delete', '*'), { minLength: 1, maxLength: 3 }),
    });
    fc.assert(
      fc.property(fc.array(scope, { maxLength: 4 }), (scopes) => {
        const text = scopes.map((s) => `${s.type}:${s.name}:${s.actions.join(',')}`).join(' ');
        expect(parseScope(text)).toEqual(scopes);
      }),
      { numRuns: 300 },
    );
  });
});
