/**
 * e2e: the REAL server (`node dist/cli.js serve`, built by `npm run build`) is killed in the middle of a blob
 * download, with SIGKILL and with SIGTERM.
 *
 * - kill -9: no partial or corrupt entry may be visible under the blob's digest; after a restart on the same data
 *   directory, the blob pulls again with the right bytes and the cache then holds exactly that verified blob.
 * - SIGTERM: the graceful shutdown lets the running download (and the client reading it) finish, or discards it,
 *   and the process exits 0 within the grace period.
 *
 * To be sure the kill lands mid-download, the proxy reaches the real Distribution through a throttling TCP relay
 * in this process (about 40 MiB/s), so a 64 MiB layer takes over a second to arrive.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MANIFEST_ACCEPT, type PushedImage, pushImage } from '../harness/images.js';
import { freePort, type RunningRegistry, startRegistry } from '../harness/registry.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const CLI = path.join(ROOT, 'dist', 'cli.js');
const RATE = 40 * 1024 * 1024; // bytes per second from the upstream to the proxy
const GRACE_MS = 15_000;

let reg: RunningRegistry;
let relay: net.Server;
let relayPort: number;
let tmp: string;
const children = new Set<ChildProcess>();

/** A TCP relay to the registry that throttles the registry→proxy direction to RATE. */
async function startRelay(target: number): Promise<net.Server> {
  const srv = net.createServer((down) => {
    const up = net.connect(target, '127.0.0.1');
    down.pipe(up);
    let sent = 0;
    const t0 = Date.now();
    up.on('data', (chunk: Buffer) => {
      sent += chunk.length;
      if (!down.write(chunk)) up.pause();
      const ahead = sent / RATE - (Date.now() - t0) / 1000;
      if (ahead > 0.02) {
        up.pause();
        setTimeout(() => up.resume(), ahead * 1000);
      }
    });
    down.on('drain', () => up.resume());
    up.on('end', () => down.end());
    const kill = (): void => {
      up.destroy();
      down.destroy();
    };
    up.on('error', kill);
    down.on('error', kill);
    down.on('close', kill);
    up.on('close', () => down.end());
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  return srv;
}

interface Server {
  url: string;
  child: ChildProcess;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  output(): string;
}

/** Starts `node dist/cli.js serve` on a free port with dataDir; resolves when /readyz says ready. */
async function startServer(dataDir: string, graceMs = GRACE_MS): Promise<Server> {
  const port = await freePort();
  const config = path.join(tmp, `portcullis-${port}.yaml`);
  await writeFile(
    config,
    [
      `listen: 127.0.0.1:${port}`,
      `dataDir: ${JSON.stringify(dataDir)}`,
      'upstreams:',
      '  - name: local',
      `    registry: ${JSON.stringify(reg.host)}`,
      `    url: http://127.0.0.1:${relayPort}`,
      'log: {level: warn}',
      'decisionLog: {sink: none}',
      `shutdownGrace: ${graceMs}ms`,
      'policy:',
      `  bundleFile: ${JSON.stringify(path.join(ROOT, 'policies', 'bundle.tar.gz'))}`,
      '  settings: {no_match: deny, scopes: [{name: all, images: ["**"]}]}',
      '',
    ].join('\n'),
  );
  const child = spawn(process.execPath, [CLI, 'serve', '--config', config], { stdio: ['ignore', 'pipe', 'pipe'], cwd: ROOT });
  children.add(child);
  let out = '';
  child.stdout.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr.on('data', (b: Buffer) => (out += b.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => {
      children.delete(child);
      resolve({ code, signal });
    }),
  );
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`server exited during start-up:\n${out}`);
    const ok = await fetch(`${url}/readyz`).then(
      (r) => r.ok,
      () => false,
    );
    if (ok) break;
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`server not ready within 20 s:\n${out}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return { url, child, exited, output: () => out };
}

async function listFiles(dir: string): Promise<Array<{ path: string; size: number }>> {
  const out: Array<{ path: string; size: number }> = [];
  const walk = async (d: string): Promise<void> => {
    for (const e of await readdir(d, { withFileTypes: true }).catch(() => [])) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else out.push({ path: path.relative(dir, p), size: (await stat(p)).size });
    }
  };
  await walk(dir);
  return out;
}

const blobPath = (dataDir: string, digest: string): string => {
  const hex = digest.slice('sha256:'.length);
  return path.join(dataDir, 'blobs', 'sha256', hex.slice(0, 2), hex);
};

/** Admits the image (manifest by tag) so its blobs are in an admitted closure. */
async function getManifest(url: string, img: PushedImage, repo: string): Promise<void> {
  const res = await fetch(`${url}/v2/${repo}/manifests/v1?ns=${encodeURIComponent(reg.host)}`, { headers: { accept: MANIFEST_ACCEPT } });
  expect(res.status).toBe(200);
  expect(Buffer.from(await res.arrayBuffer())).toEqual(img.manifest);
}

/**
 * GET a blob and hash it; resolves with the digest and length of what arrived, or the error that cut it. `pause(n)`
 * may return a promise to wait on after n bytes (a slow client).
 */
async function pullBlob(
  url: string,
  repo: string,
  digest: string,
  onBytes?: (n: number) => void,
  pause?: (n: number) => Promise<void> | undefined,
): Promise<{ digest: string; bytes: number; error?: string }> {
  const h = createHash('sha256');
  let n = 0;
  try {
    const res = await fetch(`${url}/v2/${repo}/blobs/${digest}?ns=${encodeURIComponent(reg.host)}`);
    if (res.status !== 200) return { digest: '', bytes: 0, error: `HTTP ${res.status} ${await res.text()}` };
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      h.update(value);
      n += value.length;
      onBytes?.(n);
      await pause?.(n);
    }
    return { digest: `sha256:${h.digest('hex')}`, bytes: n };
  } catch (e) {
    return { digest: `sha256:${h.digest('hex')}`, bytes: n, error: String((e as Error).cause ?? e) };
  }
}

beforeAll(async () => {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build first (npm test does)`);
  tmp = await mkdtemp('/tmp/pccrash-');
  reg = await startRegistry();
  relay = await startRelay(Number(reg.host.split(':')[1]));
  relayPort = (relay.address() as net.AddressInfo).port;
}, 60_000);

