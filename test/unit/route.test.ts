import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { isValidName } from '../../src/routing/reference.js';
import { Router, type Route, type RouteError } from '../../src/routing/route.js';
import { validName, wideString } from './arbitraries.js';
import { makeConfig } from './helpers.js';

const config = makeConfig({
  upstreams: [
    { name: 'dockerhub', registry: 'docker.io', url: 'https://registry-1.docker.io', aliases: ['index.docker.io', 'registry-1.docker.io'] },
    { name: 'ghcr', registry: 'ghcr.io', url: 'https://ghcr.io' },
    { name: 'local', registry: '127.0.0.1:5001', url: 'http://127.0.0.1:5001' },
    { name: 'mirror', registry: 'mirror.example', url: 'https://mirror.example', libraryPrefix: true },
    { name: 'lh', registry: 'localhost', url: 'http://localhost:5002' },
  ],
  defaultUpstream: 'dockerhub',
});
const router = new Router(config);
const up = (name: string) => config.upstreams.find((u) => u.name === name)!;

function ok(r: Route | RouteError): Route {
  if ('code' in r) throw new Error(`expected a route, got ${r.code}: ${r.message}`);
  return r;
}

describe('Router: default upstream', () => {
  it('sends plain names to the default upstream with the library/ rule', () => {
    expect(router.resolve('nginx', undefined)).toEqual({ upstream: up('dockerhub'), registry: 'docker.io', repository: 'library/nginx', routing: 'default' });
    expect(ok(router.resolve('library/nginx', undefined)).repository).toBe('library/nginx');
    expect(ok(router.resolve('bitnami/nginx', undefined)).repository).toBe('bitnami/nginx');
    expect(ok(router.resolve('a/b/c', undefined)).upstream).toBe(up('dockerhub'));
  });

  it('treats a single host-looking component as a repository, not a registry', () => {
    const r = ok(router.resolve('ghcr.io', undefined));
    expect(r.upstream).toBe(up('dockerhub'));
    expect(r.routing).toBe('default');
  });

  it('answers NAME_UNKNOWN without a default upstream', () => {
    const noDefault = new Router(makeConfig({ upstreams: [{ name: 'ghcr', registry: 'ghcr.io', url: 'https://ghcr.io' }] }));
    expect(noDefault.resolve('nginx', undefined)).toMatchObject({ code: 'NAME_UNKNOWN' });
    expect(noDefault.resolve('library/nginx', undefined)).toMatchObject({ code: 'NAME_UNKNOWN' });
    expect(ok(noDefault.resolve('ghcr.io/acme/app', undefined)).upstream.name).toBe('ghcr');
  });
});

describe('Router: prefix routing', () => {
  it('routes /v2/<host>/<repo> to the configured host', () => {
    expect(router.resolve('ghcr.io/acme/app', undefined)).toEqual({ upstream: up('ghcr'), registry: 'ghcr.io', repository: 'acme/app', routing: 'prefix' });
    expect(ok(router.resolve('127.0.0.1:5001/team/app', undefined))).toMatchObject({ upstream: up('local'), repository: 'team/app', routing: 'prefix' });
    expect(ok(router.resolve('localhost/app', undefined))).toMatchObject({ upstream: up('lh'), repository: 'app' });
  });

  it('matches hosts and aliases case-insensitively', () => {
    expect(ok(router.resolve('GHCR.IO/acme/app', undefined)).upstream).toBe(up('ghcr'));
    expect(ok(router.resolve('Index.Docker.IO/library/nginx', undefined))).toMatchObject({
      upstream: up('dockerhub'),
      registry: 'docker.io',
      repository: 'library/nginx',
    });
    expect(ok(router.resolve('registry-1.docker.io/nginx', undefined))).toMatchObject({ upstream: up('dockerhub'), repository: 'library/nginx' });
  });

  it('applies library/ only to Docker Hub (or libraryPrefix: true)', () => {
    expect(ok(router.resolve('docker.io/nginx', undefined)).repository).toBe('library/nginx');
    expect(ok(router.resolve('ghcr.io/app', undefined)).repository).toBe('app');
    expect(ok(router.resolve('127.0.0.1:5001/app', undefined)).repository).toBe('app');
    expect(ok(router.resolve('mirror.example/app', undefined)).repository).toBe('library/app');
    expect(ok(router.resolve('mirror.example/org/app', undefined)).repository).toBe('org/app');
  });

  it('refuses unknown registries with NAME_UNKNOWN', () => {
    for (const n of ['quay.io/foo/bar', 'evil.example/x', '127.0.0.1:5002/x', '127.0.0.1/x', 'localhost:5001/x', 'docker.io.evil.com/library/nginx']) {
      expect(router.resolve(n, undefined), n).toMatchObject({ code: 'NAME_UNKNOWN' });
    }
  });

  it('refuses invalid repositories with NAME_INVALID', () => {
    for (const n of ['Nginx', 'ghcr.io/Acme/app', 'ghcr.io/', 'ghcr.io//app', 'library/../etc', 'a b', 'docker.io/../../x', '-x']) {
      expect(router.resolve(n, undefined), n).toMatchObject({ code: 'NAME_INVALID' });
    }
  });

  it('truncates long names in messages', () => {
    const r = router.resolve(`quay.io/${'a'.repeat(500)}`, undefined) as RouteError;
    expect(r.message.length).toBeLessThan(200);
  });
});

