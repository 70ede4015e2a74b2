/**
 * `portcullis client-config` as a command (the built CLI): files under --out, the printed form, and bad input. What
 * the files contain, and real containerd and podman pulling through them: test/unit/client-config.test.ts and
 * test/e2e/clients.test.ts.
 */
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { runTool } from '../harness/clients.js';

const cli = resolve('dist/cli.js');
let dir: string;
let cfg: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'pc-client-config-'));
  cfg = join(dir, 'portcullis.yaml');
  await writeFile(
    cfg,
    JSON.stringify({
      dataDir: join(dir, 'data'),
      upstreams: [
        { name: 'hub', registry: 'docker.io', url: 'https://registry-1.docker.io' },
        { name: 'lab', registry: 'registry.lab:5001', url: 'http://127.0.0.1:5001', aliases: ['lab'] },
      ],
    }),
  );
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('portcullis client-config', () => {
  it('containerd --out DIR writes the certs.d tree', async () => {
    const out = join(dir, 'certs.d');
    const r = await runTool('node', [cli, 'client-config', 'containerd', '--config', cfg, '--proxy', 'http://127.0.0.1:5000', '--out', out]);
    expect(r.code, r.stderr).toBe(0);
    expect((await readdir(out)).sort()).toEqual(['_default', 'docker.io', 'lab', 'registry.lab:5001']);
    expect(await readFile(join(out, 'registry.lab:5001', 'hosts.toml'), 'utf8')).toContain('[host."http://127.0.0.1:5000"]');
    expect(r.stderr).toMatch(/^note: .*config_path/m);
  });

  it('podman prints registries.conf.d/portcullis.conf', async () => {
    const r = await runTool('node', [cli, 'client-config', 'podman', '--config', cfg, '--proxy', 'https://portcullis.internal']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^# ==> \/etc\/containers\/registries\.conf\.d\/portcullis\.conf <==$/m);
    expect(r.stdout).toContain('location = "portcullis.internal/lab"');
  });

  it('the DaemonSet in deploy/ runs: its init container arguments against its own ConfigMap', async () => {
    type Doc = { kind?: string; data?: Record<string, string>; spec?: { template: { spec: { initContainers: Array<{ args: string[] }> } } } };
    const docs = parseAllDocuments(await readFile('deploy/kubernetes/daemonset.yaml', 'utf8')).map((d) => d.toJS() as Doc);
    const cm = docs.find((d) => d.kind === 'ConfigMap')!;
    const ds = docs.find((d) => d.kind === 'DaemonSet')!;
    const dsConfig = join(dir, 'ds.yaml');
    await writeFile(dsConfig, cm.data!['portcullis.yaml']!);
    const out = join(dir, 'node-certs.d');
    const args = ds.spec!.template.spec.initContainers[0]!.args.map((a) =>
      a.replace('--config=/etc/portcullis/portcullis.yaml', `--config=${dsConfig}`).replace('--out=/host/etc/containerd/certs.d', `--out=${out}`),
    );
    const r = await runTool('node', [cli, ...args]);
    expect(r.code, r.stderr).toBe(0);
    expect((await readdir(out)).sort()).toEqual(['docker.io', 'ghcr.io', 'index.docker.io', 'registry-1.docker.io']);
    expect(r.stderr).toContain('--no-default');
  });

  it('bad input: exit 2 with the reason', async () => {
    const badProxy = await runTool('node', [cli, 'client-config', 'docker', '--config', cfg, '--proxy', 'portcullis:5000']);
    expect(badProxy.code).toBe(2);
    expect(badProxy.stderr).toContain('--proxy');
    const noKind = await runTool('node', [cli, 'client-config', 'cri-o', '--config', cfg, '--proxy', 'http://p:5000']);
    expect(noKind.code).toBe(2);
    expect(noKind.stderr).toContain('client-config containerd|docker|podman');
  });
});
