/**
 * Client authentication end to end, with real clients and real credentials on loopback: an `htpasswd -B` file,
 * `crane auth login` + `crane pull` and `skopeo --src-creds` through Portcullis's own token flow and through plain
 * Basic; client certificates made with `openssl`; OIDC JWTs signed by a local key published as a JWKS file. For each
 * method the negatives: no credentials, wrong password, expired token, token for another repository, certificate
 * from another CA or expired, JWT with the wrong audience. And the policy's `clients` rules: team A's identity is
 * denied an image team B may pull, by manifest and by blob, with the reason naming the rule. Credentials never reach
 * the logs or the decision log.
 */
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Writable } from 'node:stream';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { pino } from 'pino';
import { Agent, fetch as undiciFetch } from 'undici';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { LOG_REDACT } from '../../src/auth/redact.js';
import { crane, expectOk, podmanLogin, podmanPull, runTool, skopeoCopy } from '../harness/clients.js';
import { MANIFEST_ACCEPT, pushImage, type PushedImage } from '../harness/images.js';
import { makePki, type Pki } from '../harness/pki.js';
import { startProxy, type RunningProxy } from '../harness/proxy.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';

let reg: RunningRegistry;
let tmp: string;
let htpasswd: string;
let teamA: PushedImage;
let teamB: PushedImage;
let shared: PushedImage;
let pki: Pki;

const settings = {
  no_match: 'deny',
  scopes: [
    { name: 'team-a', images: ['*/team-a/**'], clients: { groups: ['team-a'] } },
    { name: 'team-b', images: ['*/team-b/**'], clients: { groups: ['team-b'] } },
    { name: 'shared', images: ['**'] },
  ],
};
const groups = { 'team-a': ['alice'], 'team-b': ['bob'] };
const basic = (u: string, p: string): string => `Basic ${Buffer.from(`${u}:${p}`).toString('base64')}`;

async function errorOf(res: { json(): Promise<unknown> }): Promise<{ code: string; message: string }> {
  const body = (await res.json()) as { errors: Array<{ code: string; message: string }> };
  return body.errors[0]!;
}

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'pc-client-auth-'));
  htpasswd = join(tmp, 'htpasswd');
  expectOk(await runTool('htpasswd', ['-Bbc', htpasswd, 'alice', 'alice-pw']), 'htpasswd');
  expectOk(await runTool('htpasswd', ['-Bb', htpasswd, 'bob', 'bob-pw']), 'htpasswd');
  reg = await startRegistry();
  teamA = await pushImage(reg.url, 'team-a/app', 'v1');
  teamB = await pushImage(reg.url, 'team-b/app', 'v1', { layers: 2 });
  shared = await pushImage(reg.url, 'shared/app', 'v1');
  pki = await makePki(tmp);
}, 60_000);

afterAll(async () => {
  await reg?.stop();
  await rm(tmp, { recursive: true, force: true });
});