describe('Router: ns routing', () => {
  it('routes by ns and echoes it', () => {
    expect(router.resolve('library/nginx', 'docker.io')).toEqual({
      upstream: up('dockerhub'),
      registry: 'docker.io',
      repository: 'library/nginx',
      routing: 'ns',
      ns: 'docker.io',
    });
    expect(ok(router.resolve('nginx', 'docker.io')).repository).toBe('library/nginx');
    expect(ok(router.resolve('acme/app', 'ghcr.io'))).toMatchObject({ upstream: up('ghcr'), repository: 'acme/app', routing: 'ns', ns: 'ghcr.io' });
  });

  it('matches ns aliases case-insensitively and keeps the raw ns', () => {
    const r = ok(router.resolve('library/nginx', 'Index.Docker.IO'));
    expect(r.upstream).toBe(up('dockerhub'));
    expect(r.ns).toBe('Index.Docker.IO');
  });

  it('accepts a host-prefixed name when it names the same upstream as ns', () => {
    expect(ok(router.resolve('docker.io/library/nginx', 'docker.io')).repository).toBe('library/nginx');
    expect(ok(router.resolve('index.docker.io/library/nginx', 'docker.io')).repository).toBe('library/nginx');
    // A different host in the name does not switch the upstream: it stays part of the repository.
    const other = ok(router.resolve('ghcr.io/acme/app', 'docker.io'));
    expect(other.upstream).toBe(up('dockerhub'));
    expect(other.repository).toBe('ghcr.io/acme/app');
  });

  it('refuses an unknown ns with NAME_UNKNOWN, whatever the name', () => {
    expect(router.resolve('library/nginx', 'quay.io')).toMatchObject({ code: 'NAME_UNKNOWN' });
    expect(router.resolve('ghcr.io/acme/app', 'quay.io')).toMatchObject({ code: 'NAME_UNKNOWN' });
    expect(router.resolve('nginx', '')).toMatchObject({ code: 'NAME_UNKNOWN' });
  });

  it('validates the repository under ns too', () => {
    expect(router.resolve('Library/nginx', 'docker.io')).toMatchObject({ code: 'NAME_INVALID' });
  });
});

describe('Router: properties', () => {
  const configured = new Set(config.upstreams);
  const hostish = fc.oneof(
    fc.constantFrom('docker.io', 'DOCKER.IO', 'ghcr.io', '127.0.0.1:5001', 'localhost', 'index.docker.io', 'quay.io', 'evil.example', 'localhost:1', ''),
    fc.string({ maxLength: 30 }),
  );
  const anyName = fc.oneof(
    fc.string({ maxLength: 80 }),
    wideString(40),
    fc.tuple(hostish, fc.string({ maxLength: 40 })).map(([h, n]) => `${h}/${n}`),
    fc.tuple(hostish, validName).map(([h, n]) => `${h}/${n}`),
    validName,
  );

  it('never returns an upstream that is not configured, for any name and ns', () => {
    fc.assert(
      fc.property(anyName, fc.option(hostish, { nil: undefined }), (name, ns) => {
        const r = router.resolve(name, ns);
        if ('code' in r) {
          expect(['NAME_UNKNOWN', 'NAME_INVALID']).toContain(r.code);
          return;
        }
        expect(configured.has(r.upstream)).toBe(true);
        expect(r.registry).toBe(r.upstream.registry);
        if (ns === undefined) expect(['prefix', 'default']).toContain(r.routing);
        else expect(r.routing).toBe('ns');
        if (ns !== undefined) {
          expect(r.ns).toBe(ns);
          expect(router.upstreamFor(ns)).toBe(r.upstream);
        }
        // The repository is a valid name before the library/ prefix (see known-bugs.test.ts for the length after it).
        expect(isValidName(r.repository) || (r.repository.startsWith('library/') && isValidName(r.repository.slice(8)))).toBe(true);
        expect(r.repository).not.toMatch(/(^|\/)\.\.?(\/|$)/);
      }),
      { numRuns: 500 },
    );
  });

  it('a prefix naming a configured host always routes there', () => {
    fc.assert(
      fc.property(fc.constantFrom(...config.upstreams), validName, (u, n) => {
        const r = ok(router.resolve(`${u.registry}/${n}`, undefined));
        expect(r.upstream).toBe(u);
        expect(r.routing).toBe('prefix');
        expect(r.repository.endsWith(n)).toBe(true);
      }),
      { numRuns: 300 },
    );
  });

  it('a prefix naming an unconfigured host never reaches an upstream', () => {
    const unknownHost = fc
      .tuple(fc.stringMatching(/^[a-z0-9-]{1,10}$/), fc.constantFrom('.com', '.io', ':5000', '.example'))
      .map(([a, b]) => a + b)
      .filter((h) => router.upstreamFor(h) === undefined);
    fc.assert(
      fc.property(unknownHost, validName, (h, n) => {
        expect(router.resolve(`${h}/${n}`, undefined)).toMatchObject({ code: 'NAME_UNKNOWN' });
        expect(router.resolve(n, h)).toMatchObject({ code: 'NAME_UNKNOWN' });
      }),
      { numRuns: 300 },
    );
  });
});
