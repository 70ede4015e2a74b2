/**
 * A node tier chained to a central tier: a node Portcullis whose upstreams are a central Portcullis
 * (`kind: portcullis`), which proxies two real Distribution registries and decides. The node names each registry with
 * `?ns=` (the central has no default upstream, so nothing routes without it), logs in with the registry token flow,
 * passes the central's 403 on unchanged (status, reason phrase, OCI error JSON, decision headers), serves a second pull
 * from its own cache, and re-asks the central by digest every `recheck` (an injected clock), so an image the central
 * starts denying is served no longer than that, and nothing when the central cannot be asked past it.
 */
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { cranePull, expectOk, runTool } from '../harness/clients.js';
import { startEchoServer, startFakeUpstream, type FakeUpstream } from '../harness/fake-upstream.js';
import { MANIFEST_ACCEPT, MT, pushImage, type PushedImage } from '../harness/images.js';
import { makePki } from '../harness/pki.js';
import { ALLOW_ALL, startProxy, type RunningProxy, type TestUpstream } from '../harness/proxy.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';

const REPORT_TOKEN = 'chain-report-token-5be1';
const ZERO = `sha256:${'0'.repeat(64)}`;
const critical = readFileSync('test/fixtures/scan/trivy-critical.json', 'utf8');

let reg: RunningRegistry;
let reg2: RunningRegistry;
let tmp: string;
let central: RunningProxy;
let node: RunningProxy;
let nodeClock = Date.now();
let app: PushedImage;
let other: PushedImage;
let revoked: PushedImage;
const centralDecisions: string[] = [];
let centralStopped = false;

const basic = (u: string, p: string): string => `Basic ${Buffer.from(`${u}:${p}`).toString('base64')}`;

interface Answer {
  status: number;
  phrase: string;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/** One request with Node's HTTP/1.1 client, which gives the reason phrase exactly as sent on the status line. */
function call(base: string, path: string, method: 'GET' | 'HEAD' = 'GET', authorization?: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { accept: MANIFEST_ACCEPT };
    if (authorization) headers.authorization = authorization;
    const req = request(`${base}${path}`, { method, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, phrase: res.statusMessage ?? '', headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }),
      );
    });
    req.on('error', reject);
    req.end();
  });
}

/** The central tier's requests of one kind (blob, manifest…) so far, from its own metrics. */
async function centralRequests(kind: string): Promise<number> {
  const text = await (await fetch(`${central.url}/metrics`)).text();
  let n = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith('portcullis_http_requests_total{') && line.includes(`kind="${kind}"`)) n += Number(line.split(' ').pop());
  }
  return n;
}

/** A pull token of the central tier for the node, as the node's own token flow gets it (decisions are per identity). */
async function nodeToken(repo: string): Promise<string> {
  const r = await fetch(`${central.url}/auth/token?service=portcullis&scope=repository:${repo}:pull`, {
    headers: { authorization: basic('node-a', 'node-pw') },
  });
  expect(r.status).toBe(200);
  const doc = (await r.json()) as { token?: string };
  return `Bearer ${doc.token}`;
}

function pushReport(repo: string, digest: string): Promise<Response> {
  return fetch(`${central.url}/api/v1/reports/${reg.host}/${repo}@${digest}`, {
    method: 'PUT',
    headers: { authorization: `Bearer ${REPORT_TOKEN}`, 'content-type': 'application/json' },
    body: critical
      .replaceAll(`registry.example/demo/app@${ZERO}`, `${reg.host}/${repo}@${digest}`)
      .replace(/"CreatedAt": "[^"]+"/, `"CreatedAt": "${new Date().toISOString()}"`),
  });
}

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'pc-chain-'));
  const htpasswd = join(tmp, 'htpasswd');
  expectOk(await runTool('htpasswd', ['-Bbc', htpasswd, 'node-a', 'node-pw']), 'htpasswd');
  await writeFile(join(tmp, 'node-pw'), 'node-pw\n');
  process.env.PC_CHAIN_REPORT_TOKEN = REPORT_TOKEN;
  [reg, reg2] = await Promise.all([startRegistry(), startRegistry()]);
  app = await pushImage(reg.url, 'demo/app', 'v1', { layers: 2 });
  await pushImage(reg.url, 'demo/app', 'blocked');
  revoked = await pushImage(reg.url, 'demo/revoked', 'v1', { layers: 1 });
  other = await pushImage(reg2.url, 'team/tool', '1.0');
  central = await startProxy({
    // No defaultUpstream: a request that does not name its registry (?ns=) is NAME_UNKNOWN here.
    upstreams: [
      { name: 'one', registry: reg.host, url: reg.url },
      { name: 'two', registry: reg2.host, url: reg2.url },
    ],
    settings: {
      no_match: 'deny',
      scopes: [
        { name: 'revocable', images: ['*/demo/revoked'], scan: { on_missing: 'allow' } },
        { name: 'all', images: ['**'], deny_tags: ['blocked'] },
      ],
    },
    observers: [{ onDecision: (e) => centralDecisions.push(e.admission.decisionId) }],
    extra: {
      auth: { anonymous: false, htpasswd: { file: htpasswd }, token: {} },
      scan: { order: ['reports'], reports: { token: { env: 'PC_CHAIN_REPORT_TOKEN' }, maxSize: '64KiB' } },
    },
  });
  const viaCentral = (name: string, registry: string): TestUpstream => ({
    name,
    kind: 'portcullis',
    registry,
    url: central.url,
    credentials: { username: 'node-a', password: { file: join(tmp, 'node-pw') } },
    recheck: '30s',
  });
  node = await startProxy({
    // crane names a registry by a path prefix only when it looks like a host name: reg2 gets one as an alias.
    upstreams: [viaCentral('one', reg.host), { ...viaCentral('two', reg2.host), aliases: ['tools.registry.test'] }],
    defaultUpstream: 'one',
    settings: ALLOW_ALL,
    now: () => nodeClock,
  });
}, 120_000);

