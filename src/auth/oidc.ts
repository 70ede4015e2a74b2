/**
 * OIDC / JWT bearer tokens from an outside issuer (CI workload identity: GitHub Actions, GitLab, a Kubernetes
 * service-account issuer), verified against the issuer's JWKS (a file, or a URL that jose fetches and caches) with
 * issuer and audience checks. The token may come as `Authorization: Bearer <jwt>` or as the password of Basic
 * credentials (how `docker login -u oidc -p <jwt>` and the token endpoint carry it). Claims become user and groups.
 */
import { readFileSync } from 'node:fs';
import { createLocalJWKSet, createRemoteJWKSet, decodeJwt, jwtVerify, type JSONWebKeySet, type JWTPayload, type JWTVerifyGetKey } from 'jose';
import { authorizationHeader, basicCredentials, fail, looksLikeJwt, type AuthOutcome, type AuthRequest, type Authenticator } from './authenticator.js';
import { joseFailure } from './token.js';

export interface OidcProvider {
  issuer: string;
  audience: string[];
  jwksFile?: string;
  jwksUrl?: string;
  /** Claim that names the user (default `sub`). */
  userClaim: string;
  /** Claim holding a list of groups (or one string); absent claim: no groups. */
  groupsClaim: string;
  /** Groups every identity of this issuer gets, e.g. `ci`. */
  groups: string[];
}

interface Verifier {
  p: OidcProvider;
  keys: JWTVerifyGetKey;
}

export class OidcAuthenticator implements Authenticator {
  readonly method = 'oidc' as const;
  private readonly verifiers: Verifier[];

  constructor(
    providers: OidcProvider[],
    private readonly now: () => number = Date.now,
  ) {
    this.verifiers = providers.map((p) => ({
      p,
      keys: p.jwksFile
        ? createLocalJWKSet(JSON.parse(readFileSync(p.jwksFile, 'utf8')) as JSONWebKeySet)
        : createRemoteJWKSet(new URL(p.jwksUrl!), { timeoutDuration: 5_000, cooldownDuration: 30_000, cacheMaxAge: 600_000 }),
    }));
  }

  /** The token this request carries for OIDC: a Bearer JWT, or a Basic password that is a JWT. */
  static tokenOf(req: AuthRequest): string | undefined {
    const a = authorizationHeader(req.headers);
    if (a?.scheme === 'bearer' && looksLikeJwt(a.value)) return a.value;
    const b = basicCredentials(req.headers);
    if (b && looksLikeJwt(b.password)) return b.password;
    return undefined;
  }

  authenticate(req: AuthRequest): Promise<AuthOutcome | undefined> {
    const token = OidcAuthenticator.tokenOf(req);
    return token === undefined ? Promise.resolve(undefined) : this.verify(token);
  }

  async verify(token: string): Promise<AuthOutcome> {
    let iss: string | undefined;
    try {
      iss = decodeJwt(token).iss;
    } catch {
      return fail('TOKEN_INVALID', 'token is not valid');
    }
    const v = this.verifiers.find((x) => x.p.issuer === iss);
    if (!v) return fail('TOKEN_ISSUER', 'token issuer is not accepted here');
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(token, v.keys, {
        issuer: v.p.issuer,
        audience: v.p.audience,
        currentDate: new Date(this.now()),
        requiredClaims: ['exp'],
      }));
    } catch (e) {
      return joseFailure(e);
    }
    const user = payload[v.p.userClaim];
    if (typeof user !== 'string' || user === '') return fail('TOKEN_INVALID', `token has no "${v.p.userClaim}" claim`);
    const claimed = payload[v.p.groupsClaim];
    const groups = new Set(v.p.groups);
    if (typeof claimed === 'string') groups.add(claimed);
    else if (Array.isArray(claimed)) for (const g of claimed) if (typeof g === 'string') groups.add(g);
    return { ok: true, identity: { user, groups: [...groups].sort(), method: 'oidc' } };
  }
}
