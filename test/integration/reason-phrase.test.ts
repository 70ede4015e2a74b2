/**
 * A denial's reason and decision id in the status line (`403 denied: <rule>: <reason> [decision <id>]`), where a
 * HEAD (containerd's tag resolution) can carry it, against a real Distribution upstream and the committed policy
 * bundle; and a hostile external OPA whose deny message would split the response or make Node throw.
 */
import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MANIFEST_ACCEPT, pushImage, type PushedImage } from '../harness/images.js';
import { startProxy, type RunningProxy } from '../harness/proxy.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';

let reg: RunningRegistry;
let img: PushedImage;

interface Answer {
  status: number;
  phrase: string;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/** One request with Node's HTTP/1.1 client, which gives the reason phrase exactly as sent on the status line. */
function call(base: string, path: string, method: 'GET' | 'HEAD'): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(`${base}${path}`, { method, headers: { accept: MANIFEST_ACCEPT } }, (res) => {
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

beforeAll(async () => {
  reg = await startRegistry();
  img = await pushImage(reg.url, 'demo/app', 'blocked', { layers: 1 });
});

afterAll(async () => {
  await reg?.stop();
});

describe('the committed policy: the reason phrase of a denial', () => {
  let px: RunningProxy;
  beforeAll(async () => {
    px = await startProxy({
      upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
      settings: { no_match: 'deny', scopes: [{ name: 'all', images: ['**'], deny_tags: ['blocked'] }] },
    });
  });
  afterAll(async () => {
    await px?.stop();
  });

  it('HEAD and GET of a denied tag: `403 denied: <rule>: <reason> [decision <id>]`, the id as in the header', async () => {
    for (const method of ['HEAD', 'GET'] as const) {
      const r = await call(px.url, `/v2/demo/app/manifests/blocked?ns=${encodeURIComponent(reg.host)}`, method);
      expect(r.status).toBe(403);
      const id = r.headers['portcullis-decision-id'] as string;
      expect(id).toMatch(/^[0-9a-f-]{36}$/);
      expect(r.phrase).toBe(`denied: tag.denied: tag "blocked" is not allowed [decision ${id}]`);
      expect(r.headers['portcullis-reason']).toBe('tag "blocked" is not allowed [tag.denied]');
      if (method === 'GET')
        expect((JSON.parse(r.body) as { errors: Array<{ code: string; message: string }> }).errors[0]).toMatchObject({
          code: 'DENIED',
          message: expect.stringContaining(`[decision ${id}]`) as unknown,
        });
    }
  });

  it('a blob outside any admitted image: `403 denied: not_in_admitted_closure: ...`', async () => {
    for (const method of ['HEAD', 'GET'] as const) {
      const r = await call(px.url, `/v2/demo/app/blobs/${img.layers[0]!.digest}?ns=${encodeURIComponent(reg.host)}`, method);
      expect(r.status).toBe(403);
      expect(r.phrase).toBe('denied: not_in_admitted_closure: not part of an admitted image; pull the image by tag or root digest first');
    }
  });
});

describe('a hostile external OPA', () => {
  let opa: Server;
  let px: RunningProxy;
  const hostile = 'scan limit exceeded (CVE-1, CVE-2, CVE-3, …)\r\nSet-Cookie: x=1\r\n\r\n<html>漢字 🔒 ' + 'z'.repeat(4000);

  beforeAll(async () => {
    opa = createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        res.setHeader('content-type', 'application/json');
        res.end(
          JSON.stringify({
            result: {
              allow: false,
              deny: [
                { rule: 'scan.critical\r\nX: y', message: hostile },
                { rule: 'tag.denied', message: 'also' },
              ],
              warn: [],
              scope: 'all',
              mode: 'enforce',
            },
          }),
        );
      });
    });
    await new Promise<void>((r) => opa.listen(0, '127.0.0.1', () => r()));
    px = await startProxy({
      upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
      extra: { policy: { opaUrl: `http://127.0.0.1:${(opa.address() as AddressInfo).port}/`, opaTimeout: '5s', allowInsecureHttp: true } },
    });
  });
  afterAll(async () => {
    await px?.stop();
    await new Promise<void>((r) => opa.close(() => r()));
  });

  it('still answers a clean 403: one printable ASCII line of at most 200 characters, no injected header', async () => {
    for (const method of ['HEAD', 'GET'] as const) {
      const r = await call(px.url, `/v2/demo/app/manifests/blocked?ns=${encodeURIComponent(reg.host)}`, method);
      expect(r.status).toBe(403);
      const id = r.headers['portcullis-decision-id'] as string;
      expect(r.phrase).toMatch(/^[\x20-\x7e]+$/);
      expect(r.phrase.length).toBeLessThanOrEqual(200);
      expect(r.phrase).toMatch(
        new RegExp(
          `^denied: scan\\.critical X: y: scan limit exceeded \\(CVE-1, CVE-2, CVE-3, \\.\\.\\.\\) Set-Cookie: x=1 <html>\\?\\? \\? z+\\.\\.\\. \\[decision ${id}\\]$`,
        ),
      );
      expect(r.headers['set-cookie']).toBeUndefined();
      expect(r.headers['x']).toBeUndefined();
      if (method === 'GET') expect((JSON.parse(r.body) as { errors: Array<{ code: string; message: string }> }).errors[0]!.message).toContain('漢字 🔒');
    }
  });
});
