/**
 * Child processes for the bench: every process it starts is tracked and killed (its whole process group) on normal
 * exit, on SIGINT/SIGTERM and on a crash, so a failed run leaves nothing behind on the machine.
 */
import { spawn } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { homedir } from 'node:os';
import { delimiter, join } from 'node:path';

const live = new Map(); // pid -> ChildProcess
let hooked = false;

function killGroup(pid, signal) {
  try {
    process.kill(-pid, signal);
  } catch {
    try {
      process.kill(pid, signal);
    } catch {
      // already gone
    }
  }
}

/** Kills every tracked child synchronously (SIGKILL): safe in an 'exit' handler. */
export function killAll() {
  for (const pid of live.keys()) killGroup(pid, 'SIGKILL');
  live.clear();
}

function installHooks() {
  if (hooked) return;
  hooked = true;
  process.on('exit', killAll);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.on(sig, () => {
      process.stderr.write(`\nbench: ${sig}, stopping every process it started\n`);
      killAll();
      process.exit(130);
    });
  }
}

export function findTool(name) {
  const dirs = [...(process.env.PATH ?? '').split(delimiter).filter(Boolean), join(homedir(), '.cache', 'portcullis-tools', 'bin'), '/usr/sbin', '/sbin'];
  for (const d of dirs) {
    const p = join(d, name);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      // next
    }
  }
  return undefined;
}

export function requireTool(name) {
  const p = findTool(name);
  if (!p) throw new Error(`bench needs "${name}" on PATH (scripts/install-tools.sh installs it)`);
  return p;
}

/**
 * Starts a long-running child in its own process group. stdio defaults to ignore; pass file descriptors to log.
 * Returns { child, pid, exited: Promise<{code, signal}>, stop() }.
 */
export function startDaemon(cmd, args, opts = {}) {
  installHooks();
  const child = spawn(cmd, args, { stdio: opts.stdio ?? 'ignore', env: opts.env ?? process.env, cwd: opts.cwd, detached: true });
  live.set(child.pid, child);
  let exitInfo;
  const exited = new Promise((resolve) => {
    child.once('exit', (code, signal) => {
      exitInfo = { code, signal };
      live.delete(child.pid);
      resolve(exitInfo);
    });
    child.once('error', (e) => {
      exitInfo = { code: -1, signal: null, error: e };
      live.delete(child.pid);
      resolve(exitInfo);
    });
  });
  return {
    child,
    pid: child.pid,
    exited,
    get exitInfo() {
      return exitInfo;
    },
    async stop(graceMs = 5000) {
      if (exitInfo) return exitInfo;
      killGroup(child.pid, 'SIGTERM');
      const t = setTimeout(() => killGroup(child.pid, 'SIGKILL'), graceMs);
      const r = await exited;
      clearTimeout(t);
      return r;
    },
  };
}

/**
 * Runs a command to completion with a hard timeout (the process group is killed when it expires).
 * Resolves { code, stdout, stderr, ms, timedOut }.
 */
export function run(cmd, args, opts = {}) {
  installHooks();
  const timeoutMs = opts.timeoutMs ?? 120_000;
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: opts.env ?? process.env, cwd: opts.cwd, detached: true });
    live.set(child.pid, child);
    const out = [];
    const err = [];
    let timedOut = false;
    child.stdout.on('data', (b) => out.push(b));
    child.stderr.on('data', (b) => err.push(b));
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup(child.pid, 'SIGKILL');
    }, timeoutMs);
    child.once('error', (e) => {
      clearTimeout(timer);
      live.delete(child.pid);
      reject(e);
    });
    child.once('close', (code) => {
      const ms = performance.now() - started;
      clearTimeout(timer);
      live.delete(child.pid);
      resolve({ code: code ?? -1, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8'), ms, timedOut });
    });
  });
}

export async function runOk(cmd, args, opts = {}) {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) {
    throw new Error(
      `${[cmd, ...args].join(' ')} failed (exit ${r.code}${r.timedOut ? ', timed out' : ''}):\n${r.stderr.slice(-2000)}\n${r.stdout.slice(-1000)}`,
    );
  }
  return r;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
