/**
 * Identities of the scan capability: CI pushes reports with a token scoped to the repositories it builds (a push or
 * read for another repository is 403, listing is refused), while the original single token keeps working for
 * every repository. The Harbor scanner (test double: no vulnerability database here) pulls through Portcullis with a
 * per-job token instead of an upstream credential: that image's manifest and blobs, nothing else. Real components:
 * CNCF Distribution on loopback, the in-process proxy.
 */
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { createServer, type AddressInfo } from 'node:net';
import { expectOk, runTool } from '../harness/clients.js';
import { MANIFEST_ACCEPT, pushImage, type PushedImage } from '../harness/images.js';
import { startScannerDouble, type ScannerDouble } from '../harness/scanner.js';
import { ALLOW_ALL, startProxy, type RunningProxy } from '../harness/proxy.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';

const ZERO = `sha256:${'0'.repeat(64)}`;
const clean = readFileSync('test/fixtures/scan/trivy-clean.json', 'utf8');

let tmp: string;
let reg: RunningRegistry;
let px: RunningProxy;
let payments: PushedImage;
let web: PushedImage;

function report(repo: string, digest: string): string {
  return clean
    .replaceAll(`registry.example/demo/app@${ZERO}`, `${reg.host}/${repo}@${digest}`)
    .replace(/"CreatedAt": "[^"]+"/, `"CreatedAt": "${new Date().toISOString()}"`);
}

function put(repo: string, digest: string, token: string): Promise<Response> {
  return fetch(`${px.url}/api/v1/reports/${reg.host}/${repo}@${digest}`, {
    method: 'PUT',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: report(repo, digest),
  });
}

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'pc-scan-ids-'));
  await writeFile(join(tmp, 'ci-payments'), 'payments-ci-token\n');
  await writeFile(join(tmp, 'ci-all'), 'all-repos-token\n');
  reg = await startRegistry();
  payments = await pushImage(reg.url, 'acme/payments/api', 'v1');
  web = await pushImage(reg.url, 'acme/web/site', 'v1');
  px = await startProxy({
    upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
    defaultUpstream: 'local',
    settings: ALLOW_ALL,
    extra: {
      scan: {
        reports: {
          token: { file: join(tmp, 'ci-all') },
          tokens: [{ token: { file: join(tmp, 'ci-payments') }, repositories: ['*/acme/payments/**'] }],
        },
      },
    },
  });
}, 60_000);

afterAll(async () => {
  await px?.stop();
  await reg?.stop();
  await rm(tmp, { recursive: true, force: true });
});

describe('report tokens scoped to repositories', () => {
  test('a scoped token pushes and reads reports for its repositories', async () => {
    const r = await put('acme/payments/api', payments.digest, 'payments-ci-token');
    expect(r.status).toBe(201);
    const got = await fetch(`${px.url}/api/v1/reports/${reg.host}/acme/payments/api@${payments.digest}`, {
      headers: { authorization: 'Bearer payments-ci-token' },
    });
    expect(got.status).toBe(200);
  });

  test('a push or read for another repository is 403, and nothing is stored', async () => {
    const r = await put('acme/web/site', web.digest, 'payments-ci-token');
    expect(r.status).toBe(403);
    expect(((await r.json()) as { errors: Array<{ code: string; message: string }> }).errors[0]).toMatchObject({
      code: 'DENIED',
      message: `this token may not push reports for ${reg.host}/acme/web/site`,
    });
    const read = await fetch(`${px.url}/api/v1/reports/${reg.host}/acme/web/site@${web.digest}`, { headers: { authorization: 'Bearer payments-ci-token' } });
    expect(read.status).toBe(403);
    const asAll = await fetch(`${px.url}/api/v1/reports/${reg.host}/acme/web/site@${web.digest}`, { headers: { authorization: 'Bearer all-repos-token' } });
    expect(asAll.status).toBe(404);
  });

  test('a scoped token cannot list every repository’s reports; the single token still can and pushes anywhere', async () => {
    expect((await fetch(`${px.url}/api/v1/reports`, { headers: { authorization: 'Bearer payments-ci-token' } })).status).toBe(403);
    expect((await put('acme/web/site', web.digest, 'all-repos-token')).status).toBe(201);
    const list = await fetch(`${px.url}/api/v1/reports`, { headers: { authorization: 'Bearer all-repos-token' } });
    expect(list.status).toBe(200);
    expect(((await list.json()) as { total: number }).total).toBe(2);
  });

  test('a wrong token is 401', async () => {
    expect((await put('acme/payments/api', payments.digest, 'payments-ci-tokem')).status).toBe(401);
  });
});

