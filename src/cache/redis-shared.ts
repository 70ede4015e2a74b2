/**
 * SharedState and the epoch's channel on Redis (key layout: shared.ts). Every lookup is bounded by the client's
 * command timeout, and skipped at once while Redis is known to be down (the last command failed and no epoch poll
 * has succeeded since), so an outage never adds a timeout to each request: a replica then works from its own SQLite
 * and decides what it has not decided itself.
 */
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import type { Cluster, Redis } from 'ioredis';
import type { Digest } from '../routing/reference.js';
import { hintFrom, MAX_HINTS_PER_MEMBER } from './closure-hints.js';
import { EntryMac } from './entry-mac.js';
import type { EpochChannel } from './epoch.js';
import type { ClosureMember, TagEntry } from './metastore.js';
import type { ClosureHint, ClosureLink, SharedDecision, SharedState } from './shared.js';

/*
 * Every script touches ONE key (KEYS[1]), so that it runs on Redis Cluster (a script's keys must share a hash slot).
 * The pub/sub channel is an argument, not a key: PUBLISH is not a keyed command (a cluster forwards it to every node).
 */

/** max(stored, ARGV[1]) + 1, stored and published (on channel ARGV[2]) in one step: two bumps never yield the same epoch. */
const BUMP = `local cur = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local known = tonumber(ARGV[1]) or 0
if known > cur then cur = known end
cur = cur + 1
redis.call('SET', KEYS[1], tostring(cur))
redis.call('PUBLISH', ARGV[2], tostring(cur))
return cur`;

/** Raises the stored epoch to at least ARGV[1] (and writes a missing key); never lowers it. */
const RAISE = `local raw = redis.call('GET', KEYS[1])
local cur = tonumber(raw or '0') or 0
local n = tonumber(ARGV[1]) or 0
if not raw or n > cur then
  if n > cur then cur = n end
  redis.call('SET', KEYS[1], tostring(cur))
  redis.call('PUBLISH', ARGV[2], tostring(cur))
end
return cur`;

/**
 * Adds one hint (ARGV[3] scored ARGV[2]) to a member's sorted set, drops the expired ones (score <= ARGV[1]) and all
 * but the ARGV[4] latest, and lets the key expire with its latest hint: bounded per member, gone when unused.
 */
const ADD_HINT = `redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local n = redis.call('ZCARD', KEYS[1])
local max = tonumber(ARGV[4])
if n > max then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - max - 1) end
local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if top[2] then redis.call('PEXPIREAT', KEYS[1], math.floor(tonumber(top[2]))) end
return n`;

export interface RedisSharedOptions {
  /** Commands (GET, SET, EVAL): one server (plain or found through Sentinel) or a Redis Cluster. */
  client: Redis | Cluster;
  /** A second connection in subscriber mode (Redis allows nothing else on it). */
  subscriber: Redis | Cluster;
  keyPrefix: string;
  /** storage.redis.signingKey: entries carry an HMAC over their key and content; unsigned or wrong ones are misses. */
  signingKey?: Buffer | undefined;
  onError?: (what: string, err: unknown) => void;
}

export class RedisShared implements SharedState, EpochChannel {
  private up = true;
  private readonly keys: { epoch: string; events: string; decision: string; tag: string; links: string };
  private readonly entries: EntryMac;

  constructor(private readonly o: RedisSharedOptions) {
    const v = `${o.keyPrefix}v1:`;
    this.keys = { epoch: `${v}epoch`, events: `${v}epoch:events`, decision: `${v}decision:`, tag: `${v}tag:`, links: `${v}links:` };
    this.entries = new EntryMac(o.signingKey);
  }

  get healthy(): boolean {
    return this.up;
  }

  async getDecision(key: string): Promise<SharedDecision | undefined> {
    const k = this.keys.decision + hash(key);
    const d = this.verified(k, parse(await this.get(k, 'read a shared decision'))) as { v?: unknown; admission?: unknown; expiresAt?: unknown } | undefined;
    if (d?.v !== 1 || typeof d.expiresAt !== 'number' || typeof d.admission !== 'object' || d.admission === null) return undefined;
    return { admission: d.admission, expiresAt: d.expiresAt };
  }

  putDecision(key: string, d: SharedDecision): void {
    const ttl = Math.floor(d.expiresAt - Date.now());
    if (ttl <= 0) return;
    const k = this.keys.decision + hash(key);
    this.set(k, this.signed(k, { v: 1, admission: d.admission, expiresAt: d.expiresAt }), ttl, 'share a decision');
  }

  async getTag(upstream: string, repository: string, tag: string): Promise<TagEntry | undefined> {
    const k = this.keys.tag + hash(`${upstream}\n${repository}\n${tag}`);
    const t = this.verified(k, parse(await this.get(k, 'read a shared tag'))) as Record<string, unknown> | undefined;
    if (t?.v !== 1 || typeof t.digest !== 'string' || typeof t.mediaType !== 'string' || typeof t.size !== 'number' || typeof t.checkedAt !== 'number') {
      return undefined;
    }
    return { digest: t.digest as TagEntry['digest'], mediaType: t.mediaType, size: t.size, checkedAt: t.checkedAt };
  }

  putTag(upstream: string, repository: string, tag: string, e: TagEntry, ttlMs: number): void {
    if (ttlMs <= 0) return;
    const k = this.keys.tag + hash(`${upstream}\n${repository}\n${tag}`);
    this.set(k, this.signed(k, { v: 1, ...e }), Math.ceil(ttlMs), 'share a tag');
  }

