/**
 * Nothing about the server's files reaches a client that has not even authenticated: a secret file that is missing
 * (the upstream password, the report API token, the scanner's bearer token) answers with a bare message and the
 * request id, never its path or errno. The path goes to the server log (config/load.ts `onSecretError`).
 *
 * Real components: CNCF Distribution with htpasswd auth as the upstream, the in-process proxy, the Harbor scanner
 * test double.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { onSecretError } from '../../src/config/load.js';
import { MANIFEST_ACCEPT, pushImage } from '../harness/images.js';
import { startProxy, type RunningProxy } from '../harness/proxy.js';
import { startRegistry, writeHtpasswd, type RunningRegistry } from '../harness/registry.js';
import { startScannerDouble, type ScannerDouble } from '../harness/scanner.js';

let dir: string;
/** A secret file that does not exist (one per test: the log reports each problem once a minute). */
const missingFile = (name: string): string => join(dir, 'run', 'secrets', `secret-file-name-${name}`);
let open: RunningRegistry; // no auth: pushes and the scanner case
let locked: RunningRegistry; // htpasswd: the proxy must read its password file
let scanner: ScannerDouble;
const details: string[] = [];
let stopListening: () => void;

/** Everything a client got back, headers and body, as one string to search. */
async function everything(res: Response): Promise<string> {
  const headers = [...res.headers.entries()].map(([k, v]) => `${k}: ${v}`).join('\n');
  return `${res.status}\n${headers}\n\n${await res.text()}`;
}

function expectNothingAboutFiles(text: string): void {
  expect(text).not.toContain(dir);
  expect(text).not.toContain('secret-file-name');
  expect(text).not.toMatch(/ENOENT|EACCES|EISDIR|no such file/i);
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'pc-secrets-'));
  stopListening = onSecretError((d) => details.push(d));
  open = await startRegistry();
  const htpasswd = await writeHtpasswd({ puller: 'pull-password' }, join(dir, 'htpasswd'));
  locked = await startRegistry({ auth: { kind: 'htpasswd', path: htpasswd } });
  scanner = await startScannerDouble();
  await pushImage(open.url, 'demo/app', 'v1');
}, 60_000);

afterAll(async () => {
  stopListening?.();
  await scanner?.stop();
  await locked?.stop();
  await open?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('a missing secret file is not shown to clients', () => {
  test('upstream credentials: the pull fails with a bare 5xx, the path is in the log only', async () => {
    const missing = missingFile('upstream');
    const px: RunningProxy = await startProxy({
      upstreams: [{ name: 'locked', registry: locked.host, url: locked.url, retries: 0, credentials: { username: 'puller', password: { file: missing } } }],
    });
    try {
      details.length = 0;
      const res = await fetch(`${px.url}/v2/${locked.host}/demo/app/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT } });
      expect(res.status).toBeGreaterThanOrEqual(500);
      const rid = res.headers.get('x-request-id');
      expect(rid).toBeTruthy();
      const text = await everything(res);
      expectNothingAboutFiles(text);
      expect(text).toContain('a configured secret cannot be read');
      // The operator's log has what the client does not.
      expect(details.some((d) => d.includes(missing) && d.includes('ENOENT'))).toBe(true);
    } finally {
      await px.stop();
    }
  });

  test('report API token: unauthenticated callers get 503 with the request id, nothing else', async () => {
    const missing = missingFile('reports');
    const px = await startProxy({
      upstreams: [{ name: 'open', registry: open.host, url: open.url }],
      extra: { scan: { reports: { token: { file: missing } }, admin: { token: { file: missing } } } },
    });
    try {
      details.length = 0;
      const calls: Array<[string, RequestInit]> = [
        [`${px.url}/api/v1/reports`, {}],
        [
          `${px.url}/api/v1/reports/${open.host}/demo/app@sha256:${'a'.repeat(64)}`,
          { method: 'PUT', headers: { 'content-type': 'application/json' }, body: '{"SchemaVersion":2,"Results":[]}' },
        ],
        [`${px.url}/api/v1/reports/${open.host}/demo/app@sha256:${'a'.repeat(64)}`, { method: 'DELETE', headers: { authorization: 'Bearer guess' } }],
        [`${px.url}/api/v1/admin/reevaluate`, {}],
      ];
      for (const [url, init] of calls) {
        const res = await fetch(url, init);
        expect(res.status, url).toBe(503);
        const rid = res.headers.get('x-request-id')!;
        const text = await everything(res);
        expectNothingAboutFiles(text);
        expect(text).toContain(`(request id ${rid})`);
      }
      expect(details.some((d) => d.includes(missing))).toBe(true);
    } finally {
      await px.stop();
    }
  });

  test('scanner token: the deny reason a pulling client sees does not name the file', async () => {
    const missing = missingFile('scanner');
    const px = await startProxy({
      upstreams: [{ name: 'open', registry: open.host, url: open.url }],
      settings: { no_match: 'deny', scopes: [{ name: 'scanned', images: ['**'], scan: {} }] },
      extra: { scan: { scanner: { url: scanner.url, auth: { bearer: { file: missing } }, retryAfterError: '1s' } } },
    });
    try {
      const res = await fetch(`${px.url}/v2/${open.host}/demo/app/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT } });
      expect(res.status).toBe(403);
      const text = await everything(res);
      expectNothingAboutFiles(text);
      expect(text).toContain('[scan.error]');
    } finally {
      await px.stop();
    }
  });
});
