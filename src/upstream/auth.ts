/**
 * Upstream authentication: Basic, and the Docker registry token flow (GET, or the OAuth2 POST form when we hold
 * credentials). Tokens are cached per scope until shortly before they expire, and concurrent misses for the same
 * scope share one token request, so a herd of pulls costs the token server one round trip.
 *
 * The realm is named by the upstream, so a hostile or compromised upstream could name any URL. Credentials go only
 * to a realm on the upstream's own host or registrable domain (registry-1.docker.io → auth.docker.io), or one the
 * config lists in `upstreams[].tokenRealms`; any other realm gets an anonymous token request, and a warning once.
 * A plain-http realm for an https upstream is not contacted at all.
 */
import { LRUCache } from 'lru-cache';
import { getDomain } from 'tldts';
import { request, type Dispatcher } from 'undici';
import { readCapped } from '../util/capped-body.js';
import { parseChallenges, type Challenge } from './challenge.js';
import { SingleFlight } from '../util/single-flight.js';

export interface Credentials {
  username: string;
  password: string;
}

interface CachedToken {
  value: string;
  expiresAt: number;
}

export class AuthError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'AuthError';
  }
}

/** A token response is a JWT and a few fields: a few KiB. Past this the upstream is not a token server. */
export const MAX_TOKEN_RESPONSE_BYTES = 256 * 1024;
/** Tokens kept; keyed by scope, which a client chooses (every repository name it invents is a new scope). */
export const DEFAULT_MAX_TOKENS = 1024;

export interface AuthenticatorOptions {
  /** The upstream's base URL: credentials go to realms on its host or registrable domain. */
  upstreamUrl: URL;
  /** Read per token fetch, so rotated credentials are used at once; undefined: anonymous. */
  credentials: () => Credentials | undefined;
  /** The upstream's connection pool (its TLS and egress rules). */
  dispatcher: Dispatcher;
  /** The token-expiry clock. */
  now?: () => number;
  /** Counts token fetches (metrics). */
  onTokenFetch?: (outcome: 'ok' | 'error') => void;
  /** Realms (origins such as https://auth.example.com, or host names) that may receive credentials. */
  tokenRealms?: readonly string[];
  /** Called once per realm origin that is denied credentials, with the reason. */
  onRealmRefused?: (realm: string, reason: string) => void;
  maxTokens?: number;
}

export class Authenticator {
  /** The last challenge the upstream sent; learned lazily from the first 401. */
  private challenge: Challenge | undefined;
  private readonly tokens: LRUCache<string, CachedToken>;
  private readonly inflight = new SingleFlight<string, string>();
  /** Realms already warned about; bounded, since the upstream names them. */
  private readonly warned = new LRUCache<string, true>({ max: 256 });

  private readonly upstreamUrl: URL;
  private readonly credentials: () => Credentials | undefined;
  private readonly dispatcher: Dispatcher;
  private readonly now: () => number;
  private readonly onTokenFetch: (outcome: 'ok' | 'error') => void;

  constructor(private readonly opts: AuthenticatorOptions) {
    this.upstreamUrl = opts.upstreamUrl;
    this.credentials = opts.credentials;
    this.dispatcher = opts.dispatcher;
    this.now = opts.now ?? Date.now;
    this.onTokenFetch = opts.onTokenFetch ?? (() => {});
    this.tokens = new LRUCache({ max: opts.maxTokens ?? DEFAULT_MAX_TOKENS });
  }

  /** How many tokens are cached (bounded by maxTokens). */
  get cachedTokens(): number {
    return this.tokens.size;
  }

  /** The Authorization header to send for this scope, or undefined when none is known to be needed yet. */
  async authorization(scope: string): Promise<string | undefined> {
    const ch = this.challenge;
    if (!ch) return undefined;
    if (ch.scheme === 'basic') return this.basic();
    if (ch.scheme === 'bearer') return `Bearer ${await this.token(ch, scope)}`;
    return undefined;
  }

