/**
 * Test harness: Debian's real `haproxy` in front of Portcullis replicas on a random loopback port, with a generated
 * config: `mode http`, `balance roundrobin`, no cookie, no stickiness, so that every request may land on another
 * replica (what a Kubernetes Service without session affinity, or any L7 balancer, does). Each request is balanced
 * on its own (`option http-server-close`), so a pull's manifest and blobs spread over the replicas.
 *
 * Killed at stop(), and from a process 'exit' hook so a crashed run leaves no haproxy behind. No silent skip: a
 * missing `haproxy` fails with the installer's name.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from './registry.js';

export interface RunningHaproxy {
  port: number;
  /** `127.0.0.1:PORT` */
  host: string;
  url: string;
  output(): string;
  stop(): Promise<void>;
}

const READY_MS = 15_000;
const live = new Set<ChildProcess>();
let hooked = false;

/** haproxy on loopback balancing round-robin, request by request, over `backends` (`host:port` each). */
export async function startHaproxy(backends: readonly string[]): Promise<RunningHaproxy> {
  const v = spawnSync('haproxy', ['-v'], { encoding: 'utf8' });
  if (v.error || v.status !== 0)
    throw new Error(`haproxy is not on PATH; install it with scripts/install-tools.sh test. Cause: ${v.error?.message ?? v.stderr}`);
  if (!hooked) {
    hooked = true;
    process.on('exit', () => {
      for (const c of live) c.kill('SIGKILL');
    });
  }
  const dir = await mkdtemp(join(tmpdir(), 'pc-haproxy-'));
  const port = await freePort();
  const cfg = [
    'global',
    '  maxconn 256',
    'defaults',
    '  mode http',
    '  timeout connect 5s',
    '  timeout client 120s',
    '  timeout server 120s',
    '  option http-server-close',
    'frontend fe',
    `  bind 127.0.0.1:${port}`,
    '  default_backend replicas',
    'backend replicas',
    '  balance roundrobin',
    ...backends.map((b, i) => `  server r${i} ${b}`),
    '',
  ].join('\n');
  const file = join(dir, 'haproxy.cfg');
  await writeFile(file, cfg);
  const check = spawnSync('haproxy', ['-c', '-f', file], { encoding: 'utf8' });
  if (check.status !== 0) throw new Error(`haproxy refused its config: ${check.stdout}${check.stderr}`);
  // -db: stay in the foreground, so the child is haproxy itself and SIGKILL ends it.
  const child = spawn('haproxy', ['-db', '-f', file], { stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(child);
  let out = '';
  const keep = (b: Buffer): void => {
    out = (out + b.toString()).slice(-20_000);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
    live.delete(child);
    await rm(dir, { recursive: true, force: true });
  };
  const deadline = Date.now() + READY_MS;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`haproxy exited at start: ${out}`);
    const ok = await fetch(`http://127.0.0.1:${port}/healthz`).then(
      () => true,
      () => false,
    );
    if (ok) break;
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`haproxy not answering on ${port} within ${READY_MS} ms: ${out}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return { port, host: `127.0.0.1:${port}`, url: `http://127.0.0.1:${port}`, output: () => out, stop };
}
