/**
 * `portcullis client-config`: the generated files for containerd, Docker and podman. Real containerd (ctr
 * --hosts-dir) and real podman pull through what this generates in test/e2e/clients.test.ts and
 * test/integration/clients.test.ts; here, the shape and the edge cases.
 */
import { describe, expect, it } from 'vitest';
import { clientConfig, hostsTomlFile } from '../../src/clients/config.js';
import { makeConfig } from './helpers.js';

const config = makeConfig({
  upstreams: [
    { name: 'hub', registry: 'docker.io', url: 'https://registry-1.docker.io', aliases: ['index.docker.io'] },
    { name: 'lab', registry: 'registry.lab:5001', url: 'http://127.0.0.1:5001', aliases: ['lab'] },
    { name: 'portonly', registry: '10.0.0.9:5000', url: 'http://10.0.0.9:5000' },
  ],
});

describe('client-config containerd / docker', () => {
  it('writes one fallback-proof hosts.toml per registry name, and _default', () => {
    const cc = clientConfig('containerd', config, { proxyUrl: 'http://127.0.0.1:5000' });
    expect(cc.directory).toBe('/etc/containerd/certs.d');
    expect(cc.files.map((f) => f.path)).toEqual([
      'docker.io/hosts.toml',
      'index.docker.io/hosts.toml',
      'registry.lab:5001/hosts.toml',
      'lab/hosts.toml',
      '10.0.0.9:5000/hosts.toml',
      '_default/hosts.toml',
    ]);
    for (const f of cc.files) {
      // The proxy is the server and the only host: no line may name any other origin.
      expect(f.content).toMatch(/^server = "http:\/\/127\.0\.0\.1:5000"$/m);
      expect(f.content).toMatch(/^\[host\."http:\/\/127\.0\.0\.1:5000"\]\n {2}capabilities = \["pull", "resolve"\]$/m);
      expect(f.content.match(/^\[host\./gm)).toHaveLength(1);
      const settings = f.content
        .split('\n')
        .filter((l) => !l.startsWith('#'))
        .join('\n');
      expect(settings).not.toMatch(/registry-1\.docker\.io|10\.0\.0\.9|https:/);
    }
    expect(cc.notes.join('\n')).toMatch(/config_path/);
    expect(clientConfig('containerd', config, { proxyUrl: 'http://127.0.0.1:5000', defaultHost: false }).files.map((f) => f.path)).not.toContain(
      '_default/hosts.toml',
    );
  });

  it('adds the CA or skip_verify for an https proxy, and warns about plain http off loopback', () => {
    const f = hostsTomlFile('docker', 'ghcr.io', 'https://portcullis.internal:8443', { caFile: '/etc/portcullis/ca.pem' });
    expect(f.content).toContain('server = "https://portcullis.internal:8443"');
    expect(f.content).toContain('  ca = "/etc/portcullis/ca.pem"');
    expect(f.content).toContain('/etc/docker/certs.d/ghcr.io/hosts.toml');
    expect(hostsTomlFile('containerd', 'ghcr.io', 'https://p:8443', { skipVerify: true }).content).toContain('  skip_verify = true');
    const docker = clientConfig('docker', config, { proxyUrl: 'http://10.1.2.3:5000' });
    expect(docker.directory).toBe('/etc/docker/certs.d');
    expect(docker.notes.join('\n')).toMatch(/registry-mirrors/);
    expect(docker.notes.join('\n')).toMatch(/unencrypted/);
  });

  it('--fallback: the node instance first, then the central tier as a [host] and as the server; nothing else', () => {
    const cc = clientConfig('containerd', config, {
      proxyUrl: 'http://127.0.0.1:5000',
      fallback: ['https://portcullis-central.portcullis.svc:5000'],
      caFile: '/etc/portcullis/ca.pem',
    });
    for (const f of cc.files) {
      const hosts = [...f.content.matchAll(/^\[host\."([^"]+)"\]$/gm)].map((m) => m[1]);
      expect(hosts).toEqual(['http://127.0.0.1:5000', 'https://portcullis-central.portcullis.svc:5000']);
      // containerd tries `server` last: the central tier again, never a real registry.
      expect(f.content).toMatch(/^server = "https:\/\/portcullis-central\.portcullis\.svc:5000"$/m);
      expect(f.content.match(/ {2}ca = "\/etc\/portcullis\/ca\.pem"/g)).toHaveLength(2);
    }
    expect(cc.notes.join('\n')).toMatch(/no stricter than the central tier/);
    expect(() => clientConfig('containerd', config, { proxyUrl: 'http://127.0.0.1:5000', fallback: ['central:5000'] })).toThrow(/--fallback/);
  });

  it('refuses a proxy URL that is not scheme, host and port', () => {
    for (const bad of ['127.0.0.1:5000', 'ftp://x', 'http://x/v2/', 'http://u:p@x', 'http://x?ns=a']) {
      expect(() => clientConfig('containerd', config, { proxyUrl: bad }), bad).toThrow(/--proxy/);
    }
  });
});

describe('client-config podman', () => {
  it('rewrites every registry name to the proxy path prefix, through an alias without a port when it must', () => {
    const cc = clientConfig('podman', config, { proxyUrl: 'http://127.0.0.1:5000' });
    expect(cc.directory).toBe('/etc/containers/registries.conf.d');
    expect(cc.files).toHaveLength(1);
    const text = cc.files[0]!.content;
    const entries = [...text.matchAll(/\[\[registry\]\]\nprefix = "([^"]+)"\nlocation = "([^"]+)"\ninsecure = true/g)].map((m) => [m[1], m[2]]);
    expect(entries).toEqual([
      ['docker.io', '127.0.0.1:5000/docker.io'],
      ['index.docker.io', '127.0.0.1:5000/docker.io'],
      ['registry.lab:5001', '127.0.0.1:5000/lab'],
      ['lab', '127.0.0.1:5000/lab'],
    ]);
    // A registry with a port and no alias cannot be named in a path: left out, and the note says what to do.
    expect(text).not.toContain('10.0.0.9');
    expect(cc.notes.join('\n')).toMatch(/10\.0\.0\.9:5000: left out.*alias/);
    // https proxy: no `insecure`.
    expect(clientConfig('podman', config, { proxyUrl: 'https://p.internal' }).files[0]!.content).not.toContain('insecure');
  });
});
