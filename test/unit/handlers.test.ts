/**
 * The registry handlers on their own, against hand-written fakes of the store interfaces (src/proxy/*) and of the
 * gate's interface (AdmissionGate). What they guard is the handlers' share of the security argument:
 * - admission order: the gate decides before anything is served, for HEAD and GET, by tag and by digest, and a
 *   denied request leaves the response untouched but for the error;
 * - closures: a blob is asked for in the blob role, a manifest by digest in the manifest role, so a layer digest
 *   never vouches for a manifest, and a child is served only to an identity that may have its root;
 * - the refusals and their OCI codes (as server/errors.ts maps them): a policy deny, a digest outside any admitted
 *   closure, a closure whose image is now denied, a scanner token outside its job, a quota, an anonymous client the
 *   policy's client rules refuse.
 * Real components where they are cheap: the router, the quota buckets (with a clock that does not move), metrics.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { beforeEach, describe, expect, test } from 'vitest';
import type { Identity } from '../../src/auth/authenticator.js';
import { Quotas } from '../../src/auth/quota.js';
import type { AdmissionGate, BlobVerdict, DigestRequest, MemberRequest, RepositoryRequest, RootRequest } from '../../src/gate/gate.js';
import { Metrics } from '../../src/metrics/metrics.js';
import { OCI_INDEX, OCI_MANIFEST, parseManifest } from '../../src/oci/mediatypes.js';
import type { Admission } from '../../src/policy/contract.js';
import type { BlobService, OpenBlob } from '../../src/proxy/blobs.js';
import type { Manifest, ManifestService, ResolvedTag } from '../../src/proxy/manifests.js';
import type { ReferrersResult, ReferrersService } from '../../src/proxy/referrers.js';
import type { TagList, TagService } from '../../src/proxy/tags.js';
import type { Digest } from '../../src/routing/reference.js';
import { Router, type Route } from '../../src/routing/route.js';
import { httpAnswer, RegistryError } from '../../src/server/errors.js';
import { RegistryHandlers, type HandlerDeps, type RequestContext } from '../../src/server/handlers.js';
import { parseEndpoint } from '../../src/server/paths.js';
import { makeConfig, sha256 } from './helpers.js';

const HOST = 'reg.example';
const ACCEPT = [OCI_INDEX, OCI_MANIFEST].join(', ');

// ---------------------------------------------------------------------------------------------------------------
// content: an image (config, two layers), an index over two images, an image nobody admits

function manifestOf(doc: unknown): Manifest {
  const bytes = Buffer.from(JSON.stringify(doc));
  const parsed = parseManifest(bytes, undefined);
  return { digest: sha256(bytes), mediaType: parsed.mediaType, bytes, parsed };
}

function image(name: string): { manifest: Manifest; config: Digest; layers: Digest[] } {
  const config = sha256(`config of ${name}`);
  const layers = [sha256(`layer 1 of ${name}`), sha256(`layer 2 of ${name}`)];
  const manifest = manifestOf({
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: config, size: 10 },
    layers: layers.map((digest) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest, size: 10 })),
  });
  return { manifest, config, layers };
}

const app = image('app');
const evil = image('evil');
const amd = image('amd64');
const arm = image('arm64');
const index = manifestOf({
  schemaVersion: 2,
  mediaType: OCI_INDEX,
  manifests: [amd, arm].map((c, i) => ({
    mediaType: OCI_MANIFEST,
    digest: c.manifest.digest,
    size: c.manifest.bytes.length,
    platform: { os: 'linux', architecture: i ? 'arm64' : 'amd64' },
  })),
});

// ---------------------------------------------------------------------------------------------------------------
// fakes: every call goes into one ordered log, with the response's own events

let log: string[];

class FakeManifests implements ManifestService {
  readonly tags = new Map<string, Digest>([
    ['app:v1', app.manifest.digest],
    ['evil:v1', evil.manifest.digest],
    ['multi:v1', index.digest],
  ]);
  readonly byDigest = new Map<string, Manifest>([app.manifest, evil.manifest, index, amd.manifest, arm.manifest].map((m) => [m.digest, m]));

  resolveTag(route: Route, tag: string): Promise<ResolvedTag> {
    log.push(`manifests.resolveTag ${tag}`);
    const d = this.tags.get(`${route.repository}:${tag}`);
    const manifest = d ? this.byDigest.get(d) : undefined;
    return manifest ? Promise.resolve({ manifest, stale: false }) : Promise.reject(new RegistryError('MANIFEST_UNKNOWN', `no tag ${tag}`));
  }

  get(_route: Route, digest: Digest): Promise<Manifest> {
    log.push(`manifests.get ${digest}`);
    const m = this.byDigest.get(digest);
    return m ? Promise.resolve(m) : Promise.reject(new RegistryError('MANIFEST_UNKNOWN', `no manifest ${digest}`));
  }
}

class FakeBlobs implements BlobService {
  size(_route: Route, digest: Digest): Promise<number> {
    log.push(`blobs.size ${digest}`);
    return Promise.resolve(10);
  }

  open(_route: Route, digest: Digest): Promise<OpenBlob> {
    log.push(`blobs.open ${digest}`);
    const bytes = Buffer.from(`bytes of ${digest}`);
    return Promise.resolve({
      size: bytes.length,
      source: 'cache',
      redirectUrl: () => Promise.resolve(undefined),
      release: () => log.push('blob.release'),
      writeTo: (res, start, end, onBytes) => {
        onBytes(end - start + 1);
        res.end(bytes.subarray(start, end + 1));
        return Promise.resolve();
      },
    });
  }
}

class FakeTags implements TagService {
  list(_route: Route, clientName: string): Promise<TagList> {
    log.push('tags.list');
    return Promise.resolve({ body: Buffer.from(JSON.stringify({ name: clientName, tags: ['v1'] })) });
  }
}

class FakeReferrers implements ReferrersService {
  list(_route: Route, subject: Digest): Promise<ReferrersResult> {
    log.push(`referrers.list ${subject}`);
    return Promise.resolve({ index: { schemaVersion: 2, mediaType: OCI_INDEX, manifests: [] }, filtersApplied: false, source: 'none' });
  }
}

function allow(id: string): Admission {
  return { decisionId: id, serve: true, outcome: 'allow', message: '', violations: [], warnings: [], mode: 'enforce', cached: false };
}

function deny(id: string, rule: string, message: string): Admission {
  return { decisionId: id, serve: false, outcome: 'deny', message, violations: [{ rule, message }], warnings: [], mode: 'enforce', cached: false };
}

/**
 * The gate as handlers see it. Decisions: `policy` per root digest (default: deny), by identity when `byUser` says
 * so. Closures with roles, as the real gate keeps them: an admitted image's config and layers are blob members, an
 * admitted index's children are manifest members; nothing is a member in the other role.
 */
