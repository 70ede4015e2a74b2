/**
 * CNCF Distribution 2.8 (`docker-registry`) on loopback: a plain upstream, or a pull-through proxy in front of it
 * (testbed.md §2.3: `proxy.remoteurl`). Its output goes to a file; the access log in it (gorilla combined format) is
 * the only record of what the upstream served, so the bench reads it from an offset to count GETs and bytes.
 */
import { randomBytes } from 'node:crypto';
import { openSync, closeSync, readSync, statSync, writeFileSync, mkdirSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { request } from 'undici';
import { requireTool, sleep, startDaemon } from './proc.mjs';

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** `127.0.0.1 - - [date] "GET /v2/a/blobs/sha256:.. HTTP/1.1" 200 479 "" "ua"` */
const ACCESS_LINE = /^\S+ \S+ \S+ \[[^\]]*\] "([A-Z]+) (\S+) HTTP\/[\d.]+" (\d{3}) (\S+) "(?:[^"\\]|\\.)*" "((?:[^"\\]|\\.)*)"/;

export function parseAccessLine(line) {
  const m = ACCESS_LINE.exec(line);
  if (!m) return undefined;
  return { method: m[1], path: m[2], status: Number(m[3]), bytes: m[4] === '-' ? 0 : Number(m[4]), userAgent: m[5] };
}

/** `dispatcher`: an undici Agent (one that trusts the bench's CA, for a server on TLS). */
export async function waitHttp(url, timeoutMs, isDead, dispatcher) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (isDead?.()) throw new Error(`process exited before ${url} answered`);
    try {
      if (dispatcher) {
        const res = await request(url, { dispatcher, signal: AbortSignal.timeout(1000) });
        await res.body.arrayBuffer();
        return res.statusCode;
      }
      const res = await fetch(url, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      return res.status;
    } catch {
      if (Date.now() > deadline) throw new Error(`${url} did not answer within ${timeoutMs} ms`);
      await sleep(50);
    }
  }
}

/**
 * @param {{ dir: string, name: string, remoteUrl?: string, dataDir?: string, tls?: { cert: string, key: string, agent: object } }} opts
 *   remoteUrl makes it a pull-through proxy; dataDir serves another registry's storage (read-only use); tls serves HTTPS.
 */
export async function startRegistry({ dir, name, remoteUrl, dataDir, tls }) {
  const bin = requireTool('docker-registry');
  const home = join(dir, name);
  mkdirSync(home, { recursive: true });
  const port = await freePort();
  const q = JSON.stringify;
  const lines = [
    'version: 0.1',
    'log:',
    '  level: info', // as testbed.md §2.1; the access log is written regardless of this level
    '  formatter: text',
    'storage:',
    '  filesystem:',
    `    rootdirectory: ${q(dataDir ?? join(home, 'data'))}`,
    '  delete:',
    '    enabled: true',
    '  cache:',
    '    blobdescriptor: inmemory',
    'http:',
    `  addr: ${q(`127.0.0.1:${port}`)}`, // ALWAYS explicit: the Debian default binds all interfaces
    `  secret: ${q(randomBytes(16).toString('hex'))}`,
    '  headers:',
    '    X-Content-Type-Options: [nosniff]',
  ];
  if (tls) lines.push('  tls:', `    certificate: ${q(tls.cert)}`, `    key: ${q(tls.key)}`);
  if (remoteUrl) lines.push('proxy:', `  remoteurl: ${q(remoteUrl)}`);
  const configPath = join(home, 'config.yml');
  writeFileSync(configPath, lines.join('\n') + '\n');
  const logPath = join(home, 'registry.log');
  const fd = openSync(logPath, 'a');
  const d = startDaemon(bin, ['serve', configPath], { stdio: ['ignore', fd, fd] });
  closeSync(fd);
  const url = `${tls ? 'https' : 'http'}://127.0.0.1:${port}`;
  await waitHttp(`${url}/v2/`, 15_000, () => d.exitInfo !== undefined, tls?.agent);
  return {
    name,
    url,
    host: `127.0.0.1:${port}`,
    pid: d.pid,
    logPath,
    /** Current end of the log: pass to requestsSince(). */
    mark() {
      return statSync(logPath).size;
    },
    /** Access-log requests written after `offset`. */
    requestsSince(offset) {
      const size = statSync(logPath).size;
      if (size <= offset) return [];
      const buf = Buffer.alloc(size - offset);
      const f = openSync(logPath, 'r');
      try {
        readSync(f, buf, 0, buf.length, offset);
      } finally {
        closeSync(f);
      }
      return buf
        .toString('utf8')
        .split('\n')
        .map(parseAccessLine)
        .filter((r) => r !== undefined);
    },
    stop: () => d.stop(),
  };
}
