/**
 * Test harness: a minimal token server for Distribution's `auth: token` mode (Docker token spec,
 * protocols.md §2), so tests can put a real registry behind a Bearer realm.
 *
 * - The signing key (ECDSA P-256) is made by Node; the self-signed certificate by the `openssl` CLI,
 *   because Node cannot create certificates. Distribution 2.8 verifies the JWT header's `x5c` chain
 *   against `rootcertbundle`, so the cert PEM is what the registry config points at.
 * - Tokens are ES256 JWTs with a raw r||s signature (JOSE form, `dsaEncoding: 'ieee-p1363'`).
 *   `aud` is a plain string: 2.8's ClaimSet declares `aud` as a string and would not accept a list.
 * - Both token request styles are served on the realm: GET ?service=&scope= with optional Basic
 *   credentials, and the OAuth2 POST form (grant_type=password). Every request is recorded so tests
 *   can assert how often a client (or the proxy) fetched tokens, i.e. whether it caches them.
 * - Grants: a known user gets every requested action; anonymous gets `pull` only, or nothing
 *   (401) with `requireAuth`. `authorize` overrides both for fine-grained tests.
 */
import { spawnSync } from 'node:child_process';
import { X509Certificate, generateKeyPairSync, randomUUID, sign, type KeyObject } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface TokenIssuerOptions {
  /** `aud` / registry `service` (default 'portcullis-test-registry'). */
  service?: string;
  /** `iss` / registry `issuer` (default 'portcullis-test-issuer'). */
  issuer?: string;
  /** username -> password accepted via Basic or the OAuth2 password grant. */
  users?: Record<string, string>;
  /** Refuse anonymous token requests with 401 (default false: anonymous gets pull on everything). */
  requireAuth?: boolean;
  /** Token lifetime in seconds, used for both `exp` and `expires_in` (default 300). */
  expiresIn?: number;
  /** Omit `expires_in` from the response (clients must then assume 60 s). */
  omitExpiresIn?: boolean;
  /** The loopback address to listen on (default 127.0.0.1); another one is another host for realm rules. */
  host?: string;
  /**
   * Custom grant decision: actions granted to `user` (undefined = anonymous) on a resource.
   * Return a subset of `requested` (intersection semantics, as real token servers do).
   */
  authorize?: (user: string | undefined, type: string, name: string, requested: string[]) => string[];
}

export interface AccessEntry {
  type: string;
  name: string;
  actions: string[];
}

/** One recorded token request. */
export interface TokenRequest {
  method: 'GET' | 'POST';
  service: string | undefined;
  /** Raw scope strings, one per `scope` parameter (POST: split on spaces). */
  scopes: string[];
  /** Whether any credentials were presented (Basic header or POST username/password). */
  withCredentials: boolean;
  /** Username presented, valid or not. */
  user: string | undefined;
  /** OAuth2 grant_type (POST only). */
  grantType: string | undefined;
  clientId: string | undefined;
  /** HTTP status the issuer answered with. */
  status: number;
  /** Access actually granted in the token (empty if refused). */
  granted: AccessEntry[];
  at: Date;
}

export interface RunningTokenIssuer {
  /** Token endpoint URL: `http://127.0.0.1:PORT/token` (or the host asked for). */
  realm: string;
  service: string;
  issuer: string;
  /** PEM certificate to use as the registry's `rootcertbundle`. */
  rootCertBundlePath: string;
  requests(): TokenRequest[];
  clearRequests(): void;
  /** Mint a token directly (no HTTP, not recorded), e.g. to push test images to a token-auth registry. */
  mint(user: string | undefined, access: AccessEntry[], expiresIn?: number): string;
  stop(): Promise<void>;
}

const b64url = (b: Buffer | string): string => Buffer.from(b).toString('base64url');

/**
 * Parse a scope like `repository:host:5000/ns/app:pull,push`. Type is up to the first ':', actions
 * after the last ':'; the name may itself contain ':' (protocols.md §2.1).
 */
export function parseScope(scope: string): AccessEntry | undefined {
  const first = scope.indexOf(':');
  const last = scope.lastIndexOf(':');
  if (first < 0 || last === first) return undefined;
  return {
    type: scope.slice(0, first),
    name: scope.slice(first + 1, last),
    actions: scope
      .slice(last + 1)
      .split(',')
      .filter(Boolean),
  };
}

async function makeCertificate(dir: string, keyPem: string, cn: string): Promise<{ path: string; der: Buffer }> {
  const keyPath = join(dir, 'key.pem');
  const certPath = join(dir, 'cert.pem');
  await writeFile(keyPath, keyPem, { mode: 0o600 });
  const r = spawnSync('openssl', ['req', '-x509', '-new', '-key', keyPath, '-sha256', '-days', '2', '-subj', `/CN=${cn}`, '-out', certPath], {
    encoding: 'utf8',
  });
  if (r.error || r.status !== 0) {
    throw new Error(`openssl could not create the token signing certificate: ${r.error?.message ?? r.stderr}`);
  }
  return { path: certPath, der: new X509Certificate(await readFile(certPath)).raw };
}

