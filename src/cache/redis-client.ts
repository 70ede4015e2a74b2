/** The ioredis clients for `storage.redis` (src/config/storage.ts): a plain server, or a master found through Sentinel. */
import { readFileSync } from 'node:fs';
import { Redis, type RedisOptions } from 'ioredis';
import type { SecretRef } from '../config/schema.js';
import type { RedisConfig } from '../config/storage.js';

export interface RedisConnections {
  client: Redis;
  /** For pub/sub: a subscribed connection can run nothing else. */
  subscriber: Redis;
  /** storage.redis.signingKey, read at start. */
  signingKey: Buffer | undefined;
}

export function redisClients(cfg: RedisConfig, readSecret: (ref: SecretRef) => string, onError: (err: unknown) => void): RedisConnections {
  const secret = (field: string, ref: SecretRef | undefined): string | undefined => {
    if (!ref) return undefined;
    try {
      return readSecret(ref);
    } catch (e) {
      const detail = (e as { detail?: string }).detail ?? (e instanceof Error ? e.message : String(e));
      throw new Error(`storage.redis.${field}: ${detail}`, { cause: e });
    }
  };
  const username = secret('username', cfg.username);
  const password = secret('password', cfg.password);
  const sentinelPassword = secret('sentinel.password', cfg.sentinel?.password);
  const key = secret('signingKey', cfg.signingKey);
  if (key !== undefined && Buffer.byteLength(key) < 32) throw new Error('storage.redis.signingKey: at least 32 bytes');
  const signingKey = key === undefined ? undefined : Buffer.from(key);
  const tlsOn = cfg.tls || cfg.url?.startsWith('rediss:') === true;
  const tls = tlsOn ? (cfg.caFile ? { ca: readFileSync(cfg.caFile) } : {}) : undefined;
  const common: RedisOptions = {
    ...(username !== undefined ? { username } : {}),
    ...(password !== undefined ? { password } : {}),
    ...(tls ? { tls } : {}),
    // Fail fast instead of queueing: a request never waits for Redis to come back, it goes on without it.
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    commandTimeout: cfg.commandTimeout,
    connectTimeout: Math.max(1_000, cfg.commandTimeout * 4),
    // Reconnect for ever, backing off to 2 s: Redis coming back must be noticed without a restart.
    retryStrategy: (times: number) => Math.min(100 * times, 2_000),
    lazyConnect: false,
  };
  let options: RedisOptions;
  if (cfg.sentinel) {
    options = {
      ...common,
      name: cfg.sentinel.name,
      db: cfg.db,
      sentinels: cfg.sentinel.sentinels.map((hp) => {
        const i = hp.lastIndexOf(':');
        return { host: hp.slice(0, i).replace(/^\[|\]$/g, ''), port: Number(hp.slice(i + 1)) };
      }),
      ...(sentinelPassword !== undefined ? { sentinelPassword } : {}),
      ...(tls ? { enableTLSForSentinelMode: true, sentinelTLS: tls } : {}),
      sentinelRetryStrategy: (times: number) => Math.min(100 * times, 2_000),
    };
  } else {
    const u = new URL(cfg.url as string);
    options = { ...common, host: u.hostname.replace(/^\[|\]$/g, ''), port: Number(u.port || 6379), db: Number(u.pathname.slice(1) || 0) };
  }
  const client = new Redis(options);
  // The subscriber may queue its SUBSCRIBE until connected (ioredis re-subscribes after every reconnect).
  const subscriber = new Redis({ ...options, enableOfflineQueue: true, commandTimeout: undefined });
  client.on('error', onError);
  subscriber.on('error', onError);
  return { client, subscriber, signingKey };
}
