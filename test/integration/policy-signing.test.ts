/**
 * Policy bundles that cannot be swapped: signatures made by the real `opa build --signing-key … --bundle` and
 * verified with `policy.signing` (a missing, tampered or foreign-key signature is rejected and the last good
 * bundle stays, with the reason logged and counted), OPA itself agreeing on every verdict (`opa build -b …
 * --verification-key`), and size caps on what a bundle server or an external OPA may send.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { repackWithRevision } from '../harness/bundles.js';
import { requireTool, runTool } from '../harness/clients.js';
import { MANIFEST_ACCEPT, pushImage } from '../harness/images.js';
import { startProxy } from '../harness/proxy.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';

let dir: string;
let reg: RunningRegistry;
const settings = { no_match: 'deny', scopes: [{ name: 'all', images: ['**'] }] };

function openssl(args: string[]): void {
  const r = spawnSync('openssl', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`openssl ${args.join(' ')}: ${r.stderr}`);
}

/** `opa build -t wasm --bundle` of the real policy sources plus a data.json, signed with `key` when given. */
async function build(out: string, revision: string, key?: string, extra: string[] = []): Promise<string> {
  const path = join(dir, out);
  const r = await runTool(requireTool('opa'), [
    'build',
    '-t',
    'wasm',
    '-e',
    'portcullis/decision',
    '--capabilities',
    resolve('policies/capabilities.json'),
    '--bundle',
    join(dir, 'src'),
    '-r',
    revision,
    '-o',
    path,
    ...(key ? ['--signing-key', key] : []),
    ...extra,
  ]);
  expect(r.code, r.stderr).toBe(0);
  return path;
}

/** Whether OPA's own verifier accepts the bundle with this public key. */
async function opaAccepts(bundle: string, pub: string): Promise<boolean> {
  const r = await runTool(requireTool('opa'), ['build', '-b', bundle, '--verification-key', pub, '-o', join(dir, `verify-${Date.now()}.tar.gz`)]);
  return r.code === 0;
}

