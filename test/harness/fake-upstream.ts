/**
 * A fault-injecting fake OCI registry for tests (pull side only), built on node:http and bound to 127.0.0.1.
 *
 * A real docker-registry cannot misbehave on demand, so tests that need an upstream which truncates bodies, serves
 * bytes that do not match their digest, rate-limits, redirects, stalls or demands credentials use this instead.
 *
 * What it serves (content is whatever the test adds with `addManifest` / `addBlob`):
 *   GET  /v2/                                   200 `{}` (or 401 when auth is required)
 *   GET|HEAD /v2/<name>/manifests/<tag|digest>   Docker-Content-Digest, Content-Type, Content-Length
 *   GET|HEAD /v2/<name>/blobs/<digest>           same headers, single-range `Range: bytes=a-b` → 206
 *   GET  /v2/<name>/tags/list[?n=&last=]        lexical order, `Link: <...>; rel="next"` when paginated
 *   GET  /v2/<name>/referrers/<digest>          only with `referrers: true` (the OCI 1.1 referrers API)
 *   GET  <token path>                            when `requireBearer.realm` is a path on this server
 * Unknown names/references get a 404 with an OCI error body (`MANIFEST_UNKNOWN`, `BLOB_UNKNOWN`, `NAME_UNKNOWN`).
 *
 * Order of processing for each request: record it → token endpoint (if any) → auth check → first matching fault →
 * normal response. Auth comes before faults because a real registry authenticates before it redirects to a CDN or
 * rate-limits, and because tests of "Authorization is dropped across hosts" need the authenticated request to be the
 * one that gets redirected.
 */
import { createHash } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';

/** Media types a distribution-2.8-like registry refuses to serve unless the client's Accept lists them (§2.6). */
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';

/** A misbehaviour applied to the requests a {@link FaultMatch} selects. Every variant may carry `times`. */
export type Fault =
  /**
   * Send the full Content-Length, then close the socket after `afterBytes` bytes of body (clamped to length - 1, so the
   * body is always short). No effect on HEAD or empty bodies.
   */
  | { kind: 'truncate'; afterBytes: number; times?: number }
  /** Serve different bytes of the same length, with the headers (digest, length, type) of the real content. */
  | { kind: 'wrong-bytes'; times?: number }
  /** Answer with this status instead (e.g. 429 + Retry-After, 503). Default body: an OCI error JSON. */
  | {
      kind: 'status';
      status: number;
      headers?: Record<string, string>;
      body?: string | Buffer;
      /** Apply this many times, then remove the fault (e.g. 503 once, then success). Default: forever. */
      times?: number;
    }
  /**
   * Stream the body at about `bytesPerSecond` (one chunk per 100 ms tick). Bounded: it stops as soon as the client
   * goes away, and stop() cuts it, so a slow fault can never keep a test alive.
   */
  | { kind: 'slow'; bytesPerSecond: number; times?: number }
  /** 307 to an absolute URL (e.g. an echo server on another port, i.e. another "host"). */
  | { kind: 'redirect'; to: string; times?: number }
  /** Wait `ms` before sending the response headers, then answer normally. */
  | { kind: 'delay'; ms: number; times?: number };

/** Which requests a fault applies to. `pathRegex` is tested against the path including the query string. */
export interface FaultMatch {
  method?: string;
  pathRegex: RegExp;
}

export interface RecordedRequest {
  method: string;
  /** Path including the query string, exactly as received. */
  path: string;
  headers: Record<string, string | string[] | undefined>;
  /** Status the fake answered with (filled in when the response is finished or aborted). */
  status?: number;
  /** The kind of fault applied to this request, if one was. */
  fault?: Fault['kind'];
}

