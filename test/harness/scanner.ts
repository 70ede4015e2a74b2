/**
 * TEST DOUBLE of a Harbor Pluggable Scanner API v1.1 adapter (such as harbor-scanner-trivy). It exists because no
 * vulnerability database can be reached from this sandbox, so no real scanner can produce findings here. Instead of
 * scanning, it returns the findings a test registered for a digest, after a configurable delay. Around that it
 * behaves like a real adapter (reference/protocols.md §6.1):
 *
 * - `GET  /api/v1/metadata` → scanner, capabilities (consumes OCI and Docker v2 manifests, produces Harbor reports);
 * - `POST /api/v1/scan` (scan request JSON) → 202 `{id}`; it then pulls the manifest by digest from `registry.url`
 *   with `registry.authorization`, as a real adapter would, and the scan fails if that pull fails;
 * - `GET  /api/v1/scan/{id}/report` → 302 with `Refresh-After` while "scanning", 200 with a HarborVulnerabilityReport
 *   when done, 500 `{"error":{"message"}}` when the scan failed, 404 for an unknown id.
 *
 * Optional bearer auth; every request is recorded for assertions.
 */
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface HarborVuln {
  id: string;
  package: string;
  version: string;
  fix_version?: string;
  severity: 'Unknown' | 'Negligible' | 'Low' | 'Medium' | 'High' | 'Critical';
  description?: string;
  links?: string[];
}

export interface DigestBehaviour {
  vulnerabilities: HarborVuln[];
  /** How long the "scan" takes (default: the double's delayMs). */
  delayMs?: number;
  /** Make the scan fail with this message (report → 500). */
  fail?: string;
}

export interface ScanRequestRecord {
  registry: { url: string; authorization?: string };
  artifact: { repository: string; digest: string; tag?: string; mime_type: string };
  enabled_capabilities?: unknown;
}

export interface ScannerDouble {
  url: string;
  /** Findings per digest; digests without an entry scan clean. */
  setFindings(digest: string, b: DigestBehaviour): void;
  /** Default scan duration. */
  delayMs: number;
  /** Refresh-After seconds sent with 302 (default 1). */
  refreshAfter: number;
  scans: ScanRequestRecord[];
  requests: Array<{ method: string; path: string; authorization: string | undefined }>;
  stop(): Promise<void>;
}

interface Job {
  request: ScanRequestRecord;
  readyAt: number;
  failure?: string;
  vulnerabilities: HarborVuln[];
  pulled: Promise<string | undefined>;
}

export const REPORT_MIME = 'application/vnd.scanner.adapter.vuln.report.harbor+json; version=1.0';