  async getHints(upstream: string, repository: string, member: Digest, limit: number): Promise<ClosureHint[]> {
    if (!this.up) return [];
    const k = this.linksKey(upstream, repository, member);
    let rows: string[];
    try {
      rows = await this.o.client.zrevrangebyscore(k, '+inf', `(${Date.now()}`, 'WITHSCORES', 'LIMIT', 0, Math.min(limit, MAX_HINTS_PER_MEMBER));
    } catch (e) {
      this.up = false;
      this.o.onError?.('read closure hints', e);
      return [];
    }
    const out: ClosureHint[] = [];
    for (let i = 0; i + 1 < rows.length; i += 2) {
      const e = this.entries.open(k, rows[i]);
      // Unsigned entries count only when the operator chose to trust Redis (allowUnsigned).
      const h = e && hintFrom(e.payload, e.signed || !this.entries.signing, Number(rows[i + 1]));
      if (h) out.push(h);
    }
    return out;
  }

  async putHints(upstream: string, repository: string, link: ClosureLink, members: readonly ClosureMember[], expiresAt: number): Promise<void> {
    if (!this.up || expiresAt <= Date.now()) return;
    const writes = members.slice(0, 1_000).map(async (m) => {
      const k = this.linksKey(upstream, repository, m.digest);
      const entry = this.entries.sign(k, { v: 1, role: m.role, root: link.root, voucher: link.voucher, tag: link.tag });
      try {
        await this.o.client.eval(ADD_HINT, 1, k, String(Date.now()), String(expiresAt), entry, String(MAX_HINTS_PER_MEMBER));
      } catch (e) {
        this.up = false;
        this.o.onError?.('share closure hints', e);
      }
    });
    await Promise.all(writes);
  }

  private linksKey(upstream: string, repository: string, member: string): string {
    return this.keys.links + hash(`${upstream}\n${repository}\n${member}`);
  }

  /** Resolves once the command connection is up, or after `ms` (then the replica starts degraded). */
  async connected(ms: number): Promise<void> {
    const c = this.o.client;
    if (c.status === 'ready') return;
    await new Promise<void>((resolve) => {
      const done = (): void => {
        clearTimeout(t);
        c.off('ready', done);
        resolve();
      };
      const t = setTimeout(done, ms);
      c.on('ready', done);
    });
  }

  /** The entry as stored: its JSON, with `mac` (HMAC-SHA256 of `<redis key>\n<JSON without mac>`) when signing. */
  private signed(key: string, payload: Record<string, unknown>): string {
    const text = JSON.stringify(payload);
    return this.o.signingKey ? JSON.stringify({ ...payload, mac: this.mac(key, text) }) : text;
  }

  /** The entry without its mac; undefined when signing is on and the mac is missing or wrong (bound to the key). */
  private verified(key: string, v: unknown): unknown {
    if (typeof v !== 'object' || v === null) return undefined;
    const { mac, ...payload } = v as Record<string, unknown>;
    if (!this.o.signingKey) return payload;
    if (typeof mac !== 'string' || !/^[0-9a-f]{64}$/.test(mac)) return undefined;
    const want = Buffer.from(this.mac(key, JSON.stringify(payload)), 'hex');
    return timingSafeEqual(want, Buffer.from(mac, 'hex')) ? payload : undefined;
  }

  private mac(key: string, text: string): string {
    return createHmac('sha256', this.o.signingKey!).update(`${key}\n${text}`).digest('hex');
  }

  // EpochChannel

  async read(): Promise<number | undefined> {
    try {
      const v = await this.o.client.get(this.keys.epoch);
      this.up = true;
      if (v === null) return undefined;
      const n = Number(v);
      return Number.isSafeInteger(n) && n >= 0 ? n : undefined;
    } catch (e) {
      this.up = false;
      throw e;
    }
  }

  async raise(n: number): Promise<number> {
    return Number(await this.o.client.eval(RAISE, 1, this.keys.epoch, String(n), this.keys.events));
  }

  async bump(known: number): Promise<number> {
    return Number(await this.o.client.eval(BUMP, 1, this.keys.epoch, String(known), this.keys.events));
  }

  subscribe(f: (n: number) => void): void {
    const sub = this.o.subscriber;
    sub.on('message', (channel: string, message: string) => {
      const n = Number(message);
      if (channel === this.keys.events && Number.isSafeInteger(n)) f(n);
    });
    sub.subscribe(this.keys.events).catch((e: unknown) => this.o.onError?.('subscribe to epoch events', e));
  }

  async close(): Promise<void> {
    await Promise.allSettled([this.o.client.quit(), this.o.subscriber.quit()]);
    this.o.client.disconnect();
    this.o.subscriber.disconnect();
  }

  private async get(key: string, what: string): Promise<string | null> {
    return (await this.attempt(what, (c) => c.get(key))) ?? null;
  }

  /**
   * Runs `f` unless Redis is known to be down; undefined then, or when it fails (which marks Redis down until the
   * next epoch poll gets an answer). For the other users of this connection (redis-buckets.ts).
   */
  async attempt<T>(what: string, f: (c: Redis | Cluster) => Promise<T>): Promise<T | undefined> {
    if (!this.up) return undefined;
    try {
      return await f(this.o.client);
    } catch (e) {
      this.up = false;
      this.o.onError?.(what, e);
      return undefined;
    }
  }

  private set(key: string, value: string, ttlMs: number, what: string): void {
    if (!this.up) return;
    this.o.client.set(key, value, 'PX', ttlMs).catch((e: unknown) => {
      this.up = false;
      this.o.onError?.(what, e);
    });
  }
}

function hash(s: string): string {
  return createHash('sha256').update(s).digest('hex');
}

function parse(v: string | null): unknown {
  if (v === null) return undefined;
  try {
    return JSON.parse(v) as unknown;
  } catch {
    return undefined;
  }
}