const B: Record<string, string> = {};

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'pc-signing-'));
  openssl(['genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048', '-out', join(dir, 'key.pem')]);
  openssl(['pkey', '-in', join(dir, 'key.pem'), '-pubout', '-out', join(dir, 'pub.pem')]);
  openssl(['genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048', '-out', join(dir, 'other.pem')]);
  openssl(['pkey', '-in', join(dir, 'other.pem'), '-pubout', '-out', join(dir, 'other-pub.pem')]);
  openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', join(dir, 'ec.pem')]);
  openssl(['pkey', '-in', join(dir, 'ec.pem'), '-pubout', '-out', join(dir, 'ec-pub.pem')]);
  await mkdir(join(dir, 'src'));
  for (const f of await readdir('policies/portcullis')) {
    if (f.endsWith('.rego') && !f.endsWith('_test.rego')) await copyFile(join('policies/portcullis', f), join(dir, 'src', f));
  }
  // Numbers as written, unsorted keys, an escape Go writes differently from JSON.stringify: the signature is over
  // OPA's canonical form, which the verifier must reproduce exactly.
  await writeFile(join(dir, 'src', 'data.json'), '{ "extra": { "z": 1.50, "a": [1e3, -0, "x\\u2028y", {"k": null}], "b": true } }\n');
  B.v1 = await build('signed-v1.tar.gz', 'signed-1', join(dir, 'key.pem'));
  B.v2 = await build('signed-v2.tar.gz', 'signed-2', join(dir, 'key.pem'));
  B.unsigned = await build('unsigned.tar.gz', 'unsigned-1');
  B.otherKey = await build('other-key.tar.gz', 'other-1', join(dir, 'other.pem'));
  B.ec = await build('ec.tar.gz', 'ec-1', join(dir, 'ec.pem'), ['--signing-alg', 'ES256']);
  await writeFile(join(dir, 'claims.json'), JSON.stringify({ scope: 'prod' }));
  B.scoped = await build('scoped.tar.gz', 'scoped-1', join(dir, 'key.pem'), ['--claims-file', join(dir, 'claims.json')]);
  // The signed bundle with one data value changed and the signature left as it was.
  B.tampered = join(dir, 'tampered.tar.gz');
  await repackWithRevision(B.v1, B.tampered, 'signed-1', { extra: { z: 1.5, a: [1000, 0, 'x\u2028y', { k: null }], b: false } });
  reg = await startRegistry();
  await pushImage(reg.url, 'demo/app', 'v1');
});
afterAll(async () => {
  await reg?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const signing = (extra: Record<string, unknown> = {}): Record<string, unknown> => ({ publicKey: join(dir, 'pub.pem'), ...extra });

describe('bundle signatures (policy.signing)', () => {
  test('OPA itself agrees: signed bundles verify, tampered, unsigned and foreign-key ones do not', async () => {
    const pub = join(dir, 'pub.pem');
    expect(await opaAccepts(B.v1!, pub)).toBe(true);
    expect(await opaAccepts(B.tampered!, pub)).toBe(false);
    expect(await opaAccepts(B.otherKey!, pub)).toBe(false);
  });

  test('a signed bundle loads and decides; unsigned, tampered and foreign-key replacements are rejected, the last good one stays', async () => {
    const live = join(dir, 'live.tar.gz');
    await copyFile(B.v1!, live);
    const px = await startProxy({
      upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
      settings,
      extra: { policy: { bundleFile: live, signing: signing() } },
    });
    try {
      const policy = px.proxy.policy;
      expect(policy.revision).toBe('signed-1');
      const ok = await fetch(`${px.url}/v2/${reg.host}/demo/app/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT } });
      expect(ok.status).toBe(200);

      for (const [name, reason, message] of [
        ['unsigned', 'signature_missing', /no \/\.signatures\.json/],
        ['tampered', 'signature_mismatch', /\/data\.json: digest mismatch/],
        ['otherKey', 'signature_invalid', /does not verify/],
        ['scoped', 'signature_invalid', /scope "prod"/],
      ] as const) {
        await copyFile(B[name]!, live);
        await policy.poll(true);
        expect(policy.revision, name).toBe('signed-1');
        expect(policy.last, name).toMatchObject({ ok: false, reason });
        expect(policy.last?.error, name).toMatch(message);
        const rejected = await px.proxy.app.metrics.policyBundleRejected.get();
        expect(rejected.values.find((v) => v.labels.reason === reason)?.value, name).toBeGreaterThanOrEqual(1);
      }
      // Still deciding on the last good revision.
      const still = await fetch(`${px.url}/v2/${reg.host}/demo/app/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT } });
      expect(still.status).toBe(200);

      await copyFile(B.v2!, live);
      await policy.poll(true);
      expect(policy.revision).toBe('signed-2');
      expect(policy.last).toMatchObject({ ok: true });
    } finally {
      await px.stop();
    }
  });

  test('a proxy configured for signatures does not start on an unsigned bundle', async () => {
    await expect(
      startProxy({
        upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
        settings,
        extra: { policy: { bundleFile: B.unsigned, signing: signing() } },
      }),
    ).rejects.toThrow(/no policy could be loaded.*signatures\.json/);
  });

  test('the configured key id, algorithm and scope must match the signature', async () => {
    const ec = await startProxy({
      upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
      settings,
      extra: { policy: { bundleFile: B.ec, signing: { publicKey: join(dir, 'ec-pub.pem'), algorithm: 'ES256' } } },
    });
    expect(ec.proxy.policy.revision).toBe('ec-1');
    await ec.stop();
    const scoped = await startProxy({
      upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
      settings,
      extra: { policy: { bundleFile: B.scoped, signing: signing({ scope: 'prod' }) } },
    });
    expect(scoped.proxy.policy.revision).toBe('scoped-1');
    await scoped.stop();
    await expect(
      startProxy({
        upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
        settings,
        extra: { policy: { bundleFile: B.v1, signing: signing({ keyId: 'release' }) } },
      }),
    ).rejects.toThrow(/key id "default", policy\.signing\.keyId is "release"/);
  });
});

function listen(server: Server): Promise<number> {
  return new Promise((r) => server.listen(0, '127.0.0.1', () => r((server.address() as { port: number }).port)));
}

