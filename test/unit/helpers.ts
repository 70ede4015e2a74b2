/** Shared fixtures for unit tests: temp dirs, configs, digests, manifests and a loopback HTTP server. */
import { createHash } from 'node:crypto';
import { accessSync, constants, mkdtempSync, rmSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import { parseConfig } from '../../src/config/load.js';
import type { Config } from '../../src/config/schema.js';
import type { Download } from '../../src/cache/download.js';
import type { Digest } from '../../src/routing/reference.js';

const dirs: string[] = [];

/** tmpfs when there is one: SQLite and the blob store fsync, which is slow on a busy disk. */
const TMP_BASE = (() => {
  try {
    accessSync('/dev/shm', constants.W_OK);
    return '/dev/shm';
  } catch {
    return tmpdir();
  }
})();

export function tempDir(prefix = 'pc-unit-'): string {
  const d = mkdtempSync(join(TMP_BASE, prefix));
  dirs.push(d);
  return d;
}

export function cleanupTempDirs(): void {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
}

export function sha256(data: Buffer | string): Digest {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

export function sha512(data: Buffer | string): Digest {
  return `sha512:${createHash('sha512').update(data).digest('hex')}`;
}

/** A config through the real schema (so defaults and transforms apply), with no environment overrides. */
export function makeConfig(doc: Record<string, unknown>): Config {
  return parseConfig(JSON.stringify(doc), 'test.yaml', {});
}

export interface LocalServer {
  url: string;
  port: number;
  requests: Array<{ method: string; url: string; headers: IncomingMessage['headers']; body: Buffer }>;
  close(): Promise<void>;
}

/** A loopback-only HTTP server; the handler sees the fully read request body. */
export async function startServer(handler: (req: IncomingMessage, body: Buffer, res: ServerResponse) => void | Promise<void>): Promise<LocalServer> {
  const requests: LocalServer['requests'] = [];
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      requests.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body });
      Promise.resolve(handler(req, body, res)).catch((e: unknown) => {
        res.statusCode = 500;
        res.end(String(e));
      });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * Bytes [start, end] of a download as a client receives them: through Download.writeTo, the one path the blob
 * handler uses, into a stand-in response (a PassThrough, so backpressure works as on a socket). A failure destroys
 * it with the error, as the handler destroys the response; destroying it is the client going away.
 */
export function readThrough(d: Download, start: number, end: number): Readable {
  const res = new PassThrough();
  d.writeTo(res as unknown as ServerResponse, start, end, () => {}).catch((e: unknown) => res.destroy(e as Error));
  return res;
}

export { until } from '../harness/wait.js';