afterAll(async () => {
  for (const c of children) c.kill('SIGKILL');
  await new Promise<void>((r) => (relay ? relay.close(() => r()) : r()));
  relay?.unref();
  await reg?.stop();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

describe('the real server killed mid-download', () => {
  it('kill -9: nothing partial becomes visible; after a restart the blob pulls with the right bytes', async () => {
    const img = await pushImage(reg.url, 'crash/app', 'v1', { layers: 1, layerSizeMiB: 64 });
    const layer = img.layers[0]!;
    const dataDir = path.join(tmp, 'data-kill');
    const s1 = await startServer(dataDir);
    await getManifest(s1.url, img, 'crash/app');

    // Kill as soon as the client has 4 MiB: the upstream transfer (throttled) is then far from done.
    let killedAt = -1;
    const cut = await pullBlob(s1.url, 'crash/app', layer.digest, (n) => {
      if (killedAt < 0 && n >= 4 * 1024 * 1024) {
        killedAt = n;
        s1.child.kill('SIGKILL');
      }
    });
    const ex = await s1.exited;
    expect(ex.signal).toBe('SIGKILL');
    expect(cut.error, 'the client must see a broken transfer, not a clean end').toBeDefined();
    expect(cut.bytes).toBeLessThan(layer.size);

    // The partial download may sit in tmp/ (it was never visible), but nothing exists under the digest.
    const tmpFiles = await listFiles(path.join(dataDir, 'tmp'));
    expect(tmpFiles.length, 'the kill landed mid-download: a partial temp file exists').toBeGreaterThan(0);
    for (const f of tmpFiles) expect(f.size).toBeLessThan(layer.size);
    expect(existsSync(blobPath(dataDir, layer.digest))).toBe(false);
    // The layout marker (cache/layout.ts) sits beside the blobs; everything else there is a blob.
    const visible = (await listFiles(path.join(dataDir, 'blobs'))).filter((f) => f.path !== 'layout.json');
    for (const f of visible) {
      // Anything committed (the config, say) must be complete and verified.
      const d = `sha256:${path.basename(f.path)}`;
      expect(
        `sha256:${createHash('sha256')
          .update(readFileSync(path.join(dataDir, 'blobs', f.path)))
          .digest('hex')}`,
      ).toBe(d);
    }

    // Restart on the same data directory: tmp/ is swept, the closure survived, and the blob pulls correctly.
    reg.clearLog();
    const s2 = await startServer(dataDir);
    expect(await listFiles(path.join(dataDir, 'tmp'))).toEqual([]);
    const again = await pullBlob(s2.url, 'crash/app', layer.digest);
    expect(again.error).toBeUndefined();
    expect(again.bytes).toBe(layer.size);
    expect(again.digest).toBe(layer.digest);
    // Served from the cache on a second read, and the cache holds exactly the verified blob.
    const third = await pullBlob(s2.url, 'crash/app', layer.digest);
    expect(third.digest).toBe(layer.digest);
    const gets = await reg.waitForRequests((x) => x.method === 'GET' && x.path.endsWith(`/blobs/${layer.digest}`), 1, 5000);
    expect(gets).toHaveLength(1);
    const onDisk = blobPath(dataDir, layer.digest);
    expect((await stat(onDisk)).size).toBe(layer.size);
    const h = createHash('sha256');
    h.update(readFileSync(onDisk));
    expect(`sha256:${h.digest('hex')}`).toBe(layer.digest);
    expect((await listFiles(path.join(dataDir, 'blobs'))).filter((f) => f.path.endsWith(layer.digest.slice(7)))).toHaveLength(1);
    expect(await listFiles(path.join(dataDir, 'tmp'))).toEqual([]);

    s2.child.kill('SIGTERM');
    expect((await s2.exited).code).toBe(0);
  }, 90_000);

  it('SIGTERM: the running download and its client finish, and the process exits 0 within the grace period', async () => {
    const img = await pushImage(reg.url, 'crash/term', 'v1', { layers: 1, layerSizeMiB: 64 });
    const layer = img.layers[0]!;
    const dataDir = path.join(tmp, 'data-term');
    const s = await startServer(dataDir);
    await getManifest(s.url, img, 'crash/term');

    let signalled = false;
    const pull = pullBlob(s.url, 'crash/term', layer.digest, (n) => {
      if (!signalled && n >= 4 * 1024 * 1024) {
        signalled = true;
        s.child.kill('SIGTERM');
      }
    });
    const [got, ex] = await Promise.all([pull, s.exited]);
    expect(signalled).toBe(true);
    expect(ex, s.output()).toEqual({ code: 0, signal: null });
    // Finished, not discarded: the grace period is far longer than the rest of the transfer. (Within it, too: at
    // its end the server cuts every connection, and this client would see an error instead of every byte.)
    expect(got.error, s.output()).toBeUndefined();
    expect(got.bytes).toBe(layer.size);
    expect(got.digest).toBe(layer.digest);
    expect(existsSync(blobPath(dataDir, layer.digest))).toBe(true);
    expect(await listFiles(path.join(dataDir, 'tmp'))).toEqual([]);
  }, 60_000);

  it('SIGTERM: a client slower than the upstream (and one reading from the cache) still gets every byte', async () => {
    const img = await pushImage(reg.url, 'crash/slowclient', 'v1', { layers: 2, layerSizeMiB: 24 });
    const [cold, warm] = [img.layers[0]!, img.layers[1]!];
    const dataDir = path.join(tmp, 'data-slowclient');
    const s = await startServer(dataDir);
    await getManifest(s.url, img, 'crash/slowclient');
    // Warm one layer into the cache first.
    expect((await pullBlob(s.url, 'crash/slowclient', warm.digest)).digest).toBe(warm.digest);
    // ~8 MiB/s: well below the upstream's 40 MiB/s, so the download commits long before the client is done.
    const slow = (n: number): Promise<void> | undefined => (n % (1 << 20) < 65536 ? new Promise((r) => setTimeout(r, 120)) : undefined);
    let signalled = false;
    const a = pullBlob(
      s.url,
      'crash/slowclient',
      cold.digest,
      (n) => {
        if (!signalled && n >= 2 * 1024 * 1024) {
          signalled = true;
          s.child.kill('SIGTERM');
        }
      },
      slow,
    );
    const b = pullBlob(s.url, 'crash/slowclient', warm.digest, undefined, slow);
    const [ga, gb, ex] = await Promise.all([a, b, s.exited]);
    expect(ex, s.output()).toEqual({ code: 0, signal: null });
    expect(ga.error, s.output()).toBeUndefined();
    expect(ga.digest).toBe(cold.digest);
    expect(gb.error, s.output()).toBeUndefined();
    expect(gb.digest).toBe(warm.digest);
  }, 60_000);

  it('SIGTERM with a download longer than the grace period: discarded cleanly, exit 0', async () => {
    const img = await pushImage(reg.url, 'crash/slow', 'v1', { layers: 1, layerSizeMiB: 64 });
    const layer = img.layers[0]!;
    const dataDir = path.join(tmp, 'data-slow');
    // A short grace: the 64 MiB at 40 MiB/s cannot make it.
    const s = await startServer(dataDir, 300);
    await getManifest(s.url, img, 'crash/slow');
    let signalled = false;
    const pull = pullBlob(s.url, 'crash/slow', layer.digest, (n) => {
      if (!signalled && n >= 1024 * 1024) {
        signalled = true;
        s.child.kill('SIGTERM');
      }
    });
    const [got, ex] = await Promise.all([pull, s.exited]);
    expect(ex, s.output()).toEqual({ code: 0, signal: null });
    expect(got.error, 'a discarded download must not end cleanly at the client').toBeDefined();
    expect(existsSync(blobPath(dataDir, layer.digest))).toBe(false);
    expect(await listFiles(path.join(dataDir, 'tmp'))).toEqual([]);
  }, 60_000);
});