describe('size caps on policy sources', () => {
  test('a bundle server sending without end is cut off at policy.maxBundleSize, not read to the end', async () => {
    const total = 64 * 1024 * 1024;
    let written = 0;
    let served = 0;
    const chunk = Buffer.alloc(64 * 1024, 7);
    const server = createServer((req, res) => {
      served++;
      if (served === 1) {
        // The first poll (at start) gets a real bundle.
        void import('node:fs/promises').then(async (fs) => res.writeHead(200, { etag: '"1"' }).end(await fs.readFile(resolve('policies/bundle.tar.gz'))));
        return;
      }
      res.writeHead(200, { etag: '"2"', 'content-length': String(total) });
      const pump = (): void => {
        while (written < total && !res.destroyed) {
          written += chunk.length;
          if (!res.write(chunk)) return void res.once('drain', pump);
        }
        res.end();
      };
      req.socket.on('close', () => res.destroy());
      pump();
    });
    const port = await listen(server);
    const px = await startProxy({
      upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
      settings,
      extra: { policy: { bundleUrl: `http://127.0.0.1:${port}/b.tar.gz`, allowInsecureHttp: true, maxBundleSize: '1MiB' } },
    });
    try {
      const before = px.proxy.policy.revision;
      await px.proxy.policy.poll();
      expect(px.proxy.policy.last).toMatchObject({ ok: false, reason: 'too_large' });
      expect(px.proxy.policy.revision).toBe(before);
      // Cut off near the cap (plus what the socket buffers held), far from the 64 MiB offered.
      expect(written).toBeLessThan(32 * 1024 * 1024);
    } finally {
      await px.stop();
      server.closeAllConnections();
      server.close();
    }
  });

  test('an external OPA answer larger than 1 MiB is an error (deny), not an allow', async () => {
    const padding = 'p'.repeat(2 * 1024 * 1024);
    const server = createServer((req, res) => {
      req.resume();
      req.on('end', () =>
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ result: { allow: true, deny: [], warn: [], padding } })),
      );
    });
    const port = await listen(server);
    const px = await startProxy({
      upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
      extra: { policy: { opaUrl: `http://127.0.0.1:${port}`, allowInsecureHttp: true } },
    });
    try {
      const r = await fetch(`${px.url}/v2/${reg.host}/demo/app/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT } });
      const body = await r.text();
      expect(r.status, body).toBe(403);
      expect(body).toMatch(/more than 1048576 bytes/);
    } finally {
      await px.stop();
      server.closeAllConnections();
      server.close();
    }
  });
});

describe('impact of a candidate bundle under policy.signing', () => {
  test('POST /api/v1/admin/impact checks the candidate’s signature like a bundle going live, and activates nothing', async () => {
    process.env.PC_SIGNING_ADMIN_TOKEN = 'admin-signing-token';
    const live = join(dir, 'live-impact.tar.gz');
    await copyFile(B.v1!, live);
    const px = await startProxy({
      upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
      settings,
      extra: { policy: { bundleFile: live, signing: signing() }, scan: { admin: { token: { env: 'PC_SIGNING_ADMIN_TOKEN' } } } },
    });
    try {
      const post = (file: string): Promise<Response> =>
        fetch(`${px.url}/api/v1/admin/impact`, {
          method: 'POST',
          headers: { authorization: 'Bearer admin-signing-token', 'content-type': 'application/gzip' },
          body: readFileSync(file),
        });
      for (const [name, reason] of [
        ['unsigned', 'signature_missing'],
        ['otherKey', 'signature_invalid'],
        ['tampered', 'signature_mismatch'],
      ] as const) {
        const res = await post(B[name]!);
        expect(res.status, name).toBe(400);
        expect(((await res.json()) as { errors: Array<{ code: string; detail: unknown }> }).errors[0], name).toMatchObject({
          code: 'BUNDLE_INVALID',
          detail: { reason },
        });
      }
      const ok = await post(B.v2!);
      expect(ok.status).toBe(200);
      expect(await ok.json()).toMatchObject({ active_revision: 'signed-1', candidate_revision: 'signed-2', changed: 0 });
      expect(px.proxy.policy.revision).toBe('signed-1');
    } finally {
      await px.stop();
    }
  });
});
