import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { applyEnvOverrides, ConfigError, loadConfig, onSecretError, parseConfig, readSecret, SecretError } from '../../src/config/load.js';
import { parseDuration, parseSize } from '../../src/config/primitives.js';
import { cleanupTempDirs, tempDir } from './helpers.js';

afterAll(cleanupTempDirs);

const MIN = `
upstreams:
  - name: dockerhub
    registry: docker.io
    url: https://registry-1.docker.io
`;

function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    return e as ConfigError;
  }
  throw new Error('expected a ConfigError');
}

describe('parseConfig: defaults and parsing', () => {
  it('fills defaults for a minimal file', () => {
    const c = parseConfig(MIN, 'p.yaml', {});
    expect(c.listen).toBe('127.0.0.1:5000');
    expect(c.upstreams[0]).toMatchObject({
      name: 'dockerhub',
      registry: 'docker.io',
      url: 'https://registry-1.docker.io',
      aliases: [],
      insecure: false,
      concurrency: 64,
      retries: 3,
    });
    expect(c.upstreams[0]?.timeouts).toEqual({ connect: 10_000, headers: 30_000, body: 300_000 });
    expect(c.cache).toEqual({ maxSize: 20 * 1024 ** 3, tagTTL: 60_000, staleIfError: 86_400_000 });
    expect(c.gate).toEqual({ allowTTL: 600_000, denyTTL: 30_000, closureTTL: 3_600_000 });
    expect(c.decisionLog.sink).toBe('stdout');
  });

  it('parses durations and sizes, and numbers as seconds / bytes', () => {
    const c = parseConfig(
      `${MIN}
cache: { maxSize: 20GiB, tagTTL: 30s, staleIfError: 7d }
limits: { maxManifestSize: 512KiB, maxHeaderSize: 100, requestTimeout: 500ms }
gate: { allowTTL: 5m, denyTTL: 2, closureTTL: 1h }
shutdownGrace: 0s
`,
      'p.yaml',
      {},
    );
    expect(c.cache).toEqual({ maxSize: 20 * 1024 ** 3, tagTTL: 30_000, staleIfError: 7 * 86_400_000 });
    expect(c.limits).toEqual({
      maxManifestSize: 512 * 1024,
      maxHeaderSize: 100,
      requestTimeout: 500,
      idleTimeout: 65_000,
      writeStallTimeout: 60_000,
      maxConnections: 8192,
      maxConnectionsPerClient: 512,
    });
    expect(c.listener).toEqual({ proxyProtocol: false, proxyProtocolTimeout: 5_000, trustedProxies: [] });
    expect(c.gate).toEqual({ allowTTL: 300_000, denyTTL: 2_000, closureTTL: 3_600_000 });
    expect(c.shutdownGrace).toBe(0);
    expect(parseDuration('1h')).toBe(3_600_000);
    expect(parseSize('1TiB')).toBe(1024 ** 4);
    expect(parseSize('7B')).toBe(7);
    expect(() => parseDuration('1y')).toThrow();
    expect(() => parseSize('1GB')).toThrow();
  });

  it('checks the listener and limits settings, naming the field', () => {
    const c = parseConfig(
      `${MIN}\nlistener: { proxyProtocol: true, trustedProxies: [10.0.0.0/8, '2001:db8::/32'] }\nlimits: { writeStallTimeout: 0, maxConnectionsPerClient: 0 }\n`,
      'p.yaml',
      {},
    );
    expect(c.listener).toMatchObject({ proxyProtocol: true, trustedProxies: ['10.0.0.0/8', '2001:db8::/32'] });
    expect(c.limits).toMatchObject({ writeStallTimeout: 0, maxConnectionsPerClient: 0, idleTimeout: 65_000 });
    expect(() => parseConfig(`${MIN}\nlistener: { trustedProxies: [10.0.0.0/40] }\n`, 'p.yaml', {})).toThrow(
      /listener\.trustedProxies: "10\.0\.0\.0\/40": prefix length/,
    );
    expect(() => parseConfig(`${MIN}\nlimits: { maxConnections: -1 }\n`, 'p.yaml', {})).toThrow(/limits\.maxConnections/);
    expect(() => parseConfig(`${MIN}\nsignatures: { budget: { blobs: 0 } }\n`, 'p.yaml', {})).toThrow(/signatures\.budget\.blobs/);
  });

  it('rejects bad durations and sizes with their field path', () => {
    const e1 = configError(() => parseConfig(`${MIN}cache: { tagTTL: 30 seconds }\n`, 'p.yaml', {}));
    expect(e1.problems.join('\n')).toMatch(/^cache\.tagTTL: /m);
    const e2 = configError(() => parseConfig(`${MIN}cache: { maxSize: 20GB }\n`, 'p.yaml', {}));
    expect(e2.problems.join('\n')).toMatch(/^cache\.maxSize: /m);
    const e3 = configError(() => parseConfig(`${MIN}gate: { denyTTL: -1 }\n`, 'p.yaml', {}));
    expect(e3.problems.join('\n')).toMatch(/^gate\.denyTTL: /m);
  });

  it('an egress proxy: http://host:port only, never with credentials, named by its field path', () => {
    const ok = parseConfig(`upstreams: [{ name: g, registry: ghcr.io, url: "https://ghcr.io", proxy: "http://proxy.corp:3128" }]`, 'p.yaml', {});
    expect(ok.upstreams[0]?.proxy).toBe('http://proxy.corp:3128');
    for (const [proxy, why] of [
      ['http://user:pw@proxy.corp:3128', /credentials/],
      ['https://proxy.corp:3128', /proxy/],
      ['http://proxy.corp:3128/path', /scheme, host and port/],
    ] as const) {
      const e = configError(() => parseConfig(`upstreams: [{ name: g, registry: ghcr.io, url: "https://ghcr.io", proxy: "${proxy}" }]`, 'p.yaml', {}));
      expect(e.problems.join('\n'), proxy).toMatch(/^upstreams\[0\]\.proxy: /m);
      expect(e.problems.join('\n'), proxy).toMatch(why);
    }
  });

  it('lower-cases registry hosts and strips trailing slashes from URLs', () => {
    const c = parseConfig(`upstreams: [{ name: g, registry: GHCR.io, url: "https://ghcr.io///", aliases: [Foo.Example] }]`, 'p.yaml', {});
    expect(c.upstreams[0]).toMatchObject({ registry: 'ghcr.io', url: 'https://ghcr.io', aliases: ['foo.example'] });
  });
});