  /**
   * Learns from a 401 to a request that carried `sent` (its Authorization header, or null for none). Returns true
   * when retrying can help: the request went out without credentials, or with a bearer token that has since been
   * replaced, or with the current one (which is then dropped: it may have been revoked or expired early).
   *
   * Decided per request rather than only by "did the challenge change": when several requests go out before the
   * first challenge is known, every one of them comes back 401 with the same challenge, and each must still retry
   * (the upstream client passes `sent`). When `sent` is not given, only a new challenge or a dropped cached token
   * counts.
   */
  onUnauthorized(wwwAuthenticate: string | undefined, scope: string, sent?: string | null): boolean {
    const challenges = wwwAuthenticate ? parseChallenges(wwwAuthenticate) : [];
    const chosen = challenges.find((c) => c.scheme === 'bearer' && c.params.realm) ?? challenges.find((c) => c.scheme === 'basic');
    if (!chosen) return false;
    if (chosen.scheme === 'basic' && !this.credentials()) return false;
    const changed = JSON.stringify(chosen) !== JSON.stringify(this.challenge);
    this.challenge = chosen;
    const key = this.tokenKey(chosen, scope);
    if (sent === undefined) {
      const hadToken = this.tokens.delete(key);
      return changed || hadToken;
    }
    if (chosen.scheme === 'basic') {
      // Basic credentials that were sent and refused will be refused again, unless the challenge itself is new.
      return changed || sent === null || !sent.startsWith('Basic ');
    }
    const cached = this.tokens.get(key);
    if (cached && sent === `Bearer ${cached.value}`) this.tokens.delete(key);
    return true;
  }

  private basic(): string | undefined {
    const c = this.credentials();
    return c ? `Basic ${Buffer.from(`${c.username}:${c.password}`).toString('base64')}` : undefined;
  }

  private tokenKey(ch: Challenge, scope: string): string {
    return `${ch.params.realm}\n${ch.params.service ?? ''}\n${scope}`;
  }

  private async token(ch: Challenge, scope: string): Promise<string> {
    const key = this.tokenKey(ch, scope);
    const cached = this.tokens.get(key);
    if (cached && cached.expiresAt > this.now()) return cached.value;
    return this.inflight.run(key, () =>
      this.fetchToken(ch, scope).then(
        (t) => {
          this.tokens.set(key, t);
          this.onTokenFetch('ok');
          return t.value;
        },
        (e: unknown) => {
          this.onTokenFetch('error');
          throw e;
        },
      ),
    );
  }

  private realmUrl(ch: Challenge): URL {
    const realm = ch.params.realm;
    if (!realm) throw new AuthError('bearer challenge without realm');
    let url: URL;
    try {
      url = new URL(realm);
    } catch {
      throw new AuthError(`bearer realm is not a URL: ${realm.slice(0, 100)}`);
    }
    // An https upstream must not be able to send our credentials to a plain-http realm.
    if (this.upstreamUrl.protocol === 'https:' && url.protocol !== 'https:') {
      throw new AuthError(`refusing non-https token realm ${url.origin} for an https upstream`);
    }
    return url;
  }

