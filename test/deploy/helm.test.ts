/**
 * The Helm chart (deploy/helm/portcullis): `helm lint --strict` and `helm template` for every example values file,
 * then checks on what the chart renders: probes, security contexts, that the config it writes passes
 * `portcullis config check`, and that the node tier's init container writes hosts.toml files with no fallback to
 * the real registries. helm comes from scripts/install-tools.sh (a pinned `go install`); missing, the tests fail.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { requireTool, runTool } from '../harness/clients.js';

const CHART = resolve('deploy/helm/portcullis');
const EXAMPLES = readdirSync(join(CHART, 'examples'))
  .filter((f) => f.endsWith('.yaml'))
  .sort();
const CLI = resolve('dist/cli.js');

/** The parts of the rendered Kubernetes objects these tests read. */
interface Probe {
  httpGet: { path: string; port: string | number; scheme?: string; host?: string };
}
interface SecurityContext {
  runAsNonRoot?: boolean;
  runAsUser?: number;
  allowPrivilegeEscalation?: boolean;
  readOnlyRootFilesystem?: boolean;
  privileged?: boolean;
  capabilities?: { drop?: string[]; add?: string[] };
  seccompProfile?: { type: string };
}
interface Container {
  name: string;
  args?: string[];
  env?: unknown[];
  ports?: Array<{ name: string; containerPort: number }>;
  readinessProbe?: Probe;
  livenessProbe?: Probe;
  startupProbe?: Probe;
  securityContext?: SecurityContext;
  volumeMounts?: Array<{ name: string; mountPath: string }>;
}
interface PodSpec {
  containers: Container[];
  initContainers?: Container[];
  volumes: Array<{ name: string; hostPath?: { path: string } }>;
  hostNetwork?: boolean;
  automountServiceAccountToken?: boolean;
  securityContext?: SecurityContext;
}
interface Obj {
  kind: string;
  data?: Record<string, string>;
  spec: {
    template: { spec: PodSpec };
    endpoints: Array<Record<string, unknown>>;
    ingress: Array<{ ports: Array<{ port: string | number }> }>;
    clusterIP?: string;
  };
}

const tmp = mkdtempSync(join(tmpdir(), 'pc-helm-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

async function template(args: string[]): Promise<{ code: number; docs: Obj[]; stderr: string }> {
  const r = await runTool(requireTool('helm'), ['template', 'portcullis', CHART, '--namespace', 'portcullis', ...args], { timeoutMs: 60_000 });
  const docs =
    r.code === 0
      ? parseAllDocuments(r.stdout)
          .map((d) => d.toJS() as Obj | null)
          .filter((d): d is Obj => d !== null)
      : [];
  return { code: r.code, docs, stderr: r.stderr };
}

/** `node dist/cli.js ...` without any PORTCULLIS__ override from this environment. */
function cli(args: string[], extraEnv: Record<string, string> = {}): { code: number; stdout: string; stderr: string } {
  const env = { ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('PORTCULLIS'))), ...extraEnv };
  const r = spawnSync(process.execPath, [CLI, ...args], { env, encoding: 'utf8', timeout: 60_000 });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

function workload(docs: Obj[]): Obj {
  const w = docs.filter((d) => d.kind === 'DaemonSet' || d.kind === 'Deployment');
  expect(w).toHaveLength(1);
  return w[0]!;
}

function configOf(docs: Obj[]): string {
  const cm = docs.find((d) => d.kind === 'ConfigMap');
  const text = cm?.data?.['portcullis.yaml'];
  expect(text).toBeTypeOf('string');
  return text!;
}

function listFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => (statSync(join(dir, f)).isDirectory() ? listFiles(join(dir, f)).map((g) => `${f}/${g}`) : [f]));
}

