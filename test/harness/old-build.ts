/**
 * Test harness: the previous release built next to this one, for the rolling-upgrade test (old and new replicas on
 * one Redis and one bucket). The commit is pinned (PREVIOUS_COMMIT: main before the day-2 work, the last build without
 * schema versions and layout markers); move it forward when a release changes a persistent format, so the test
 * always runs the release before the change next to the change.
 *
 * Built once into `~/.cache/portcullis-tools/old-builds/<commit>` (or $PORTCULLIS_TOOLS): the tree from `git archive`
 * (no worktree is registered in the repository), node_modules hard-linked from this checkout when the lockfiles
 * match (else `npm ci --prefer-offline`), then `tsc`. Later runs find the `.built` stamp and start at once. A
 * checkout without that commit (a shallow clone) fails with what to fetch; nothing is skipped.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import path from 'node:path';

const ROOT = path.resolve(import.meta.dirname, '../..');
/** main at the start of the day-2 work (schema versions, layout markers, import, backup). */
export const PREVIOUS_COMMIT = '34a9059273317ff08ac669762af89825b65a6691';
const STEP_TIMEOUT_MS = 600_000;

function run(cmd: string, args: string[], cwd: string, input?: Buffer): Buffer {
  const r = spawnSync(cmd, args, { cwd, input, timeout: STEP_TIMEOUT_MS, maxBuffer: 512 * 1024 * 1024, env: process.env });
  if (r.error || r.status !== 0) {
    throw new Error(`${cmd} ${args.join(' ')} (in ${cwd}) failed: ${r.error?.message ?? ''}\n${r.stderr?.toString().slice(-4000) ?? ''}`);
  }
  return r.stdout;
}

/** The path of the previous release's `dist/cli.js`, building it first when not cached. */
export function previousBuild(commit = PREVIOUS_COMMIT): { cli: string; root: string; builtNow: boolean } {
  const cache = path.join(process.env.PORTCULLIS_TOOLS ?? path.join(homedir(), '.cache', 'portcullis-tools'), 'old-builds');
  const dir = path.join(cache, commit);
  const cli = path.join(dir, 'dist', 'cli.js');
  if (existsSync(path.join(dir, '.built'))) return { cli, root: dir, builtNow: false };
  const have = spawnSync('git', ['cat-file', '-e', `${commit}^{commit}`], { cwd: ROOT });
  if (have.status !== 0) throw new Error(`commit ${commit} is not in this checkout (shallow clone?): git fetch --deepen or fetch that commit first`);
  const stage = path.join(cache, `${commit}.stage-${process.pid}`);
  rmSync(stage, { recursive: true, force: true });
  mkdirSync(stage, { recursive: true });
  try {
    run('tar', ['-x', '-C', stage], ROOT, run('git', ['archive', '--format=tar', commit], ROOT));
    const sameLock = readFileSync(path.join(stage, 'package-lock.json')).equals(readFileSync(path.join(ROOT, 'package-lock.json')));
    if (sameLock && existsSync(path.join(ROOT, 'node_modules'))) run('cp', ['-al', path.join(ROOT, 'node_modules'), path.join(stage, 'node_modules')], stage);
    else run('npm', ['ci', '--prefer-offline', '--no-audit', '--no-fund', '--ignore-scripts'], stage);
    run(process.execPath, [path.join(stage, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.json'], stage);
    writeFileSync(path.join(stage, '.built'), `${new Date().toISOString()}\n`);
    if (existsSync(path.join(dir, '.built'))) rmSync(stage, { recursive: true, force: true });
    else {
      rmSync(dir, { recursive: true, force: true });
      renameSync(stage, dir);
    }
  } catch (e) {
    rmSync(stage, { recursive: true, force: true });
    throw e;
  }
  return { cli, root: dir, builtNow: true };
}
