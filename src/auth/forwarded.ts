/**
 * Forwarded identity for chained instances: a node-level Portcullis whose upstream is a central Portcullis tells the
 * central tier who its client is, in a short-lived JWT it signs (`Portcullis-Forwarded-Identity`). The central tier
 * believes it only when all of these hold:
 *   - the request itself authenticated (the node's own identity: mTLS, token, Basic, OIDC);
 *   - the JWT's signature verifies with a key configured for THAT node identity (`auth.forwarded.trustedKeys[].node`),
 *     so one node's key cannot speak for another node, and a client holding no node credentials cannot use it at all;
 *   - its audience is this tier's (`auth.forwarded.audience`): a header made for another central tier is refused;
 *   - it is fresh: `exp` in the future, and `exp - iat` at most 60 s.
 * A header that fails any check is a 401 (`FORWARDED_INVALID`), never a silent fall-back to the node's identity:
 * a misconfigured or forged chain must be visible, and the node's identity may be wider than its client's.
 * Without `auth.forwarded` the header is never read (the node's identity decides).
 *
 * The node side learns "the client of this upstream request" from an AsyncLocalStorage the server sets around each
 * request (`requestIdentity`): the upstream client runs inside that request's async context, even several calls deep.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { createPrivateKey, createPublicKey, randomUUID, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createLocalJWKSet, jwtVerify, SignJWT, type JSONWebKeySet, type JWTPayload, type JWTVerifyGetKey } from 'jose';
import { fail, type AuthMethod, type AuthOutcome, type Identity } from './authenticator.js';
import { joseFailure } from './token.js';

export const FORWARDED_IDENTITY_HEADER = 'portcullis-forwarded-identity';

/** The longest lifetime a forwarded-identity JWT may claim. */
export const MAX_FORWARDED_TTL_S = 60;

/** The identity of the client whose request is being served (set by the server, read by the upstream client). */
export const requestIdentity = new AsyncLocalStorage<Identity>();

const METHODS: ReadonlySet<string> = new Set<AuthMethod>(['basic', 'token', 'mtls', 'oidc', 'anonymous']);

export interface ForwardSignerOptions {
  /** PKCS#8 PEM private key: EC P-256 (ES256) or Ed25519 (EdDSA). */
  key: string;
  keyId: string;
  audience: string;
  /** Lifetime of a header, ms (≤ 60 s). */
  ttl: number;
  now?: () => number;
}

function algOf(key: KeyObject, field: string): 'ES256' | 'EdDSA' {
  if (key.asymmetricKeyType === 'ed25519') return 'EdDSA';
  if (key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1') return 'ES256';
  throw new Error(`${field}: expected an EC P-256 or Ed25519 key, got ${key.asymmetricKeyType ?? 'unknown'}`);
}

/** Node side: signs the current client's identity for one upstream. */
export class ForwardSigner {
  private readonly key: KeyObject;
  private readonly alg: 'ES256' | 'EdDSA';
  private readonly now: () => number;

  constructor(private readonly o: ForwardSignerOptions) {
    this.key = createPrivateKey(readFileSync(o.key));
    this.alg = algOf(this.key, 'forwardIdentity.key');
    this.now = o.now ?? Date.now;
  }

  /** The header value for the client of the current request; undefined outside a client request (no one to name). */
  async header(): Promise<string | undefined> {
    const identity = requestIdentity.getStore();
    return identity ? this.sign(identity) : undefined;
  }

  sign(identity: Identity): Promise<string> {
    const nowS = Math.floor(this.now() / 1000);
    const ttl = Math.min(MAX_FORWARDED_TTL_S, Math.max(1, Math.round(this.o.ttl / 1000)));
    return new SignJWT({ groups: identity.groups, method: identity.method })
      .setProtectedHeader({ alg: this.alg, typ: 'JWT', kid: this.o.keyId })
      .setSubject(identity.user ?? '')
      .setAudience(this.o.audience)
      .setIssuedAt(nowS)
      .setExpirationTime(nowS + ttl)
      .setJti(randomUUID())
      .sign(this.key);
  }
}

export interface TrustedNodeKey {
  /** The authenticated user name of the node that signs with this key. */
  node: string;
  /** PEM public key file (SPKI). */
  publicKey?: string | undefined;
  /** A JWKS file: every key in it belongs to this node. */
  jwksFile?: string | undefined;
}

export interface ForwardedOptions {
  audience: string;
  trustedKeys: TrustedNodeKey[];
}

/** Central side: turns a node's identity plus its signed header into the original client's identity, `via` the node. */
export class ForwardedVerifier {
  private readonly byNode = new Map<string, JWTVerifyGetKey[]>();

  constructor(
    private readonly o: ForwardedOptions,
    private readonly now: () => number = Date.now,
  ) {
    for (const k of o.trustedKeys) {
      let getKey: JWTVerifyGetKey;
      if (k.jwksFile) {
        getKey = createLocalJWKSet(JSON.parse(readFileSync(k.jwksFile, 'utf8')) as JSONWebKeySet);
      } else {
        const pub = createPublicKey(readFileSync(k.publicKey!));
        algOf(pub, 'auth.forwarded.trustedKeys[].publicKey');
        getKey = () => pub;
      }
      this.byNode.set(k.node, [...(this.byNode.get(k.node) ?? []), getKey]);
    }
  }

  async verify(token: string, node: Identity): Promise<AuthOutcome> {
    const keys = node.user === null ? undefined : this.byNode.get(node.user);
    if (!keys) return fail('FORWARDED_INVALID', 'this identity may not forward another identity');
    let last: AuthOutcome = fail('FORWARDED_INVALID', 'forwarded identity is not valid');
    for (const key of keys) {
      let payload: JWTPayload;
      try {
        ({ payload } = await jwtVerify(token, key, {
          audience: this.o.audience,
          algorithms: ['ES256', 'EdDSA'],
          currentDate: new Date(this.now()),
          requiredClaims: ['exp', 'iat', 'sub'],
          maxTokenAge: MAX_FORWARDED_TTL_S,
        }));
      } catch (e) {
        const f = joseFailure(e);
        last = fail('FORWARDED_INVALID', `forwarded identity: ${f.ok ? 'not valid' : f.message}`);
        continue;
      }
      // maxTokenAge bounds iat; a token minted with a long exp is refused too, so that a leaked one dies quickly.
      if (typeof payload.exp !== 'number' || typeof payload.iat !== 'number' || payload.exp - payload.iat > MAX_FORWARDED_TTL_S) {
        return fail('FORWARDED_INVALID', `forwarded identity: lifetime over ${MAX_FORWARDED_TTL_S}s`);
      }
      if (payload.iat * 1000 > this.now() + 5_000) return fail('FORWARDED_INVALID', 'forwarded identity: issued in the future');
      const method = typeof payload.method === 'string' && METHODS.has(payload.method) ? (payload.method as AuthMethod) : undefined;
      if (!method) return fail('FORWARDED_INVALID', 'forwarded identity: unknown method');
      const user = typeof payload.sub === 'string' && payload.sub !== '' && method !== 'anonymous' ? payload.sub : null;
      const groups = user !== null && Array.isArray(payload.groups) ? payload.groups.filter((g): g is string => typeof g === 'string').slice(0, 64) : [];
      const via = { user: node.user, groups: node.groups, method: node.method };
      return { ok: true, identity: { user, groups, method: user === null ? 'anonymous' : method, via } };
    }
    return last;
  }
}