describe('the token flow, Portcullis as issuer', () => {
  let px: RunningProxy;
  let skew = 0;
  const logged: string[] = [];
  const decisions: string[] = [];
  let dockerConfig: string;

  beforeAll(async () => {
    const sink = new Writable({
      write(chunk: Buffer, _e, cb) {
        logged.push(chunk.toString());
        cb();
      },
    });
    px = await startProxy({
      upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
      defaultUpstream: 'local',
      settings,
      extra: { auth: { anonymous: false, htpasswd: { file: htpasswd, groups }, token: { ttl: '5m' } } },
      now: () => Date.now() + skew,
      logger: pino({ level: 'debug', redact: LOG_REDACT }, sink),
      observers: [{ onDecision: (e) => decisions.push(JSON.stringify(e.input)) }],
    });
    dockerConfig = await mkdtemp(join(tmp, 'docker-'));
  });
  afterAll(async () => px?.stop());

  const craneEnv = (): NodeJS.ProcessEnv => ({ ...process.env, DOCKER_CONFIG: dockerConfig });

  async function token(user: string, password: string, scope: string): Promise<string> {
    const r = await fetch(`${px.url}/auth/token?service=portcullis&scope=${encodeURIComponent(scope)}`, { headers: { authorization: basic(user, password) } });
    expect(r.status).toBe(200);
    return ((await r.json()) as { token: string }).token;
  }

  test('/v2/ without credentials: 401, a Bearer challenge naming the token endpoint, OCI UNAUTHORIZED', async () => {
    const r = await fetch(`${px.url}/v2/`);
    expect(r.status).toBe(401);
    expect(r.headers.get('www-authenticate')).toBe(`Bearer realm="${px.url}/auth/token",service="portcullis"`);
    expect(await errorOf(r)).toEqual({ code: 'UNAUTHORIZED', message: 'authentication required', detail: null });
    const m = await fetch(`${px.url}/v2/team-a/app/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT } });
    expect(m.status).toBe(401);
    expect(m.headers.get('www-authenticate')).toContain(`scope="repository:team-a/app:pull"`);
  });

  test('the token endpoint: a wrong password and an unknown user get the same 401 with a Basic challenge', async () => {
    const wrong = await fetch(`${px.url}/auth/token?scope=repository:x:pull`, { headers: { authorization: basic('alice', 'nope') } });
    const unknown = await fetch(`${px.url}/auth/token?scope=repository:x:pull`, { headers: { authorization: basic('mallory', 'nope') } });
    expect(wrong.status).toBe(401);
    expect(wrong.headers.get('www-authenticate')).toBe('Basic realm="portcullis"');
    expect(await errorOf(wrong)).toEqual(await errorOf(unknown));
    const none = await fetch(`${px.url}/auth/token?scope=repository:x:pull`);
    expect(none.status).toBe(401);
  });

  test('crane auth login + crane pull of team A image as alice', async () => {
    expectOk(await crane(['auth', 'login', px.host, '-u', 'alice', '-p', 'alice-pw'], { env: craneEnv() }), 'crane auth login');
    const out = join(tmp, 'a.tar');
    const r = await runTool('crane', ['pull', '--insecure', `${px.host}/team-a/app:v1`, out], { env: craneEnv() });
    expectOk(r, 'crane pull');
  });

  test("team A's identity is denied team B's image, the reason naming the identity rule", async () => {
    const r = await runTool('crane', ['pull', '--insecure', `${px.host}/team-b/app:v1`, join(tmp, 'b.tar')], { env: craneEnv() });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('DENIED');
    expect(r.stderr).toContain('client "alice" (groups team-a) via token may not pull');
    expect(r.stderr).toContain('[client.not_allowed]');
  });

  test("a blob of team B's image is not served to alice after bob admitted it", async () => {
    const bobTok = await token('bob', 'bob-pw', `repository:team-b/app:pull`);
    const ok = await fetch(`${px.url}/v2/team-b/app/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT, authorization: `Bearer ${bobTok}` } });
    expect(ok.status).toBe(200);
    const layer = teamB.layers[0]!.digest;
    expect((await fetch(`${px.url}/v2/team-b/app/blobs/${layer}`, { headers: { authorization: `Bearer ${bobTok}` } })).status).toBe(200);
    const aliceTok = await token('alice', 'alice-pw', `repository:team-b/app:pull`);
    const denied = await fetch(`${px.url}/v2/team-b/app/blobs/${layer}`, { headers: { authorization: `Bearer ${aliceTok}` } });
    expect(denied.status).toBe(403);
    const e = await errorOf(denied);
    expect(e.code).toBe('DENIED');
    expect(e.message).toContain('[client.not_allowed]');
  });

  test('tag lists and referrers follow the same identity rules', async () => {
    const aliceTok = await token('alice', 'alice-pw', 'repository:team-b/app:pull');
    const bobTok = await token('bob', 'bob-pw', 'repository:team-b/app:pull');
    const tags = (tok: string) => fetch(`${px.url}/v2/team-b/app/tags/list`, { headers: { authorization: `Bearer ${tok}` } });
    expect((await tags(bobTok)).status).toBe(200);
    const denied = await tags(aliceTok);
    expect(denied.status).toBe(403);
    expect((await errorOf(denied)).message).toContain('[client.not_allowed]');
    const referrers = (tok: string) => fetch(`${px.url}/v2/team-b/app/referrers/${teamB.digest}`, { headers: { authorization: `Bearer ${tok}` } });
    expect((await referrers(bobTok)).status).toBe(200);
    expect((await referrers(aliceTok)).status).toBe(403);
  });

  test('a token for another repository, and an expired token, are refused with 401', async () => {
    const tok = await token('alice', 'alice-pw', `repository:team-a/other:pull`);
    const r = await fetch(`${px.url}/v2/team-a/app/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT, authorization: `Bearer ${tok}` } });
    expect(r.status).toBe(401);
    expect((await errorOf(r)).message).toContain('does not grant pull');
    const good = await token('alice', 'alice-pw', `repository:team-a/app:pull`);
    const url = `${px.url}/v2/team-a/app/manifests/v1`;
    expect((await fetch(url, { headers: { accept: MANIFEST_ACCEPT, authorization: `Bearer ${good}` } })).status).toBe(200);
    skew = 6 * 60_000;
    try {
      const late = await fetch(url, { headers: { accept: MANIFEST_ACCEPT, authorization: `Bearer ${good}` } });
      expect(late.status).toBe(401);
      expect(await errorOf(late)).toMatchObject({ code: 'UNAUTHORIZED', message: 'token has expired' });
    } finally {
      skew = 0;
    }
  });

  test('skopeo --src-creds through the token flow; a wrong password fails', async () => {
    const dest = join(tmp, 'skopeo-a');
    expectOk(await skopeoCopy(`docker://${px.host}/team-a/app:v1`, dest, { srcCreds: 'alice:alice-pw' }), 'skopeo copy');
    expect((await readdir(dest)).length).toBeGreaterThan(2);
    const bad = await skopeoCopy(`docker://${px.host}/team-a/app:v1`, join(tmp, 'skopeo-bad'), { srcCreds: 'alice:wrong' });
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/unauthorized|401/i);
  });

  test('podman login (token flow) succeeds with the right password and fails with a wrong one; podman pull --creds', async () => {
    const authFile = join(tmp, 'podman-auth.json');
    expectOk(await podmanLogin(px.host, 'alice', 'alice-pw', authFile), 'podman login');
    const bad = await podmanLogin(px.host, 'alice', 'wrong', join(tmp, 'podman-bad.json'));
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toContain('invalid username/password');
    expectOk(await podmanPull(`${px.host}/team-a/app:v1`, { creds: 'alice:alice-pw' }), 'podman pull');
  });

  test('no credentials: crane pull fails with 401', async () => {
    const empty = await mkdtemp(join(tmp, 'docker-empty-'));
    const r = await runTool('crane', ['pull', '--insecure', `${px.host}/team-a/app:v1`, join(tmp, 'none.tar')], {
      env: { ...process.env, DOCKER_CONFIG: empty },
    });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('UNAUTHORIZED: authentication required');
  });

  test('credentials never reach the logs or the decision log', () => {
    const all = logged.join('') + decisions.join('');
    expect(logged.length).toBeGreaterThan(5);
    for (const secret of ['alice-pw', 'bob-pw', Buffer.from('alice:alice-pw').toString('base64'), 'eyJ']) expect(all).not.toContain(secret);
    expect(decisions.some((d) => d.includes('"user":"alice"') && d.includes('"method":"token"'))).toBe(true);
  });
});

