/**
 * The server side of client authentication (src/auth does the verifying): who a registry request is from, the
 * token endpoint, and the metrics token. Kept apart from app.ts so that the listener code stays about listening.
 */
import { timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { ANONYMOUS, type Identity } from '../auth/authenticator.js';
import type { ClientAuth, TokenResponse } from '../auth/client-auth.js';
import { authError, errors } from './errors.js';
import type { Endpoint } from './paths.js';
import { sendJson } from './respond.js';

/**
 * Who the client is, or a RegistryError (401 with a challenge, 429 when throttled). The repository is the name in
 * the path, which a token's scope must cover.
 */
/** `ip` is the client's address as the listener sees it (PROXY protocol or a trusted X-Forwarded-For applied). */
export async function identify(auth: ClientAuth | undefined, req: IncomingMessage, ep: Endpoint, ip: string): Promise<Identity> {
  if (!auth) return ANONYMOUS;
  const repository = 'name' in ep ? ep.name : undefined;
  const areq = { headers: req.headers, socket: req.socket, ip, ...(repository !== undefined ? { repository } : {}) };
  const outcome = await auth.authenticate(areq);
  if (!outcome.ok) throw authError(outcome, auth.challenge(req, repository));
  // The API version check is where clients learn how to log in (`docker login`, c/image's ping): with methods
  // configured, a client that sent nothing is challenged there even when anonymous pulls are allowed.
  if (ep.kind === 'base' && auth.hasMethods && outcome.identity.method === 'anonymous' && !req.headers.authorization) {
    throw errors.unauthorized('authentication required', auth.challenge(req));
  }
  return outcome.identity;
}

/** `GET|HEAD /auth/token` (Basic, a certificate, or nothing) and `POST /auth/token` (the OAuth2 password grant). */
export async function serveToken(auth: ClientAuth, req: IncomingMessage, res: ServerResponse, url: URL, ip: string): Promise<void> {
  const areq = { headers: req.headers, socket: req.socket, ip };
  let r: TokenResponse;
  if (req.method === 'POST') {
    const form = await readForm(req, 16 * 1024);
    if (!form) {
      res.setHeader('connection', 'close');
      throw errors.unsupported('expected an application/x-www-form-urlencoded body of at most 16 KiB', 400);
    }
    r = await auth.tokenGrant(areq, form);
  } else if (req.method === 'GET' || req.method === 'HEAD') {
    r = await auth.token(areq, url);
  } else {
    res.setHeader('allow', 'GET, HEAD, POST');
    throw errors.unsupported(`${req.method ?? ''} is not supported here`);
  }
  if (r.status === 401) res.setHeader('www-authenticate', auth.basicChallenge);
  if (r.status === 429) res.setHeader('retry-after', String(r.outcome && !r.outcome.ok ? (r.outcome.retryAfterSeconds ?? 1) : 1));
  res.setHeader('cache-control', 'no-store');
  sendJson(res, r.status, r.body, req.method === 'HEAD');
}

/** `/metrics` with `metricsToken` set: `Authorization: Bearer <token>`, compared in constant time. */
export function metricsAllowed(token: string | undefined, req: IncomingMessage): boolean {
  if (token === undefined) return true;
  const h = req.headers.authorization ?? '';
  const want = `Bearer ${token}`;
  return h.length === want.length && timingSafeEqual(Buffer.from(h), Buffer.from(want));
}

/** A bounded urlencoded request body (the OAuth2 token grant); undefined when too large or of another type. */
async function readForm(req: IncomingMessage, max: number): Promise<URLSearchParams | undefined> {
  if (!(req.headers['content-type'] ?? '').startsWith('application/x-www-form-urlencoded')) return undefined;
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of req as AsyncIterable<Buffer>) {
    n += c.length;
    if (n > max) return undefined;
    chunks.push(c);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}
