/**
 * Upstream credentials from a kubelet credential provider plugin (exec API credentialprovider.kubelet.k8s.io/v1),
 * with a small plugin of our own (test/fixtures/credential-provider/provider.mjs) that hands out expiring
 * credentials: cached until their expiry, refreshed before it (clock injected), failures keep the old credentials
 * until they expire. Then a real Distribution registry with htpasswd as the upstream, reached only with what the
 * plugin returns.
 */
import { mkdtemp, readFile, rm, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { CredentialProvider, matchesRegistry, parseGoDuration } from '../../src/upstream/credential-provider.js';
import { expectOk, runTool } from '../harness/clients.js';
import { MANIFEST_ACCEPT, pushImage, type PushedImage } from '../harness/images.js';
import { startProxy } from '../harness/proxy.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';

const PLUGIN = resolve('test/fixtures/credential-provider/provider.mjs');
let tmp: string;

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'pc-credprov-'));
});
afterAll(async () => rm(tmp, { recursive: true, force: true }));

describe('the exec protocol', () => {
  test('Go durations and registry patterns as the kubelet reads them', () => {
    expect(parseGoDuration('6h')).toBe(21_600_000);
    expect(parseGoDuration('1h30m')).toBe(5_400_000);
    expect(parseGoDuration('1.5s')).toBe(1500);
    expect(parseGoDuration('250ms')).toBe(250);
    expect(parseGoDuration('0s')).toBe(0);
    expect(parseGoDuration('soon')).toBeUndefined();
    expect(matchesRegistry('*.dkr.ecr.*.amazonaws.com', '123.dkr.ecr.eu-west-1.amazonaws.com')).toBe(true);
    expect(matchesRegistry('*.dkr.ecr.*.amazonaws.com', 'dkr.ecr.eu-west-1.amazonaws.com')).toBe(false);
    expect(matchesRegistry('127.0.0.1:5001/some/path', '127.0.0.1:5001')).toBe(true);
    expect(matchesRegistry('127.0.0.1:5001', '127.0.0.1:5002')).toBe(false);
  });

  test('cached until 80% of the cache duration, refreshed in the background, kept through a failed refresh until expiry', async () => {
    const state = join(tmp, 'unit-state');
    const pw = join(tmp, 'unit-pw');
    await writeFile(pw, 'first');
    let t = 1_000_000;
    const errors: string[] = [];
    const p = new CredentialProvider({
      command: PLUGIN,
      args: [],
      env: { STATE: state, PASSWORD_FILE: pw, USERNAME: 'robot', MATCH: 'registry.example', DURATION: '10m' },
      image: 'registry.example/portcullis',
      registry: 'registry.example',
      defaultCacheDuration: 60_000,
      timeout: 10_000,
      now: () => t,
      onError: (m) => errors.push(m),
    });
    await p.ready();
    expect(p.current()).toEqual({ username: 'robot', password: 'first' });
    expect(await readFile(`${state}.images`, 'utf8')).toBe('registry.example/portcullis\n');
    t += 7 * 60_000; // 70%: still cached
    expect(p.current()).toEqual({ username: 'robot', password: 'first' });
    await p.ready();
    expect(p.execs).toBe(1);
    await writeFile(pw, 'second');
    t += 2 * 60_000; // 90%: refreshed in the background; the old ones serve meanwhile
    expect(p.current()).toEqual({ username: 'robot', password: 'first' });
    await p.refresh();
    expect(p.current()).toEqual({ username: 'robot', password: 'second' });
    expect(p.execs).toBe(2);
    // The plugin fails from now on: the credentials stay until they expire, then there are none.
    await unlink(pw);
    t += 9 * 60_000;
    p.current();
    await p.refresh();
    expect(errors.at(-1)).toContain('no credentials available');
    expect(p.current()).toEqual({ username: 'robot', password: 'second' });
    t += 60_001;
    expect(p.current()).toBeUndefined();
  });
});

describe('a private upstream reached with the plugin credentials', () => {
  let reg: RunningRegistry;
  let img: PushedImage;
  const auth = `Basic ${Buffer.from('alice:s3cret').toString('base64')}`;

  beforeAll(async () => {
    const htpasswd = join(tmp, 'htpasswd');
    expectOk(await runTool('htpasswd', ['-Bbc', htpasswd, 'alice', 's3cret']), 'htpasswd');
    reg = await startRegistry({ auth: { kind: 'htpasswd', path: htpasswd } });
    img = await pushImage(reg.url, 'private/app', 'v1', { auth });
  }, 60_000);
  afterAll(async () => reg?.stop());

  async function proxyWith(password: string, name: string) {
    const pw = join(tmp, `${name}-pw`);
    await writeFile(pw, password);
    const state = join(tmp, `${name}-state`);
    const px = await startProxy({
      upstreams: [
        {
          name: 'private',
          registry: reg.host,
          url: reg.url,
          credentialProvider: { command: PLUGIN, env: { STATE: state, PASSWORD_FILE: pw, USERNAME: 'alice', MATCH: reg.host, DURATION: '1h' } },
        },
      ],
      defaultUpstream: 'private',
    });
    return { px, state };
  }

  test('the pull goes through with the plugin credentials; the plugin ran once for many requests', async () => {
    const { px, state } = await proxyWith('s3cret', 'good');
    try {
      const m = await fetch(`${px.url}/v2/private/app/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT } });
      expect(m.status).toBe(200);
      expect(m.headers.get('docker-content-digest')).toBe(img.digest);
      for (const l of img.layers) expect((await fetch(`${px.url}/v2/private/app/blobs/${l.digest}`)).status).toBe(200);
      expect(await readFile(state, 'utf8')).toBe('1');
      expect(await readFile(`${state}.images`, 'utf8')).toBe(`${reg.host}/portcullis\n`);
    } finally {
      await px.stop();
    }
  });

  test('credentials the upstream refuses: no image', async () => {
    const { px } = await proxyWith('wrong', 'bad');
    try {
      const m = await fetch(`${px.url}/v2/private/app/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT } });
      expect(m.status).not.toBe(200);
      expect(m.status).toBeGreaterThanOrEqual(400);
    } finally {
      await px.stop();
    }
  });
});