describe('anonymous pulls allowed, identities optional', () => {
  let px: RunningProxy;
  beforeAll(async () => {
    px = await startProxy({
      upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
      defaultUpstream: 'local',
      settings,
      extra: { auth: { anonymous: true, htpasswd: { file: htpasswd, groups }, token: {} } },
    });
  });
  afterAll(async () => px?.stop());

  test('anonymous clients pull what the policy lets anyone pull; a team image answers 401 so that clients log in', async () => {
    const open = await fetch(`${px.url}/v2/shared/app/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT } });
    expect(open.status).toBe(200);
    expect(open.headers.get('docker-content-digest')).toBe(shared.digest);
    const team = await fetch(`${px.url}/v2/team-a/app/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT } });
    expect(team.status).toBe(401);
    expect(team.headers.get('www-authenticate')).toBe(`Bearer realm="${px.url}/auth/token",service="portcullis",scope="repository:team-a/app:pull"`);
    // crane without credentials gets the shared image, and with alice's the team image.
    const empty = await mkdtemp(join(tmp, 'docker-anon-'));
    expectOk(
      await runTool('crane', ['pull', '--insecure', `${px.host}/shared/app:v1`, join(tmp, 'anon.tar')], { env: { ...process.env, DOCKER_CONFIG: empty } }),
      'crane pull',
    );
    const cfg = await mkdtemp(join(tmp, 'docker-opt-'));
    const env = { ...process.env, DOCKER_CONFIG: cfg };
    expectOk(await crane(['auth', 'login', px.host, '-u', 'alice', '-p', 'alice-pw'], { env }), 'crane auth login');
    expectOk(await runTool('crane', ['pull', '--insecure', `${px.host}/team-a/app:v1`, join(tmp, 'opt-a.tar')], { env }), 'crane pull');
  });

  test('the OAuth2 password grant containerd POSTs to the realm', async () => {
    const post = (body: Record<string, string>) =>
      fetch(`${px.url}/auth/token`, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams(body).toString(),
      });
    const grant = { grant_type: 'password', client_id: 'containerd-client', service: 'portcullis', scope: 'repository:team-a/app:pull' };
    const ok = await post({ ...grant, username: 'alice', password: 'alice-pw' });
    expect(ok.status).toBe(200);
    const tok = ((await ok.json()) as { access_token: string }).access_token;
    expect((await fetch(`${px.url}/v2/team-a/app/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT, authorization: `Bearer ${tok}` } })).status).toBe(200);
    const bad = await post({ ...grant, username: 'alice', password: 'wrong' });
    expect(bad.status).toBe(401);
    expect(await bad.json()).toEqual({ error: 'invalid_grant', error_description: 'invalid username or password' });
  });
});

describe('Basic only (no token endpoint)', () => {
  let px: RunningProxy;
  beforeAll(async () => {
    px = await startProxy({
      upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
      defaultUpstream: 'local',
      settings,
      extra: { auth: { anonymous: false, htpasswd: { file: htpasswd, groups } } },
    });
  });
  afterAll(async () => px?.stop());

  test('a Basic challenge; crane auth login + pull works, a wrong password does not', async () => {
    const r = await fetch(`${px.url}/v2/`);
    expect(r.status).toBe(401);
    expect(r.headers.get('www-authenticate')).toBe('Basic realm="portcullis"');
    const cfg = await mkdtemp(join(tmp, 'docker-basic-'));
    const env = { ...process.env, DOCKER_CONFIG: cfg };
    expectOk(await crane(['auth', 'login', px.host, '-u', 'bob', '-p', 'bob-pw'], { env }), 'crane auth login');
    expectOk(await runTool('crane', ['pull', '--insecure', `${px.host}/team-b/app:v1`, join(tmp, 'basic-b.tar')], { env }), 'crane pull');
    expectOk(await crane(['auth', 'login', px.host, '-u', 'bob', '-p', 'wrong'], { env }), 'crane auth login');
    const bad = await runTool('crane', ['pull', '--insecure', `${px.host}/team-b/app:v1`, join(tmp, 'basic-bad.tar')], { env });
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toContain('invalid username or password');
    expect((await fetch(`${px.url}/auth/token`)).status).toBe(404);
  });
});

describe('client certificates (mTLS)', () => {
  let strict: RunningProxy;
  let optional: RunningProxy;
  const mtls = { user: 'uri', map: [{ uri: 'spiffe://example.org/ns/team-a/**', groups: ['team-a'] }] };

  beforeAll(async () => {
    const tls = { cert: pki.server.cert, key: pki.server.key, clientCA: pki.ca };
    strict = await startProxy({
      upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
      defaultUpstream: 'local',
      settings,
      extra: { tls, auth: { anonymous: false, mtls } },
    });
    optional = await startProxy({
      upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
      defaultUpstream: 'local',
      settings,
      extra: { tls: { ...tls, clientAuth: 'optional' }, auth: { anonymous: false, mtls, htpasswd: { file: htpasswd, groups } } },
    });
  });
  afterAll(async () => {
    await strict?.stop();
    await optional?.stop();
  });

  async function get(px: RunningProxy, path: string, cert?: { cert: string; key: string }, headers: Record<string, string> = {}) {
    const { readFileSync } = await import('node:fs');
    const agent = new Agent({
      connect: { ca: readFileSync(pki.ca), ...(cert ? { cert: readFileSync(cert.cert), key: readFileSync(cert.key) } : {}) },
    });
    try {
      return await undiciFetch(`https://${px.host}${path}`, { dispatcher: agent, headers: { accept: MANIFEST_ACCEPT, ...headers } });
    } finally {
      void agent.close();
    }
  }

  test('a node certificate with a SPIFFE ID pulls its team image, and is denied the other team', async () => {
    const ok = await get(strict, `/v2/team-a/app/manifests/v1`, pki.nodeA);
    expect(ok.status).toBe(200);
    expect((await get(strict, `/v2/team-a/app/blobs/${teamA.layers[0]!.digest}`, pki.nodeA)).status).toBe(200);
    const denied = await get(strict, `/v2/team-b/app/manifests/v1`, pki.nodeA);
    expect(denied.status).toBe(403);
    expect((await errorOf(denied)).message).toContain('client "spiffe://example.org/ns/team-a/sa/node" (groups team-a) via mtls may not pull');
  });

  test('required: an expired certificate, one from another CA, and none are refused in the handshake', async () => {
    for (const cert of [pki.expired, pki.foreign, undefined]) {
      await expect(get(strict, '/v2/', cert)).rejects.toThrow();
    }
  });

  test('optional: a certificate from another CA is a 401, no certificate falls to Basic', async () => {
    const foreign = await get(optional, '/v2/', pki.foreign);
    expect(foreign.status).toBe(401);
    expect(await errorOf(foreign)).toMatchObject({ code: 'UNAUTHORIZED', message: 'client certificate is not trusted' });
    const expired = await get(optional, '/v2/', pki.expired);
    expect(expired.status).toBe(401);
    expect((await get(optional, '/v2/')).status).toBe(401);
    expect((await get(optional, `/v2/team-b/app/manifests/v1`, undefined, { authorization: basic('bob', 'bob-pw') })).status).toBe(200);
    expect((await get(optional, `/v2/team-a/app/manifests/v1`, pki.nodeA)).status).toBe(200);
  });
});