describe('parseConfig: errors name the file and the field path', () => {
  it('names upstreams[0].url', () => {
    const e = configError(() => parseConfig(`upstreams: [{ name: a, registry: a.io, url: "ftp://a.io" }]`, '/etc/portcullis/config.yaml', {}));
    expect(e.file).toBe('/etc/portcullis/config.yaml');
    expect(e.message).toContain('/etc/portcullis/config.yaml');
    expect(e.problems.some((p) => p.startsWith('upstreams[0].url: '))).toBe(true);
    expect(e.message).toContain('upstreams[0].url');
  });

  it('names nested paths and unknown keys', () => {
    const e = configError(() =>
      parseConfig(
        `upstreams:\n  - { name: a, registry: a.io, url: "https://a.io" }\n  - { name: b, registry: "b io", url: "https://b.io", timeouts: { connect: x } }\n`,
        'c.yaml',
        {},
      ),
    );
    expect(e.problems.some((p) => p.startsWith('upstreams[1].registry: '))).toBe(true);
    expect(e.problems.some((p) => p.startsWith('upstreams[1].timeouts.connect: '))).toBe(true);
    const unknown = configError(() => parseConfig(`${MIN}listn: 1.2.3.4:5\n`, 'c.yaml', {}));
    expect(unknown.problems.join('\n')).toMatch(/listn/);
  });

  it('names the file on a YAML syntax error', () => {
    const e = configError(() => parseConfig('upstreams: [\n  - name: a\n', 'broken.yaml', {}));
    expect(e.file).toBe('broken.yaml');
    expect(e.message).toContain('broken.yaml');
    expect(e.problems[0]).toMatch(/^YAML: /);
  });

  it('refuses a non-mapping document and a missing upstream list', () => {
    expect(configError(() => parseConfig('- a\n- b\n', 'x.yaml', {})).problems).toEqual(['(root): expected a mapping']);
    expect(configError(() => parseConfig('listen: 127.0.0.1:1\n', 'x.yaml', {})).problems.join('\n')).toMatch(/^upstreams: /m);
    expect(configError(() => parseConfig('upstreams: []\n', 'x.yaml', {})).problems.join('\n')).toMatch(/upstreams: configure at least one upstream/);
    // An empty file is an empty mapping: it fails on upstreams, not on YAML.
    expect(configError(() => parseConfig('', 'x.yaml', {})).problems.join('\n')).toMatch(/^upstreams: /m);
  });

  it('loadConfig names an unreadable file', () => {
    const missing = join(tempDir(), 'nope.yaml');
    const e = configError(() => loadConfig(missing, {}));
    expect(e.file).toBe(missing);
    expect(e.problems[0]).toMatch(/^cannot read: /);
  });

  it('loadConfig reads a file and applies env overrides', () => {
    const f = join(tempDir(), 'ok.yaml');
    writeFileSync(f, MIN);
    expect(loadConfig(f, { PORTCULLIS__listen: '0.0.0.0:6000' }).listen).toBe('0.0.0.0:6000');
  });
});

