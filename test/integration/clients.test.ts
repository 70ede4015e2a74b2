/**
 * Smoke test of the real-client drivers (test/harness/clients.ts): each client pulls a tiny image from a real
 * docker-registry on loopback, and ctr additionally pulls through a fallback-proof hosts.toml whose only host is the
 * fake upstream (proving writeHostsDir's file is honoured, that `ns=` is sent, and that a 403 is not bypassed).
 *
 * Needs root (containerd) and the tools from scripts/install-tools.sh; a missing tool fails the test loudly.
 * Takes about 3 s. The docker-registry launcher here is deliberately minimal; test/harness/registry.ts is the real one.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type ContainerdHandle,
  craneDigest,
  craneManifest,
  cranePull,
  expectOk,
  podmanProbe,
  podmanPull,
  requireTool,
  runTool,
  skopeoCopy,
  startContainerd,
  writeHostsDir,
} from '../harness/clients.js';
import { type FakeUpstream, startFakeUpstream } from '../harness/fake-upstream.js';

const MANIFEST_ACCEPT =
  'application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, ' +
  'application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json';

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

let tmp = '';
let registry: ChildProcess | undefined;
let regHost = '';
let ref = '';
let digest = '';

beforeAll(async () => {
  tmp = await mkdtemp('/tmp/pct-');
  const port = await freePort();
  regHost = `127.0.0.1:${port}`;
  const conf = path.join(tmp, 'registry.yml');
  // http.addr must always be given: the Debian default ":5000" listens on all interfaces.
  await writeFile(
    conf,
    `version: 0.1\nlog: {level: warn}\nstorage: {filesystem: {rootdirectory: ${tmp}/data}, delete: {enabled: true}}\nhttp: {addr: ${regHost}}\n`,
  );
  registry = spawn(requireTool('docker-registry'), ['serve', conf], { stdio: 'ignore' });
  const deadline = Date.now() + 15_000;
  for (;;) {
    const ok = await fetch(`http://${regHost}/v2/`).then(
      (r) => r.ok,
      () => false,
    );
    if (ok) break;
    if (Date.now() > deadline) throw new Error('docker-registry did not start');
    await new Promise((r) => setTimeout(r, 100));
  }
  // One tiny layer on crane's empty base: the quickest push that needs no Docker engine.
  await writeFile(path.join(tmp, 'hello.txt'), 'hello from portcullis\n');
  expectOk(await runTool('tar', ['-C', tmp, '-cf', path.join(tmp, 'layer.tar'), 'hello.txt']), 'tar');
  ref = `${regHost}/demo/app:1`;
  expectOk(await runTool('crane', ['append', '--insecure', '-f', path.join(tmp, 'layer.tar'), '-t', ref]), 'crane append');
  digest = expectOk(await craneDigest(ref), 'crane digest').stdout.trim();
  // A second, distinct image that only the hosts.toml test pulls: containerd shares content across namespaces, so
  // blobs of an image pulled before would not be fetched again.
  await writeFile(path.join(tmp, 'hello.txt'), 'only pulled through the mirror\n');
  expectOk(await runTool('tar', ['-C', tmp, '-cf', path.join(tmp, 'layer2.tar'), 'hello.txt']), 'tar');
  expectOk(await runTool('crane', ['append', '--insecure', '-f', path.join(tmp, 'layer2.tar'), '-t', `${regHost}/demo/mirror:1`]), 'crane append');
}, 60_000);

afterAll(async () => {
  registry?.kill('SIGTERM');
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

/** Copy `<repo>:<tag>` from the real registry into a fake upstream, so ctr can pull it "through" the fake. */
async function mirrorInto(up: FakeUpstream, repo: string, tag: string): Promise<void> {
  const res = await fetch(`http://${regHost}/v2/${repo}/manifests/${tag}`, { headers: { accept: MANIFEST_ACCEPT } });
  const bytes = Buffer.from(await res.arrayBuffer());
  up.addManifest(repo, tag, bytes, res.headers.get('content-type') ?? '');
  const m = JSON.parse(bytes.toString('utf8')) as { config: { digest: string }; layers: Array<{ digest: string }> };
  for (const d of [m.config.digest, ...m.layers.map((l) => l.digest)]) {
    const b = await fetch(`http://${regHost}/v2/${repo}/blobs/${d}`);
    up.addBlob(repo, Buffer.from(await b.arrayBuffer()));
  }
}

