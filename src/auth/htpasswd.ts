/**
 * HTTP Basic against an htpasswd file (bcrypt entries only: `$2y$`, `$2b$`, `$2a$`, as `htpasswd -B` writes them;
 * Distribution accepts nothing else either).
 *
 * The costs an attacker could push onto the proxy are bounded in this order:
 * 1. a credential verified in the last `cacheTTL` is remembered, keyed by an HMAC of user and password under a
 *    random per-process key (the secret itself is never stored), so a pulling client costs one bcrypt, not one per
 *    request;
 * 2. every other attempt first takes a token from its client address's bucket, BEFORE any hashing; a success gives
 *    it back, so only failures count; an empty bucket is a 429 with Retry-After;
 * 3. the comparison runs in a worker thread behind a bounded queue (bcrypt-pool.ts).
 * An unknown user costs one bcrypt against a dummy hash of the same cost and gets the same message as a wrong
 * password, so neither timing nor text tells the two apart.
 */
import { createHmac, randomBytes } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import bcrypt from 'bcryptjs';
import { LRUCache } from 'lru-cache';
import { basicCredentials, fail, type AuthOutcome, type AuthRequest, type Authenticator, type Identity } from './authenticator.js';
import { BusyError, type PasswordHasher } from './bcrypt-pool.js';
import type { RateLimiter } from './rate-limit.js';

export interface HtpasswdOptions {
  file: string;
  /** group → members; a user's groups are the groups that list it. */
  groups: Record<string, string[]>;
  cacheTTL: number;
  failures: RateLimiter;
  hasher: PasswordHasher;
  now?: () => number;
  /** How often the file's mtime is checked for changes. */
  reloadInterval?: number;
}

export const BAD_CREDENTIALS_MESSAGE = 'invalid username or password';

export class HtpasswdAuthenticator implements Authenticator {
  readonly method = 'basic' as const;
  private users = new Map<string, string>();
  private dummyHash = '';
  private mtimeMs = -1;
  private checkedAt = -Infinity;
  private readonly hmacKey = randomBytes(32);
  private readonly verified = new LRUCache<string, { identity: Identity; expiresAt: number }>({ max: 10_000 });
  private readonly now: () => number;
  /** Entries that are not bcrypt: ignored, and reported once per load. */
  skipped: string[] = [];

  constructor(private readonly o: HtpasswdOptions) {
    this.now = o.now ?? Date.now;
    this.load();
  }

  private load(): void {
    const st = statSync(this.o.file);
    const text = readFileSync(this.o.file, 'utf8');
    const users = new Map<string, string>();
    const skipped: string[] = [];
    for (const raw of text.split('\n')) {
      const line = raw.trim();
      if (!line || line.startsWith('#')) continue;
      const i = line.indexOf(':');
      if (i <= 0) continue;
      const user = line.slice(0, i);
      const hash = line.slice(i + 1);
      if (/^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$/.test(hash)) users.set(user, hash.replace(/^\$2y\$/, '$2b$'));
      else skipped.push(user);
    }
    // The dummy hash has the cost of the file's first entry: an unknown user then costs what a known one does.
    const cost = Number([...users.values()][0]?.slice(4, 6) ?? 10);
    if (!this.dummyHash || Number(this.dummyHash.slice(4, 6)) !== cost) {
      this.dummyHash = bcrypt.hashSync(randomBytes(16).toString('hex'), bcrypt.genSaltSync(Math.min(Math.max(cost, 4), 14)));
    }
    this.users = users;
    this.skipped = skipped;
    this.mtimeMs = st.mtimeMs;
    // A removed user or a changed password must not stay usable through the cache.
    this.verified.clear();
  }

  private maybeReload(): void {
    const t = this.now();
    if (t - this.checkedAt < (this.o.reloadInterval ?? 2_000)) return;
    this.checkedAt = t;
    try {
      if (statSync(this.o.file).mtimeMs !== this.mtimeMs) this.load();
    } catch {
      // A file that is being replaced: keep the last good user list.
    }
  }

  groupsOf(user: string): string[] {
    return Object.entries(this.o.groups)
      .filter(([, members]) => members.includes(user))
      .map(([g]) => g)
      .sort();
  }

  authenticate(req: AuthRequest): Promise<AuthOutcome | undefined> {
    const c = basicCredentials(req.headers);
    if (!c) return Promise.resolve(undefined);
    return this.verify(c.user, c.password, req.ip);
  }

  /** Also used by the token endpoint, which takes the same Basic credentials. */
  async verify(user: string, password: string, ip: string): Promise<AuthOutcome> {
    this.maybeReload();
    const key = createHmac('sha256', this.hmacKey).update(user).update('\0').update(password).digest('base64');
    const hit = this.verified.get(key);
    if (hit && hit.expiresAt > this.now()) return { ok: true, identity: hit.identity };
    const taken = this.o.failures.take(ip);
    if (!taken.ok) return fail('RATE_LIMITED', 'too many failed login attempts; try again later', taken.retryAfterSeconds);
    const hash = this.users.get(user);
    let ok: boolean;
    try {
      ok = await this.o.hasher.compare(password, hash ?? this.dummyHash);
    } catch (e) {
      this.o.failures.refund(ip);
      if (e instanceof BusyError) return fail('BUSY', 'too many logins in progress; try again later', 1);
      throw e;
    }
    if (!ok || hash === undefined) return fail('BAD_CREDENTIALS', BAD_CREDENTIALS_MESSAGE);
    this.o.failures.refund(ip);
    const identity: Identity = { user, groups: this.groupsOf(user), method: 'basic' };
    this.verified.set(key, { identity, expiresAt: this.now() + this.o.cacheTTL });
    return { ok: true, identity };
  }
}
