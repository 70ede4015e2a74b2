/**
 * e2e, the kubelet's path through the node tier: crictl → containerd 1.6 CRI, whose hosts.toml is what
 * `portcullis client-config containerd --fallback <central>` writes → the node instance (the REAL server, `node
 * dist/cli.js serve`, built by `npm run build`, with `upstreams[].kind: portcullis`) → the central tier (Portcullis)
 * → a real Distribution registry. Then the node instance is killed (-9), as a crash or an upgrade without surge would,
 * and pulls go on through the central tier, which still decides: a denied image is denied with its reason either way.
 *
 * Each image is pulled once, so that containerd's shared content store never hides a fetch.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import type { DecisionObserver } from '../../src/gate/gate.js';
import { type CriHandle, startCri } from '../harness/cri.js';
import { pushImage, type PushedImage } from '../harness/images.js';
import { startProxy, type RunningProxy } from '../harness/proxy.js';
import { freePort, type RunningRegistry, startRegistry } from '../harness/registry.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const CLI = path.join(ROOT, 'dist', 'cli.js');

let reg: RunningRegistry;
let central: RunningProxy;
let nodeUrl: string;
let nodeHost: string;
let node: ChildProcess | undefined;
let cri: CriHandle;
let tmp: string;
let first: PushedImage;
let second: PushedImage;
const decisions: Array<Parameters<DecisionObserver['onDecision']>[0]> = [];

/** The node instance as it runs in the DaemonSet: the CLI, its upstream the central tier. */
async function startNode(): Promise<{ config: string }> {
  const port = await freePort();
  nodeHost = `127.0.0.1:${port}`;
  nodeUrl = `http://${nodeHost}`;
  const config = [
    `listen: ${nodeHost}`,
    `dataDir: ${JSON.stringify(path.join(tmp, 'node-data'))}`,
    'upstreams:',
    '  - name: central',
    '    kind: portcullis',
    `    registry: ${JSON.stringify(reg.host)}`,
    `    url: ${central.url}`,
    '    recheck: 30s',
    'log: {level: warn}',
    'decisionLog: {sink: none}',
    'policy:',
    `  bundleFile: ${JSON.stringify(path.join(ROOT, 'policies', 'bundle.tar.gz'))}`,
    // The node's own policy admits everything the central tier admits: the central decides.
    '  settings: {no_match: deny, scopes: [{name: all, images: ["**"]}]}',
    '',
  ].join('\n');
  const file = path.join(tmp, 'node.yaml');
  await writeFile(file, config);
  const child = spawn(process.execPath, [CLI, 'serve', '--config', file], { stdio: ['ignore', 'pipe', 'pipe'], cwd: ROOT });
  node = child;
  let out = '';
  child.stdout?.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr?.on('data', (b: Buffer) => (out += b.toString()));
  for (let i = 0; ; i++) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`node instance exited during start-up:\n${out}`);
    const ok = await fetch(`${nodeUrl}/readyz`).then(
      (r) => r.ok,
      () => false,
    );
    if (ok) break;
    if (i > 200) {
      child.kill('SIGKILL');
      throw new Error(`node instance not ready after 200 tries:\n${out}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return { config };
}

beforeAll(async () => {
  tmp = await mkdtemp('/tmp/pcchain-');
  reg = await startRegistry();
  first = await pushImage(reg.url, 'e2e/chain', 'v1', { layers: 2, layerSizeMiB: 0.25 });
  await pushImage(reg.url, 'e2e/chain', 'blocked', { layers: 1 });
  second = await pushImage(reg.url, 'e2e/chain-after', 'v1', { layers: 1, layerSizeMiB: 0.1 });
  central = await startProxy({
    upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
    settings: { no_match: 'deny', scopes: [{ name: 'all', images: ['**'], deny_tags: ['blocked'] }] },
    observers: [{ onDecision: (e) => void decisions.push(e) }],
  });
  const { config } = await startNode();
  cri = await startCri({ proxyUrl: nodeUrl, config: parseConfig(config, 'node.yaml', {}), fallback: [central.url] });
}, 180_000);

afterAll(async () => {
  node?.kill('SIGKILL');
  await cri?.stop();
  await central?.stop();
  await reg?.stop();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

/** How many manifest requests the central tier has answered with 403, from its own metrics. */
async function centralDenials(): Promise<number> {
  const text = await (await fetch(`${central.url}/metrics`)).text();
  let n = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith('portcullis_http_requests_total{') && line.includes('kind="manifest"') && line.includes('status="403"'))
      n += Number(line.split(' ').pop());
  }
  return n;
}

describe('CRI through the node instance, then its central tier when the node is gone', () => {
  it('the node instance serves: the central tier decided on a request from the node, not from containerd', async () => {
    decisions.length = 0;
    const r = await cri.pull(`${reg.host}/e2e/chain:v1`);
    expect(r, r.stderr).toMatchObject({ ok: true, imageRef: first.config.digest });
    const d = decisions.find((e) => e.input.image.repository === 'e2e/chain');
    expect(d?.input.request.client.user_agent).toBe('portcullis/0.1');
    expect(d?.route.ns).toBe(reg.host);
  });

  it('a denied image: the kubelet sees the central tier’s rule, reason and decision id, passed through the node', async () => {
    decisions.length = 0;
    const ref = `${reg.host}/e2e/chain:blocked`;
    const r = await cri.pull(ref);
    expect(r.ok).toBe(false);
    console.info(`the kubelet sees (node up): ${r.error}`);
    const id = decisions.find((e) => e.input.image.tag === 'blocked' && e.input.request.client.user_agent === 'portcullis/0.1')?.admission.decisionId;
    expect(id).toBeDefined();
    expect(r.error).toContain(
      `pulling from host ${nodeHost} failed with status code [manifests blocked]: 403 denied: tag.denied: tag "blocked" is not allowed [decision ${id}]`,
    );
  });

  it('kill -9 of the node instance: pulls go on through the central tier, which still denies what it denies', async () => {
    node!.kill('SIGKILL');
    await new Promise((r) => node!.once('exit', r));
    expect(
      await fetch(`${nodeUrl}/v2/`).then(
        () => 'up',
        () => 'down',
      ),
    ).toBe('down');
    decisions.length = 0;
    const r = await cri.pull(`${reg.host}/e2e/chain-after:v1`);
    expect(r, r.stderr).toMatchObject({ ok: true, imageRef: second.config.digest });
    // Decided by the central tier for containerd itself this time.
    const d = decisions.find((e) => e.input.image.repository === 'e2e/chain-after');
    expect(d?.input.request.client.user_agent).toMatch(/^containerd\//);

    // The denied image, with the node gone: containerd asks the central tier, which answers its 403 (from its decision
    // cache). containerd 1.6 reports the FIRST host's error, so the kubelet's message is the refused connection to
    // the node instance, not the central's reason (README "Running a central tier"); the pull fails all the same.
    const before = await centralDenials();
    const denied = await cri.pull(`${reg.host}/e2e/chain:blocked`);
    expect(denied.ok).toBe(false);
    console.info(`the kubelet sees (node down): ${denied.error}`);
    expect(await centralDenials()).toBeGreaterThan(before);
    expect(denied.error).toContain(`dial tcp ${nodeHost}: connect: connection refused`);
  });
});
