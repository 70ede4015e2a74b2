/**
 * Chained instances: a node Portcullis whose upstream is a central Portcullis (which proxies a real Distribution)
 * forwards its client's identity in a JWT it signs; the central tier verifies it against the key configured for the
 * node's own authenticated identity, and its `clients` rules then apply to the original client. A header that is
 * unsigned, signed by another key, expired, made for another audience or sent by a client that is not that node is
 * refused (401), never believed and never silently replaced by the node's identity.
 */
import { generateKeyPairSync } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { FORWARDED_IDENTITY_HEADER, ForwardSigner } from '../../src/auth/forwarded.js';
import { expectOk, runTool } from '../harness/clients.js';
import { MANIFEST_ACCEPT, pushImage } from '../harness/images.js';
import { ALLOW_ALL, startProxy, type RunningProxy } from '../harness/proxy.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';

let reg: RunningRegistry;
let tmp: string;
let central: RunningProxy;
let node: RunningProxy;
let nodeKey: string;
let rogueKey: string;
const centralInputs: Array<{ user: string | null; via?: { user: string | null } }> = [];

const basic = (u: string, p: string): string => `Basic ${Buffer.from(`${u}:${p}`).toString('base64')}`;
const NODE = basic('node-a', 'node-pw');

async function writeKey(dir: string, name: string): Promise<{ priv: string; pub: string }> {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const priv = join(dir, `${name}.pem`);
  const pub = join(dir, `${name}.pub.pem`);
  await writeFile(priv, privateKey.export({ format: 'pem', type: 'pkcs8' }));
  await writeFile(pub, publicKey.export({ format: 'pem', type: 'spki' }));
  return { priv, pub };
}

function signer(key: string, o: { audience?: string; now?: () => number } = {}): ForwardSigner {
  return new ForwardSigner({ key, keyId: 'node-a-1', audience: o.audience ?? 'central.test', ttl: 30_000, ...(o.now ? { now: o.now } : {}) });
}

/** A manifest GET on the central tier as the node (Basic node-a), with an optional forwarded-identity header. */
function asNode(repo: string, fwd?: string, authorization = NODE): Promise<Response> {
  const headers: Record<string, string> = { accept: MANIFEST_ACCEPT, authorization };
  if (fwd !== undefined) headers[FORWARDED_IDENTITY_HEADER] = fwd;
  return fetch(`${central.url}/v2/${repo}/manifests/v1`, { headers });
}

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'pc-forwarded-'));
  const htpasswd = join(tmp, 'htpasswd');
  expectOk(await runTool('htpasswd', ['-Bbc', htpasswd, 'alice', 'alice-pw']), 'htpasswd');
  expectOk(await runTool('htpasswd', ['-Bb', htpasswd, 'bob', 'bob-pw']), 'htpasswd');
  expectOk(await runTool('htpasswd', ['-Bb', htpasswd, 'node-a', 'node-pw']), 'htpasswd');
  await writeFile(join(tmp, 'node-pw'), 'node-pw\n');
  const k = await writeKey(tmp, 'node-a');
  const r = await writeKey(tmp, 'rogue');
  nodeKey = k.priv;
  rogueKey = r.priv;
  reg = await startRegistry();
  await pushImage(reg.url, 'team-a/app', 'v1');
  await pushImage(reg.url, 'team-b/app', 'v1');
  const groups = { 'team-a': ['alice'], 'team-b': ['bob'], nodes: ['node-a'] };
  central = await startProxy({
    upstreams: [{ name: 'local', registry: reg.host, url: reg.url }],
    defaultUpstream: 'local',
    settings: {
      no_match: 'deny',
      scopes: [
        // The node itself may pull team B's images (its own pre-pulls); its clients only when they are team B.
        { name: 'team-b', images: ['*/team-b/**'], clients: { groups: ['team-b', 'nodes'] } },
        { name: 'team-a', images: ['*/team-a/**'], clients: { groups: ['team-a', 'nodes'] } },
      ],
    },
    extra: {
      auth: {
        anonymous: false,
        htpasswd: { file: htpasswd, groups },
        token: {},
        forwarded: { audience: 'central.test', trustedKeys: [{ node: 'node-a', publicKey: k.pub }] },
      },
    },
    observers: [{ onDecision: (e) => centralInputs.push(e.input.request.client) }],
  });
  node = await startProxy({
    upstreams: [
      {
        name: 'central',
        registry: reg.host,
        url: central.url,
        credentials: { username: 'node-a', password: { file: join(tmp, 'node-pw') } },
        forwardIdentity: { key: nodeKey, keyId: 'node-a-1', audience: 'central.test' },
      },
    ],
    defaultUpstream: 'central',
    settings: ALLOW_ALL,
    extra: { auth: { anonymous: false, htpasswd: { file: htpasswd, groups } } },
  });
}, 60_000);

