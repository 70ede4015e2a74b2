/**
 * e2e: a keyless authority whose trusted_root.json comes from a TUF repository (issue 15 item 6), with real cosign
 * keyless signatures from two local Sigstore instances (Fulcio/Rekor from @sigstore/mock).
 *
 * The TUF repository (test/harness/tuf-repo.ts) first publishes instance A's trusted root; the proxy's clock is
 * injected. A rotation to instance B's trusted root is a new trust revision: the image signed through A, admitted
 * before, is decided again and denied (untrusted chain), and the one signed through B is admitted. With the mirror
 * down, refreshes fail (counted in portcullis_signature_trust_refresh_total) and the last good copy stays in use,
 * also across a restart.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DecisionObserver } from '../../src/gate/gate.js';
import { expectOk, runTool } from '../harness/clients.js';
import { pushImage, type PushedImage } from '../harness/images.js';
import { startProxy, type RunningProxy } from '../harness/proxy.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';
import { startLocalSigstore, type LocalSigstore } from '../harness/signature-sigstore.js';
import { startTufRepo, type TufRepo } from '../harness/tuf-repo.js';
import { until } from '../harness/wait.js';

const ISSUER = 'https://token.actions.githubusercontent.com';
const SUBJECT = 'https://github.com/acme/app/.github/workflows/release.yml@refs/heads/main';
const HOUR = 3_600_000;

let reg: RunningRegistry;
let ssA: LocalSigstore;
let ssB: LocalSigstore;
let repo: TufRepo;
let proxy: RunningProxy;
let work: string;
let cacheDir: string;
let clock = Date.now();
const img: Record<string, PushedImage> = {};
const decisions: Array<Parameters<DecisionObserver['onDecision']>[0]> = [];
/** What the proxy logs (JSON lines). */
const logLines: string[] = [];
const logger = pino({ level: 'info' }, { write: (line: string) => void logLines.push(line) });

async function keylessSign(name: string, s: LocalSigstore): Promise<void> {
  const env = {
    ...process.env,
    HOME: work,
    TUF_ROOT: path.join(work, 'tuf'),
    SIGSTORE_CT_LOG_PUBLIC_KEY_FILE: s.files.ctlogKey,
    SIGSTORE_ROOT_FILE: s.files.fulcioRoot,
    SIGSTORE_REKOR_PUBLIC_KEY: s.files.rekorKey,
  };
  const token = await s.token(SUBJECT, ISSUER);
  const args = ['sign', '--fulcio-url', s.url, '--rekor-url', s.url, '--identity-token', token, '--allow-insecure-registry', '--allow-http-registry', '-y'];
  expectOk(await runTool('cosign2', [...args, `${reg.host}/tuf/app@${img[name]!.digest}`], { env, cwd: work, timeoutMs: 60_000 }), `cosign2 sign ${name}`);
}

function config(): Record<string, unknown> {
  return {
    signatures: {
      authorities: [
        {
          name: 'ci',
          kind: 'keyless',
          issuer: ISSUER,
          subject: SUBJECT,
          trustedRoot: { tuf: { mirror: repo.url, root: repo.rootPath, refresh: '1h', cacheDir } },
        },
      ],
    },
  };
}

async function start(): Promise<RunningProxy> {
  return startProxy({
    upstreams: [{ name: 'dist', registry: reg.host, url: reg.url, aliases: ['dist.e2e'] }],
    settings: { no_match: 'deny', scopes: [{ name: 'tuf', images: ['*/tuf/**'], signatures: { authorities: ['ci'] } }] },
    extra: config(),
    observers: [{ onDecision: (e) => decisions.push(e) }],
    now: () => clock,
    logger,
  });
}

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'pc-tuf-e2e-'));
  cacheDir = path.join(work, 'tuf-cache');
  [reg, ssA, ssB] = await Promise.all([startRegistry(), startLocalSigstore(), startLocalSigstore()]);
  repo = await startTufRepo(work);
  repo.publish('trusted_root.json', await readFile(ssA.trustedRootPath));
  for (const t of ['a', 'b']) img[t] = await pushImage(reg.url, 'tuf/app', t);
  await keylessSign('a', ssA);
  await keylessSign('b', ssB);
  proxy = await start();
}, 240_000);

