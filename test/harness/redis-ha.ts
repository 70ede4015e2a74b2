/**
 * Test harness: Redis set-ups with more than one server, from Debian's real `redis-server` on random loopback ports
 * (test/harness/redis.ts starts each server and kills it on exit):
 * - a Sentinel set-up: a master, a replica (`--replicaof`), and N sentinels (`redis-server CONF --sentinel`) with
 *   a quorum, failing over within a few seconds of the master's death (down-after 1 s);
 * - a Redis Cluster: N masters (`--cluster-enabled yes`), joined by `redis-cli --cluster create … --cluster-yes`.
 * Every wait is bounded (until(), a count of checks); stop() kills every process it started.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { startRedis, type RunningRedis } from './redis.js';
import { freePort } from './registry.js';
import { until } from './wait.js';

const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});

/** One command on a fresh connection (quit after), or the error's message. */
export async function ask(port: number, ...args: string[]): Promise<unknown> {
  const c = new Redis({ host: '127.0.0.1', port, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  c.on('error', () => undefined);
  try {
    await c.connect();
    return await c.call(args[0]!, ...args.slice(1));
  } catch (e) {
    return e instanceof Error ? e.message : String(e);
  } finally {
    c.disconnect();
  }
}

export interface SentinelSet {
  name: string;
  master: RunningRedis;
  replica: RunningRedis;
  sentinelPorts: number[];
  /** The port Sentinel names as master now. */
  masterPort(): Promise<number | undefined>;
  stop(): Promise<void>;
}

/** A master, its replica and `count` sentinels with `quorum`, each sentinel knowing the replica and the others. */
export async function startSentinelSet(o: { count: number; quorum: number; name?: string }): Promise<SentinelSet> {
  const name = o.name ?? 'portcullis-ha';
  const master = await startRedis();
  const replica = await startRedis({ args: ['--replicaof', '127.0.0.1', String(master.port)] });
  await until(async () => /master_link_status:up/.test(String(await ask(replica.port, 'INFO', 'replication'))), 'the replica in sync', 20_000);
  const sentinels: Array<{ port: number; child: ChildProcess; dir: string }> = [];
  const stop = async (): Promise<void> => {
    await Promise.all(
      sentinels.map(async (s) => {
        if (s.child.exitCode === null && s.child.signalCode === null) {
          const gone = new Promise((r) => s.child.once('exit', r));
          s.child.kill('SIGKILL');
          await gone;
        }
        await rm(s.dir, { recursive: true, force: true });
      }),
    );
    await Promise.all([master.stop(), replica.stop()]);
  };
  try {
    for (let i = 0; i < o.count; i++) {
      const dir = await mkdtemp(join(tmpdir(), 'pc-sentinel-'));
      const port = await freePort();
      const conf = join(dir, 'sentinel.conf');
      // Sentinel rewrites its config file (what it learns), so each has its own, writable.
      await writeFile(
        conf,
        [
          `port ${port}`,
          'bind 127.0.0.1',
          `dir ${dir}`,
          `sentinel monitor ${name} 127.0.0.1 ${master.port} ${o.quorum}`,
          `sentinel down-after-milliseconds ${name} 1000`,
          `sentinel failover-timeout ${name} 5000`,
          `sentinel parallel-syncs ${name} 1`,
          '',
        ].join('\n'),
      );
      const child = spawn('redis-server', [conf, '--sentinel'], { cwd: dir, stdio: 'ignore' });
      live.add(child);
      child.once('exit', () => live.delete(child));
      sentinels.push({ port, child, dir });
    }
    // Every sentinel knows the replica and the other sentinels (else a failover cannot be voted or has no target).
    for (const s of sentinels) {
      await until(
        async () => {
          const m = await ask(s.port, 'SENTINEL', 'MASTER', name);
          if (!Array.isArray(m)) return false;
          const f = new Map<string, string>();
          for (let i = 0; i + 1 < m.length; i += 2) f.set(String(m[i]), String(m[i + 1]));
          return f.get('num-slaves') === '1' && f.get('num-other-sentinels') === String(o.count - 1);
        },
        `sentinel ${s.port} sees the replica and ${o.count - 1} other sentinels`,
        30_000,
      );
    }
  } catch (e) {
    await stop();
    throw e;
  }
  return {
    name,
    master,
    replica,
    sentinelPorts: sentinels.map((s) => s.port),
    masterPort: async () => {
      const r = await ask(sentinels[0]!.port, 'SENTINEL', 'GET-MASTER-ADDR-BY-NAME', name);
      return Array.isArray(r) ? Number(r[1]) : undefined;
    },
    stop,
  };
}

export interface RedisClusterSet {
  ports: number[];
  nodes: RunningRedis[];
  stop(): Promise<void>;
}

/** `count` cluster-enabled masters joined into one cluster (no replicas), every slot covered. */
export async function startRedisCluster(count = 3): Promise<RedisClusterSet> {
  const nodes = await Promise.all(
    Array.from({ length: count }, () =>
      startRedis({ args: ['--cluster-enabled', 'yes', '--cluster-config-file', 'nodes.conf', '--cluster-node-timeout', '2000'] }),
    ),
  );
  const stop = async (): Promise<void> => {
    await Promise.all(nodes.map((n) => n.stop()));
  };
  try {
    const create = spawnSync('redis-cli', ['--cluster', 'create', ...nodes.map((n) => `127.0.0.1:${n.port}`), '--cluster-replicas', '0', '--cluster-yes'], {
      encoding: 'utf8',
      timeout: 60_000,
    });
    if (create.status !== 0) throw new Error(`redis-cli --cluster create failed (${create.status}): ${create.stdout}\n${create.stderr}`);
    for (const n of nodes) {
      await until(async () => /cluster_state:ok/.test(String(await ask(n.port, 'CLUSTER', 'INFO'))), `node ${n.port} sees the cluster ok`, 30_000);
    }
  } catch (e) {
    await stop();
    throw e;
  }
  return { ports: nodes.map((n) => n.port), nodes, stop };
}