describe('the scanner pulls through Portcullis with a per-job token', () => {
  let sp: RunningProxy;
  let scanner: ScannerDouble;
  let scanme: PushedImage;
  let other: PushedImage;
  const basic = `Basic ${Buffer.from('alice:alice-pw').toString('base64')}`;

  beforeAll(async () => {
    const htpasswd = join(tmp, 'htpasswd');
    expectOk(await runTool('htpasswd', ['-Bbc', htpasswd, 'alice', 'alice-pw']), 'htpasswd');
    scanme = await pushImage(reg.url, 'demo/scanme', 'v1', { layers: 2 });
    other = await pushImage(reg.url, 'demo/other', 'v1');
    scanner = await startScannerDouble({ delayMs: 100, refreshAfter: 1, pullBlobs: true });
    // The scanner must be told Portcullis's URL before it listens: pick the port first.
    const port = await new Promise<number>((res) => {
      const s = createServer().listen(0, '127.0.0.1', () => {
        const p = (s.address() as AddressInfo).port;
        s.close(() => res(p));
      });
    });
    sp = await startProxy({
      upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
      defaultUpstream: 'local',
      settings: { no_match: 'deny', scopes: [{ name: 'scanned', images: ['**'], scan: { on_pending: 'wait', wait_seconds: 20 } }] },
      extra: {
        listen: `127.0.0.1:${port}`,
        auth: { anonymous: false, htpasswd: { file: htpasswd }, token: {} },
        scan: { order: ['scanner'], scanner: { url: scanner.url, pollInterval: '200ms', pullThrough: { url: `http://127.0.0.1:${port}` } } },
      },
    });
  }, 60_000);

  afterAll(async () => {
    await sp?.stop();
    await scanner?.stop();
  });

  test('a pull waits for the scan; the scanner got Portcullis and a job token, no upstream credential, and its pull worked', async () => {
    const r = await fetch(`${sp.url}/v2/demo/scanme/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT, authorization: basic } });
    expect(r.status).toBe(200);
    await r.arrayBuffer();
    const job = scanner.scans.find((s) => s.artifact.digest === scanme.digest);
    expect(job?.registry.url).toBe(sp.url);
    expect(job?.artifact.repository).toBe(`${reg.host}/demo/scanme`);
    expect(job?.registry.authorization).toMatch(/^Bearer ey/);
  });

  test('the job token pulls that manifest and its blobs, and nothing else', async () => {
    const job = scanner.scans.find((s) => s.artifact.digest === scanme.digest)!;
    const auth = { authorization: job.registry.authorization! };
    const repo = `${sp.url}/v2/${reg.host}/demo/scanme`;
    expect((await fetch(`${repo}/manifests/${scanme.digest}`, { headers: { ...auth, accept: MANIFEST_ACCEPT } })).status).toBe(200);
    expect((await fetch(`${repo}/blobs/${scanme.layers[0]!.digest}`, { headers: auth })).status).toBe(200);
    // By tag, another digest, a blob of another image, the tag list: 403. Another repository: outside its scope, 401.
    expect((await fetch(`${repo}/manifests/v1`, { headers: { ...auth, accept: MANIFEST_ACCEPT } })).status).toBe(403);
    expect((await fetch(`${repo}/manifests/${other.digest}`, { headers: { ...auth, accept: MANIFEST_ACCEPT } })).status).toBe(403);
    expect((await fetch(`${repo}/blobs/${other.layers[0]!.digest}`, { headers: auth })).status).toBe(403);
    expect((await fetch(`${repo}/tags/list`, { headers: auth })).status).toBe(403);
    expect((await fetch(`${sp.url}/v2/${reg.host}/demo/other/manifests/${other.digest}`, { headers: { ...auth, accept: MANIFEST_ACCEPT } })).status).toBe(401);
  });

  test('a client cannot mint a scanner token: the token endpoint gives its own identity, which the policy then decides on', async () => {
    const t = await fetch(`${sp.url}/auth/token?service=portcullis&scope=repository:demo/other:pull`, { headers: { authorization: basic } });
    const { token } = (await t.json()) as { token: string };
    const claims = JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString('utf8')) as { method: string; scan?: string };
    expect(claims.method).toBe('basic');
    expect(claims.scan).toBeUndefined();
  });
});

describe('scanner pull-through on a listener without client authentication', () => {
  let ap: RunningProxy;
  beforeAll(async () => {
    await pushImage(reg.url, 'demo/anon', 'v1');
    ap = await startProxy({
      upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
      defaultUpstream: 'local',
      settings: ALLOW_ALL,
      extra: { scan: { order: ['scanner'], scanner: { url: 'http://127.0.0.1:9', pullThrough: { url: 'http://127.0.0.1:9' } } }, policy: {} },
    });
  }, 60_000);
  afterAll(async () => ap?.stop());

  test('credentials a client sends anyway are not read (as before), a forged scanner token is', async () => {
    const h = { accept: MANIFEST_ACCEPT, authorization: `Basic ${Buffer.from('someone:stale').toString('base64')}` };
    expect((await fetch(`${ap.url}/v2/`, { headers: h })).status).toBe(200);
    const enc = (o: unknown): string => Buffer.from(JSON.stringify(o)).toString('base64url');
    const forged = `${enc({ alg: 'ES256', typ: 'JWT' })}.${enc({ iss: 'portcullis-scanner', sub: 'portcullis-scanner', method: 'scanner', scan: ZERO, access: [{ type: 'repository', name: 'demo/anon', actions: ['pull'] }], exp: 4102444800 })}.${'A'.repeat(86)}`;
    expect((await fetch(`${ap.url}/v2/demo/anon/manifests/${ZERO}`, { headers: { accept: MANIFEST_ACCEPT, authorization: `Bearer ${forged}` } })).status).toBe(
      401,
    );
  });
});
