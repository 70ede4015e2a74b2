/**
 * Identities of the scan capability: CI pushes reports with a token scoped to the repositories it builds (a push or
 * read for another repository is 403, listing is refused), while the original single token keeps working for
 * every repository. Real components: CNCF Distribution on loopback, the in-process proxy.
 */
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { pushImage, type PushedImage } from '../harness/images.js';
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
  return clean.replaceAll(`registry.example/demo/app@${ZERO}`, `${reg.host}/${repo}@${digest}`).replace(/"CreatedAt": "[^"]+"/, `"CreatedAt": "${new Date().toISOString()}"`);
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
    const got = await fetch(`${px.url}/api/v1/reports/${reg.host}/acme/payments/api@${payments.digest}`, { headers: { authorization: 'Bearer payments-ci-token' } });
    expect(got.status).toBe(200);
  });

  test('a push or read for another repository is 403, and nothing is stored', async () => {
    const r = await put('acme/web/site', web.digest, 'payments-ci-token');
    expect(r.status).toBe(403);
    expect(((await r.json()) as { errors: Array<{ code: string; message: string }> }).errors[0]).toMatchObject({ code: 'DENIED', message: `this token may not push reports for ${reg.host}/acme/web/site` });
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