describe('parseConfig: cross-field rules', () => {
  it('rejects duplicate hosts across upstreams (registry or alias, any case)', () => {
    const e = configError(() =>
      parseConfig(
        `upstreams:
  - { name: a, registry: docker.io, url: "https://a" }
  - { name: b, registry: ghcr.io, url: "https://b", aliases: [Docker.IO] }
`,
        'd.yaml',
        {},
      ),
    );
    expect(e.problems.some((p) => p.startsWith('upstreams[1].') && p.includes('docker.io') && p.includes('"a"'))).toBe(true);
    const e2 = configError(() =>
      parseConfig(`upstreams:\n  - { name: a, registry: x.io, url: "https://a" }\n  - { name: b, registry: X.IO, url: "https://b" }\n`, 'd.yaml', {}),
    );
    expect(e2.problems.join('\n')).toMatch(/^upstreams\[1\]\.registry: host x\.io is already served by upstream "a"/m);
  });

  it('rejects duplicate upstream names', () => {
    const e = configError(() =>
      parseConfig(`upstreams:\n  - { name: a, registry: x.io, url: "https://a" }\n  - { name: a, registry: y.io, url: "https://b" }\n`, 'd.yaml', {}),
    );
    expect(e.problems.join('\n')).toMatch(/^upstreams\[1\]\.name: duplicate/m);
  });

  it('requires defaultUpstream to name an upstream', () => {
    const e = configError(() => parseConfig(`${MIN}defaultUpstream: dockerhib\n`, 'd.yaml', {}));
    expect(e.problems).toEqual(['defaultUpstream: no upstream named "dockerhib"']);
    expect(parseConfig(`${MIN}defaultUpstream: dockerhub\n`, 'd.yaml', {}).defaultUpstream).toBe('dockerhub');
  });

  it('allows only one policy source', () => {
    const e = configError(() => parseConfig(`${MIN}policy: { bundleFile: /x, opaUrl: "http://opa:8181" }\n`, 'd.yaml', {}));
    expect(e.problems.join('\n')).toMatch(/^policy: give only one/m);
  });

  it('requires a file or url for the file and http decision-log sinks', () => {
    expect(configError(() => parseConfig(`${MIN}decisionLog: { sink: file }\n`, 'd.yaml', {})).problems.join('\n')).toMatch(/^decisionLog\.file: /m);
    expect(configError(() => parseConfig(`${MIN}decisionLog: { sink: http }\n`, 'd.yaml', {})).problems.join('\n')).toMatch(/^decisionLog\.url: /m);
    expect(configError(() => parseConfig(`${MIN}decisionLog: { mask: ["/request/client"] }\n`, 'd.yaml', {})).problems.join('\n')).toMatch(
      /^decisionLog\.mask\[0\]: /m,
    );
    expect(configError(() => parseConfig(`${MIN}decisionLog: { onFull: wait }\n`, 'd.yaml', {})).problems.join('\n')).toMatch(/^decisionLog\.onFull: /m);
    expect(configError(() => parseConfig(`${MIN}decisionLog: { sink: stdout, spool: { maxSize: 1MiB } }\n`, 'd.yaml', {})).problems.join('\n')).toMatch(
      /^decisionLog\.spool: /m,
    );
    expect(
      configError(() => parseConfig(`${MIN}decisionLog: { sink: http, url: "http://c/", spool: { maxSize: 1KiB } }\n`, 'd.yaml', {})).problems.join('\n'),
    ).toMatch(/^decisionLog\.spool\.maxSize: /m);
    const d = parseConfig(
      `${MIN}decisionLog: { sink: http, url: "http://c/", onFull: block, blockTimeout: 2s, spool: { maxSize: 64MiB } }\n`,
      'd.yaml',
      {},
    ).decisionLog;
    expect(d).toMatchObject({ onFull: 'block', blockTimeout: 2000, spool: { maxSize: 64 * 1024 * 1024 } });
    expect(parseConfig(MIN, 'd.yaml', {}).decisionLog).toMatchObject({ onFull: 'drop', blockTimeout: 5000 });
  });
});