describe('OIDC bearer tokens (JWKS file)', () => {
  let px: RunningProxy;
  let sign: (claims: Record<string, unknown>) => Promise<string>;
  beforeAll(async () => {
    const { privateKey, publicKey } = await generateKeyPair('ES256');
    const jwksFile = join(tmp, 'jwks.json');
    await writeFile(jwksFile, JSON.stringify({ keys: [{ ...(await exportJWK(publicKey)), kid: 'k1', alg: 'ES256' }] }));
    sign = (claims) => new SignJWT(claims).setProtectedHeader({ alg: 'ES256', kid: 'k1' }).setIssuedAt().setExpirationTime('10m').sign(privateKey);
    px = await startProxy({
      upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
      defaultUpstream: 'local',
      settings,
      extra: { auth: { anonymous: false, oidc: [{ issuer: 'https://ci.example', audience: 'portcullis', jwksFile, groupsClaim: 'teams' }] } },
    });
  });
  afterAll(async () => px?.stop());

  test('a CI token with the right audience pulls its team image; the wrong audience is a 401', async () => {
    const url = `${px.url}/v2/team-a/app/manifests/v1`;
    const good = await sign({ iss: 'https://ci.example', aud: 'portcullis', sub: 'repo:acme/api', teams: ['team-a'] });
    expect((await fetch(url, { headers: { accept: MANIFEST_ACCEPT, authorization: `Bearer ${good}` } })).status).toBe(200);
    const wrongAud = await sign({ iss: 'https://ci.example', aud: 'elsewhere', sub: 'repo:acme/api', teams: ['team-a'] });
    const r = await fetch(url, { headers: { accept: MANIFEST_ACCEPT, authorization: `Bearer ${wrongAud}` } });
    expect(r.status).toBe(401);
    expect(r.headers.get('www-authenticate')).toBe('Basic realm="portcullis"');
    expect((await errorOf(r)).message).toBe('token audience is not accepted here');
    // The same token as a Basic password (docker login -u oidc -p <jwt>).
    expect((await fetch(url, { headers: { accept: MANIFEST_ACCEPT, authorization: basic('oidc', good) } })).status).toBe(200);
  });
});

