/**
 * The decision explorer wired into the proxy (server/bootstrap.ts, app.ts), against a real Distribution upstream:
 * it is fed by the gate's decisions, read back from the decision-log file after a restart, served only on the
 * operator listener when there is one, off with `ui.enabled: false`, and an open live-update stream does not hold
 * a shutdown for the grace period.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { MANIFEST_ACCEPT, pushImage } from '../harness/images.js';
import { startProxy, type RunningProxy } from '../harness/proxy.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';

const ADMIN = 'ui-int-admin-7e0f';
process.env.PC_UI_INT_ADMIN = ADMIN;
const auth = { authorization: `Basic ${Buffer.from(`ops:${ADMIN}`).toString('base64')}` };
const settings = { no_match: 'deny', scopes: [{ name: 'no v2', images: ['**'], deny_tags: ['v2'] }] };
const scan = { scan: { admin: { token: { env: 'PC_UI_INT_ADMIN' } } } };

let reg: RunningRegistry;
let dir: string;

beforeAll(async () => {
  reg = await startRegistry();
  await pushImage(reg.url, 'demo/app', 'v1');
  await pushImage(reg.url, 'demo/app', 'v2');
  dir = await mkdtemp(join(tmpdir(), 'pc-ui-int-'));
});

afterAll(async () => {
  await reg?.stop();
  await rm(dir, { recursive: true, force: true });
});

function upstreams(): Array<{ name: string; registry: string; url: string }> {
  return [{ name: 'local', registry: reg.host, url: reg.url }];
}

async function pull(px: RunningProxy, tag: string): Promise<{ status: number; id: string }> {
  const r = await fetch(`${px.url}/v2/${reg.host}/demo/app/manifests/${tag}`, { headers: { accept: MANIFEST_ACCEPT } });
  await r.arrayBuffer();
  return { status: r.status, id: r.headers.get('portcullis-decision-id') ?? '' };
}

describe('decision explorer in the proxy', () => {
  test('decisions reach the page, and come back from the decision-log file after a restart', async () => {
    const dataDir = join(dir, 'data');
    const extra = { ...scan, decisionLog: { sink: 'file', file: join(dir, 'decisions.log') } };
    let px = await startProxy({ upstreams: upstreams(), settings, extra, dataDir });
    let denied: string;
    try {
      const d = await pull(px, 'v2');
      expect(d.status).toBe(403);
      denied = d.id;
      const page = await (await fetch(`${px.url}/ui/?outcome=deny`, { headers: auth })).text();
      expect(page).toContain(`data-id="${denied}"`);
      expect(page).toContain('tag.denied');
    } finally {
      await px.stop({ keepData: true });
    }
    px = await startProxy({ upstreams: upstreams(), settings, extra, dataDir });
    try {
      const r = await fetch(`${px.url}/ui/decision/${denied}`, { headers: auth });
      expect(r.status).toBe(200);
      const page = await r.text();
      expect(page).toContain('the decision-log file (read at start)');
      expect(page).toContain('tag.denied');
      expect(page).toContain(`portcullis check ${reg.host}/demo/app:v2`);
    } finally {
      await px.stop();
    }
  });

  test('with operatorListen, /ui is on the operator listener only', async () => {
    const px = await startProxy({ upstreams: upstreams(), settings, extra: { ...scan, operatorListen: '127.0.0.1:0' } });
    try {
      const op = `http://127.0.0.1:${px.proxy.app.operatorAddress!.port}`;
      expect((await fetch(`${px.url}/ui/`, { headers: auth })).status).toBe(404);
      expect((await fetch(`${op}/ui/`)).status).toBe(401);
      expect((await fetch(`${op}/ui/`, { headers: auth })).status).toBe(200);
      expect((await fetch(`${op}/ui/health`, { headers: auth })).status).toBe(200);
    } finally {
      await px.stop();
    }
  });

  test('ui.enabled: false turns it off, even with the admin token', async () => {
    const px = await startProxy({ upstreams: upstreams(), settings, extra: { ...scan, ui: { enabled: false } } });
    try {
      expect((await fetch(`${px.url}/ui/`, { headers: auth })).status).toBe(404);
      expect((await pull(px, 'v1')).status).toBe(200);
    } finally {
      await px.stop();
    }
  });

  test('an open live-update stream does not hold a shutdown for the grace period', async () => {
    // A grace period longer than this test's timeout: a stream left open would fail the test.
    const px = await startProxy({ upstreams: upstreams(), settings, extra: { ...scan, shutdownGrace: '10m' } });
    const ac = new AbortController();
    const stream = await fetch(`${px.url}/ui/events`, { headers: auth, signal: ac.signal });
    expect(stream.status).toBe(200);
    const reader = stream.body!.getReader();
    expect(new TextDecoder().decode((await reader.read()).value as Uint8Array)).toContain('retry:');
    await px.stop();
    // The server ended the stream.
    let done = false;
    for (let i = 0; i < 5 && !done; i++) done = (await reader.read()).done;
    expect(done).toBe(true);
  }, 60_000);
});
