/**
 * Test harness: Debian's real `redis-server` (installed by scripts/install-tools.sh) on a random loopback port, in a
 * throw-away directory, with persistence off (no RDB, no AOF: Redis holds only what Portcullis can rebuild). For the
 * failure tests it can be paused (SIGSTOP: connections stay open, nothing answers, as a stalled server), resumed,
 * killed (SIGKILL) and restarted empty on the same port, or flushed.
 *
 * The process is killed from a process 'exit' hook as well, so a crashed test run leaves no server behind. No silent
 * skip: a missing `redis-server` fails with the installer's name.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { freePort } from './registry.js';

export interface RunningRedis {
  port: number;
  /** `redis://127.0.0.1:PORT/0` */
  url: string;
  /** `redis-server --version`'s line, for the README's "verified against". */
  version: string;
  /** A fresh client (the caller quits it). */
  client(): Redis;
  /** FLUSHALL: everything Redis held is gone, as after a failover to an empty replica. */
  flush(): Promise<void>;
  /** SIGSTOP / SIGCONT: a server that accepts nothing and answers nothing, then comes back with its data. */
  pause(): void;
  resume(): void;
  /** SIGKILL; `restart` then starts an empty server on the same port. */
  kill(): Promise<void>;
  restart(): Promise<void>;
  output(): string;
  stop(): Promise<void>;
}

const READY_TIMEOUT_MS = 20_000;
const OUTPUT_KEEP = 200;
const live = new Set<ChildProcess>();
let hooked = false;

function assertBinary(): string {
  const r = spawnSync('redis-server', ['--version'], { encoding: 'utf8' });
  if (r.error || r.status !== 0) {
    throw new Error(`redis-server is not on PATH; install it with scripts/install-tools.sh test. Cause: ${r.error?.message ?? r.stderr}`);
  }
  return r.stdout.trim();
}

/** `args`: more redis-server arguments (`--replicaof 127.0.0.1 P`, `--cluster-enabled yes`, …). */
export async function startRedis(o: { args?: string[] } = {}): Promise<RunningRedis> {
  const version = assertBinary();
  if (!hooked) {
    hooked = true;
    process.on('exit', () => {
      for (const c of live) {
        c.kill('SIGCONT');
        c.kill('SIGKILL');
      }
    });
  }
  const dir = await mkdtemp(join(tmpdir(), 'pc-redis-'));
  const port = await freePort();
  const lines: string[] = [];
  let child: ChildProcess | undefined;
  let exited = true;

  const launch = async (): Promise<void> => {
    const args = [
      '--port',
      String(port),
      '--bind',
      '127.0.0.1',
      '--save',
      '',
      '--appendonly',
      'no',
      '--dir',
      dir,
      '--protected-mode',
      'yes',
      ...(o.args ?? []),
    ];
    const c = spawn('redis-server', args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    child = c;
    exited = false;
    live.add(c);
    c.once('exit', () => {
      exited = true;
      live.delete(c);
    });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`redis-server not ready after ${READY_TIMEOUT_MS} ms:\n${lines.slice(-20).join('\n')}`)),
        READY_TIMEOUT_MS,
      );
      const keep = (b: Buffer): void => {
        for (const l of b.toString().split('\n')) {
          if (!l) continue;
          lines.push(l);
          if (l.includes('Ready to accept connections')) {
            clearTimeout(timer);
            resolve();
          }
        }
        if (lines.length > OUTPUT_KEEP) lines.splice(0, lines.length - OUTPUT_KEEP);
      };
      c.stdout?.on('data', keep);
      c.stderr?.on('data', keep);
      c.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`redis-server exited (${code}) during start-up:\n${lines.slice(-20).join('\n')}`));
      });
    });
  };

  const kill = async (): Promise<void> => {
    const c = child;
    if (!c || exited) return;
    const gone = new Promise((r) => c.once('exit', r));
    c.kill('SIGCONT');
    c.kill('SIGKILL');
    await gone;
  };

  await launch();
  const url = `redis://127.0.0.1:${port}/0`;
  const client = (): Redis => new Redis({ host: '127.0.0.1', port, lazyConnect: false, maxRetriesPerRequest: 1 });
  return {
    port,
    url,
    version,
    client,
    flush: async () => {
      const c = client();
      try {
        await c.flushall();
      } finally {
        c.disconnect();
      }
    },
    pause: () => child?.kill('SIGSTOP'),
    resume: () => child?.kill('SIGCONT'),
    kill,
    restart: async () => {
      await kill();
      await launch();
    },
    output: () => lines.join('\n'),
    stop: async () => {
      await kill();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

export interface RunningSentinel {
  port: number;
  /** The master's name the sentinel monitors. */
  name: string;
  stop(): Promise<void>;
}

/** A Sentinel (`redis-server <conf> --sentinel`) on a random loopback port, monitoring `master` as `name`. */
export async function startSentinel(master: RunningRedis, name = 'portcullis-master'): Promise<RunningSentinel> {
  assertBinary();
  const dir = await mkdtemp(join(tmpdir(), 'pc-sentinel-'));
  const port = await freePort();
  const conf = join(dir, 'sentinel.conf');
  // Sentinel rewrites its config file, so it must be writable and its own.
  await writeFile(
    conf,
    [
      `port ${port}`,
      'bind 127.0.0.1',
      `dir ${dir}`,
      `sentinel monitor ${name} 127.0.0.1 ${master.port} 1`,
      `sentinel down-after-milliseconds ${name} 1000`,
      '',
    ].join('\n'),
  );
  const c = spawn('redis-server', [conf, '--sentinel'], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(c);
  let exited = false;
  c.once('exit', () => {
    exited = true;
    live.delete(c);
  });
  const lines: string[] = [];
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`sentinel not ready after ${READY_TIMEOUT_MS} ms:\n${lines.slice(-20).join('\n')}`)), READY_TIMEOUT_MS);
    const keep = (b: Buffer): void => {
      for (const l of b.toString().split('\n')) {
        if (!l) continue;
        lines.push(l);
        if (l.includes('+monitor master')) {
          clearTimeout(timer);
          resolve();
        }
      }
    };
    c.stdout?.on('data', keep);
    c.stderr?.on('data', keep);
    c.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`sentinel exited (${code}) during start-up:\n${lines.slice(-20).join('\n')}`));
    });
  });
  return {
    port,
    name,
    stop: async () => {
      if (!exited) {
        const gone = new Promise((r) => c.once('exit', r));
        c.kill('SIGKILL');
        await gone;
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}