export async function startScannerDouble(
  opts: {
    token?: string;
    delayMs?: number;
    refreshAfter?: number;
    /** default true */ pull?: boolean;
    /** also pull the config and layers (default false) */ pullBlobs?: boolean;
    /** default: a free one */ port?: number;
  } = {},
): Promise<ScannerDouble> {
  const behaviours = new Map<string, DigestBehaviour>();
  const jobs = new Map<string, Job>();
  const scans: ScanRequestRecord[] = [];
  const requests: ScannerDouble['requests'] = [];
  const state = { delayMs: opts.delayMs ?? 200, refreshAfter: opts.refreshAfter ?? 1 };

  const send = (res: ServerResponse, status: number, body: unknown, type = 'application/json', headers: Record<string, string> = {}): void => {
    const text = body === undefined ? '' : JSON.stringify(body);
    res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(text), ...headers });
    res.end(text);
  };
  const error = (res: ServerResponse, status: number, message: string): void =>
    send(res, status, { error: { message } }, 'application/vnd.scanner.adapter.error+json; version=1.0');

  /** What a real adapter does first: pull the artifact's manifest from the registry it was given. */
  const pull = async (r: ScanRequestRecord): Promise<string | undefined> => {
    try {
      const res = await fetch(`${r.registry.url.replace(/\/+$/, '')}/v2/${r.artifact.repository}/manifests/${r.artifact.digest}`, {
        headers: { accept: r.artifact.mime_type, ...(r.registry.authorization ? { authorization: r.registry.authorization } : {}) },
      });
      const body = Buffer.from(await res.arrayBuffer());
      if (res.status !== 200) return `cannot pull ${r.artifact.repository}@${r.artifact.digest}: HTTP ${res.status}`;
      if (!opts.pullBlobs) return undefined;
      // Then its config and layers, as trivy does.
      const m = JSON.parse(body.toString('utf8')) as { config?: { digest: string }; layers?: Array<{ digest: string }> };
      for (const d of [m.config, ...(m.layers ?? [])]) {
        if (!d) continue;
        const b = await fetch(`${r.registry.url.replace(/\/+$/, '')}/v2/${r.artifact.repository}/blobs/${d.digest}`, {
          headers: r.registry.authorization ? { authorization: r.registry.authorization } : {},
        });
        await b.arrayBuffer();
        if (b.status !== 200) return `cannot pull blob ${d.digest}: HTTP ${b.status}`;
      }
      return undefined;
    } catch (e) {
      return `cannot pull ${r.artifact.repository}@${r.artifact.digest}: ${String(e)}`;
    }
  };

  const readJson = async (req: IncomingMessage): Promise<unknown> => {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    return JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
  };

  const server: Server = createServer((req, res) => {
    void (async () => {
      const path = (req.url ?? '/').split('?', 1)[0]!;
      requests.push({ method: req.method ?? 'GET', path, authorization: req.headers.authorization });
      if (opts.token && req.headers.authorization !== `Bearer ${opts.token}`) return error(res, 401, 'unauthorized');
      if (req.method === 'GET' && path === '/api/v1/metadata') {
        return send(
          res,
          200,
          {
            scanner: { name: 'Trivy', vendor: 'Aqua Security', version: '0.58.1' },
            capabilities: [
              {
                consumes_mime_types: ['application/vnd.oci.image.manifest.v1+json', 'application/vnd.docker.distribution.manifest.v2+json'],
                produces_mime_types: [REPORT_MIME, 'application/vnd.scanner.adapter.vuln.report.raw'],
              },
            ],
            properties: { 'harbor.scanner-adapter/scanner-type': 'os-package-vulnerability', 'org.label-schema.name': 'portcullis test double' },
          },
          'application/vnd.scanner.adapter.metadata+json; version=1.0',
        );
      }
      if (req.method === 'POST' && path === '/api/v1/scan') {
        let body: ScanRequestRecord;
        try {
          body = (await readJson(req)) as ScanRequestRecord;
        } catch {
          return error(res, 400, 'invalid JSON');
        }
        if (!body?.registry?.url || !body.artifact?.repository || !/^sha256:[a-f0-9]{64}$/.test(body.artifact?.digest ?? ''))
          return error(res, 422, 'invalid scan request');
        scans.push(body);
        const b = behaviours.get(body.artifact.digest);
        const id = randomUUID();
        jobs.set(id, {
          request: body,
          readyAt: Date.now() + (b?.delayMs ?? state.delayMs),
          vulnerabilities: b?.vulnerabilities ?? [],
          ...(b?.fail ? { failure: b.fail } : {}),
          pulled: opts.pull === false ? Promise.resolve(undefined) : pull(body),
        });
        return send(res, 202, { id }, 'application/vnd.scanner.adapter.scan.response+json; version=1.0');
      }
      const m = /^\/api\/v1\/scan\/([^/]+)\/report$/.exec(path);
      if (req.method === 'GET' && m) {
        const job = jobs.get(decodeURIComponent(m[1]!));
        if (!job) return send(res, 404, undefined);
        const pullError = await job.pulled;
        if (pullError) return error(res, 500, pullError);
        if (Date.now() < job.readyAt) return send(res, 302, undefined, 'application/json', { 'refresh-after': String(state.refreshAfter) });
        if (job.failure) return error(res, 500, job.failure);
        const worst =
          ['Critical', 'High', 'Medium', 'Low', 'Negligible', 'Unknown'].find((s) => job.vulnerabilities.some((v) => v.severity === s)) ?? 'Unknown';
        return send(
          res,
          200,
          {
            generated_at: new Date().toISOString(),
            artifact: job.request.artifact,
            scanner: { name: 'Trivy', vendor: 'Aqua Security', version: '0.58.1' },
            severity: worst,
            vulnerabilities: job.vulnerabilities,
          },
          REPORT_MIME,
        );
      }
      return error(res, 404, `no route ${req.method} ${path}`);
    })().catch((e: unknown) => {
      if (!res.headersSent) error(res, 500, String(e));
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, '127.0.0.1', resolve);
  });
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    setFindings: (digest, b) => behaviours.set(digest, b),
    get delayMs() {
      return state.delayMs;
    },
    set delayMs(v: number) {
      state.delayMs = v;
    },
    get refreshAfter() {
      return state.refreshAfter;
    },
    set refreshAfter(v: number) {
      state.refreshAfter = v;
    },
    scans,
    requests,
    async stop() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
