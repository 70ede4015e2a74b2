/**
 * Client authentication: who is pulling. Each method (htpasswd Basic, Portcullis's own registry tokens, mTLS
 * certificates, OIDC bearer tokens) is one Authenticator in its own file; client-auth.ts runs them in order for a
 * listener and turns the outcome into an identity or a 401 challenge.
 *
 * An outcome is typed and carries a stable code: the server maps a failure onto `401 UNAUTHORIZED` (or 429) in one
 * place, tests and metrics branch on the code, never on the message.
 */
import type { IncomingHttpHeaders } from 'node:http';
import type { Socket } from 'node:net';

/** `scanner`: a token Portcullis issued to its own Harbor scanner for one scan job (src/auth/token.ts). */
export type AuthMethod = 'basic' | 'token' | 'mtls' | 'oidc' | 'anonymous' | 'scanner';

/** Who a request is from, as the policy sees it (`input.request.client.user`, `groups`, `method`). */
export interface Identity {
  /** null only for anonymous requests. */
  user: string | null;
  groups: string[];
  method: AuthMethod;
  /**
   * The chained node this client's request came through (src/auth/forwarded.ts): `user`, `groups` and `method` are
   * then the original client's, as the node signed them, and `via` is the node's own verified identity.
   */
  via?: { user: string | null; groups: string[]; method: AuthMethod };
  /** method `scanner` only: the one image manifest its job may pull (with that manifest's blobs), nothing else. */
  scanJob?: { repository: string; digest: string };
}

export const ANONYMOUS: Identity = Object.freeze({ user: null, groups: [], method: 'anonymous' });

export type AuthFailureCode =
  /** No credentials, and this listener does not allow anonymous requests. */
  | 'CREDENTIALS_REQUIRED'
  /** Wrong password or unknown user: deliberately one code, one message. */
  | 'BAD_CREDENTIALS'
  /** Too many failed attempts from this address: refused before any hashing. */
  | 'RATE_LIMITED'
  /** Too many verifications already queued for the hashing worker. */
  | 'BUSY'
  | 'TOKEN_INVALID'
  | 'TOKEN_EXPIRED'
  | 'TOKEN_AUDIENCE'
  | 'TOKEN_ISSUER'
  /** A valid token that does not grant pull on the requested repository. */
  | 'TOKEN_SCOPE'
  /** A client certificate that is not trusted or maps to no identity. */
  | 'CERT_INVALID'
  /** A forwarded-identity header that does not verify for this (node) identity. */
  | 'FORWARDED_INVALID'
  /** An Authorization scheme no configured method understands. */
  | 'UNSUPPORTED_SCHEME';

export type AuthOutcome = { ok: true; identity: Identity } | { ok: false; code: AuthFailureCode; message: string; retryAfterSeconds?: number };

/** What an authenticator may look at: headers and the TLS socket, never the body. */
export interface AuthRequest {
  headers: IncomingHttpHeaders;
  socket: Socket;
  /** The client's address, for per-address rate limits. */
  ip: string;
  /** The repository name as the client wrote it in the path (`127.0.0.1:5001/demo/app`), for token scopes. */
  repository?: string;
}

export interface Authenticator {
  readonly method: Exclude<AuthMethod, 'anonymous'>;
  /**
   * undefined: the request carries nothing this method understands (another method, or anonymous, may apply).
   * An outcome: this method claimed the request, and its verdict is final (a bad password never falls through to
   * anonymous).
   */
  authenticate(req: AuthRequest): Promise<AuthOutcome | undefined>;
}

export function fail(code: AuthFailureCode, message: string, retryAfterSeconds?: number): AuthOutcome {
  return retryAfterSeconds === undefined ? { ok: false, code, message } : { ok: false, code, message, retryAfterSeconds };
}

/** `Authorization: <scheme> <rest>`, scheme lower-cased; undefined when absent or malformed. */
export function authorizationHeader(headers: IncomingHttpHeaders): { scheme: string; value: string } | undefined {
  const h = headers.authorization;
  if (typeof h !== 'string') return undefined;
  const m = /^([A-Za-z][A-Za-z0-9._~+/-]*)\s+(\S.*)$/.exec(h.trim());
  if (!m) return undefined;
  return { scheme: m[1]!.toLowerCase(), value: m[2]!.trim() };
}

/** Basic credentials (RFC 7617); undefined when the header is not Basic or not `user:password`. */
export function basicCredentials(headers: IncomingHttpHeaders): { user: string; password: string } | undefined {
  const a = authorizationHeader(headers);
  if (!a || a.scheme !== 'basic') return undefined;
  const decoded = Buffer.from(a.value, 'base64').toString('utf8');
  const i = decoded.indexOf(':');
  if (i <= 0) return undefined;
  return { user: decoded.slice(0, i), password: decoded.slice(i + 1) };
}

/** Something shaped like a compact JWS (three base64url parts), so Basic passwords that are JWTs can go to OIDC. */
export function looksLikeJwt(s: string): boolean {
  return /^[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}$/.test(s);
}