afterAll(async () => {
  await node?.stop();
  if (!centralStopped) await central?.stop();
  await Promise.all([reg?.stop(), reg2?.stop()]);
  await rm(tmp, { recursive: true, force: true });
  delete process.env.PC_CHAIN_REPORT_TOKEN;
});

describe('the central tier decides', () => {
  test('its 403 passes through the node unchanged: status, reason phrase, error JSON and decision headers, HEAD and GET', async () => {
    for (const method of ['HEAD', 'GET'] as const) {
      const path = `/v2/demo/app/manifests/blocked?ns=${encodeURIComponent(reg.host)}`;
      const viaNode = await call(node.url, path, method);
      // The same question to the central as the node asks it (its token). Each is a decision of its own (the
      // central tier does not cache a decision made without a scan report), so the ids differ and nothing else.
      const direct = await call(central.url, path, method, await nodeToken('demo/app'));
      expect(direct.status).toBe(403);
      expect(direct.phrase).toMatch(/^denied: tag\.denied: tag "blocked" is not allowed \[decision [0-9a-f-]{36}\]$/);
      expect(viaNode.status).toBe(403);
      const id = viaNode.headers['portcullis-decision-id'] as string;
      const directId = direct.headers['portcullis-decision-id'] as string;
      // The id the node names is one the central tier decided, not one the node made up.
      expect(centralDecisions).toContain(id);
      const same = (s: string): string => s.replaceAll(id, directId);
      expect(same(viaNode.phrase)).toBe(direct.phrase);
      expect(viaNode.headers['portcullis-reason']).toBe(direct.headers['portcullis-reason']);
      if (method === 'GET') {
        expect(JSON.parse(same(viaNode.body))).toEqual(JSON.parse(direct.body));
        expect((JSON.parse(viaNode.body) as { errors: Array<{ code: string }> }).errors[0]?.code).toBe('DENIED');
      }
    }
  });

  test('crane pulls an allowed image of each registry through the node; a second pull asks the central for no blob', async () => {
    const before = await centralRequests('blob');
    const out1 = join(tmp, 'app1.tar');
    expectOk(await cranePull(`${node.host}/demo/app:v1`, out1), 'crane pull app (cold)');
    expectOk(await cranePull(`${node.host}/tools.registry.test/team/tool:1.0`, join(tmp, 'tool.tar')), 'crane pull tool');
    const cold = await centralRequests('blob');
    expect(cold - before).toBeGreaterThanOrEqual(app.layers.length + 1);
    const out2 = join(tmp, 'app2.tar');
    expectOk(await cranePull(`${node.host}/demo/app:v1`, out2), 'crane pull app (warm)');
    expect(await centralRequests('blob')).toBe(cold);
    expect(readFileSync(out2)).toEqual(readFileSync(out1));
    expect(other.digest).toMatch(/^sha256:/);
  });
});