async function readBody(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

function basicUser(header: string | undefined): { user: string; password: string } | undefined {
  const m = /^Basic\s+(\S+)$/i.exec(header ?? '');
  if (!m) return undefined;
  const decoded = Buffer.from(m[1]!, 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  return colon < 0 ? { user: decoded, password: '' } : { user: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
}

export async function startTokenIssuer(opts: TokenIssuerOptions = {}): Promise<RunningTokenIssuer> {
  const service = opts.service ?? 'portcullis-test-registry';
  const issuer = opts.issuer ?? 'portcullis-test-issuer';
  const expiresIn = opts.expiresIn ?? 300;
  const users = opts.users ?? {};

  const dir = await mkdtemp(join(tmpdir(), 'portcullis-token-'));
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const keyPem = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  const { path: certPath, der: certDer } = await makeCertificate(dir, keyPem, issuer);

  const mint = (user: string | undefined, access: AccessEntry[], lifetime = expiresIn): string =>
    signJwt(privateKey, certDer, {
      iss: issuer,
      sub: user ?? '',
      aud: service,
      lifetime,
      access,
    });

  const log: TokenRequest[] = [];

  const grant = (user: string | undefined, scopes: string[]): AccessEntry[] => {
    const out: AccessEntry[] = [];
    for (const s of scopes) {
      const want = parseScope(s);
      if (!want) continue;
      const actions = opts.authorize
        ? opts.authorize(user, want.type, want.name, want.actions)
        : user !== undefined
          ? want.actions
          : want.actions.filter((a) => a === 'pull');
      if (actions.length) out.push({ type: want.type, name: want.name, actions });
    }
    return out;
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    const send = (status: number, body: unknown, extra: Record<string, string> = {}): void => {
      res.writeHead(status, { 'Content-Type': 'application/json', ...extra });
      res.end(JSON.stringify(body));
    };
    if (url.pathname !== '/token' || (req.method !== 'GET' && req.method !== 'POST')) {
      send(404, { error: 'not_found' });
      return;
    }

    let scopes: string[];
    let svc: string | undefined;
    let creds: { user: string; password: string } | undefined;
    let grantType: string | undefined;
    let clientId: string | undefined;
    if (req.method === 'GET') {
      scopes = url.searchParams.getAll('scope');
      svc = url.searchParams.get('service') ?? undefined;
      clientId = url.searchParams.get('client_id') ?? undefined;
      creds = basicUser(req.headers.authorization);
    } else {
      const form = new URLSearchParams(await readBody(req));
      scopes = (form.get('scope') ?? '').split(' ').filter(Boolean);
      svc = form.get('service') ?? undefined;
      grantType = form.get('grant_type') ?? undefined;
      clientId = form.get('client_id') ?? undefined;
      const username = form.get('username');
      creds = username !== null ? { user: username, password: form.get('password') ?? '' } : basicUser(req.headers.authorization);
    }
    const record = (status: number, granted: AccessEntry[]): void => {
      log.push({
        method: req.method as 'GET' | 'POST',
        service: svc,
        scopes,
        withCredentials: creds !== undefined,
        user: creds?.user,
        grantType,
        clientId,
        status,
        granted,
        at: new Date(),
      });
    };

    if (req.method === 'POST' && grantType !== 'password') {
      // refresh_token grants are not implemented; containerd falls back to GET on 400.
      record(400, []);
      send(400, { error: 'unsupported_grant_type' });
      return;
    }
    if (creds && users[creds.user] !== creds.password) {
      record(401, []);
      send(
        401,
        { errors: [{ code: 'UNAUTHORIZED', message: 'invalid credentials' }] },
        {
          'WWW-Authenticate': 'Basic realm="portcullis-test-token"',
        },
      );
      return;
    }
    if (!creds && opts.requireAuth) {
      record(401, []);
      send(
        401,
        { errors: [{ code: 'UNAUTHORIZED', message: 'authentication required' }] },
        {
          'WWW-Authenticate': 'Basic realm="portcullis-test-token"',
        },
      );
      return;
    }
    const granted = grant(creds?.user, scopes);
    const token = mint(creds?.user, granted);
    record(200, granted);
    send(200, {
      token,
      access_token: token,
      ...(opts.omitExpiresIn ? {} : { expires_in: expiresIn }),
      issued_at: new Date().toISOString(),
      ...(req.method === 'POST' ? { scope: scopes.join(' ') } : {}),
    });
  };

  const server = createServer((req, res) => {
    handle(req, res).catch((e: unknown) => {
      res.writeHead(500, { 'Content-Type': 'text/plain' });
      res.end(String(e));
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, opts.host ?? '127.0.0.1', () => resolve());
  });
  const addr = server.address();
  if (!addr || typeof addr !== 'object') throw new Error('token issuer: no listen address');

  return {
    realm: `http://${opts.host ?? '127.0.0.1'}:${addr.port}/token`,
    service,
    issuer,
    rootCertBundlePath: certPath,
    requests: () => [...log],
    clearRequests: () => {
      log.length = 0;
    },
    mint,
    stop: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await rm(dir, { recursive: true, force: true });
    },
  };
}

interface ClaimInput {
  iss: string;
  sub: string;
  aud: string;
  lifetime: number;
  access: AccessEntry[];
}

/** ES256 JWT with x5c = [leaf cert DER]; the cert is self-signed and is the registry's trust root. */
function signJwt(key: KeyObject, certDer: Buffer, c: ClaimInput): string {
  const now = Math.floor(Date.now() / 1000);
  const header = { typ: 'JWT', alg: 'ES256', x5c: [certDer.toString('base64')] };
  const claims = {
    iss: c.iss,
    sub: c.sub,
    aud: c.aud,
    exp: now + c.lifetime,
    // Slightly in the past so clock granularity never makes a fresh token "not yet valid".
    nbf: now - 5,
    iat: now,
    jti: randomUUID(),
    access: c.access,
  };
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
  const sig = sign('sha256', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' });
  return `${input}.${b64url(sig)}`;
}