class FakeGate implements AdmissionGate {
  readonly policy = new Map<string, (user: string | null) => Admission>([
    [app.manifest.digest, () => allow('d-app')],
    [index.digest, () => allow('d-index')],
    [evil.manifest.digest, () => deny('d-evil', 'tag.denied', 'tag "v1" is not allowed')],
  ]);
  /** Blobs whose root was decided again and is now denied (a revoked closure). */
  readonly revoked = new Map<string, Admission>();
  readonly admitted = new Set<string>();
  cachedDecisions = true;

  private decide(digest: Digest, user: string | null, what: string): Admission {
    log.push(what);
    const a = this.policy.get(digest)?.(user) ?? deny(`d-${digest.slice(7, 15)}`, 'scope.no_match', 'no scope matches this image');
    if (a.serve) this.admitted.add(digest);
    return a;
  }

  admitRoot(req: RootRequest): Promise<Admission> {
    return Promise.resolve(this.decide(req.manifest.digest, req.client.user, `gate.admitRoot ${req.method} ${req.manifest.digest} ${req.kind}`));
  }

  admitByDigest(req: DigestRequest): Promise<Admission> {
    const root = this.rootOf(req.manifest.digest, 'manifest');
    if (root) {
      log.push(`gate.admitByDigest ${req.method} ${req.manifest.digest} child of ${root}`);
      return Promise.resolve(allow(`d-child-of-${root.slice(7, 15)}`));
    }
    return Promise.resolve(this.decide(req.manifest.digest, req.client.user, `gate.admitByDigest ${req.method} ${req.manifest.digest} as root`));
  }