  private async fetchToken(ch: Challenge, scope: string): Promise<CachedToken> {
    const realm = this.realmUrl(ch);
    const creds = this.credentialsFor(realm);
    const service = ch.params.service;
    const started = this.now();
    let res = creds ? await this.postToken(realm, service, scope, creds) : undefined;
    if (!res) {
      const url = new URL(realm);
      if (service) url.searchParams.set('service', service);
      for (const s of scope.split(' ').filter(Boolean)) url.searchParams.append('scope', s);
      const headers: Record<string, string> = {};
      if (creds) headers.authorization = `Basic ${Buffer.from(`${creds.username}:${creds.password}`).toString('base64')}`;
      const r = await request(url, { method: 'GET', headers, dispatcher: this.dispatcher });
      const body = await this.readBody(r.body, url);
      if (r.statusCode !== 200) throw new AuthError(`token request to ${url.origin} failed: HTTP ${r.statusCode}`);
      res = body;
    }
    let parsed: { token?: unknown; access_token?: unknown; expires_in?: unknown; issued_at?: unknown };
    try {
      parsed = JSON.parse(res) as typeof parsed;
    } catch {
      throw new AuthError(`token response from ${realm.origin} is not JSON`);
    }
    const value = typeof parsed.token === 'string' && parsed.token ? parsed.token : parsed.access_token;
    if (typeof value !== 'string' || !value) throw new AuthError(`token response from ${realm.origin} has no token`);
    // The spec's default lifetime is 60 s; refresh a little early so a token never expires mid-request.
    const expiresIn = typeof parsed.expires_in === 'number' && parsed.expires_in > 0 ? parsed.expires_in : 60;
    const issued = typeof parsed.issued_at === 'string' ? Date.parse(parsed.issued_at) : NaN;
    const base = Number.isFinite(issued) && issued <= this.now() + 60_000 ? Math.min(issued, started) : started;
    return { value, expiresAt: base + expiresIn * 1000 * 0.9 };
  }

  /** OAuth2 password grant; undefined when the realm does not support it, so the caller falls back to GET. */
  private async postToken(realm: URL, service: string | undefined, scope: string, creds: Credentials): Promise<string | undefined> {
    const form = new URLSearchParams({ grant_type: 'password', client_id: 'portcullis', username: creds.username, password: creds.password, scope });
    if (service) form.set('service', service);
    const r = await request(realm, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: form.toString(),
      dispatcher: this.dispatcher,
    });
    const body = await this.readBody(r.body, realm);
    if (r.statusCode === 200) return body;
    if ([400, 401, 404, 405].includes(r.statusCode)) return undefined;
    throw new AuthError(`token request to ${realm.origin} failed: HTTP ${r.statusCode}`);
  }

  private async readBody(body: Dispatcher.ResponseData['body'], url: URL): Promise<string> {
    const bytes = await readCapped(
      body,
      MAX_TOKEN_RESPONSE_BYTES,
      () => new AuthError(`token response from ${url.origin} is larger than ${MAX_TOKEN_RESPONSE_BYTES} bytes`),
    );
    return bytes.toString('utf8');
  }

  /** The credentials to present to this realm, or undefined when it may not have them (then: anonymous). */
  private credentialsFor(realm: URL): Credentials | undefined {
    const creds = this.credentials();
    if (!creds) return undefined;
    const refusal = realmRefusal(this.upstreamUrl, realm, this.opts.tokenRealms ?? []);
    if (refusal === undefined) return creds;
    if (!this.warned.has(realm.origin)) {
      this.warned.set(realm.origin, true);
      this.opts.onRealmRefused?.(realm.origin, refusal);
    }
    return undefined;
  }
}

/**
 * Why credentials for `upstream` may not go to `realm`, or undefined when they may: same host, same registrable
 * domain (public suffix list, private suffixes included, so two github.io sites are not one domain), or listed.
 * IP addresses have no registrable domain: only the same address qualifies.
 */
export function realmRefusal(upstream: URL, realm: URL, listed: readonly string[]): string | undefined {
  if (upstream.protocol === 'https:' && realm.protocol !== 'https:') return 'plain http realm for an https upstream';
  const host = realm.hostname.toLowerCase();
  if (host === upstream.hostname.toLowerCase()) return undefined;
  if (listed.some((l) => l.toLowerCase() === host || l.toLowerCase().replace(/\/+$/, '') === realm.origin)) return undefined;
  const opts = { allowPrivateDomains: true };
  const own = getDomain(upstream.hostname, opts);
  if (own && own === getDomain(host, opts)) return undefined;
  return `realm ${host} is outside the upstream's domain ${own ?? upstream.hostname} (list it in upstreams[].tokenRealms to send credentials there)`;
}
