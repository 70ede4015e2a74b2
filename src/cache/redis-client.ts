/**
 * The ioredis clients for `storage.redis` (src/config/storage.ts): a plain server, a master found through Sentinel
 * (ioredis asks the sentinels again after a failover, and drops a connection to a node that is no longer master),
 * or a Redis Cluster (ioredis follows the slots; every multi-key step of ours stays in one slot: shared.ts).
 */
import { readFileSync } from 'node:fs';
import { Cluster, Redis, type ClusterOptions, type RedisOptions } from 'ioredis';
import type { SecretRef } from '../config/schema.js';
import type { RedisConfig } from '../config/storage.js';

export interface RedisConnections {
  client: Redis | Cluster;
  /** For pub/sub: a subscribed connection can run nothing else. */
  subscriber: Redis | Cluster;
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
  const sentinelPassword = secret('sentinelPassword', cfg.sentinelPassword);
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
  if (cfg.cluster) {
    const nodes = cfg.cluster.map((n) => ({ host: n.host, port: n.port }));
    const { retryStrategy: _, ...perNode } = common;
    const options: ClusterOptions = {
      redisOptions: perNode,
      enableOfflineQueue: false,
      // Reconnect for ever, backing off to 2 s, as for one server; slots moved: ioredis follows MOVED/ASK.
      clusterRetryStrategy: (times: number) => Math.min(100 * times, 2_000),
      slotsRefreshTimeout: Math.max(1_000, cfg.commandTimeout * 4),
    };
    const client = new Cluster(nodes, options);
    const subscriber = new Cluster(nodes, { ...options, enableOfflineQueue: true, redisOptions: { ...perNode, commandTimeout: undefined } });
    client.on('error', onError);
    subscriber.on('error', onError);
    return { client, subscriber, signingKey };
  }
  let options: RedisOptions;
  if (cfg.sentinels) {
    options = {
      ...common,
      name: cfg.name,
      db: cfg.db,
      sentinels: cfg.sentinels.map((n) => ({ host: n.host, port: n.port })),
      ...(sentinelPassword !== undefined ? { sentinelPassword } : {}),
      ...(tls ? { enableTLSForSentinelMode: true, sentinelTLS: tls } : {}),
      sentinelRetryStrategy: (times: number) => Math.min(100 * times, 2_000),
      // Hear +switch-master from the sentinels instead of waiting for the old master's connection to fail.
      failoverDetector: true,
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
