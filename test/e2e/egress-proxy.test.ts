/**
 * Upstreams behind an egress proxy (`upstreams[].proxy`): a real Distribution upstream reachable only through a real
 * HTTP CONNECT proxy (Debian's tinyproxy), and skopeo pulling through Portcullis. The proxy's log shows the tunnels;
 * a Portcullis pointed at a dead proxy proves there is no direct path around it.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectOk, skopeoCopy } from '../harness/clients.js';
import { pushImage } from '../harness/images.js';
import { startProxy, type RunningProxy } from '../harness/proxy.js';
import { freePort, startRegistry, type RunningRegistry } from '../harness/registry.js';
import { startTinyproxy, type RunningTinyproxy } from '../harness/tinyproxy.js';

const ALIAS = 'upstream.egress';
let reg: RunningRegistry;
let tp: RunningTinyproxy;
let tmp: string;

beforeAll(async () => {
  tmp = await mkdtemp(path.join(tmpdir(), 'pc-egress-'));
  reg = await startRegistry();
  await pushImage(reg.url, 'egress/app', 'v1', { layers: 2, layerSizeMiB: 2 });
  tp = await startTinyproxy();
}, 60_000);

afterAll(async () => {
  await tp?.stop();
  await reg?.stop();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

describe('an upstream behind an egress proxy', () => {
  it('pulls manifests and blobs through CONNECT tunnels', async () => {
    const proxy: RunningProxy = await startProxy({ upstreams: [{ name: 'corp', registry: reg.host, url: reg.url, aliases: [ALIAS], proxy: tp.url }] });
    try {
      // skopeo checks every blob against its digest.
      expectOk(await skopeoCopy(`docker://${proxy.host}/${ALIAS}/egress/app:v1`, path.join(tmp, 'out')), 'skopeo copy through an egress proxy');
      const tunnels = tp.connects();
      expect(tunnels.length).toBeGreaterThan(0);
      expect(new Set(tunnels)).toEqual(new Set([reg.host]));
    } finally {
      await proxy.stop();
    }
  }, 120_000);

  it('HTTP_PROXY from the environment applies to upstreams without `proxy`, and NO_PROXY exempts a host', async () => {
    const withEnv = async (env: Record<string, string>): Promise<RunningProxy> => {
      // The agent reads the environment once, when the proxy starts; skopeo (a child process) must not inherit it.
      const saved = { ...process.env };
      Object.assign(process.env, env);
      try {
        return await startProxy({ upstreams: [{ name: 'corp', registry: reg.host, url: reg.url, aliases: [ALIAS] }] });
      } finally {
        for (const k of Object.keys(env)) if (saved[k] === undefined) delete process.env[k];
        Object.assign(process.env, saved);
      }
    };
    const proxied = await withEnv({ HTTP_PROXY: tp.url, NO_PROXY: '' });
    try {
      const before = tp.connects().length;
      expectOk(await skopeoCopy(`docker://${proxied.host}/${ALIAS}/egress/app:v1`, path.join(tmp, 'out-env')), 'skopeo copy, proxy from the environment');
      expect(tp.connects().length).toBeGreaterThan(before);
    } finally {
      await proxied.stop();
    }
    const exempt = await withEnv({ HTTP_PROXY: tp.url, NO_PROXY: '127.0.0.1' });
    try {
      const before = tp.connects().length;
      expectOk(await skopeoCopy(`docker://${exempt.host}/${ALIAS}/egress/app:v1`, path.join(tmp, 'out-noproxy')), 'skopeo copy, NO_PROXY');
      expect(tp.connects().length).toBe(before);
    } finally {
      await exempt.stop();
    }
  }, 120_000);

  it('with the egress proxy down, the pull fails with 503: nothing goes around it', async () => {
    const dead = `http://127.0.0.1:${await freePort()}`;
    const proxy = await startProxy({ upstreams: [{ name: 'corp', registry: reg.host, url: reg.url, aliases: [ALIAS], proxy: dead, retries: 0 }] });
    try {
      const before = reg.requests().length;
      const res = await fetch(`${proxy.url}/v2/${ALIAS}/egress/app/manifests/v1`, { headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } });
      expect(res.status).toBe(503);
      expect(((await res.json()) as { errors: Array<{ code: string; message: string }> }).errors[0]).toMatchObject({
        code: 'UNAVAILABLE',
        message: expect.stringContaining('"corp"') as unknown,
      });
      expect(reg.requests().length).toBe(before);
    } finally {
      await proxy.stop();
    }
  });
});