export interface FakeUpstreamOptions {
  /**
   * Require `Authorization: Bearer <token>` on /v2/*. A 401 carries
   * `WWW-Authenticate: Bearer realm="<realm>",service="<service>"[,scope="repository:<name>:pull"]`.
   * If `realm` is a path ("/token"), the fake serves the token endpoint itself at that path and advertises the
   * absolute URL; `tokenCredentials` then makes that endpoint demand Basic credentials.
   */
  requireBearer?: {
    realm: string;
    service: string;
    token: string;
    tokenCredentials?: { user: string; pass: string };
  };
  /** Require `Authorization: Basic base64(user:pass)` on /v2/*. */
  requireBasic?: { user: string; pass: string };
  /**
   * Emulate distribution 2.8: a manifest whose OCI media type is absent from Accept is answered with
   * 404 MANIFEST_UNKNOWN (testbed §2.6). Lets tests prove the proxy sends the OCI types upstream.
   */
  strictAccept?: boolean;
  /**
   * Serve the OCI referrers API, `GET /v2/<name>/referrers/<digest>[?artifactType=]`, computed from the stored
   * manifests whose `subject` is that digest (artifactType: the manifest's, else its config media type). Off by
   * default: like Distribution 2.8, the fake then answers 404 and clients fall back to the tag schema.
   */
  referrers?: boolean;
  /**
   * How the fake waits, for `delay` and between the chunks of `slow` (default: a real timer). A test passes a
   * {@link manualSleep} to hold a response until it says so, rather than measure how long it took.
   */
  sleep?: (ms: number) => Promise<void>;
}

/** A `sleep` whose waits are recorded and last until the test releases them. */
export interface ManualSleep {
  sleep: (ms: number) => Promise<void>;
  /** The durations asked for so far, in order. */
  readonly calls: number[];
  /** Resolves once `n` waits have been asked for in total. */
  called(n: number): Promise<void>;
  /** Ends every wait in progress (later ones wait again until the next release). */
  release(): void;
  /** Ends every wait in progress and lets every later one through at once. */
  open(): void;
}

export function manualSleep(): ManualSleep {
  const calls: number[] = [];
  let held: Array<() => void> = [];
  const watchers: Array<{ n: number; resolve: () => void }> = [];
  let opened = false;
  const release = (): void => {
    const now = held;
    held = [];
    for (const r of now) r();
  };
  return {
    calls,
    sleep: (ms) =>
      new Promise<void>((resolve) => {
        calls.push(ms);
        if (opened) resolve();
        else held.push(resolve);
        for (const w of watchers.filter((x) => calls.length >= x.n)) {
          watchers.splice(watchers.indexOf(w), 1);
          w.resolve();
        }
      }),
    called: (n) => (calls.length >= n ? Promise.resolve() : new Promise<void>((resolve) => watchers.push({ n, resolve }))),
    release,
    open: () => {
      opened = true;
      release();
    },
  };
}

export interface FakeUpstream {
  /** `http://127.0.0.1:<port>` */
  url: string;
  /** `127.0.0.1:<port>` */
  host: string;
  /** Store a manifest; `ref` is a tag (or undefined/a digest to store it by digest only). Returns its digest. */
  addManifest(repo: string, ref: string | undefined, bytes: Buffer, mediaType: string): string;
  /** Store a blob under `repo`. Returns its digest. */
  addBlob(repo: string, bytes: Buffer): string;
  /** Add a fault; the first registered fault whose match applies wins. */
  setFault(match: FaultMatch, fault: Fault): void;
  clearFaults(): void;
  /** Every request received so far, in arrival order (copies). */
  requests(): RecordedRequest[];
  clearRequests(): void;
  stop(): Promise<void>;
}

/** `sha256:<hex>` of some bytes: the only digest algorithm the fake needs. */
export function sha256Digest(bytes: Buffer): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

interface StoredManifest {
  bytes: Buffer;
  mediaType: string;
}

interface RepoContent {
  tags: Map<string, string>;
  manifests: Map<string, StoredManifest>;
  blobs: Map<string, Buffer>;
}

interface ActiveFault {
  match: FaultMatch;
  fault: Fault;
  remaining: number;
}

/** What a request resolved to before faults are applied: a body with its headers, or an error. */
interface Resolved {
  status: number;
  headers: Record<string, string>;
  body: Buffer;
}

const ERROR_CODE_BY_STATUS: Record<number, string> = {
  400: 'UNSUPPORTED',
  401: 'UNAUTHORIZED',
  403: 'DENIED',
  404: 'NAME_UNKNOWN',
  405: 'UNSUPPORTED',
  429: 'TOOMANYREQUESTS',
};

function ociError(status: number, code: string, message: string): Resolved {
  const body = Buffer.from(JSON.stringify({ errors: [{ code, message, detail: null }] }));
  return {
    status,
    headers: { 'content-type': 'application/json; charset=utf-8', 'content-length': String(body.length) },
    body,
  };
}