describe('portcullis check --as', () => {
  test('evaluates as the given identity: team A denied team B image naming the rule, team B allowed', async () => {
    const cfg = join(tmp, 'check.yaml');
    await writeFile(
      cfg,
      JSON.stringify({
        dataDir: join(tmp, 'check-data'),
        upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
        policy: { bundleFile: resolve('policies/bundle.tar.gz'), settings },
        decisionLog: { sink: 'none' },
        log: { level: 'warn' },
      }),
    );
    const cli = resolve('dist/cli.js');
    const ref = `${reg.host}/team-b/app:v1`;
    const asAlice = await runTool('node', [cli, 'check', '--config', cfg, '--as', 'alice', '--groups', 'team-a', ref]);
    expect(asAlice.code, asAlice.stderr).toBe(1);
    expect(asAlice.stdout).toContain('client:    alice (groups team-a) via basic');
    expect(asAlice.stdout).toContain('deny  client.not_allowed: client "alice" (groups team-a) via basic may not pull');
    const asBob = await runTool('node', [cli, 'check', '--config', cfg, '--as', 'bob', '--groups', 'team-b', '--json', ref]);
    expect(asBob.code, asBob.stderr).toBe(0);
    const report = JSON.parse(asBob.stdout) as { input: { request: { client: unknown } } };
    expect(report.input.request.client).toMatchObject({ user: 'bob', groups: ['team-b'], method: 'basic' });
    const anonymous = await runTool('node', [cli, 'check', '--config', cfg, ref]);
    expect(anonymous.code).toBe(1);
    expect(anonymous.stdout).toContain('client anonymous via anonymous may not pull');
  });
});