describe('revocation: the node re-asks the central by digest every recheck (injected clock)', () => {
  const manifest = (ref: string): Promise<Answer> => call(node.url, `/v2/demo/revoked/manifests/${ref}?ns=${encodeURIComponent(reg.host)}`);
  const blob = (d: string): Promise<Answer> => call(node.url, `/v2/demo/revoked/blobs/${d}?ns=${encodeURIComponent(reg.host)}`);

  test('served until recheck after the central starts denying, then refused with the central’s reason', async () => {
    expect((await manifest('v1')).status).toBe(200);
    for (const l of [revoked.config, ...revoked.layers]) expect((await blob(l.digest)).status).toBe(200);
    // A CRITICAL report reaches the central tier: from now on it denies the image.
    expect((await pushReport('demo/revoked', revoked.digest)).status).toBe(201);
    // Within recheck the node serves what the central last allowed, without asking.
    nodeClock += 29_000;
    expect((await manifest(revoked.digest)).status).toBe(200);
    expect((await blob(revoked.layers[0]!.digest)).status).toBe(200);
    // Past it, the central is asked again, and its no is the answer: manifest by digest, by tag, and blobs.
    nodeClock += 2_000;
    const byDigest = await manifest(revoked.digest);
    expect(byDigest.status).toBe(403);
    expect(byDigest.phrase).toMatch(/^denied: scan\.limit: .*CRITICAL/);
    expect(byDigest.body).toContain('[scan.limit]');
    expect((await manifest('v1')).status).toBe(403);
    const layer = await blob(revoked.layers[0]!.digest);
    expect(layer.status).toBe(403);
    expect(layer.phrase).toMatch(/^denied: scan\.limit: /);
  });

  test('the central tier unreachable: served within recheck of its last yes, refused (503) past it: fail closed', async () => {
    expect((await call(node.url, `/v2/demo/app/manifests/v1?ns=${encodeURIComponent(reg.host)}`)).status).toBe(200);
    const blobPath = `/v2/demo/app/blobs/${app.layers[0]!.digest}?ns=${encodeURIComponent(reg.host)}`;
    expect((await call(node.url, blobPath)).status).toBe(200);
    await central.stop();
    centralStopped = true;
    nodeClock += 10_000;
    expect((await call(node.url, blobPath)).status).toBe(200);
    nodeClock += 25_000;
    const refused = await call(node.url, blobPath);
    expect(refused.status).toBe(503);
    expect(refused.body).toContain('UNAVAILABLE');
    const m = await call(node.url, `/v2/demo/app/manifests/${app.digest}?ns=${encodeURIComponent(reg.host)}`);
    expect(m.status).toBe(503);
  });
});

