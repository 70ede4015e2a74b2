/**
 * What becomes of the kubelet's imagePullSecrets (issue 11): containerd's CRI hands the Pod's AuthConfig to the
 * mirror host, after a 401 (test/e2e/cri.test.ts records exactly what it sends). Portcullis takes it as a CLIENT
 * identity: verified against its own htpasswd (or OIDC) through its token flow (the OAuth2 password grant containerd
 * POSTs), decided on by the policy's clients rules, and never forwarded to the upstream, which sees only Portcullis
 * with its own credentials.
 *
 * crictl → containerd 1.6 CRI → Portcullis (anonymous: false, htpasswd, token) → a real Distribution registry.
 */
import { appendFile, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DecisionObserver } from '../../src/gate/gate.js';
import { expectOk, runTool } from '../harness/clients.js';
import { type CriHandle, startCri } from '../harness/cri.js';
import { type PushedImage, pushImage } from '../harness/images.js';
import { startProxy, type RunningProxy } from '../harness/proxy.js';
import { type RunningRegistry, startRegistry } from '../harness/registry.js';

let reg: RunningRegistry;
let proxy: RunningProxy;
let cri: CriHandle;
let tmp: string;
let teamA: PushedImage;
const decisions: Array<Parameters<DecisionObserver['onDecision']>[0]> = [];

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'pc-cri-id-'));
  const htpasswd = join(tmp, 'htpasswd');
  expectOk(await runTool('htpasswd', ['-Bbc', htpasswd, 'pod-team-a', 'pod-pass']), 'htpasswd');
  reg = await startRegistry();
  teamA = await pushImage(reg.url, 'team-a/app', 'v1', { layers: 1, layerSizeMiB: 0.1 });
  await pushImage(reg.url, 'team-b/app', 'v1', { layers: 1, layerSizeMiB: 0.1 });
  await pushImage(reg.url, 'team-a/nocreds', 'v1', { layers: 1, layerSizeMiB: 0.1 });
  await pushImage(reg.url, 'team-a/wrong', 'v1', { layers: 1, layerSizeMiB: 0.1 });
  proxy = await startProxy({
    upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
    settings: {
      no_match: 'deny',
      scopes: [
        { name: 'team-a', images: ['*/team-a/**'], clients: { groups: ['team-a'] } },
        { name: 'team-b', images: ['*/team-b/**'], clients: { groups: ['team-b'] } },
      ],
    },
    extra: { auth: { anonymous: false, htpasswd: { file: htpasswd, groups: { 'team-a': ['pod-team-a'] } }, token: {} } },
    observers: [{ onDecision: (e) => void decisions.push(e) }],
  });
  cri = await startCri({ proxyUrl: proxy.url, config: proxy.config });
}, 120_000);

afterAll(async () => {
  await cri?.stop();
  await proxy?.stop();
  await reg?.stop();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

describe("the kubelet's imagePullSecrets are a client identity", () => {
  it('a Pod secret holding Portcullis credentials pulls its team image, decided as that user via the token flow', async () => {
    reg.clearLog();
    const r = await cri.pull(`${reg.host}/team-a/app:v1`, { auth: { username: 'pod-team-a', password: 'pod-pass' } });
    expect(r, r.stderr).toMatchObject({ ok: true, imageRef: teamA.config.digest });
    const d = decisions.find((e) => e.input.image.repository === 'team-a/app');
    expect(d?.input.request.client).toMatchObject({ user: 'pod-team-a', groups: ['team-a'], method: 'token' });
    // The upstream only ever saw the proxy.
    expect(reg.requests().length).toBeGreaterThan(0);
    expect(reg.requests().every((x) => x.userAgent.startsWith('portcullis/'))).toBe(true);
  });

  it("the same identity is denied the other team's image, with the 403 the kubelet sees", async () => {
    const r = await cri.pull(`${reg.host}/team-b/app:v1`, { auth: { username: 'pod-team-a', password: 'pod-pass' } });
    expect(r.ok).toBe(false);
    // The reason phrase names the identity rule, which is all a HEAD carries to the kubelet.
    expect(r.error).toMatch(/403 denied: client\.not_allowed: client "pod-team-a" .*\[decision [0-9a-f-]{36}\]/);
    expect(decisions.some((e) => e.input.image.repository === 'team-b/app' && e.admission.violations.some((v) => v.rule === 'client.not_allowed'))).toBe(true);
  });

  it("a node's own credentials in hosts.toml (a static Authorization header) pull with no imagePullSecret", async () => {
    // What a platform team puts on every node when the node, not the Pod, is the identity: containerd sends the
    // header on every request to that host, so nothing waits for a challenge.
    const node = await pushImage(reg.url, 'team-a/node', 'v1', { layers: 1, layerSizeMiB: 0.1 });
    const basic = Buffer.from('pod-team-a:pod-pass').toString('base64');
    try {
      for (const d of await readdir(cri.hostsDir)) {
        await appendFile(join(cri.hostsDir, d, 'hosts.toml'), `\n[host."${proxy.url}".header]\n  Authorization = "Basic ${basic}"\n`);
      }
      const r = await cri.pull(`${reg.host}/team-a/node:v1`);
      expect(r, r.stderr).toMatchObject({ ok: true, imageRef: node.config.digest });
      const d = decisions.find((e) => e.input.image.repository === 'team-a/node');
      expect(d?.input.request.client).toMatchObject({ user: 'pod-team-a', groups: ['team-a'], method: 'basic' });
    } finally {
      await cri.writeHosts(proxy.url);
    }
  });

  it('credentials meant for the upstream (not Portcullis users) and no credentials fail with 401', async () => {
    const wrong = await cri.pull(`${reg.host}/team-a/wrong:v1`, { auth: { username: 'dockerhub-user', password: 'dockerhub-token' } });
    expect(wrong.ok).toBe(false);
    expect(wrong.error).toContain('401 Unauthorized');
    const none = await cri.pull(`${reg.host}/team-a/nocreds:v1`);
    expect(none.ok).toBe(false);
    expect(none.error).toContain('401 Unauthorized');
  });
});