describe('a separate operator surface', () => {
  let px: RunningProxy;
  beforeAll(async () => {
    process.env.PC_TEST_METRICS_TOKEN = 'scrape-secret';
    px = await startProxy({
      upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
      defaultUpstream: 'local',
      settings,
      extra: {
        tls: { cert: pki.server.cert, key: pki.server.key, clientCA: pki.ca },
        auth: { anonymous: false, mtls: { map: [{ uri: 'spiffe://example.org/ns/team-a/**', groups: ['team-a'] }] } },
        operatorListen: '127.0.0.1:0',
        metricsToken: { env: 'PC_TEST_METRICS_TOKEN' },
      },
    });
  });
  afterAll(async () => {
    await px?.stop();
    delete process.env.PC_TEST_METRICS_TOKEN;
  });

  test('probes and the scrape work over plain HTTP while the registry listener requires client certificates', async () => {
    const op = `http://127.0.0.1:${px.proxy.app.operatorAddress!.port}`;
    expect((await fetch(`${op}/healthz`)).status).toBe(200);
    expect((await fetch(`${op}/readyz`)).status).toBe(200);
    expect((await fetch(`${op}/metrics`)).status).toBe(401);
    const m = await fetch(`${op}/metrics`, { headers: { authorization: 'Bearer scrape-secret' } });
    expect(m.status).toBe(200);
    expect(await m.text()).toContain('portcullis_client_auth_total');
    // The operator listener serves nothing of the registry, and the registry listener no metrics or API.
    expect((await fetch(`${op}/v2/`)).status).toBe(404);
    const { readFileSync } = await import('node:fs');
    const agent = new Agent({ connect: { ca: readFileSync(pki.ca), cert: readFileSync(pki.nodeA.cert), key: readFileSync(pki.nodeA.key) } });
    try {
      const viaRegistry = await undiciFetch(`https://${px.host}/metrics`, { dispatcher: agent, headers: { authorization: 'Bearer scrape-secret' } });
      expect(viaRegistry.status).toBe(404);
      expect((await undiciFetch(`https://${px.host}/v2/team-a/app/manifests/v1`, { dispatcher: agent, headers: { accept: MANIFEST_ACCEPT } })).status).toBe(
        200,
      );
    } finally {
      await agent.close();
    }
  });
});