beforeAll(() => {
  requireTool('helm');
  expect(EXAMPLES.length).toBeGreaterThanOrEqual(2);
  if (!statSync(CLI, { throwIfNoEntry: false })) throw new Error(`${CLI} is missing: run npm run build first (npm test does)`);
});

describe.each(EXAMPLES)('examples/%s', (file) => {
  const values = join(CHART, 'examples', file);
  let docs: Obj[];
  let pod: PodSpec;
  let tier: 'node' | 'central';

  beforeAll(async () => {
    const r = await template(['-f', values]);
    expect(r.code, r.stderr).toBe(0);
    docs = r.docs;
    const w = workload(docs);
    tier = w.kind === 'DaemonSet' ? 'node' : 'central';
    pod = w.spec.template.spec;
  });

  it('helm lint --strict passes', async () => {
    const r = await runTool(requireTool('helm'), ['lint', '--strict', CHART, '-f', values], { timeoutMs: 60_000 });
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    expect(r.stdout).toContain('0 chart(s) failed');
  });

  it('the proxy container has startup, readiness and liveness probes on /readyz and /healthz', () => {
    const c = pod.containers.find((x) => x.name === 'portcullis')!;
    expect(c.readinessProbe?.httpGet.path).toBe('/readyz');
    expect(c.startupProbe?.httpGet.path).toBe('/readyz');
    expect(c.livenessProbe?.httpGet.path).toBe('/healthz');
    const ports = new Set((c.ports ?? []).map((p) => p.name));
    // The node tier declares no ports (on the host network they would be host ports, which a surge pod could not
    // have): its probes name the listener's port number.
    const listen = Number(/^listen: .*:(\d+)$/m.exec(configOf(docs))?.[1]);
    for (const p of [c.readinessProbe!, c.livenessProbe!, c.startupProbe!]) {
      if (tier === 'node') expect(p.httpGet.port).toBe(listen);
      else expect(ports.has(String(p.httpGet.port)), `probe port ${p.httpGet.port}`).toBe(true);
    }
    const tls = /^tls:/m.test(configOf(docs));
    expect(c.readinessProbe!.httpGet.scheme).toBe(tls && !ports.has('operator') ? 'HTTPS' : 'HTTP');
    if (tier === 'node') {
      expect(c.readinessProbe!.httpGet.host).toBe('127.0.0.1');
      expect(c.ports).toBeUndefined();
    }
  });

  it('runs non-root, read-only, without privilege escalation or capabilities; init containers only as justified', () => {
    expect(pod.automountServiceAccountToken).toBe(false);
    expect(pod.securityContext).toMatchObject({ runAsNonRoot: true, runAsUser: 1000, seccompProfile: { type: 'RuntimeDefault' } });
    for (const c of pod.containers) {
      expect(c.securityContext, c.name).toMatchObject({
        runAsNonRoot: true,
        allowPrivilegeEscalation: false,
        readOnlyRootFilesystem: true,
        privileged: false,
        capabilities: { drop: ['ALL'] },
      });
      expect(c.securityContext?.runAsUser).not.toBe(0);
      expect(c.securityContext?.capabilities?.add).toBeUndefined();
    }
    // The node tier's init containers run as root: the host's certs.d and a kubelet-created hostPath are root's.
    // client-config writes as the owner of certs.d (no capability); cache-owner needs CAP_CHOWN and nothing else.
    const allowedAdd: Record<string, string[] | undefined> = { 'client-config': undefined, 'cache-owner': ['CHOWN'] };
    for (const c of pod.initContainers ?? []) {
      expect(tier).toBe('node');
      expect(Object.keys(allowedAdd)).toContain(c.name);
      expect(c.securityContext, c.name).toMatchObject({
        allowPrivilegeEscalation: false,
        readOnlyRootFilesystem: true,
        privileged: false,
        capabilities: { drop: ['ALL'] },
      });
      expect(c.securityContext?.capabilities?.add).toEqual(allowedAdd[c.name]);
    }
    // Host access only where the tier needs it.
    expect(Boolean(pod.hostNetwork)).toBe(tier === 'node');
    const hostPaths = pod.volumes
      .filter((v) => v.hostPath)
      .map((v) => v.name)
      .sort();
    if (tier === 'central') expect(hostPaths).toEqual([]);
    else expect(hostPaths.every((n) => n === 'certs-d' || n === 'cache')).toBe(true);
  });

  it('the config it renders passes `portcullis config check`', () => {
    const f = join(tmp, `${file}.config.yaml`);
    writeFileSync(f, configOf(docs));
    const r = cli(['config', 'check', f]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(': ok (');
  });

  it('credentials come from mounted Secrets, never inline in the ConfigMap', () => {
    const config = configOf(docs);
    // A password is only ever `password: {file: ...}` (or env): never a scalar.
    expect(config).not.toMatch(/password:[ \t]*[^\s{]/);
    expect(config).toMatch(/password:\s+file: \/etc\/portcullis\/upstreams\//);
    const mounts = new Set((pod.containers[0]!.volumeMounts ?? []).map((m) => m.mountPath));
    for (const m of config.matchAll(/file: (\/etc\/portcullis\/upstreams\/[^/]+\/credentials)\/(password|username)/g))
      expect(mounts.has(m[1]!), m[1]).toBe(true);
  });

  it('node tier: the init container writes hosts.toml files whose hosts are the proxy (then its central tier) only', (ctx) => {
    if (tier !== 'node') {
      // Central-tier examples have no init container; assert that rather than pass vacuously.
      expect(pod.initContainers).toBeUndefined();
      return;
    }
    const init = pod.initContainers?.find((c) => c.name === 'client-config');
    expect(init, 'client-config init container').toBeDefined();
    const initArgs = init!.args ?? [];
    const out = initArgs.find((a) => a.startsWith('--out='))!.slice('--out='.length);
    const mount = (init!.volumeMounts ?? []).find((m) => m.mountPath === out);
    const certsDir = pod.volumes.find((v) => v.name === mount?.name)?.hostPath?.path;
    expect(certsDir).toBe('/etc/containerd/certs.d');
    // Run exactly the init container's command, with the rendered config and a temp dir for the host's certs.d.
    const config = join(tmp, `${file}.init.yaml`);
    writeFileSync(config, configOf(docs));
    const dir = mkdtempSync(join(tmp, 'certs-d-'));
    const args = initArgs.map((a) => (a.startsWith('--config=') ? `--config=${config}` : a.startsWith('--out=') ? `--out=${dir}` : a));
    const r = cli(args);
    expect(r.code, r.stderr).toBe(0);
    const proxy = initArgs.find((a) => a.startsWith('--proxy='))!.slice('--proxy='.length);
    const port = /^listen: 127\.0\.0\.1:(\d+)$/m.exec(configOf(docs))?.[1];
    expect(proxy).toBe(`http://127.0.0.1:${port}`);
    // A chained node tier: its central tier after it, and it is the url of every upstream (nothing else is a host).
    const fallback = initArgs.filter((a) => a.startsWith('--fallback=')).map((a) => a.slice('--fallback='.length));
    const hosts = [proxy, ...fallback];
    for (const f of fallback) expect(configOf(docs)).toContain(`url: ${f}`);
    const files = listFiles(dir);
    const upstreams = [...configOf(docs).matchAll(/registry: (\S+)/g)].map((m) => m[1]);
    expect(files.sort()).toEqual(expect.arrayContaining(upstreams.map((u) => `${u}/hosts.toml`)));
    expect(files.every((f) => f.endsWith('/hosts.toml'))).toBe(true);
    for (const f of files) {
      const text = readFileSync(join(dir, f), 'utf8');
      const lines = text.split('\n').filter((l) => !l.trimStart().startsWith('#'));
      expect(
        lines.filter((l) => /^\s*server\s*=/.test(l)),
        f,
      ).toEqual([`server = "${hosts[hosts.length - 1]}"`]);
      expect(
        lines.filter((l) => /^\s*\[host\./.test(l)),
        f,
      ).toEqual(hosts.map((h) => `[host."${h}"]`));
      // No URL but the proxy's (and its central tier's) anywhere in the file.
      expect(
        [...text.matchAll(/https?:\/\/[^"\s]+/g)].map((m) => m[0]).filter((u) => !hosts.includes(u)),
        f,
      ).toEqual([]);
    }
    void ctx.annotate(`${files.length} hosts.toml files, all pointing at ${hosts.join(' then ')} only`);
  });
});

describe('the chart refuses what would deploy something broken or unsafe', () => {
  const cases: Array<[string, string[], RegExp]> = [
    ['an unknown tier', ['--set', 'tier=edge'], /tier must be node or central/],
    ['TLS without a Secret', ['--set', 'tls.enabled=true'], /tls\.enabled needs tls\.secretName/],
    [
      'client certificates without an operator listener (probes could not pass)',
      ['--set', 'tls.enabled=true,tls.secretName=s,tls.clientCA.secretName=ca'],
      /set operator\.port/,
    ],
    ['an unknown clientAuth', ['--set', 'tls.clientAuth=maybe'], /tls\.clientAuth must be require or optional/],
    [
      'a NetworkPolicy on the host-network node tier',
      ['--set', 'tier=node,storage.type=hostPath,networkPolicy.enabled=true'],
      /do not apply to host-network pods/,
    ],
    [
      'a ServiceMonitor on the node tier without an operator listener',
      ['--set', 'tier=node,storage.type=hostPath,serviceMonitor.enabled=true'],
      /needs operator\.port/,
    ],
    [
      'upstream credentials without a Secret',
      ['--set', 'upstreams[0].name=hub,upstreams[0].registry=docker.io,upstreams[0].url=https://registry-1.docker.io,upstreams[0].credentials.username=u'],
      /credentials need existingSecret/,
    ],
    ['a node tier whose image is not pinned by digest', ['--set', 'tier=node,storage.type=hostPath'], /image\.digest: the node tier pins its image by digest/],
    ['a digest that is not one', ['--set', 'image.digest=sha256:abc'], /image\.digest must be sha256/],
    [
      'a chained node tier that names no registry',
      ['--set', `tier=node,storage.type=hostPath,image.digest=sha256:${'a'.repeat(64)},node.central.url=https://c:5443`],
      /needs node\.central\.registries/,
    ],
    ['shared state without a Secret', ['--set', 'sharedState.enabled=true,sharedState.s3.bucket=b'], /needs sharedState\.existingSecret/],
    ['shared state without a bucket', ['--set', 'sharedState.enabled=true,sharedState.existingSecret=s'], /sharedState\.s3\.bucket/],
    [
      'shared state on the node tier',
      ['--set', `tier=node,storage.type=hostPath,image.digest=sha256:${'a'.repeat(64)},sharedState.enabled=true`],
      /for the central tier/,
    ],
    [
      'one claim shared by several replicas',
      ['--set', 'storage.type=persistentVolumeClaim,storage.existingClaim=c,replicas=2'],
      /one replica only|replicas: 1/,
    ],
  ];
  it.each(cases)('%s', async (_what, args, message) => {
    const r = await template(args);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(message);
  });
});

describe('with an operator listener (operatorListen)', () => {
  it('central: probes and the ServiceMonitor use it over plain HTTP, and the config names it', async () => {
    const r = await template(['-f', join(CHART, 'examples', 'central.yaml'), '--set', 'operator.port=9090']);
    expect(r.code, r.stderr).toBe(0);
    const c = workload(r.docs).spec.template.spec.containers[0]!;
    expect(c.readinessProbe?.httpGet).toMatchObject({ port: 'operator', scheme: 'HTTP', path: '/readyz' });
    expect(configOf(r.docs)).toMatch(/operatorListen: 0\.0\.0\.0:9090/);
    const sm = r.docs.find((d) => d.kind === 'ServiceMonitor')!;
    expect(sm.spec.endpoints[0]).toMatchObject({ port: 'operator', scheme: 'http', path: '/metrics' });
    const np = r.docs.find((d) => d.kind === 'NetworkPolicy')!;
    expect(np.spec.ingress[1]?.ports[0]?.port).toBe('operator');
  });

  it('node: it binds the node address from the downward API, and a headless Service lists it for the ServiceMonitor', async () => {
    const r = await template(['-f', join(CHART, 'examples', 'node.yaml'), '--set', 'operator.port=9090,serviceMonitor.enabled=true']);
    expect(r.code, r.stderr).toBe(0);
    const c = workload(r.docs).spec.template.spec.containers[0]!;
    expect(c.env).toEqual([
      { name: 'HOST_IP', valueFrom: { fieldRef: { fieldPath: 'status.hostIP' } } },
      { name: 'PORTCULLIS__operatorListen', value: '$(HOST_IP):9090' },
    ]);
    // The registry listener stays on the node's loopback.
    expect(configOf(r.docs)).toMatch(/^listen: 127\.0\.0\.1:5000$/m);
    const svc = r.docs.find((d) => d.kind === 'Service')!;
    expect(svc.spec.clusterIP).toBe('None');
  });
});

describe('client authentication', () => {
  it("the auth values block reaches the config unchanged (its schema is the config reference's)", async () => {
    const r = await template([
      '-f',
      join(CHART, 'examples', 'central.yaml'),
      '--set-json',
      'auth={"anonymous":false,"htpasswd":{"file":"/etc/portcullis/auth/htpasswd"}}',
    ]);
    expect(r.code, r.stderr).toBe(0);
    const config = parseAllDocuments(configOf(r.docs))[0]!.toJS() as { auth?: unknown };
    expect(config.auth).toEqual({ anonymous: false, htpasswd: { file: '/etc/portcullis/auth/htpasswd' } });
  });
});

describe('the central tier of a cluster (issue 13, Deploy)', () => {
  const SHARED = [
    '-f',
    join(CHART, 'examples', 'central.yaml'),
    '--set',
    'sharedState.enabled=true,sharedState.existingSecret=portcullis-state,sharedState.keys.redisPassword=redis-password',
    '--set',
    'sharedState.s3.bucket=portcullis,sharedState.s3.endpoint=https://s3.internal.example:9000,sharedState.s3.forcePathStyle=true,sharedState.s3.prefix=central/',
    '--set-json',
    'sharedState.redis={"keyPrefix":"portcullis:","maxStaleness":"5s"}',
  ];

  it('a Deployment of 3 replicas with a surge rolling update and readiness on /readyz, a Service and a PodDisruptionBudget', async () => {
    // The chart's defaults: the central tier.
    const r = await template([]);
    expect(r.code, r.stderr).toBe(0);
    const d = workload(r.docs) as Obj & { spec: { replicas: number; strategy: unknown } };
    expect(d.kind).toBe('Deployment');
    expect(d.spec.replicas).toBe(3);
    expect(d.spec.strategy).toEqual({ type: 'RollingUpdate', rollingUpdate: { maxSurge: 1, maxUnavailable: 0 } });
    expect(d.spec.template.spec.containers[0]!.readinessProbe?.httpGet.path).toBe('/readyz');
    expect(r.docs.filter((x) => x.kind === 'Service')).toHaveLength(1);
    // Closures are learned per replica from the manifest request: a client's blob GETs must reach the same replica.
    expect(r.docs.find((x) => x.kind === 'Service')).toMatchObject({ spec: { sessionAffinity: 'ClientIP' } });
    expect(r.docs.find((x) => x.kind === 'PodDisruptionBudget')).toMatchObject({ spec: { maxUnavailable: 1 } });
  });

  it('sharedState: blobs in S3 and meta in Redis, every connection secret from the Secret (URL by env, keys by file)', async () => {
    const r = await template(SHARED);
    expect(r.code, r.stderr).toBe(0);
    const text = configOf(r.docs);
    const config = parseAllDocuments(text)[0]!.toJS() as { storage: Record<string, unknown> };
    expect(config.storage).toEqual({
      blobs: 's3',
      s3: {
        bucket: 'portcullis',
        region: 'us-east-1',
        endpoint: 'https://s3.internal.example:9000',
        forcePathStyle: true,
        prefix: 'central/',
        credentials: {
          accessKeyId: { file: '/etc/portcullis/shared-state/s3-access-key-id' },
          secretAccessKey: { file: '/etc/portcullis/shared-state/s3-secret-access-key' },
        },
      },
      meta: 'redis',
      redis: {
        keyPrefix: 'portcullis:',
        maxStaleness: '5s',
        password: { file: '/etc/portcullis/shared-state/redis-password' },
        signingKey: { file: '/etc/portcullis/shared-state/redis-signing-key' },
      },
    });
    expect(text).not.toMatch(/redis:\/\/|rediss:\/\//);
    const pod = workload(r.docs).spec.template.spec;
    const c = pod.containers[0]!;
    expect(c.env).toContainEqual({
      name: 'PORTCULLIS__storage__redis__url',
      valueFrom: { secretKeyRef: { name: 'portcullis-state', key: 'redis-url' } },
    });
    expect(c.volumeMounts).toContainEqual({ name: 'shared-state', mountPath: '/etc/portcullis/shared-state', readOnly: true });
    const vol = pod.volumes.find((v) => v.name === 'shared-state') as unknown as {
      secret: { secretName: string; items: Array<{ key: string; path: string }> };
    };
    expect(vol.secret.secretName).toBe('portcullis-state');
    expect(vol.secret.items.map((i) => i.path).sort()).toEqual(['redis-password', 'redis-signing-key', 's3-access-key-id', 's3-secret-access-key']);
    // The whole rendered config against the real schema, with the URL the Secret would put in the environment.
    const f = join(tmp, 'central-shared.config.yaml');
    writeFileSync(f, text);
    const check = cli(['config', 'check', f], { PORTCULLIS__storage__redis__url: 'rediss://redis.portcullis.svc:6379/0' });
    expect(check.code, check.stderr).toBe(0);
    const lint = await runTool(requireTool('helm'), ['lint', '--strict', CHART, ...SHARED], { timeoutMs: 60_000 });
    expect(lint.code, `${lint.stdout}\n${lint.stderr}`).toBe(0);
  });

  it("sharedState.redis with sentinels: no URL from the Secret, the sentinels' password by file, and the config checks", async () => {
    const r = await template([
      ...SHARED,
      '--set',
      'sharedState.keys.redisSentinelPassword=sentinel-password',
      '--set-json',
      'sharedState.redis={"sentinels":[{"host":"sentinel-0.redis","port":26379}],"name":"mymaster","tls":true}',
    ]);
    expect(r.code, r.stderr).toBe(0);
    const text = configOf(r.docs);
    const redis = (parseAllDocuments(text)[0]!.toJS() as { storage: { redis: Record<string, unknown> } }).storage.redis;
    expect(redis).toMatchObject({ name: 'mymaster', sentinelPassword: { file: '/etc/portcullis/shared-state/redis-sentinel-password' } });
    const c = workload(r.docs).spec.template.spec.containers[0]!;
    expect(((c.env ?? []) as Array<{ name: string }>).map((e) => e.name)).not.toContain('PORTCULLIS__storage__redis__url');
    const f = join(tmp, 'central-sentinel.config.yaml');
    writeFileSync(f, text);
    const check = cli(['config', 'check', f]);
    expect(check.code, check.stderr).toBe(0);
  });
});

describe('the node tier chained to the central tier (examples/node-chained.yaml)', () => {
  it('image by digest, maxSurge rolling update, reusePort, every registry a kind: portcullis upstream at the central Service', async () => {
    const r = await template(['-f', join(CHART, 'examples', 'node-chained.yaml')]);
    expect(r.code, r.stderr).toBe(0);
    const ds = workload(r.docs) as Obj & { spec: { updateStrategy: unknown } };
    expect(ds.kind).toBe('DaemonSet');
    expect(ds.spec.updateStrategy).toEqual({ type: 'RollingUpdate', rollingUpdate: { maxSurge: 1, maxUnavailable: 0 } });
    const pod = ds.spec.template.spec as PodSpec & { containers: Array<Container & { image: string }>; initContainers: Array<Container & { image: string }> };
    for (const c of [...pod.containers, ...pod.initContainers])
      expect(c.image, c.name).toMatch(/^registry\.internal\.example\/portcullis@sha256:[a-f0-9]{64}$/);
    const config = parseAllDocuments(configOf(r.docs))[0]!.toJS() as {
      reusePort: boolean;
      defaultUpstream: string;
      upstreams: Array<{ name: string; kind: string; registry: string; url: string; recheck: string; ca: string }>;
    };
    expect(config.reusePort).toBe(true);
    expect(config.upstreams.map((u) => [u.name, u.registry, u.kind, u.url, u.recheck])).toEqual([
      ['docker-io', 'docker.io', 'portcullis', 'https://portcullis.portcullis.svc:5443', '30s'],
      ['registry-internal-example', 'registry.internal.example', 'portcullis', 'https://portcullis.portcullis.svc:5443', '30s'],
    ]);
    expect(config.defaultUpstream).toBe('docker-io');
    expect(config.upstreams[0]!.ca).toBe('/etc/portcullis/upstreams/docker-io/ca/ca.crt');
    const init = pod.initContainers.find((c) => c.name === 'client-config')!;
    expect(init.args).toContain('--fallback=https://portcullis.portcullis.svc:5443');
    expect(init.args).toContain('--ca=/etc/containerd/certs.d/portcullis-ca.pem');
  });

  it('node.central.clientCertificate: the node’s certificate from a kubernetes.io/tls Secret, by file, for each upstream', async () => {
    const r = await template(['-f', join(CHART, 'examples', 'node-chained.yaml'), '--set', 'node.central.clientCertificate.existingSecret=node-cert']);
    expect(r.code, r.stderr).toBe(0);
    const config = parseAllDocuments(configOf(r.docs))[0]!.toJS() as { upstreams: Array<{ name: string; clientCertificate: unknown }> };
    expect(config.upstreams[0]!.clientCertificate).toEqual({
      cert: '/etc/portcullis/upstreams/docker-io/client/tls.crt',
      key: '/etc/portcullis/upstreams/docker-io/client/tls.key',
    });
    const pod = workload(r.docs).spec.template.spec;
    expect(pod.containers[0]!.volumeMounts).toContainEqual({
      name: 'up-docker-io-cert',
      mountPath: '/etc/portcullis/upstreams/docker-io/client',
      readOnly: true,
    });
    expect(pod.volumes).toContainEqual({
      name: 'up-docker-io-cert',
      secret: {
        secretName: 'node-cert',
        items: [
          { key: 'tls.crt', path: 'tls.crt' },
          { key: 'tls.key', path: 'tls.key' },
        ],
      },
    });
    const f = join(tmp, 'node-cert.config.yaml');
    writeFileSync(f, configOf(r.docs));
    const check = cli(['config', 'check', f]);
    // The files are the pod's; the schema is what is checked here.
    expect(check.stderr).not.toMatch(/clientCertificate/);
  });
});