  admitBlob(req: MemberRequest): Promise<BlobVerdict> {
    log.push(`gate.admitBlob ${req.method} ${req.digest}`);
    const revoked = this.revoked.get(req.digest);
    if (revoked) return Promise.resolve({ serve: false, denial: revoked });
    const root = this.rootOf(req.digest, 'blob');
    return Promise.resolve(root ? { serve: true, root } : { serve: false, denial: undefined });
  }

  admitRepository(req: RepositoryRequest): Promise<Admission> {
    log.push(`gate.admitRepository ${req.kind}`);
    return Promise.resolve(req.route.repository.startsWith('evil') ? deny('d-repo', 'repository.denied', 'repository not allowed') : allow('d-repo'));
  }

  hasCachedDecision(): boolean {
    return this.cachedDecisions;
  }

  vouchedBy(_route: Route, digest: Digest, as: 'manifest' | 'blob'): Digest | undefined {
    log.push(`gate.vouchedBy ${digest} as ${as}`);
    return this.rootOf(digest, as);
  }

  private rootOf(digest: string, as: 'manifest' | 'blob'): Digest | undefined {
    for (const root of this.admitted) {
      const m = [app.manifest, index, evil.manifest].find((x) => x.digest === root)!;
      const members = as === 'blob' ? m.parsed.blobs.map((b) => b.digest) : m.parsed.manifests.map((c) => c.digest);
      if (members.includes(digest as Digest)) return root as Digest;
    }
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// requests

interface Answer {
  status: number;
  headers: Record<string, string | string[]>;
  body: Buffer | undefined;
  error?: RegistryError;
}

function fakeResponse(): ServerResponse & { answer: Answer } {
  const answer: Answer = { status: 200, headers: {}, body: undefined };
  const res = {
    answer,
    headersSent: false,
    set statusCode(s: number) {
      answer.status = s;
    },
    get statusCode(): number {
      return answer.status;
    },
    setHeader(k: string, v: string | number) {
      answer.headers[k.toLowerCase()] = String(v);
      return res;
    },
    appendHeader(k: string, v: string) {
      const prev = answer.headers[k.toLowerCase()];
      answer.headers[k.toLowerCase()] = prev === undefined ? [v] : [...(Array.isArray(prev) ? prev : [prev]), v];
      return res;
    },
    getHeader(k: string) {
      return answer.headers[k.toLowerCase()];
    },
    end(body?: Buffer | string) {
      log.push(`res.end ${answer.status}${body === undefined ? ' (no body)' : ''}`);
      answer.body = body === undefined ? undefined : Buffer.from(body);
      res.headersSent = true;
      return res;
    },
  };
  return res as unknown as ServerResponse & { answer: Answer };
}

const ANON: Identity = { user: null, groups: [], method: 'anonymous' };
const ALICE: Identity = { user: 'alice', groups: ['dev'], method: 'basic' };

let manifests: FakeManifests;
let gate: FakeGate;

function handlers(extra: Partial<HandlerDeps> = {}): RegistryHandlers {
  const config = makeConfig({ upstreams: [{ name: 'up', registry: HOST, url: `https://${HOST}` }], defaultUpstream: 'up' });
  return new RegistryHandlers({
    router: new Router(config),
    manifests,
    blobs: new FakeBlobs(),
    tags: new FakeTags(),
    referrers: new FakeReferrers(),
    gate,
    metrics: new Metrics(),
    ...extra,
  });
}

/** One request through the handlers; a thrown RegistryError becomes the answer the client would get. */
async function request(
  h: RegistryHandlers,
  method: 'GET' | 'HEAD',
  path: string,
  identity: Identity = ANON,
  headers: Record<string, string> = {},
): Promise<Answer> {
  const url = new URL(`http://proxy.local${path}`);
  const ep = parseEndpoint(url.pathname);
  if (!ep) throw new Error(`not an endpoint: ${path}`);
  const res = fakeResponse();
  const req = { headers: { accept: ACCEPT, ...headers } } as unknown as IncomingMessage;
  const ctx: RequestContext = { req, res, url, method, clientIp: '10.0.0.7', identity };
  try {
    await h.handle(ctx, ep);
    return res.answer;
  } catch (e) {
    if (!(e instanceof RegistryError)) throw e;
    expect(res.headersSent, 'nothing was sent before the error').toBe(false);
    const a = httpAnswer(e);
    return { status: a.status, headers: { ...res.answer.headers, ...a.headers }, body: Buffer.from(a.body), error: e };
  }
}

function ociError(a: Answer): { code: string; message: string; detail: Record<string, unknown> } {
  return (JSON.parse(a.body!.toString()) as { errors: Array<{ code: string; message: string; detail: Record<string, unknown> }> }).errors[0]!;
}

/** Did anything of the content reach the response? (An error answer is written by the caller, not the handler.) */
function served(): boolean {
  return log.some((l) => l.startsWith('res.end') || l.startsWith('blobs.open') || l.startsWith('blobs.size'));
}

beforeEach(() => {
  log = [];
  manifests = new FakeManifests();
  gate = new FakeGate();
});

const m = (repo: string, ref: string): string => `/v2/${HOST}/${repo}/manifests/${ref}`;
const b = (repo: string, digest: string): string => `/v2/${HOST}/${repo}/blobs/${digest}`;

// ---------------------------------------------------------------------------------------------------------------

describe('admission order: the gate decides before anything is served', () => {
  for (const method of ['GET', 'HEAD'] as const) {
    test(`${method} by tag: resolved, decided, then served`, async () => {
      const a = await request(handlers(), method, m('app', 'v1'));
      expect(a.status).toBe(200);
      expect(log).toEqual([
        `manifests.resolveTag v1`,
        `gate.admitRoot ${method} ${app.manifest.digest} manifest`,
        method === 'GET' ? 'res.end 200' : 'res.end 200 (no body)',
      ]);
      expect(a.headers['docker-content-digest']).toBe(app.manifest.digest);
      expect(a.headers['portcullis-decision-id']).toBe('d-app');
      expect(a.body?.equals(app.manifest.bytes) ?? method === 'HEAD').toBe(true);
    });

    test(`${method} by tag, denied: 403 DENIED, and nothing of the manifest is sent`, async () => {
      const a = await request(handlers(), method, m('evil', 'v1'));
      expect(a.status).toBe(403);
      expect(served()).toBe(false);
      expect(log).toContain(`gate.admitRoot ${method} ${evil.manifest.digest} manifest`);
      expect(a.headers['docker-content-digest']).toBeUndefined();
    });

    test(`${method} by digest: decided (as a root of its own), then served`, async () => {
      const a = await request(handlers(), method, m('app', app.manifest.digest));
      expect(a.status).toBe(200);
      expect(log).toEqual([
        `manifests.get ${app.manifest.digest}`,
        `gate.admitByDigest ${method} ${app.manifest.digest} as root`,
        method === 'GET' ? 'res.end 200' : 'res.end 200 (no body)',
      ]);
    });

    test(`${method} by digest, denied: 403 DENIED, nothing sent`, async () => {
      const a = await request(handlers(), method, m('evil', evil.manifest.digest));
      expect(a.status).toBe(403);
      expect(ociError(a).code).toBe('DENIED');
      expect(served()).toBe(false);
    });

    test(`${method} of a blob: the gate is asked before the blob store`, async () => {
      await request(handlers(), 'GET', m('app', 'v1'));
      log = [];
      const a = await request(handlers(), method, b('app', app.layers[0]!));
      expect(a.status).toBe(200);
      expect(log[0]).toBe(`gate.admitBlob ${method} ${app.layers[0]}`);
      expect(log[1]).toBe(method === 'GET' ? `blobs.open ${app.layers[0]}` : `blobs.size ${app.layers[0]}`);
    });
  }

  test('a tag list and a referrers list: repository rules first; a denied repository is not listed', async () => {
    const h = handlers();
    expect((await request(h, 'GET', `/v2/${HOST}/app/tags/list`)).status).toBe(200);
    expect(log).toEqual(['gate.admitRepository tags', 'tags.list', 'res.end 200']);
    log = [];
    const tags = await request(h, 'GET', `/v2/${HOST}/evil/tags/list`);
    const refs = await request(h, 'GET', `/v2/${HOST}/evil/referrers/${evil.manifest.digest}`);
    expect([tags.status, ociError(tags).code, refs.status, ociError(refs).code]).toEqual([403, 'DENIED', 403, 'DENIED']);
    expect(log).toEqual(['gate.admitRepository tags', 'gate.admitRepository referrers']);
  });
});

describe('closures: members only inside an admitted image, and only in their role', () => {
  test('the config and layers of an admitted image are served; before its admission they are not', async () => {
    const h = handlers();
    const before = await request(h, 'GET', b('app', app.layers[0]!));
    expect(before.status).toBe(403);
    expect(served()).toBe(false);
    await request(h, 'GET', m('app', 'v1'));
    for (const d of [app.config, ...app.layers]) {
      const a = await request(h, 'GET', b('app', d));
      expect(a.status).toBe(200);
      expect(a.body?.toString()).toBe(`bytes of ${d}`);
    }
  });

  test('a blob of a denied image is refused, even once its manifest was asked for', async () => {
    const h = handlers();
    await request(h, 'GET', m('evil', 'v1'));
    log = [];
    const a = await request(h, 'GET', b('evil', evil.layers[0]!));
    expect(a.status).toBe(403);
    expect(log).toEqual([`gate.admitBlob GET ${evil.layers[0]}`]);
  });

  test('a layer digest never vouches for a manifest: asked for as a manifest, it is decided as a root of its own', async () => {
    const h = handlers({ identityChecks: true });
    await request(h, 'GET', m('app', 'v1'));
    // The fake store holds a manifest under the layer's digest (an upstream that answers a layer digest as a manifest).
    manifests.byDigest.set(app.layers[0]!, { ...evil.manifest, digest: app.layers[0]! });
    log = [];
    const a = await request(h, 'GET', m('app', app.layers[0]!));
    expect(a.status).toBe(403);
    expect(ociError(a).code).toBe('DENIED');
    expect(log).toContain(`gate.admitByDigest GET ${app.layers[0]} as root`);
    expect(log.some((l) => l.startsWith('gate.admitBlob'))).toBe(false);
  });

  test('a child manifest is served as a child of its admitted index, never as a blob', async () => {
    const h = handlers();
    await request(h, 'GET', m('multi', 'v1'));
    const child = await request(h, 'GET', m('multi', amd.manifest.digest));
    expect(child.status).toBe(200);
    expect(child.headers['docker-content-digest']).toBe(amd.manifest.digest);
    const asBlob = await request(h, 'GET', b('multi', amd.manifest.digest));
    expect(asBlob.status).toBe(403);
    expect(ociError(asBlob).detail).toMatchObject({ reason: 'not_in_admitted_closure' });
  });

  test('with identity checks, a child and a blob are served only to an identity the policy admits for their root', async () => {
    gate.policy.set(index.digest, (user) => (user === 'alice' ? allow('d-alice') : deny('d-nobody', 'client.user', 'only alice')));
    gate.policy.set(app.manifest.digest, (user) => (user === 'alice' ? allow('d-alice') : deny('d-nobody', 'client.user', 'only alice')));
    const h = handlers({ identityChecks: true });
    expect((await request(h, 'GET', m('multi', 'v1'), ALICE)).status).toBe(200);
    expect((await request(h, 'GET', m('app', 'v1'), ALICE)).status).toBe(200);
    const bob: Identity = { user: 'bob', groups: [], method: 'basic' };
    log = [];
    const child = await request(h, 'GET', m('multi', amd.manifest.digest), bob);
    expect(child.status).toBe(403);
    expect(log).toContain(`gate.vouchedBy ${amd.manifest.digest} as manifest`);
    expect(log).toContain(`gate.admitRoot GET ${index.digest} manifest`);
    const blob = await request(h, 'GET', b('app', app.layers[1]!), bob);
    expect(blob.status).toBe(403);
    expect(served()).toBe(false);
    expect((await request(h, 'GET', m('multi', amd.manifest.digest), ALICE)).status).toBe(200);
    expect((await request(h, 'GET', b('app', app.layers[1]!), ALICE)).status).toBe(200);
  });
});

describe('refusals and their OCI codes', () => {
  test('a policy deny: 403 DENIED naming the image, the rule and the decision, in the body, headers and status line', async () => {
    const a = await request(handlers(), 'GET', m('evil', 'v1'));
    expect(a.status).toBe(403);
    const e = ociError(a);
    expect(e.code).toBe('DENIED');
    expect(e.message).toBe(`portcullis: denied ${HOST}/evil@${evil.manifest.digest}: tag "v1" is not allowed [decision d-evil]`);
    expect(e.detail).toMatchObject({ decision_id: 'd-evil', violations: [{ rule: 'tag.denied' }] });
    expect(a.headers['portcullis-decision-id']).toBe('d-evil');
    // On the error too, not only on the response it was thrown from: whoever answers with it names the decision.
    expect(httpAnswer(a.error!).headers['portcullis-decision-id']).toBe('d-evil');
    expect(httpAnswer(a.error!).statusText).toBe('denied: tag.denied: tag "v1" is not allowed [decision d-evil]');
  });

  test('a digest in no admitted closure: 403 DENIED, reason not_in_admitted_closure, no decision id', async () => {
    const a = await request(handlers(), 'HEAD', b('app', app.layers[0]!));
    expect(a.status).toBe(403);
    const e = ociError(a);
    expect(e.code).toBe('DENIED');
    expect(e.detail).toEqual({ reason: 'not_in_admitted_closure' });
    expect(a.headers['portcullis-reason']).toBe('not part of an admitted image');
    expect(a.headers['portcullis-decision-id']).toBeUndefined();
  });

  test('a closure whose image was decided again and denied: 403 DENIED, reason admission_denied, with that decision', async () => {
    gate.revoked.set(app.layers[0]!, deny('d-new', 'vulnerabilities.critical', '1 critical vulnerability'));
    const a = await request(handlers(), 'GET', b('app', app.layers[0]!));
    expect(a.status).toBe(403);
    expect(ociError(a).detail).toMatchObject({ reason: 'admission_denied', decision_id: 'd-new' });
    expect(a.headers['portcullis-decision-id']).toBe('d-new');
    expect(served()).toBe(false);
  });

  describe('a scanner token: the image of its job and nothing else', () => {
    const scanner: Identity = { user: 'scanner', groups: [], method: 'scanner', scanJob: { repository: 'app', digest: app.manifest.digest } };

    test("its job manifest and that manifest's blobs, without a policy decision (the scan is evidence for it)", async () => {
      const h = handlers();
      expect((await request(h, 'GET', m('app', app.manifest.digest), scanner)).status).toBe(200);
      expect((await request(h, 'GET', b('app', app.layers[1]!), scanner)).status).toBe(200);
      expect(log.some((l) => l.startsWith('gate.'))).toBe(false);
    });

    test("another digest, a tag, another image's blob, a tag list: 403 DENIED, reason scanner_job_only", async () => {
      const h = handlers();
      for (const path of [
        m('app', evil.manifest.digest),
        m('app', 'v1'),
        b('app', evil.layers[0]!),
        `/v2/${HOST}/app/tags/list`,
        `/v2/${HOST}/app/referrers/${app.manifest.digest}`,
      ]) {
        const a = await request(h, 'GET', path, scanner);
        expect([path, a.status, ociError(a).code, ociError(a).detail]).toEqual([path, 403, 'DENIED', { reason: 'scanner_job_only' }]);
      }
      expect(served()).toBe(false);
    });
  });

  test('a quota on cold manifests: 429 TOOMANYREQUESTS with Retry-After, before anything is fetched; warm requests are not limited', async () => {
    const quotas = new Quotas({ perIdentity: { coldManifests: { burst: 1, perMinute: 1 } }, perAddress: {} }, { now: () => 0 });
    const warm = { tag: () => false, manifest: () => true, blob: () => true };
    const h = handlers({ quotas, warm });
    expect((await request(h, 'GET', m('app', 'v1'), ALICE)).status).toBe(200);
    log = [];
    const a = await request(h, 'GET', m('app', 'v1'), ALICE);
    expect(a.status).toBe(429);
    expect(ociError(a).code).toBe('TOOMANYREQUESTS');
    expect(a.headers['retry-after']).toBe('60');
    expect(log).toEqual([]);
    expect((await request(h, 'GET', m('app', app.manifest.digest), ALICE)).status).toBe(200);
  });

  test('a quota on decisions: only a decision the gate has not cached takes a token', async () => {
    const quotas = new Quotas({ perIdentity: { decisions: { burst: 1, perMinute: 1 } }, perAddress: {} }, { now: () => 0 });
    const h = handlers({ quotas, warm: { tag: () => true, manifest: () => true, blob: () => true } });
    gate.cachedDecisions = false;
    expect((await request(h, 'GET', m('app', 'v1'), ALICE)).status).toBe(200);
    const a = await request(h, 'GET', m('app', 'v1'), ALICE);
    expect([a.status, ociError(a).code]).toEqual([429, 'TOOMANYREQUESTS']);
    expect(log.filter((l) => l.startsWith('gate.admitRoot'))).toHaveLength(1);
    gate.cachedDecisions = true;
    expect((await request(h, 'GET', m('app', 'v1'), ALICE)).status).toBe(200);
  });

  test('an anonymous client refused by a client rule gets 401 UNAUTHORIZED with the challenge, not 403', async () => {
    gate.policy.set(app.manifest.digest, (user) => (user ? allow('d-app') : deny('d-anon', 'client.anonymous', 'sign in first')));
    const h = handlers({ challenge: (_req, repo) => `Basic realm="portcullis ${repo}"` });
    const a = await request(h, 'HEAD', m('app', 'v1'));
    expect([a.status, ociError(a).code]).toEqual([401, 'UNAUTHORIZED']);
    expect(a.headers['www-authenticate']).toBe(`Basic realm="portcullis ${HOST}/app"`);
    expect(served()).toBe(false);
    // Any other identity gets the 403; so does an anonymous client refused by a rule that is not about clients.
    const alice = await request(h, 'HEAD', m('app', 'v1'), { ...ALICE, user: null, method: 'basic' });
    expect(alice.status).toBe(403);
    expect((await request(h, 'HEAD', m('evil', 'v1'))).status).toBe(403);
  });
});
