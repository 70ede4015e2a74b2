/**
 * Production-like evidence for the bench (issue 6): every seed image is signed with a cosign key (cosign 2, the
 * legacy `sha256-<hex>.sig` tag, no transparency log: all offline), and a Trivy JSON report for its digest is pushed
 * to Portcullis's report API, as CI would. Portcullis is configured to require both (see portcullis.mjs), so every
 * cold decision verifies a signature and reads a scan result.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { request } from 'undici';
import { findTool, runOk } from './proc.mjs';

export const AUTHORITY = 'bench-key';

/** Key pair in `dir`; returns undefined when cosign 2 is not installed (the bench then runs without evidence). */
export async function setupSigning(dir) {
  const cosign = findTool('cosign2');
  if (!cosign) return undefined;
  const home = join(dir, 'cosign');
  mkdirSync(home, { recursive: true });
  // Everything cosign writes or reads stays in the temp dir; the empty password is what the e2e tests use too.
  const env = {
    ...process.env,
    HOME: home,
    COSIGN_PASSWORD: '',
    XDG_CONFIG_HOME: join(home, 'config'),
    DOCKER_CONFIG: join(home, 'docker'),
    TUF_ROOT: join(home, 'tuf'),
  };
  await runOk(cosign, ['generate-key-pair', '--output-key-prefix', 'bench'], { cwd: home, env, timeoutMs: 60_000 });
  return { cosign, env, home, key: join(home, 'bench.key'), pub: join(home, 'bench.pub') };
}

/** `cosign sign --key` of host/repo@digest straight on the upstream (loopback, plain HTTP). */
export async function signImage(signing, host, repo, digest) {
  await runOk(
    signing.cosign,
    ['sign', '--key', signing.key, '--tlog-upload=false', '--allow-insecure-registry', '--allow-http-registry', '-y', `${host}/${repo}@${digest}`],
    { cwd: signing.home, env: signing.env, timeoutMs: 60_000 },
  );
}

/** A clean Trivy report (no findings) bound to the digest, pushed like CI does; `dispatcher` for an instance on TLS. */
export async function pushReport(pcUrl, token, registry, repo, digest, dispatcher) {
  const ref = `${registry}/${repo}@${digest}`;
  const body = JSON.stringify({
    SchemaVersion: 2,
    ArtifactName: ref,
    ArtifactType: 'container_image',
    Metadata: { RepoDigests: [ref], OS: { Family: 'debian', Name: '12' } },
    Results: [{ Target: `${ref} (debian 12)`, Class: 'os-pkgs', Type: 'debian', Vulnerabilities: [] }],
  });
  const url = `${pcUrl}/api/v1/reports/${registry}/${repo}@${digest}`;
  const headers = { authorization: `Bearer ${token}`, 'content-type': 'application/json' };
  let status;
  let text;
  if (dispatcher) {
    const res = await request(url, { method: 'PUT', headers, body, dispatcher });
    status = res.statusCode;
    text = await res.body.text();
  } else {
    const res = await fetch(url, { method: 'PUT', headers, body });
    status = res.status;
    text = await res.text();
  }
  if (status !== 201 && status !== 200) throw new Error(`report push for ${ref}: HTTP ${status} ${text.slice(0, 300)}`);
}

/** The policy settings and config sections that require both kinds of evidence. */
export function evidenceConfig(signing, tokenEnv) {
  return {
    config: {
      signatures: { authorities: [{ name: AUTHORITY, kind: 'key', key: signing.pub }] },
      scan: { reports: { token: { env: tokenEnv } } },
    },
    scope: {
      signatures: { authorities: [AUTHORITY], require: 'all' },
      scan: { limits: { CRITICAL: 0 }, max_age_seconds: 86_400, on_missing: 'deny', on_pending: 'deny' },
    },
  };
}