afterAll(async () => {
  await proxy?.stop();
  await Promise.all([reg?.stop(), ssA?.stop(), ssB?.stop(), repo?.stop()]);
  if (work) await rm(work, { recursive: true, force: true });
});

async function pull(tag: 'a' | 'b'): Promise<{ ok: boolean; stderr: string; decision: (typeof decisions)[number] }> {
  const r = await runTool('crane', ['manifest', '--insecure', `${proxy.host}/dist.e2e/tuf/app:${tag}`]);
  const decision = decisions.filter((d) => d.input.image.digest === img[tag]!.digest && d.input.request.kind === 'manifest').at(-1)!;
  return { ok: r.code === 0, stderr: r.stderr, decision };
}

async function refreshes(result: string): Promise<number> {
  const text = await (await fetch(`${proxy.url}/metrics`)).text();
  const m = new RegExp(`^portcullis_signature_trust_refresh_total\\{authority="ci",result="${result}"\\} (\\d+)`, 'm').exec(text);
  return m ? Number(m[1]) : 0;
}

const trustOf = (d: (typeof decisions)[number]): string | undefined => /trust=([^;]+)/.exec(d.basis ?? '')?.[1];

describe('trusted root from TUF', () => {
  let firstTrust: string | undefined;

  it('verifies with the trusted root fetched from the TUF repository at start', async () => {
    const a = await pull('a');
    expect(a.ok, a.stderr).toBe(true);
    expect(a.decision.input.signatures.verified).toEqual([expect.objectContaining({ authority: 'ci', kind: 'cosign-keyless', tlog: true })]);
    const b = await pull('b');
    expect(b.ok).toBe(false);
    expect(b.stderr).toMatch(/authority "ci" \(no signature verified: untrusted chain\)/);
    firstTrust = trustOf(a.decision);
    expect(firstTrust).toBeDefined();
    expect(await refreshes('updated')).toBe(1);
  });

  it('a rotated trusted root, fetched on the schedule, is a new trust revision: decisions are made again', async () => {
    repo.publish('trusted_root.json', await readFile(ssB.trustedRootPath));
    // Not due yet: nothing changes.
    clock += HOUR - 1000;
    expect((await pull('a')).ok).toBe(true);
    expect(await refreshes('updated')).toBe(1);
    // Due: the next decision starts the refresh in the background; the one after it sees the new revision.
    clock += 1000;
    await pull('a');
    await until(async () => (await refreshes('updated')) === 2, 'the refresh with the new trusted root');
    const a = await pull('a');
    expect(a.ok).toBe(false);
    expect(a.stderr).toMatch(/authority "ci" \(no signature verified: untrusted chain\)/);
    expect(trustOf(a.decision)).not.toBe(firstTrust);
    const b = await pull('b');
    expect(b.ok, b.stderr).toBe(true);
    expect(trustOf(b.decision)).toBe(trustOf(a.decision));
  });

  it('with the mirror unreachable, the last good copy stays in use (logged, counted), also after a restart', async () => {
    repo.setDown(true);
    clock += HOUR;
    const before = trustOf((await pull('b')).decision);
    await until(async () => (await refreshes('failed')) === 1, 'the failed refresh');
    expect(logLines.some((l) => l.includes('TUF refresh failed; the last good trusted root stays in use') && l.includes('"authority":"ci"'))).toBe(true);
    const b = await pull('b');
    expect(b.ok, b.stderr).toBe(true);
    expect(trustOf(b.decision)).toBe(before);

    await proxy.stop();
    proxy = await start();
    expect(await refreshes('failed')).toBe(1);
    const again = await pull('b');
    expect(again.ok, again.stderr).toBe(true);
    expect(trustOf(again.decision)).toBe(before);
    expect((await pull('a')).ok).toBe(false);
  });
});