/**
 * Change one byte so the digest no longer matches while the length (and, for JSON with digests in it, the JSON
 * validity) stays the same: the last lowercase hex digit is swapped for another one. Falls back to flipping a bit.
 */
export function corruptBytes(original: Buffer): Buffer {
  const out = Buffer.from(original);
  for (let i = out.length - 1; i >= 0; i--) {
    const c = out[i]!;
    const isHex = (c >= 0x30 && c <= 0x39) || (c >= 0x61 && c <= 0x66);
    if (isHex) {
      out[i] = c === 0x30 ? 0x31 : 0x30; // '0' ↔ '1' style swap keeps it a hex digit
      return out;
    }
  }
  if (out.length > 0) out[0] = out[0]! ^ 0x01;
  return out;
}

function parseRange(header: string | undefined, size: number): { start: number; end: number } | 'invalid' | undefined {
  if (header === undefined) return undefined;
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m) return 'invalid';
  const [, a = '', b = ''] = m;
  let start: number;
  let end: number;
  if (a === '') {
    // Suffix range: the last N bytes.
    const n = Number(b);
    if (b === '' || n === 0) return 'invalid';
    start = Math.max(0, size - n);
    end = size - 1;
  } else {
    start = Number(a);
    end = b === '' ? size - 1 : Math.min(Number(b), size - 1);
  }
  if (start >= size || start > end) return 'invalid';
  return { start, end };
}

function headerString(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v.join(', ') : v;
}

function realSleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Start the fake on an ephemeral loopback port. */
export async function startFakeUpstream(options: FakeUpstreamOptions = {}): Promise<FakeUpstream> {
  const repos = new Map<string, RepoContent>();
  let faults: ActiveFault[] = [];
  const sleep = options.sleep ?? realSleep;
  let log: RecordedRequest[] = [];
  let baseUrl = '';

  const repoOf = (name: string): RepoContent => {
    let r = repos.get(name);
    if (!r) {
      r = { tags: new Map(), manifests: new Map(), blobs: new Map() };
      repos.set(name, r);
    }
    return r;
  };

  const takeFault = (method: string, path: string): Fault | undefined => {
    const idx = faults.findIndex((f) => (f.match.method === undefined || f.match.method.toUpperCase() === method) && f.match.pathRegex.test(path));
    if (idx < 0) return undefined;
    const active = faults[idx]!;
    active.remaining -= 1;
    // Remove exhausted faults so `times: 1` means "once, then behave".
    if (active.remaining <= 0) faults = faults.filter((_, i) => i !== idx);
    return active.fault;
  };

  const tokenPath = options.requireBearer?.realm.startsWith('/') ? options.requireBearer.realm : undefined;

  /** Returns a 401 response if the request lacks the required credentials, else undefined. */
  const checkAuth = (req: http.IncomingMessage, repoName: string | undefined): Resolved | undefined => {
    const auth = headerString(req.headers.authorization);
    if (options.requireBasic) {
      const want = `Basic ${Buffer.from(`${options.requireBasic.user}:${options.requireBasic.pass}`).toString('base64')}`;
      if (auth !== want) {
        const r = ociError(401, 'UNAUTHORIZED', 'authentication required');
        r.headers['www-authenticate'] = 'Basic realm="fake-upstream"';
        return r;
      }
    }
    if (options.requireBearer) {
      const b = options.requireBearer;
      if (auth !== `Bearer ${b.token}`) {
        const realm = tokenPath ? `${baseUrl}${tokenPath}` : b.realm;
        const scope = repoName ? `,scope="repository:${repoName}:pull"` : '';
        const r = ociError(401, 'UNAUTHORIZED', 'authentication required');
        r.headers['www-authenticate'] = `Bearer realm="${realm}",service="${b.service}"${scope}`;
        return r;
      }
    }
    return undefined;
  };

  const serveToken = (req: http.IncomingMessage): Resolved => {
    const b = options.requireBearer!;
    if (b.tokenCredentials) {
      const want = `Basic ${Buffer.from(`${b.tokenCredentials.user}:${b.tokenCredentials.pass}`).toString('base64')}`;
      if (headerString(req.headers.authorization) !== want) {
        const r = ociError(401, 'UNAUTHORIZED', 'bad token credentials');
        r.headers['www-authenticate'] = 'Basic realm="fake-token"';
        return r;
      }
    }
    // Both field names: the token spec says `token`, OAuth2-style clients read `access_token`.
    const body = Buffer.from(JSON.stringify({ token: b.token, access_token: b.token, expires_in: 300 }));
    return { status: 200, headers: { 'content-type': 'application/json', 'content-length': String(body.length) }, body };
  };

  const referrersOf = (name: string, subject: string, artifactType: string | null): Resolved => {
    if (!/^sha256:[a-f0-9]{64}$/.test(subject)) return ociError(400, 'DIGEST_INVALID', `invalid digest ${subject}`);
    const manifests: Array<Record<string, unknown>> = [];
    for (const [digest, stored] of repos.get(name)?.manifests ?? []) {
      let doc: { subject?: { digest?: unknown }; artifactType?: unknown; config?: { mediaType?: unknown }; annotations?: unknown };
      try {
        doc = JSON.parse(stored.bytes.toString('utf8')) as typeof doc;
      } catch {
        continue;
      }
      if (doc.subject?.digest !== subject) continue;
      const type = typeof doc.artifactType === 'string' ? doc.artifactType : typeof doc.config?.mediaType === 'string' ? doc.config.mediaType : undefined;
      if (artifactType !== null && type !== artifactType) continue;
      manifests.push({
        mediaType: stored.mediaType,
        digest,
        size: stored.bytes.length,
        ...(type ? { artifactType: type } : {}),
        ...(doc.annotations ? { annotations: doc.annotations } : {}),
      });
    }
    const body = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX, manifests }));
    const headers: Record<string, string> = { 'content-type': OCI_INDEX, 'content-length': String(body.length) };
    if (artifactType !== null) headers['oci-filters-applied'] = 'artifactType';
    return { status: 200, headers, body };
  };

  const resolveContent = (req: http.IncomingMessage, pathname: string, query: URLSearchParams): Resolved => {
    if (pathname === '/v2/' || pathname === '/v2') {
      const body = Buffer.from('{}');
      return { status: 200, headers: { 'content-type': 'application/json', 'content-length': '2' }, body };
    }
    const tagsMatch = /^\/v2\/(.+)\/tags\/list$/.exec(pathname);
    if (tagsMatch) {
      const name = tagsMatch[1]!;
      const repo = repos.get(name);
      if (!repo) return ociError(404, 'NAME_UNKNOWN', `repository name not known to registry: ${name}`);
      let tags = [...repo.tags.keys()].sort();
      const last = query.get('last');
      if (last !== null) tags = tags.filter((t) => t > last);
      const nRaw = query.get('n');
      const headers: Record<string, string> = { 'content-type': 'application/json' };
      if (nRaw !== null) {
        const n = Number(nRaw);
        if (tags.length > n && n > 0) {
          const lastShown = tags[n - 1]!;
          headers.link = `</v2/${name}/tags/list?n=${n}&last=${encodeURIComponent(lastShown)}>; rel="next"`;
        }
        tags = tags.slice(0, Math.max(0, n));
      }
      const body = Buffer.from(JSON.stringify({ name, tags }));
      headers['content-length'] = String(body.length);
      return { status: 200, headers, body };
    }
    const refMatch = options.referrers ? /^\/v2\/(.+)\/referrers\/([^/]+)$/.exec(pathname) : null;
    if (refMatch) return referrersOf(refMatch[1]!, decodeURIComponent(refMatch[2]!), query.get('artifactType'));
    const m = /^\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$/.exec(pathname);
    if (!m) return ociError(404, 'NAME_UNKNOWN', `no route for ${pathname}`);
    const name = m[1]!;
    const kind = m[2]!;
    const ref = decodeURIComponent(m[3]!);
    const repo = repos.get(name);
    if (kind === 'manifests') {
      const digest = ref.includes(':') ? ref : repo?.tags.get(ref);
      const stored = digest !== undefined ? repo?.manifests.get(digest) : undefined;
      if (!stored || digest === undefined) return ociError(404, 'MANIFEST_UNKNOWN', `manifest unknown: ${name}:${ref}`);
      if (options.strictAccept && (stored.mediaType === OCI_MANIFEST || stored.mediaType === OCI_INDEX)) {
        const accept = headerString(req.headers.accept) ?? '';
        if (!accept.includes(stored.mediaType)) {
          const what =
            stored.mediaType === OCI_INDEX
              ? 'OCI index found, but accept header does not support OCI indexes'
              : 'OCI manifest found, but accept header does not support OCI manifests';
          return ociError(404, 'MANIFEST_UNKNOWN', what);
        }
      }
      return {
        status: 200,
        headers: {
          'content-type': stored.mediaType,
          'content-length': String(stored.bytes.length),
          'docker-content-digest': digest,
          etag: `"${digest}"`,
        },
        body: stored.bytes,
      };
    }
    const blob = repo?.blobs.get(ref);
    if (!blob) return ociError(404, 'BLOB_UNKNOWN', `blob unknown to registry: ${ref}`);
    const headers: Record<string, string> = {
      'content-type': 'application/octet-stream',
      'docker-content-digest': ref,
      'accept-ranges': 'bytes',
      etag: `"${ref}"`,
    };
    const range = parseRange(headerString(req.headers.range), blob.length);
    if (range === 'invalid') {
      return { status: 416, headers: { 'content-range': `bytes */${blob.length}`, 'content-length': '0' }, body: Buffer.alloc(0) };
    }
    if (range) {
      const part = blob.subarray(range.start, range.end + 1);
      headers['content-range'] = `bytes ${range.start}-${range.end}/${blob.length}`;
      headers['content-length'] = String(part.length);
      return { status: 206, headers, body: part };
    }
    headers['content-length'] = String(blob.length);
    return { status: 200, headers, body: blob };
  };

  const send = async (req: http.IncomingMessage, res: http.ServerResponse, r: Resolved, fault: Fault | undefined) => {
    const isHead = req.method === 'HEAD';
    const headers = { 'docker-distribution-api-version': 'registry/2.0', ...r.headers };
    if (fault?.kind === 'delay') await sleep(fault.ms);
    if (res.destroyed) return;
    res.writeHead(r.status, headers);
    if (isHead || r.body.length === 0) {
      res.end();
      return;
    }
    if (fault?.kind === 'wrong-bytes') {
      res.end(corruptBytes(r.body));
      return;
    }
    if (fault?.kind === 'truncate') {
      const part = r.body.subarray(0, Math.max(0, Math.min(fault.afterBytes, r.body.length - 1)));
      // Flush what we promised to send, then cut the connection so the client sees a short body.
      res.write(part, () => res.socket?.destroy());
      return;
    }
    if (fault?.kind === 'slow') {
      const chunk = Math.max(1, Math.floor(fault.bytesPerSecond / 10));
      for (let off = 0; off < r.body.length; off += chunk) {
        if (res.destroyed || req.socket.destroyed) return; // client gave up: stop, so a test never hangs on us
        res.write(r.body.subarray(off, off + chunk));
        if (off + chunk < r.body.length) await sleep(100);
      }
      res.end();
      return;
    }
    res.end(r.body);
  };

  const handle = async (req: http.IncomingMessage, res: http.ServerResponse): Promise<void> => {
    const method = (req.method ?? 'GET').toUpperCase();
    const rawPath = req.url ?? '/';
    const entry: RecordedRequest = { method, path: rawPath, headers: { ...req.headers } };
    log.push(entry);
    res.on('close', () => {
      entry.status = res.statusCode;
    });
    const url = new URL(rawPath, 'http://fake.invalid');
    const pathname = url.pathname;

    if (tokenPath !== undefined && pathname === tokenPath) {
      const tokenFault = takeFault(method, rawPath);
      if (tokenFault) entry.fault = tokenFault.kind;
      await send(req, res, serveToken(req), tokenFault);
      return;
    }
    const repoName = /^\/v2\/(.+)\/(?:manifests|blobs|tags)\//.exec(pathname)?.[1];
    const denied = checkAuth(req, repoName);
    if (denied) {
      await send(req, res, denied, undefined);
      return;
    }
    const fault = takeFault(method, rawPath);
    if (fault) entry.fault = fault.kind;
    if (fault?.kind === 'status') {
      const body =
        fault.body !== undefined
          ? Buffer.from(fault.body)
          : Buffer.from(
              JSON.stringify({
                errors: [{ code: ERROR_CODE_BY_STATUS[fault.status] ?? 'UNKNOWN', message: `fake upstream fault ${fault.status}`, detail: null }],
              }),
            );
      const headers: Record<string, string> = {
        'content-type': fault.body !== undefined ? 'text/plain' : 'application/json',
        'content-length': String(body.length),
        ...Object.fromEntries(Object.entries(fault.headers ?? {}).map(([k, v]) => [k.toLowerCase(), v])),
      };
      await send(req, res, { status: fault.status, headers, body }, undefined);
      return;
    }
    if (fault?.kind === 'redirect') {
      res.writeHead(307, { location: fault.to, 'content-length': '0', 'docker-distribution-api-version': 'registry/2.0' });
      res.end();
      return;
    }
    await send(req, res, resolveContent(req, pathname, url.searchParams), fault);
  };

  const server = http.createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      // A harness bug must be visible in the test output rather than hang the client.
      console.error('fake-upstream handler error', err);
      if (!res.headersSent) res.writeHead(500);
      res.end();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  const host = `127.0.0.1:${port}`;
  baseUrl = `http://${host}`;

  return {
    url: baseUrl,
    host,
    addManifest(repo, ref, bytes, mediaType) {
      const digest = sha256Digest(bytes);
      const r = repoOf(repo);
      r.manifests.set(digest, { bytes: Buffer.from(bytes), mediaType });
      if (ref !== undefined && !ref.includes(':')) r.tags.set(ref, digest);
      return digest;
    },
    addBlob(repo, bytes) {
      const digest = sha256Digest(bytes);
      repoOf(repo).blobs.set(digest, Buffer.from(bytes));
      return digest;
    },
    setFault(match, fault) {
      faults.push({ match, fault, remaining: fault.times ?? Number.POSITIVE_INFINITY });
    },
    clearFaults() {
      faults = [];
    },
    requests() {
      return log.map((e) => ({ ...e, headers: { ...e.headers } }));
    },
    clearRequests() {
      log = [];
    },
    async stop() {
      // closeAllConnections: keep-alive sockets and slow/stalled responses must not keep the test process alive.
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

export interface EchoServer {
  url: string;
  host: string;
  /** Every request with its headers, so a test can prove `Authorization` did not cross hosts. */
  requests(): RecordedRequest[];
  clearRequests(): void;
  /** Replace the body served for every GET/HEAD. */
  setBody(body: Buffer): void;
  stop(): Promise<void>;
}

/**
 * A second loopback server ("another host", e.g. a CDN a blob GET is redirected to). It answers every GET/HEAD on any
 * path with the given body as `application/octet-stream` (no Docker-Content-Digest, as a CDN would) and records all
 * request headers.
 */
export async function startEchoServer(opts: { body?: Buffer } = {}): Promise<EchoServer> {
  let body = opts.body ?? Buffer.alloc(0);
  let log: RecordedRequest[] = [];
  const server = http.createServer((req, res) => {
    const entry: RecordedRequest = { method: (req.method ?? 'GET').toUpperCase(), path: req.url ?? '/', headers: { ...req.headers } };
    log.push(entry);
    res.on('close', () => {
      entry.status = res.statusCode;
    });
    if (entry.method !== 'GET' && entry.method !== 'HEAD') {
      res.writeHead(405, { 'content-length': '0' });
      res.end();
      return;
    }
    const range = parseRange(headerString(req.headers.range), body.length);
    if (range && range !== 'invalid') {
      const part = body.subarray(range.start, range.end + 1);
      res.writeHead(206, {
        'content-type': 'application/octet-stream',
        'content-length': String(part.length),
        'content-range': `bytes ${range.start}-${range.end}/${body.length}`,
      });
      res.end(entry.method === 'HEAD' ? undefined : part);
      return;
    }
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(body.length), 'accept-ranges': 'bytes' });
    res.end(entry.method === 'HEAD' ? undefined : body);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const host = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url: `http://${host}`,
    host,
    requests: () => log.map((e) => ({ ...e, headers: { ...e.headers } })),
    clearRequests: () => {
      log = [];
    },
    setBody: (b) => {
      body = Buffer.from(b);
    },
    async stop() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