describe('secrets', () => {
  const withCreds = (creds: string) => `upstreams:\n  - name: a\n    registry: a.io\n    url: https://a.io\n    credentials: ${creds}\n`;

  it('accepts env and file references', () => {
    const c = parseConfig(withCreds('{ username: bob, password: { env: A_PASS } }'), 's.yaml', {});
    expect(c.upstreams[0]?.credentials?.password).toEqual({ env: 'A_PASS' });
    const f = parseConfig(withCreds('{ usernameFrom: { file: /run/u }, password: { file: /run/p } }'), 's.yaml', {});
    expect(f.upstreams[0]?.credentials?.password).toEqual({ file: '/run/p' });
  });

  it('rejects an inline password, naming the field', () => {
    const e = configError(() => parseConfig(withCreds('{ username: bob, password: hunter2 }'), 's.yaml', {}));
    expect(e.problems.some((p) => p.startsWith('upstreams[0].credentials.password: '))).toBe(true);
    // The secret itself must not be echoed into logs.
    expect(e.message).not.toContain('hunter2');
  });

  it('rejects an inline value hidden in the reference object, and both or neither of env and file', () => {
    expect(configError(() => parseConfig(withCreds('{ username: bob, password: { value: hunter2 } }'), 's.yaml', {})).problems.join('\n')).toMatch(
      /upstreams\[0\]\.credentials\.password/,
    );
    expect(configError(() => parseConfig(withCreds('{ username: bob, password: { env: A, file: /b } }'), 's.yaml', {})).problems.join('\n')).toMatch(
      /upstreams\[0\]\.credentials\.password.*exactly one/,
    );
    expect(configError(() => parseConfig(withCreds('{ username: bob, password: {} }'), 's.yaml', {})).problems.join('\n')).toMatch(/exactly one/);
    expect(configError(() => parseConfig(withCreds('{ password: { env: A } }'), 's.yaml', {})).problems.join('\n')).toMatch(/username or usernameFrom/);
  });

  it('readSecret reads env and (trimmed) files at use time', () => {
    expect(readSecret({ env: 'X' }, { X: 's3cret' })).toBe('s3cret');
    expect(() => readSecret({ env: 'MISSING' }, {})).toThrow(SecretError);
    const f = join(tempDir(), 'pw');
    writeFileSync(f, 'filepw\n');
    expect(readSecret({ file: f }, {})).toBe('filepw');
    writeFileSync(f, 'rotated\n');
    expect(readSecret({ file: f }, {})).toBe('rotated');
  });

  it('an unreadable secret says so without naming the file; the log listener gets the path and errno', () => {
    const seen: string[] = [];
    const stop = onSecretError((d) => seen.push(d));
    try {
      const missing = join(tempDir(), 'run', 'secrets', 'registry-password');
      let err: unknown;
      try {
        readSecret({ file: missing }, {});
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(SecretError);
      expect((err as Error).message).toBe('a configured secret cannot be read (the server log has the details)');
      expect(String(err)).not.toContain(missing);
      expect((err as SecretError).detail).toBe(`secret file ${missing} cannot be read (ENOENT)`);
      expect(() => readSecret({ env: 'NOT_SET_ANYWHERE' }, {})).toThrow(/^a configured secret cannot be read/);
      expect(seen).toEqual([`secret file ${missing} cannot be read (ENOENT)`, 'environment variable NOT_SET_ANYWHERE is not set']);
    } finally {
      stop();
    }
  });
});

describe('environment overrides', () => {
  it('sets top-level and nested values', () => {
    const c = parseConfig(MIN, 'e.yaml', {
      PORTCULLIS__listen: '0.0.0.0:5000',
      PORTCULLIS__upstreams__0__url: 'https://mirror.example/',
      PORTCULLIS__upstreams__0__concurrency: '5',
      PORTCULLIS__upstreams__0__insecure: 'true',
      PORTCULLIS__cache__tagTTL: '10s',
      PORTCULLIS__log__level: 'debug',
      UNRELATED: 'x',
      PORTCULLIS_listen: '1.1.1.1:1',
    });
    expect(c.listen).toBe('0.0.0.0:5000');
    expect(c.upstreams[0]?.url).toBe('https://mirror.example');
    expect(c.upstreams[0]?.concurrency).toBe(5);
    expect(c.upstreams[0]?.insecure).toBe(true);
    expect(c.cache.tagTTL).toBe(10_000);
    expect(c.log.level).toBe('debug');
  });

  it('validates overridden values, naming the field', () => {
    const e = configError(() => parseConfig(MIN, 'e.yaml', { PORTCULLIS__upstreams__0__url: 'not a url' }));
    expect(e.problems.some((p) => p.startsWith('upstreams[0].url: '))).toBe(true);
  });

  it('creates missing intermediate objects', () => {
    const c = parseConfig(MIN, 'e.yaml', { PORTCULLIS__gate__denyTTL: '1s' });
    expect(c.gate.denyTTL).toBe(1_000);
  });

  it('cannot reach Object.prototype', () => {
    const doc: Record<string, unknown> = {};
    applyEnvOverrides(doc, { PORTCULLIS__constructor__prototype__polluted: 'yes', PORTCULLIS____proto____polluted: 'yes' });
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(Object.prototype).not.toHaveProperty('polluted');
  });

  it('ignores empty paths', () => {
    const doc = { a: 1 };
    expect(applyEnvOverrides(doc, { PORTCULLIS__: 'x', PORTCULLIS______: 'y' })).toEqual({ a: 1 });
  });
});