afterAll(async () => {
  await node?.stop();
  await central?.stop();
  await reg?.stop();
  await rm(tmp, { recursive: true, force: true });
});

describe('a node forwards its client to the central tier', () => {
  test('alice (team A) through the node is denied team B by the central rule; bob is served; the node itself is not denied', async () => {
    const viaAlice = await fetch(`${node.url}/v2/team-b/app/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT, authorization: basic('alice', 'alice-pw') } });
    expect(viaAlice.ok).toBe(false);
    await viaAlice.arrayBuffer();
    const aliceInput = centralInputs.find((c) => c.user === 'alice');
    expect(aliceInput?.via?.user).toBe('node-a');

    const viaBob = await fetch(`${node.url}/v2/team-b/app/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT, authorization: basic('bob', 'bob-pw') } });
    expect(viaBob.status).toBe(200);
    await viaBob.arrayBuffer();
    expect(centralInputs.find((c) => c.user === 'bob')?.via?.user).toBe('node-a');

    // The node's own identity (no header) passes the same rule: the denial above was alice's, not the node's.
    const own = await asNode('team-b/app');
    expect(own.status).toBe(200);
  });

  test('a valid header names the client; the same client is denied where its team is not allowed', async () => {
    const bob = await signer(nodeKey).sign({ user: 'bob', groups: ['team-b'], method: 'basic' });
    expect((await asNode('team-b/app', bob)).status).toBe(200);
    const alice = await signer(nodeKey).sign({ user: 'alice', groups: ['team-a'], method: 'basic' });
    const denied = await asNode('team-b/app', alice);
    expect(denied.status).toBe(403);
    expect(await denied.text()).toContain('alice');
  });
});

describe('a header the central tier must not believe', () => {
  const bob = { user: 'bob', groups: ['team-b'], method: 'basic' as const };

  test('unsigned (alg none) and garbage headers: 401', async () => {
    const enc = (o: unknown): string => Buffer.from(JSON.stringify(o)).toString('base64url');
    const none = `${enc({ alg: 'none', typ: 'JWT' })}.${enc({ sub: 'bob', groups: ['team-b'], method: 'basic', aud: 'central.test', iat: Math.floor(Date.now() / 1000), exp: Math.floor(Date.now() / 1000) + 30 })}.`;
    for (const h of [none, 'bob', '{"user":"bob"}']) {
      const r = await asNode('team-a/app', h);
      expect(r.status).toBe(401);
      expect(await r.text()).toContain('forwarded identity');
    }
  });

  test('signed by a key that is not the node’s: 401', async () => {
    expect((await asNode('team-b/app', await signer(rogueKey).sign(bob))).status).toBe(401);
  });

  test('expired, or made for another audience: 401', async () => {
    const old = await signer(nodeKey, { now: () => Date.now() - 120_000 }).sign(bob);
    expect((await asNode('team-b/app', old)).status).toBe(401);
    const elsewhere = await signer(nodeKey, { audience: 'other-central' }).sign(bob);
    expect((await asNode('team-b/app', elsewhere)).status).toBe(401);
  });

  test('a valid node header replayed by a client that is not the node: 401', async () => {
    const h = await signer(nodeKey).sign(bob);
    expect((await asNode('team-b/app', h, basic('alice', 'alice-pw'))).status).toBe(401);
    expect((await asNode('team-b/app', h, basic('bob', 'bob-pw'))).status).toBe(401);
  });
});
