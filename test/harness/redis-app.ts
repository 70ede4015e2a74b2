/**
 * Test harness: Portcullis replicas in-process sharing one Redis (plain, Sentinel or Cluster: the caller gives
 * `storage.redis`'s connection fields), each with its own injected clock and a count of what its gate decided.
 */
import type { DecisionObserver } from '../../src/gate/gate.js';
import { MANIFEST_ACCEPT, type PushedImage } from './images.js';
import { startProxy, type RunningProxy } from './proxy.js';
import type { RunningRegistry } from './registry.js';

export const SIGNING_ENV = 'PC_REDIS_APP_SIGNING_KEY';
process.env[SIGNING_ENV] = 'redis-app-signing-key-0123456789abcdef0123';

export interface RedisReplica {
  p: RunningProxy;
  /** Decisions this replica's gate evaluated, and answers from a cache (local or shared). */
  c: { decisions: number; hits: number };
  /** The replica's clock (ms); tests move it. */
  clock: { t: number };
}

export async function redisReplica(o: {
  reg: RunningRegistry;
  /** The connection part of storage.redis: { url } | { name, sentinels } | { cluster }. */
  connection: Record<string, unknown>;
  prefix: string;
  /** Top-level `quotas`. */
  quotas?: Record<string, unknown>;
  /** More storage.redis fields (override the defaults above). */
  redis?: Record<string, unknown>;
  /** Start at this clock value (ms). */
  t?: number;
}): Promise<RedisReplica> {
  const c = { decisions: 0, hits: 0 };
  const observer: DecisionObserver = {
    onDecision: () => {
      c.decisions++;
    },
    onCacheHit: () => {
      c.hits++;
    },
  };
  const clock = { t: o.t ?? Date.now() };
  const p = await startProxy({
    upstreams: [{ name: 'local', registry: o.reg.host, url: o.reg.url }],
    observers: [observer],
    now: () => clock.t,
    extra: {
      storage: {
        meta: 'redis',
        redis: {
          ...o.connection,
          allowInsecure: true,
          signingKey: { env: SIGNING_ENV },
          keyPrefix: o.prefix,
          pollInterval: '200ms',
          maxStaleness: '2s',
          // Generous: a loaded CI machine must not turn a slow answer into "Redis down" (and a local decision).
          commandTimeout: '5s',
          ...o.redis,
        },
      },
      ...(o.quotas ? { quotas: o.quotas } : {}),
    },
  });
  return { p, c, clock };
}

export const manifestOf = (r: RedisReplica, reg: RunningRegistry, repo: string, ref: string): Promise<Response> =>
  fetch(`${r.p.url}/v2/${reg.host}/${repo}/manifests/${ref}`, { headers: { accept: MANIFEST_ACCEPT } });

/** A whole pull: the manifest by tag, then the config and every layer. Returns every status. */
export async function pullAll(r: RedisReplica, reg: RunningRegistry, repo: string, tag: string, img: PushedImage): Promise<number[]> {
  const m = await manifestOf(r, reg, repo, tag);
  await m.arrayBuffer();
  const statuses = [m.status];
  for (const b of [img.config, ...img.layers]) {
    const res = await fetch(`${r.p.url}/v2/${reg.host}/${repo}/blobs/${b.digest}`);
    await res.arrayBuffer();
    statuses.push(res.status);
  }
  return statuses;
}

/** The epoch in the replica's decision basis. */
export const epochOf = (r: RedisReplica): string => /;epoch=([^;]*)$/.exec(r.p.proxy.app.gate.basis())?.[1] ?? 'none';

export async function readyz(r: RedisReplica): Promise<{ status: number; body: { status: string; degraded?: string[] } }> {
  const res = await fetch(`${r.p.url}/readyz`);
  return { status: res.status, body: (await res.json()) as { status: string; degraded?: string[] } };
}
