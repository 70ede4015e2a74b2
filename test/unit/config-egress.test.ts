/**
 * The egress parts of the config schema: credentials inside URLs are refused at load with the field named (and the
 * secret never repeated), plain-http policy sources need an explicit opt-in, and the redirect/realm allow lists
 * are validated.
 */
import { describe, expect, it } from 'vitest';
import { ConfigError, parseConfig } from '../../src/config/load.js';

const SECRET = 'hunter2-s3cret';

function upstreams(extra = ''): string {
  return `upstreams:\n  - name: hub\n    registry: docker.io\n    url: https://registry-1.docker.io\n${extra}`;
}

function problems(text: string): string[] {
  try {
    parseConfig(text, 'c.yaml', {});
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    const err = e as ConfigError;
    // Whatever the field, the message never carries the secret.
    expect(err.message).not.toContain(SECRET);
    return err.problems;
  }
  throw new Error('expected a ConfigError');
}

describe('credentials inside URLs', () => {
  const cases: Array<[field: string, doc: string]> = [
    ['upstreams[0].url', `upstreams:\n  - name: hub\n    registry: docker.io\n    url: https://bob:${SECRET}@registry-1.docker.io\n`],
    ['upstreams[0].url', `upstreams:\n  - name: hub\n    registry: docker.io\n    url: https://tokenonly@registry-1.docker.io\n`],
    ['policy.bundleUrl', `${upstreams()}policy: { bundleUrl: "https://ci:${SECRET}@policy.example/b.tar.gz" }\n`],
    ['policy.opaUrl', `${upstreams()}policy: { opaUrl: "https://ci:${SECRET}@opa.example:8181" }\n`],
    ['decisionLog.url', `${upstreams()}decisionLog: { sink: http, url: "https://ci:${SECRET}@logs.example/v1" }\n`],
    ['scan.scanner.url', `${upstreams()}scan: { scanner: { url: "http://ci:${SECRET}@scanner:8080" } }\n`],
    [
      'scan.scanner.registries.hub.url',
      `${upstreams()}scan: { scanner: { url: "http://scanner:8080", registries: { hub: { url: "https://ci:${SECRET}@mirror.example" } } } }\n`,
    ],
    ['upstreams[0].proxy', `${upstreams('    proxy: http://u:' + SECRET + '@proxy.corp:3128\n')}`],
  ];
  for (const [field, doc] of cases) {
    it(`${field} with user:password@ is refused, naming the field`, () => {
      const p = problems(doc);
      expect(
        p.some((l) => l.startsWith(`${field}: `) && /credentials/.test(l)),
        p.join('\n'),
      ).toBe(true);
    });
  }

  it('the same URLs without userinfo load', () => {
    const c = parseConfig(
      `${upstreams()}policy: { bundleUrl: "https://policy.example/b.tar.gz" }\ndecisionLog: { sink: http, url: "https://logs.example/v1" }\n`,
      'c.yaml',
      {},
    );
    expect(c.policy.bundleUrl).toBe('https://policy.example/b.tar.gz');
  });

  it('an environment override cannot slip credentials in either', () => {
    expect(() => parseConfig(upstreams(), 'c.yaml', { PORTCULLIS__upstreams__0__url: `https://bob:${SECRET}@registry-1.docker.io` })).toThrow(
      /upstreams\[0\]\.url: no credentials/,
    );
  });
});

describe('plain-http policy sources', () => {
  it('bundleUrl and opaUrl over http are refused unless policy.allowInsecureHttp is set', () => {
    expect(problems(`${upstreams()}policy: { bundleUrl: "http://policy.example/b.tar.gz" }\n`).join('\n')).toMatch(
      /^policy\.bundleUrl: plain http .*allowInsecureHttp/m,
    );
    expect(problems(`${upstreams()}policy: { opaUrl: "http://opa:8181" }\n`).join('\n')).toMatch(/^policy\.opaUrl: plain http/m);
    const c = parseConfig(`${upstreams()}policy: { opaUrl: "http://opa:8181", allowInsecureHttp: true }\n`, 'c.yaml', {});
    expect(c.policy.opaUrl).toBe('http://opa:8181');
    expect(parseConfig(`${upstreams()}policy: { bundleUrl: "https://policy.example/b.tar.gz" }\n`, 'c.yaml', {}).policy.allowInsecureHttp).toBe(false);
  });

  it('signing settings: defaults, and not with an external OPA', () => {
    const c = parseConfig(`${upstreams()}policy: { bundleFile: /b.tar.gz, signing: { publicKey: /k.pem } }\n`, 'c.yaml', {});
    expect(c.policy.signing).toEqual({ publicKey: '/k.pem', keyId: 'default', algorithm: 'RS256' });
    expect(problems(`${upstreams()}policy: { bundleFile: /b.tar.gz, signing: { publicKey: /k.pem, algorithm: HS256 } }\n`).join('\n')).toMatch(
      /^policy\.signing\.algorithm: /m,
    );
    expect(problems(`${upstreams()}policy: { opaUrl: "https://opa:8181", signing: { publicKey: /k.pem } }\n`).join('\n')).toMatch(/^policy\.signing: /m);
  });
});

describe('upstream egress lists', () => {
  it('redirects.allow takes CIDRs, addresses and host names, and nothing else', () => {
    const c = parseConfig(
      upstreams(
        '    redirects: { allow: ["10.0.0.0/8", "fd00::/8", "192.168.1.5", "::1", "blobs.internal.corp"] }\n    tokenRealms: ["https://auth.corp.example"]\n',
      ),
      'c.yaml',
      {},
    );
    expect(c.upstreams[0]?.redirects.allow).toHaveLength(5);
    expect(c.upstreams[0]?.tokenRealms).toEqual(['https://auth.corp.example']);
    expect(parseConfig(upstreams(), 'c.yaml', {}).upstreams[0]?.redirects.allow).toEqual([]);
    for (const bad of ['10.0.0.0/33', 'fd00::/129', 'http://x', '1.2.3.4/8/1', 'a b']) {
      expect(problems(upstreams(`    redirects: { allow: ["${bad}"] }\n`)).join('\n'), bad).toMatch(/^upstreams\[0\]\.redirects\.allow\[0\]: /m);
    }
  });
});
