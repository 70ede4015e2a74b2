/**
 * e2e: the OCI distribution-spec conformance suite, read-only mode, against the built proxy in front of a real
 * Distribution: runs scripts/conformance.sh (which starts, seeds, pre-warms, runs the suite and cleans up) and
 * checks its verdict and counts. Every pull, tag-list and referrers test must pass.
 */
import { spawn } from 'node:child_process';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

const ROOT = path.resolve(import.meta.dirname, '../..');
let pgid: number | undefined;

afterAll(() => {
  // The script's trap kills what it started; this only matters if the test itself timed out mid-run.
  if (pgid !== undefined) {
    try {
      process.kill(-pgid, 'SIGTERM');
    } catch {
      // already gone
    }
  }
});

function run(): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('bash', [path.join(ROOT, 'scripts', 'conformance.sh')], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    pgid = child.pid;
    let out = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => (out += b.toString()));
    child.once('error', reject);
    child.once('close', (code) => {
      pgid = undefined;
      resolve({ code, out });
    });
  });
}

describe('OCI conformance (read-only: pull, tag listing, referrers)', () => {
  it('scripts/conformance.sh passes with no failures', async () => {
    const { code, out } = await run();
    const summary = /CONFORMANCE SUMMARY: pass=(\d+) fail=(\d+) error=(\d+) skip=(\d+) disabled=(\d+)/.exec(out);
    expect(summary, out.slice(-4000)).not.toBeNull();
    const [pass, fail, error, skip] = summary!.slice(1, 5).map(Number) as [number, number, number, number];
    console.info(`conformance: ${pass} passed, ${fail} failed, ${error} errors, ${skip} skipped, ${summary![5]} disabled (push/delete)`);
    expect(code, out.slice(-4000)).toBe(0);
    expect(fail).toBe(0);
    expect(error).toBe(0);
    expect(skip).toBe(0);
    expect(pass).toBeGreaterThanOrEqual(40);
    for (const api of [
      'Ping',
      'Tag listing',
      'Blob get',
      'Blob head',
      'Manifest get by digest',
      'Manifest get by tag',
      'Manifest head by digest',
      'Manifest head by tag',
      'Referrers',
    ]) {
      expect(out).toMatch(new RegExp(`^  ${api}\\.+: +Pass$`, 'm'));
    }
    expect(out).toMatch(/^ {2}Read Only Inputs\.+: +Pass$/m);
    expect(out).toContain('manifest headers and referrers API ok');
  }, 120_000);
});
