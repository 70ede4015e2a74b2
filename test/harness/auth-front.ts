/**
 * A recording HTTP front for a registry (here: Portcullis) that can demand authentication, to observe what a real
 * client sends to a mirror: which requests carry an Authorization header, after which challenge, Basic or token.
 * Portcullis has no client authentication yet (issue 11), so without this front nothing would ever challenge the
 * client and the question "what would it send" could not be observed.
 *
 * - `challenge: 'none'`: pass everything through, only record.
 * - `'basic'`: a request without valid Basic credentials gets `401` + `WWW-Authenticate: Basic realm=...`.
 * - `'bearer'`: a request without the issued token gets `401` + `WWW-Authenticate: Bearer realm="<front>/token",
 *   service=...,scope=repository:<repo>:pull`; `/token` issues the token for valid credentials, sent either as
 *   Basic on a GET (the distribution token spec) or as an OAuth2 password grant POST (what containerd tries first).
 *
 * Authorization is stripped before forwarding: a front that authenticates must not pass credentials on. Loopback
 * only; bodies of token requests are bounded.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';

export type Challenge = 'none' | 'basic' | 'bearer';

export interface FrontRequest {
  method: string;
  url: string;
  /** The raw Authorization header, if any. */
  authorization: string | undefined;
  /** What the front answered: 401 for a challenge, else the status from behind it. */
  status: number;
  userAgent: string | undefined;
}

export interface TokenRequest {
  method: string;
  /** Query string of the request (GET flow: service, scope, account). */
  query: Record<string, string>;
  authorization: string | undefined;
  /** Form fields of a POST (OAuth2 flow: grant_type, username, password, service, scope, client_id). */
  form: Record<string, string>;
  status: number;
}

export interface AuthFront {
  url: string;
  host: string;
  /** Registry API requests, in arrival order (token requests are in `tokens`). */
  seen: FrontRequest[];
  tokens: TokenRequest[];
  /** The token the front issues (and accepts) in bearer mode. */
  readonly token: string;
  stop(): Promise<void>;
}

export interface AuthFrontOptions {
  challenge: Challenge;
  /** Accepted credentials for 'basic' and for the token endpoint. */
  users?: Record<string, string>;
  /** `service` of the Bearer challenge. */
  service?: string;
}

const MAX_TOKEN_BODY = 16 * 1024;
const TOKEN = 'front-issued-token';

function basicUser(header: string | undefined, users: Record<string, string>): string | undefined {
  const m = /^Basic\s+(\S+)$/i.exec(header ?? '');
  if (!m) return undefined;
  const decoded = Buffer.from(m[1]!, 'base64').toString('utf8');
  const i = decoded.indexOf(':');
  if (i < 0) return undefined;
  const user = decoded.slice(0, i);
  return Object.hasOwn(users, user) && users[user] === decoded.slice(i + 1) ? user : undefined;
}

/** `/v2/<repo>/(manifests|blobs|tags)/...` → `<repo>`, for the challenge's scope. */
function repoOf(pathname: string): string | undefined {
  return /^\/v2\/(.+?)\/(?:manifests|blobs|tags|referrers)\//.exec(pathname)?.[1];
}

export async function startAuthFront(target: string, opts: AuthFrontOptions): Promise<AuthFront> {
  const t = new URL(target);
  const users = opts.users ?? {};
  const service = opts.service ?? 'portcullis-front';
  const seen: FrontRequest[] = [];
  const tokens: TokenRequest[] = [];
  let self = '';

  const tokenEndpoint = (req: http.IncomingMessage, res: http.ServerResponse, u: URL): void => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (b: Buffer) => {
      size += b.length;
      if (size > MAX_TOKEN_BODY) req.destroy();
      else chunks.push(b);
    });
    req.on('end', () => {
      const form = Object.fromEntries(new URLSearchParams(Buffer.concat(chunks).toString('utf8')));
      const user =
        req.method === 'POST'
          ? form.grant_type === 'password' && Object.hasOwn(users, form.username ?? '') && users[form.username!] === form.password
            ? form.username
            : undefined
          : basicUser(req.headers.authorization, users);
      const status = user ? 200 : 401;
      tokens.push({ method: req.method ?? '', query: Object.fromEntries(u.searchParams), authorization: req.headers.authorization, form, status });
      res.writeHead(status, { 'content-type': 'application/json' });
      // Both spellings: `token` (distribution token spec, GET) and `access_token` (OAuth2, POST).
      res.end(user ? JSON.stringify({ token: TOKEN, access_token: TOKEN, expires_in: 300 }) : '{"errors":[{"code":"UNAUTHORIZED"}]}');
    });
  };

  const srv = http.createServer((req, res) => {
    const u = new URL(req.url ?? '/', 'http://front');
    if (u.pathname === '/token') return tokenEndpoint(req, res, u);
    const record = (status: number): void =>
      void seen.push({ method: req.method ?? '', url: req.url ?? '', authorization: req.headers.authorization, status, userAgent: req.headers['user-agent'] });

    const authorized =
      opts.challenge === 'none' ||
      (opts.challenge === 'basic' && basicUser(req.headers.authorization, users) !== undefined) ||
      (opts.challenge === 'bearer' && req.headers.authorization === `Bearer ${TOKEN}`);
    if (!authorized) {
      record(401);
      const repo = repoOf(u.pathname);
      const challenge =
        opts.challenge === 'basic'
          ? 'Basic realm="portcullis-front"'
          : `Bearer realm="${self}/token",service="${service}"${repo ? `,scope="repository:${repo}:pull"` : ''}`;
      res.writeHead(401, { 'www-authenticate': challenge, 'content-type': 'application/json' });
      res.end(req.method === 'HEAD' ? undefined : '{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}');
      return;
    }
    const headers = { ...req.headers };
    delete headers.authorization;
    const up = http.request({ host: t.hostname, port: t.port, method: req.method, path: req.url, headers }, (ur) => {
      record(ur.statusCode ?? 0);
      res.writeHead(ur.statusCode ?? 502, ur.headers);
      ur.pipe(res);
    });
    up.setTimeout(60_000, () => up.destroy(new Error('upstream timeout')));
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  srv.requestTimeout = 60_000;
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const host = `127.0.0.1:${(srv.address() as AddressInfo).port}`;
  self = `http://${host}`;
  return {
    url: self,
    host,
    seen,
    tokens,
    token: TOKEN,
    stop: () => {
      srv.closeAllConnections();
      return new Promise((r) => srv.close(() => r()));
    },
  };
}
