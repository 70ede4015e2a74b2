/**
 * The registry token flow (Distribution's token spec) with Portcullis as its own issuer. `/v2/` answers 401 with
 * `Bearer realm="<proxy>/auth/token",service="<service>"`; the client fetches `GET /auth/token?scope=…` with its
 * Basic credentials (or a client certificate) and gets a short-lived ES256 JWT granting `pull` on the repositories
 * it asked for; registry requests then carry `Authorization: Bearer <jwt>`, verified here (signature, expiry,
 * issuer, audience, and that the token's scope covers the repository of the request).
 *
 * The grant is only "this identity may try to pull these names": what it may actually pull is the policy's
 * decision (`clients` rules), made at pull time with the identity the token carries.
 */
import { createPrivateKey, hash, randomBytes, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import {
  decodeJwt,
  errors as joseErrors,
  exportJWK,
  generateKeyPair,
  importJWK,
  jwtVerify,
  SignJWT,
  type CryptoKey,
  type JWTPayload,
  type KeyObject,
} from 'jose';
import { LRUCache } from 'lru-cache';
import { authorizationHeader, fail, type AuthOutcome, type AuthRequest, type Authenticator, type Identity } from './authenticator.js';

export interface TokenOptions {
  /** `service` in the challenge, and the token's issuer and audience. */
  service: string;
  /** Lifetime of an issued token. */
  ttl: number;
  /** PKCS#8 PEM file with a P-256 private key; absent: a key generated at start (tokens die with the process). */
  keyFile?: string;
  now?: () => number;
}

/** One `access` entry of a Docker registry token. */
export interface Access {
  type: 'repository';
  name: string;
  actions: string[];
}

type SigningKey = CryptoKey | KeyObject;

export class TokenAuthority implements Authenticator {
  readonly method = 'token' as const;
  private readonly now: () => number;
  /**
   * Tokens whose signature and claims verified, until their expiry: a logged-in client sends the same token with
   * every request, and an ES256 verification per request would halve warm-pull throughput. Keyed by a SHA-256 under
   * a per-process random salt, never the token itself (not an HMAC: createHmac prepares a key object on every call,
   * which cost more than the rest of the check). Only a token that verified is remembered, so a flood of forged
   * tokens still costs one verification each.
   */
  private readonly verified = new LRUCache<string, { payload: JWTPayload; expiresAt: number }>({ max: 10_000 });
  private readonly salt = randomBytes(32).toString('base64');

  private readonly privateKey: SigningKey;
  private readonly publicKey: SigningKey;
  readonly keyId: string;

  private constructor(
    private readonly o: TokenOptions,
    keys: { privateKey: SigningKey; publicKey: SigningKey; keyId: string },
  ) {
    this.now = o.now ?? Date.now;
    this.privateKey = keys.privateKey;
    this.publicKey = keys.publicKey;
    this.keyId = keys.keyId;
  }

  static async create(o: TokenOptions): Promise<TokenAuthority> {
    let privateKey: SigningKey;
    let publicKey: SigningKey;
    if (o.keyFile) {
      const key = createPrivateKey(readFileSync(o.keyFile));
      if (key.asymmetricKeyType !== 'ec' || key.asymmetricKeyDetails?.namedCurve !== 'prime256v1') {
        throw new Error(`auth.token.keyFile: ${o.keyFile} is not a P-256 (ES256) private key`);
      }
      privateKey = key;
      const jwk = key.export({ format: 'jwk' });
      publicKey = (await importJWK({ kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y }, 'ES256')) as SigningKey;
    } else {
      ({ privateKey, publicKey } = await generateKeyPair('ES256'));
    }
    const pub = await exportJWK(publicKey);
    return new TokenAuthority(o, { privateKey, publicKey, keyId: `${pub.x?.slice(0, 16) ?? 'key'}` });
  }

  get service(): string {
    return this.o.service;
  }

  /** Is this compact JWT one of ours (by its unverified issuer)? Others go to the OIDC authenticator. */
  isOurs(token: string): boolean {
    if (this.verified.has(this.keyOf(token))) return true;
    try {
      return decodeJwt(token).iss === this.o.service;
    } catch {
      return false;
    }
  }

  async issue(
    identity: Identity,
    access: Access[],
    ttlMs = this.o.ttl,
  ): Promise<{ token: string; access_token: string; expires_in: number; issued_at: string }> {
    const nowS = Math.floor(this.now() / 1000);
    const expiresIn = Math.max(60, Math.round(ttlMs / 1000));
    const claims: Record<string, unknown> = { access, groups: identity.groups, method: identity.method };
    if (identity.scanJob) claims.scan = identity.scanJob.digest;
    const token = await new SignJWT(claims)
      .setProtectedHeader({ alg: 'ES256', typ: 'JWT', kid: this.keyId })
      .setIssuer(this.o.service)
      .setAudience(this.o.service)
      .setSubject(identity.user ?? '')
      .setIssuedAt(nowS)
      .setNotBefore(nowS - 5)
      .setExpirationTime(nowS + expiresIn)
      .setJti(randomUUID())
      .sign(this.privateKey);
    return { token, access_token: token, expires_in: expiresIn, issued_at: new Date(nowS * 1000).toISOString() };
  }

  async authenticate(req: AuthRequest): Promise<AuthOutcome | undefined> {
    const a = authorizationHeader(req.headers);
    if (!a || a.scheme !== 'bearer' || !this.isOurs(a.value)) return undefined;
    return this.verify(a.value, req.repository);
  }

  private keyOf(token: string): string {
    return hash('sha256', `${this.salt}\0${token}`, 'base64');
  }

  async verify(token: string, repository: string | undefined): Promise<AuthOutcome> {
    let payload: JWTPayload;
    const key = this.keyOf(token);
    const hit = this.verified.get(key);
    if (hit && this.now() < hit.expiresAt) {
      payload = hit.payload;
    } else {
      if (hit) {
        this.verified.delete(key);
        return fail('TOKEN_EXPIRED', 'token has expired');
      }
      try {
        ({ payload } = await jwtVerify(token, this.publicKey, {
          issuer: this.o.service,
          audience: this.o.service,
          algorithms: ['ES256'],
          currentDate: new Date(this.now()),
          requiredClaims: ['exp', 'sub'],
        }));
      } catch (e) {
        return joseFailure(e);
      }
      this.verified.set(key, { payload, expiresAt: (payload.exp as number) * 1000 });
    }
    if (repository !== undefined && !grantsPull(payload.access, repository)) {
      return fail('TOKEN_SCOPE', `token does not grant pull on repository "${repository.slice(0, 200)}"`);
    }
    const user = typeof payload.sub === 'string' && payload.sub !== '' ? payload.sub : null;
    // A scanner job token (issued by Portcullis itself, never by the token endpoint): one repository, one digest.
    if (payload.method === 'scanner') {
      const only = Array.isArray(payload.access) && payload.access.length === 1 ? (payload.access[0] as Access) : undefined;
      if (typeof payload.scan !== 'string' || !only || typeof only.name !== 'string') return fail('TOKEN_INVALID', 'token is not valid');
      return { ok: true, identity: { user: SCANNER_USER, groups: ['scanner'], method: 'scanner', scanJob: { repository: only.name, digest: payload.scan } } };
    }
    if (user === null) return { ok: true, identity: { user: null, groups: [], method: 'anonymous' } };
    const groups = Array.isArray(payload.groups) ? payload.groups.filter((g): g is string => typeof g === 'string') : [];
    return { ok: true, identity: { user, groups, method: 'token' } };
  }
}

export const SCANNER_USER = 'portcullis-scanner';

/** Maps jose's verification errors onto stable codes. */
export function joseFailure(e: unknown): AuthOutcome {
  if (e instanceof joseErrors.JWTExpired) return fail('TOKEN_EXPIRED', 'token has expired');
  if (e instanceof joseErrors.JWTClaimValidationFailed) {
    if (e.claim === 'aud') return fail('TOKEN_AUDIENCE', 'token audience is not accepted here');
    if (e.claim === 'iss') return fail('TOKEN_ISSUER', 'token issuer is not accepted here');
    return fail('TOKEN_INVALID', `token claim "${e.claim}" is not valid`);
  }
  return fail('TOKEN_INVALID', 'token is not valid');
}

function grantsPull(access: unknown, repository: string): boolean {
  if (!Array.isArray(access)) return false;
  return access.some((a: unknown) => {
    if (typeof a !== 'object' || a === null) return false;
    const x = a as Record<string, unknown>;
    return x.type === 'repository' && x.name === repository && Array.isArray(x.actions) && x.actions.includes('pull');
  });
}

/**
 * `scope` parameters of a token request (several, or several space-separated in one): `repository:<name>:<actions>`.
 * The name may hold one `:` (a host:port prefix), so the type ends at the first `:` and the actions start after the
 * last. Only `pull` is ever granted: this is a read-only proxy.
 */
export function parseScopes(values: string[]): Access[] {
  const out = new Map<string, Access>();
  for (const v of values) {
    for (const s of v.split(' ')) {
      const first = s.indexOf(':');
      const last = s.lastIndexOf(':');
      if (first <= 0 || last <= first) continue;
      if (s.slice(0, first) !== 'repository') continue;
      const name = s.slice(first + 1, last);
      const actions = s.slice(last + 1).split(',');
      if (!name || name.length > 512 || !(actions.includes('pull') || actions.includes('*'))) continue;
      out.set(name, { type: 'repository', name, actions: ['pull'] });
      if (out.size >= 32) return [...out.values()];
    }
  }
  return [...out.values()];
}
