/**
 * Client authentication for one listener: runs the configured methods in a fixed order, answers the token
 * endpoint, and builds the challenge a 401 carries.
 *
 * Order: an `Authorization` header decides alone (Basic: htpasswd, or OIDC when the password is a JWT; Bearer: a
 * Portcullis token, else OIDC); a failure there is final and never falls back to a certificate or to anonymous.
 * Without a header, a verified client certificate names the client; without one, the request is anonymous where
 * the listener allows it, and refused where it does not.
 */
import type { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import { ANONYMOUS, authorizationHeader, basicCredentials, fail, looksLikeJwt, type AuthOutcome, type AuthRequest, type Identity } from './authenticator.js';
import { BcryptWorker } from './bcrypt-pool.js';
import type { AuthConfig } from '../config/auth.js';
import { FORWARDED_IDENTITY_HEADER, ForwardedVerifier } from './forwarded.js';
import { HtpasswdAuthenticator } from './htpasswd.js';
import { MtlsAuthenticator } from './mtls.js';
import { OidcAuthenticator } from './oidc.js';
import { KeyedBuckets } from './rate-limit.js';
import { parseScopes, SCANNER_USER, TokenAuthority } from './token.js';

export const TOKEN_PATH = '/auth/token';
/** Issuer of scanner job tokens when `auth.token` is not configured. */
const SCANNER_SERVICE = 'portcullis-scanner';

/** The token endpoint's answer, for the server to send. */
export interface TokenResponse {
  status: number;
  body: unknown;
  outcome?: AuthOutcome;
}

export interface ClientAuthOptions {
  now?: () => number;
  /** The listener verifies client certificates (`tls.clientCA`): they name the client even without `auth.mtls`. */
  clientCertificates?: boolean;
  /** Called with every authentication outcome (metrics); must not throw. */
  onOutcome?: (method: string, outcome: AuthOutcome) => void;
}

/** The configured methods, built by ClientAuth.create (the ones that load keys or files are async). */
interface Methods {
  htpasswd: HtpasswdAuthenticator | undefined;
  tokens: TokenAuthority | undefined;
  mtls: MtlsAuthenticator | undefined;
  oidc: OidcAuthenticator | undefined;
  hasher: BcryptWorker | undefined;
  forwarded: ForwardedVerifier | undefined;
  /** Issues and verifies scanner job tokens: `tokens` when configured, else an authority of its own. */
  scanner: TokenAuthority;
}

export class ClientAuth {
  private readonly htpasswd: HtpasswdAuthenticator | undefined;
  private readonly tokens: TokenAuthority | undefined;
  private readonly mtls: MtlsAuthenticator | undefined;
  private readonly oidc: OidcAuthenticator | undefined;
  private readonly hasher: BcryptWorker | undefined;
  private readonly forwarded: ForwardedVerifier | undefined;
  private readonly scanner: TokenAuthority;

  private constructor(
    private readonly cfg: AuthConfig,
    m: Methods,
    private readonly o: ClientAuthOptions,
  ) {
    this.htpasswd = m.htpasswd;
    this.tokens = m.tokens;
    this.mtls = m.mtls;
    this.oidc = m.oidc;
    this.hasher = m.hasher;
    this.forwarded = m.forwarded;
    this.scanner = m.scanner;
  }

  static async create(cfg: AuthConfig, o: ClientAuthOptions = {}): Promise<ClientAuth> {
    const now = o.now ?? Date.now;
    const hasher = cfg.htpasswd ? new BcryptWorker() : undefined;
    const htpasswd =
      cfg.htpasswd && hasher
        ? new HtpasswdAuthenticator({
            file: cfg.htpasswd.file,
            groups: cfg.htpasswd.groups,
            cacheTTL: cfg.cacheTTL,
            failures: new KeyedBuckets({ burst: cfg.failedLogins.burst, perSecond: cfg.failedLogins.perMinute / 60 }, now),
            hasher,
            now,
          })
        : undefined;
    const tokens = cfg.token
      ? await TokenAuthority.create({ service: cfg.token.service, ttl: cfg.token.ttl, ...(cfg.token.keyFile ? { keyFile: cfg.token.keyFile } : {}), now })
      : undefined;
    const mtls = cfg.mtls || o.clientCertificates ? new MtlsAuthenticator(cfg.mtls ?? { user: 'uri', map: [] }) : undefined;
    const oidc = cfg.oidc.length > 0 ? new OidcAuthenticator(cfg.oidc, now) : undefined;
    const forwarded = cfg.forwarded ? new ForwardedVerifier(cfg.forwarded, now) : undefined;
    const scanner = tokens ?? (await TokenAuthority.create({ service: SCANNER_SERVICE, ttl: 600_000, now }));
    return new ClientAuth(cfg, { htpasswd, tokens, mtls, oidc, hasher, forwarded, scanner }, o);
  }

  /** Methods configured: challenges are sent, and identities checked on blobs and child manifests. */
  get hasMethods(): boolean {
    return Boolean(this.htpasswd || this.mtls || this.oidc);
  }

  /** htpasswd entries that are not bcrypt and were ignored (for a start-up warning). */
  get skippedUsers(): string[] {
    return this.htpasswd?.skipped ?? [];
  }

  async authenticate(req: AuthRequest): Promise<AuthOutcome> {
    let [method, outcome] = await this.run(req);
    // A chained node's client (forwarded.ts): only read where configured, only believed from a trusted node.
    const fwd = req.headers[FORWARDED_IDENTITY_HEADER];
    if (this.forwarded && outcome.ok && fwd !== undefined) {
      method = 'forwarded';
      outcome = typeof fwd === 'string' ? await this.forwarded.verify(fwd, outcome.identity) : fail('FORWARDED_INVALID', 'more than one forwarded identity');
    }
    try {
      this.o.onOutcome?.(method, outcome);
    } catch {
      // Metrics never change an outcome.
    }
    return outcome;
  }

  private async run(req: AuthRequest): Promise<[string, AuthOutcome]> {
    let a = authorizationHeader(req.headers);
    // Built only for the scanner's pull-through tokens (no client authentication configured): any other header is
    // not read, as on a listener without client authentication, where clients may send stale credentials freely.
    if (a && !(this.htpasswd || this.tokens || this.mtls || this.oidc) && !(a.scheme === 'bearer' && this.scanner.isOurs(a.value))) a = undefined;
    if (a) {
      if (a.scheme === 'basic') {
        const c = basicCredentials(req.headers);
        if (c && this.oidc && looksLikeJwt(c.password)) return ['oidc', await this.oidc.verify(c.password)];
        if (c && this.htpasswd) return ['basic', await this.htpasswd.verify(c.user, c.password, req.ip)];
        return ['basic', fail('BAD_CREDENTIALS', 'invalid username or password')];
      }
      if (a.scheme === 'bearer') {
        if (this.tokens?.isOurs(a.value)) return ['token', await this.tokens.verify(a.value, req.repository)];
        if (this.scanner !== this.tokens && this.scanner.isOurs(a.value)) return ['scanner', await this.scanner.verify(a.value, req.repository)];
        if (this.oidc && looksLikeJwt(a.value)) return ['oidc', await this.oidc.verify(a.value)];
        return ['token', fail('TOKEN_INVALID', 'token is not valid')];
      }
      return ['none', fail('UNSUPPORTED_SCHEME', `authorization scheme "${a.scheme.slice(0, 20)}" is not supported`)];
    }
    if (this.mtls) {
      const r = await this.mtls.authenticate(req);
      if (r) return ['mtls', r];
    }
    if (this.cfg.anonymous) return ['anonymous', { ok: true, identity: ANONYMOUS }];
    return ['anonymous', fail('CREDENTIALS_REQUIRED', 'authentication required')];
  }

  /**
   * The `WWW-Authenticate` value of a 401: a Bearer challenge naming the token endpoint when Portcullis issues
   * tokens, else Basic.
   */
  challenge(req: { headers: AuthRequest['headers']; socket: Socket }, repository?: string): string {
    if (this.tokens) {
      const scope = repository ? `,scope="repository:${repository}:pull"` : '';
      return `Bearer realm="${this.realmOf(req)}",service="${this.tokens.service}"${scope}`;
    }
    return `Basic realm="${this.cfg.realm}"`;
  }

  private realmOf(req: { headers: AuthRequest['headers']; socket: Socket }): string {
    if (this.cfg.token?.realm) return this.cfg.token.realm;
    const host = typeof req.headers.host === 'string' && /^[A-Za-z0-9.\-:[\]]{1,300}$/.test(req.headers.host) ? req.headers.host : 'localhost';
    return `${req.socket instanceof TLSSocket ? 'https' : 'http'}://${host}${TOKEN_PATH}`;
  }

  /** Is this the token endpoint (and is it enabled)? */
  isTokenRequest(pathname: string): boolean {
    return this.tokens !== undefined && pathname === TOKEN_PATH;
  }

  /**
   * `GET /auth/token?service=…&scope=…`: authenticates like a registry request (Basic, an OIDC JWT as Basic
   * password, a client certificate, or nothing where anonymous is allowed) and answers with a token for the
   * requested repositories, or 401 with a Basic challenge so that `docker login` and friends ask for credentials.
   */
  async token(req: AuthRequest, url: URL): Promise<TokenResponse> {
    const tokens = this.tokens;
    if (!tokens) return { status: 404, body: { errors: [{ code: 'NOT_FOUND', message: 'no token endpoint', detail: null }] } };
    const service = url.searchParams.get('service');
    if (service !== null && service !== tokens.service) {
      return { status: 400, body: { errors: [{ code: 'UNSUPPORTED', message: `unknown service "${service.slice(0, 100)}"`, detail: null }] } };
    }
    // A Bearer header here is a client replaying a token; only credentials, a certificate or nothing get a token.
    const a = authorizationHeader(req.headers);
    const outcome: AuthOutcome =
      a && a.scheme !== 'basic'
        ? fail('UNSUPPORTED_SCHEME', 'use Basic credentials to get a token')
        : await this.authenticate({ ...req, repository: undefined });
    if (!outcome.ok)
      return {
        status: outcome.code === 'RATE_LIMITED' || outcome.code === 'BUSY' ? 429 : 401,
        body: {
          errors: [
            { code: outcome.code === 'RATE_LIMITED' || outcome.code === 'BUSY' ? 'TOOMANYREQUESTS' : 'UNAUTHORIZED', message: outcome.message, detail: null },
          ],
        },
        outcome,
      };
    const access = parseScopes(url.searchParams.getAll('scope'));
    return { status: 200, body: await tokens.issue(outcome.identity, access), outcome };
  }

  /**
   * `POST /auth/token` with an OAuth2 password grant (form fields grant_type=password, username, password, scope,
   * service): what containerd sends first when it has credentials, the kubelet's imagePullSecrets among them.
   */
  async tokenGrant(req: AuthRequest, form: URLSearchParams): Promise<TokenResponse> {
    const tokens = this.tokens;
    if (!tokens) return { status: 404, body: { errors: [{ code: 'NOT_FOUND', message: 'no token endpoint', detail: null }] } };
    const service = form.get('service');
    if (form.get('grant_type') !== 'password' || (service !== null && service !== tokens.service)) {
      return { status: 400, body: { error: 'unsupported_grant_type' } };
    }
    const user = form.get('username') ?? '';
    const password = form.get('password') ?? '';
    const headers = { ...req.headers, authorization: `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}` };
    const outcome =
      user || password ? await this.authenticate({ ...req, headers, repository: undefined }) : fail('CREDENTIALS_REQUIRED', 'authentication required');
    if (!outcome.ok) {
      const throttled = outcome.code === 'RATE_LIMITED' || outcome.code === 'BUSY';
      return { status: throttled ? 429 : 401, body: { error: throttled ? 'slow_down' : 'invalid_grant', error_description: outcome.message }, outcome };
    }
    const issued = await tokens.issue(outcome.identity, parseScopes((form.get('scope') ?? '').split(' ')));
    return {
      status: 200,
      body: {
        access_token: issued.access_token,
        token_type: 'Bearer',
        expires_in: issued.expires_in,
        issued_at: issued.issued_at,
        scope: form.get('scope') ?? '',
      },
      outcome,
    };
  }

  /**
   * A token for Portcullis's own Harbor scanner to pull one image it was asked to scan: `pull` on that repository,
   * bound to that digest, method `scanner` (handlers.ts serves it that manifest and its blobs, nothing else, without
   * a policy decision: the scan is evidence for the decision). Signed by the token issuer (`auth.token`'s key when
   * configured, so that every replica accepts it; else the scanner authority's own).
   */
  async scannerToken(repository: string, digest: string, ttlMs: number): Promise<string> {
    const identity: Identity = { user: SCANNER_USER, groups: ['scanner'], method: 'scanner', scanJob: { repository, digest } };
    return (await this.scanner.issue(identity, [{ type: 'repository', name: repository, actions: ['pull'] }], ttlMs)).token;
  }

  /** The Basic challenge of the token endpoint itself. */
  get basicChallenge(): string {
    return `Basic realm="${this.cfg.realm}"`;
  }

  async close(): Promise<void> {
    await this.hasher?.close();
  }
}