describe('client drivers against a real docker-registry', () => {
  it('crane: digest, manifest, pull (tarball and oci)', async () => {
    expect(digest).toMatch(/^sha256:[0-9a-f]{64}$/);
    const man = expectOk(await craneManifest(ref), 'crane manifest');
    expect(JSON.parse(man.stdout)).toHaveProperty('schemaVersion', 2);
    expectOk(await cranePull(ref, path.join(tmp, 'img.tar')), 'crane pull tarball');
    expectOk(await cranePull(ref, path.join(tmp, 'oci'), { format: 'oci' }), 'crane pull oci');
    expect(await readdir(path.join(tmp, 'oci'))).toContain('index.json');
  });

  it('skopeo: copy to dir:', async () => {
    const dest = path.join(tmp, 'skopeo-dir');
    expectOk(await skopeoCopy(`docker://${ref}`, dest), 'skopeo copy');
    expect(await readdir(dest)).toContain('manifest.json');
  });

  it('podman: pull with a private vfs store (if podman runs here)', async () => {
    const probe = await podmanProbe();
    // podman is best-effort: report why rather than skip silently.
    expect(probe, `podman info failed: ${probe.detail}`).toMatchObject({ ok: true });
    const r = expectOk(await podmanPull(ref), 'podman pull');
    expect(r.stderr).toContain('Writing manifest to image destination');
  });

  describe('containerd', () => {
    let cd: ContainerdHandle;
    let up: FakeUpstream;
    beforeAll(async () => {
      cd = await startContainerd();
      up = await startFakeUpstream();
      await mirrorInto(up, 'demo/mirror', '1');
    }, 60_000);
    afterAll(async () => {
      await cd?.stop();
      await up?.stop();
    });

    it('ctr version and a direct pull (loopback defaults to plain http)', async () => {
      expect(expectOk(await cd.ctr(['version']), 'ctr version').stdout).toContain('1.6');
      expectOk(await cd.pull(ref, { namespace: 'direct' }), 'ctr pull');
      const ls = expectOk(await cd.ctr(['-n', 'direct', 'images', 'ls', '-q']), 'ctr images ls');
      expect(ls.stdout).toContain(ref);
    });

    it('pulls through a fallback-proof hosts dir: ns= is sent, and a 403 is not bypassed', async () => {
      const hostsDir = path.join(tmp, 'hosts');
      await writeHostsDir(hostsDir, regHost, up.url);
      up.clearRequests();
      const mirrored = `${regHost}/demo/mirror:1`;
      expectOk(await cd.pull(mirrored, { hostsDir, namespace: 'mirror', snapshotter: 'native' }), 'ctr pull via hosts dir');
      const seen = up.requests();
      const ns = `ns=${encodeURIComponent(regHost)}`;
      expect(seen[0]).toMatchObject({ method: 'HEAD', path: `/v2/demo/mirror/manifests/1?${ns}` });
      expect(seen.filter((r) => r.path.startsWith('/v2/demo/mirror/blobs/') && r.path.endsWith(ns))).toHaveLength(2);

      // A deny at the "proxy" must fail the pull rather than fall back to the real registry.
      up.setFault({ pathRegex: /\/manifests\// }, { kind: 'status', status: 403 });
      const denied = await cd.pull(`${regHost}/demo/app:1`, { hostsDir, namespace: 'deny' }); // exists upstream
      expect(denied.code).not.toBe(0);
      expect(denied.stderr).toContain('403');
      up.clearFaults();
    });
  });
});