describe('a hostile or broken central tier', () => {
  let fake: FakeUpstream;
  let px: RunningProxy;
  let plain: RunningProxy;
  beforeAll(async () => {
    fake = await startFakeUpstream();
    px = await startProxy({ upstreams: [{ name: 'c', kind: 'portcullis', registry: 'registry.test', url: fake.url }], defaultUpstream: 'c' });
    plain = await startProxy({ upstreams: [{ name: 'r', registry: 'registry.test', url: fake.url }], defaultUpstream: 'r' });
  });
  afterAll(async () => {
    await px?.stop();
    await plain?.stop();
    await fake?.stop();
  });

  test('a manifest that does not hash to its digest is refused (502), whatever the central says', async () => {
    const bytes = Buffer.from(
      JSON.stringify({ schemaVersion: 2, mediaType: MT.ociManifest, config: { mediaType: MT.ociConfig, digest: ZERO, size: 2 }, layers: [] }),
    );
    const d = fake.addManifest('x/y', 'v1', bytes, MT.ociManifest);
    fake.setFault({ pathRegex: /\/manifests\// }, { kind: 'wrong-bytes' });
    const r = await call(px.url, `/v2/x/y/manifests/${d}`);
    expect(r.status).toBe(502);
    expect(r.body).toContain('refused');
    fake.clearFaults();
  });

  test('a 403 from a registry that is not a Portcullis stays an upstream error; from a Portcullis it is a denial', async () => {
    fake.setFault({ pathRegex: /\/manifests\// }, { kind: 'status', status: 403 });
    const fromRegistry = await call(plain.url, '/v2/x/y/manifests/v1');
    expect(fromRegistry.status).toBe(502);
    expect(fromRegistry.body).toContain('check the upstream credentials');
    const fromCentral = await call(px.url, '/v2/x/y/manifests/v1');
    expect(fromCentral.status).toBe(403);
    expect((JSON.parse(fromCentral.body) as { errors: Array<{ code: string }> }).errors[0]?.code).toBe('DENIED');
    // It named the registry the way a central Portcullis routes: ?ns=.
    expect(fake.requests().some((r) => r.path.includes('?ns=registry.test'))).toBe(true);
    fake.clearFaults();
  });

  test('a denial with a huge body or no JSON: still a 403, the message bounded, the phrase passed on', async () => {
    const huge = Buffer.from(JSON.stringify({ errors: [{ code: 'DENIED', message: 'x'.repeat(2 * 1024 * 1024), detail: null }] }));
    fake.setFault({ pathRegex: /\/manifests\// }, { kind: 'status', status: 403, body: huge });
    const r = await call(px.url, '/v2/x/y/manifests/v1');
    expect(r.status).toBe(403);
    expect(r.body.length).toBeLessThan(8 * 1024);
    fake.clearFaults();
    fake.setFault({ pathRegex: /\/manifests\// }, { kind: 'status', status: 403, body: '<html>no</html>' });
    const plain = await call(px.url, '/v2/x/y/manifests/v1');
    expect(plain.status).toBe(403);
    const err = (JSON.parse(plain.body) as { errors: Array<{ code: string; message: string }> }).errors[0]!;
    expect(err.code).toBe('DENIED');
    expect(err.message).toContain('denied registry.test/x/y:v1 by the central tier "c"');
    fake.clearFaults();
  });

  test('the central tier’s credentials go to its origin only: a blob it redirects elsewhere is fetched without them', async () => {
    const central = await startFakeUpstream({ requireBasic: { user: 'node-a', pass: 'node-pw' } });
    const layer = Buffer.from('layer bytes of the chained image');
    const layerDigest = central.addBlob('x/z', layer);
    const cfg = Buffer.from('{}');
    const cfgDigest = central.addBlob('x/z', cfg);
    const m = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MT.ociManifest,
        config: { mediaType: MT.ociConfig, digest: cfgDigest, size: cfg.length },
        layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: layerDigest, size: layer.length }],
      }),
    );
    central.addManifest('x/z', 'v1', m, MT.ociManifest);
    const cdn = await startEchoServer({ body: layer });
    central.setFault({ pathRegex: /\/blobs\// }, { kind: 'redirect', to: `${cdn.url}/blob` });
    await writeFile(join(tmp, 'fake-pw'), 'node-pw\n');
    const chained = await startProxy({
      upstreams: [
        {
          name: 'c',
          kind: 'portcullis',
          registry: 'registry.test',
          url: central.url,
          credentials: { username: 'node-a', password: { file: join(tmp, 'fake-pw') } },
        },
      ],
      defaultUpstream: 'c',
    });
    try {
      expect((await call(chained.url, '/v2/x/z/manifests/v1')).status).toBe(200);
      const b = await call(chained.url, `/v2/x/z/blobs/${layerDigest}`);
      expect(b.status).toBe(200);
      expect(b.body).toBe(layer.toString());
      expect(central.requests().some((r) => typeof r.headers.authorization === 'string')).toBe(true);
      expect(cdn.requests().length).toBeGreaterThan(0);
      expect(cdn.requests().every((r) => r.headers.authorization === undefined)).toBe(true);
    } finally {
      await chained.stop();
      await cdn.stop();
      await central.stop();
    }
  });
});

describe('the node’s identity on the central tier by client certificate (mTLS)', () => {
  let pkiDir: string;
  let strict: RunningProxy;
  const nodes: RunningProxy[] = [];
  beforeAll(async () => {
    pkiDir = await mkdtemp(join(tmpdir(), 'pc-chain-pki-'));
    const pki = await makePki(pkiDir);
    strict = await startProxy({
      upstreams: [{ name: 'one', registry: reg.host, url: reg.url }],
      settings: { no_match: 'deny', scopes: [{ name: 'nodes', images: ['**'], clients: { groups: ['nodes'] } }] },
      extra: {
        tls: { cert: pki.server.cert, key: pki.server.key, clientCA: pki.ca },
        auth: { anonymous: false, mtls: { user: 'uri', map: [{ uri: 'spiffe://example.org/ns/team-a/**', groups: ['nodes'] }] } },
      },
    });
    const https = strict.url.replace('http:', 'https:');
    for (const clientCertificate of [pki.nodeA, undefined]) {
      nodes.push(
        await startProxy({
          upstreams: [{ name: 'one', kind: 'portcullis', registry: reg.host, url: https, ca: pki.ca, ...(clientCertificate ? { clientCertificate } : {}) }],
          defaultUpstream: 'one',
        }),
      );
    }
  }, 60_000);
  afterAll(async () => {
    for (const n of nodes) await n.stop();
    await strict?.stop();
    await rm(pkiDir, { recursive: true, force: true });
  });

  test('with its certificate the node pulls; without one the central tier refuses it at the handshake', async () => {
    const [withCert, without] = nodes;
    const ok = await call(withCert!.url, '/v2/demo/app/manifests/v1');
    expect(ok.status).toBe(200);
    expect((await call(withCert!.url, `/v2/demo/app/blobs/${app.layers[0]!.digest}`)).status).toBe(200);
    const refused = await call(without!.url, '/v2/demo/app/manifests/v1');
    expect(refused.status).toBeGreaterThanOrEqual(500);
  });
});
