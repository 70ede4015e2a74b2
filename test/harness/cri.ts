/**
 * The kubelet's pull path: a private containerd 1.6 with the CRI plugin on, driven over the CRI ImageService by
 * the real `crictl` (cri-tools, built by scripts/install-tools.sh), so that e2e tests pull through Portcullis
 * exactly as a kubelet does, including with an auth config as the kubelet sends a Pod's imagePullSecrets.
 *
 * Facts this relies on (shared/reference/testbed.md §4.3, "CRI path"):
 * - Unlike ctr, CRI resolves inside the daemon, so the mirror comes from the daemon's
 *   `[plugins."io.containerd.grpc.v1.cri".registry] config_path`, and hosts.toml is re-read on every pull:
 *   {@link CriHandle.writeHosts} can point the same daemon at another proxy (e.g. a recorder in front) between pulls.
 * - CRI starts without CNI (it only logs about it); image pulls need none. `stream_server_address = "127.0.0.1"`
 *   with port 0 keeps the streaming server on loopback on a random port, so instances do not collide.
 * - crictl's `--creds user:pass` / `--auth base64` become the CRI `AuthConfig` the kubelet fills from a Pod's
 *   imagePullSecrets (username/password or auth, no server_address).
 * - containerd needs root and a unix socket path below 108 bytes, hence /tmp/pcri-XXXXXX.
 *
 * Every process has a timeout; stop() kills containerd's whole process group and removes the temp dir.
 */
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { clientConfig } from '../../src/clients/config.js';
import type { Config } from '../../src/config/schema.js';
import { requireTool, runTool, stopGroup, type ToolResult } from './clients.js';

/** What the kubelet puts into the CRI AuthConfig from a `kubernetes.io/dockerconfigjson` secret. */
export type CriAuth = { username: string; password: string } | { auth: string };

export interface CriPullOptions {
  auth?: CriAuth;
  /** Default 120 s; crictl's own gRPC timeout is set to the same value. */
  timeoutMs?: number;
}

export interface CriPullResult {
  ok: boolean;
  /** The image id (`sha256:...` of the config) CRI returns, as the kubelet records it; '' on failure. */
  imageRef: string;
  /** On failure, the gRPC error as the kubelet sees it: `rpc error: code = ... desc = failed to pull and unpack ...`. */
  error: string;
  /** crictl's whole stderr (its own log lines around the error). */
  stderr: string;
  timedOut: boolean;
}

export interface CriHandle {
  /** The gRPC unix socket (CRI runtime and image endpoint). */
  address: string;
  /** Temp dir with root, state, config, log and the hosts dir; removed by stop(). */
  dir: string;
  /** The `config_path` directory: `<hostsDir>/<registry>/hosts.toml`. */
  hostsDir: string;
  /** (Re)write the hosts dir with `portcullis client-config containerd` for this proxy; applies from the next pull. */
  writeHosts(proxyUrl: string, config?: Config, fallback?: string[]): Promise<void>;
  /** CRI PullImage. */
  pull(image: string, opts?: CriPullOptions): Promise<CriPullResult>;
  /** CRI RemoveImage (by reference or id). */
  remove(image: string): Promise<ToolResult>;
  /** CRI ImageStatus as JSON (`crictl inspecti -o json`); undefined if the image is not there. */
  status(image: string): Promise<unknown>;
  /** Any other crictl command against this daemon. */
  crictl(args: readonly string[], opts?: { timeoutMs?: number }): Promise<ToolResult>;
  /** The daemon's log so far. */
  log(): Promise<string>;
  stop(): Promise<void>;
}

export interface StartCriOptions {
  /** The proxy clients pull through; the hosts dir is written for it (see writeHosts). */
  proxyUrl: string;
  /** The proxy's config: `client-config` writes one hosts.toml per upstream registry and alias, plus _default. */
  config: Config;
  /** Gating proxies tried after proxyUrl (`client-config --fallback`: a node instance's central tier). */
  fallback?: string[];
  logLevel?: 'debug' | 'info' | 'warn';
  /** How long to wait for the CRI ImageService to answer. Default 60 s. */
  startTimeoutMs?: number;
}

const DEFAULT_PULL_TIMEOUT_MS = 120_000;

function daemonConfig(dir: string, address: string, hostsDir: string, logLevel: string): string {
  return [
    'version = 2',
    `root = "${dir}/root"`,
    `state = "${dir}/state"`,
    '[grpc]',
    `  address = "${address}"`,
    '[ttrpc]',
    `  address = "${address}.ttrpc"`,
    '[debug]',
    `  level = "${logLevel}"`,
    '[metrics]',
    '  address = ""', // no TCP listener
    '[plugins]',
    '  [plugins."io.containerd.internal.v1.opt"]',
    `    path = "${dir}/opt"`, // the default /opt/containerd would be shared between instances
    '  [plugins."io.containerd.grpc.v1.cri"]',
    '    stream_server_address = "127.0.0.1"',
    '    stream_server_port = "0"',
    '    [plugins."io.containerd.grpc.v1.cri".containerd]',
    '      snapshotter = "overlayfs"',
    '    [plugins."io.containerd.grpc.v1.cri".cni]', // private (empty) dirs: no host CNI config is read
    `      bin_dir = "${dir}/cni/bin"`,
    `      conf_dir = "${dir}/cni/conf"`,
    '    [plugins."io.containerd.grpc.v1.cri".registry]',
    `      config_path = "${hostsDir}"`,
    '',
  ].join('\n');
}

/**
 * The gRPC error of a failed PullImage, as the kubelet gets it (`rpc error: code = Unknown desc = failed to pull and
 * unpack image "...": ...`). crictl 1.30 logs it through klog as `err="<Go-quoted string>"`; unquote that. If the
 * format ever changes, the whole stderr is returned rather than nothing.
 */
export function criError(stderr: string): string {
  const m = /\berr="((?:[^"\\]|\\.)*)"/.exec(stderr);
  if (!m) return stderr.trim();
  try {
    return JSON.parse(`"${m[1]}"`) as string; // Go's strconv.Quote output is JSON-compatible for text errors
  } catch {
    return m[1]!;
  }
}

/**
 * Start containerd with CRI in a fresh /tmp/pcri-XXXXXX, write its hosts dir for `proxyUrl`, and wait until
 * `crictl images` answers. Requires root.
 */
export async function startCri(opts: StartCriOptions): Promise<CriHandle> {
  const containerdBin = requireTool('containerd');
  const crictlBin = requireTool('crictl');
  if (typeof process.getuid === 'function' && process.getuid() !== 0) {
    throw new Error('startCri: containerd needs root (mounts, chown of snapshots); run the tests as root');
  }
  const dir = await mkdtemp('/tmp/pcri-');
  const address = path.join(dir, 'c.sock');
  const hostsDir = path.join(dir, 'certs.d');
  const logPath = path.join(dir, 'containerd.log');
  const configPath = path.join(dir, 'config.toml');
  // crictl reads /etc/crictl.yaml unless told otherwise: give it its own, so the host's cannot redirect it.
  const crictlConfig = path.join(dir, 'crictl.yaml');
  await mkdir(path.join(dir, 'cni', 'bin'), { recursive: true });
  await mkdir(path.join(dir, 'cni', 'conf'), { recursive: true });
  await writeFile(configPath, daemonConfig(dir, address, hostsDir, opts.logLevel ?? 'info'));
  await writeFile(crictlConfig, `runtime-endpoint: unix://${address}\nimage-endpoint: unix://${address}\n`);

  const writeHosts = async (proxyUrl: string, config: Config = opts.config, fallback = opts.fallback): Promise<void> => {
    // The product's own generator (`portcullis client-config containerd`), so that CRI checks what users install.
    const generated = clientConfig('containerd', config, { proxyUrl, ...(fallback ? { fallback } : {}) });
    await rm(hostsDir, { recursive: true, force: true });
    for (const f of generated.files) {
      const file = path.join(hostsDir, f.path);
      await mkdir(path.dirname(file), { recursive: true });
      await writeFile(file, f.content);
    }
  };
  await writeHosts(opts.proxyUrl);

  const logFile = await open(logPath, 'a');
  const child = spawn(containerdBin, ['--config', configPath], {
    stdio: ['ignore', logFile.fd, logFile.fd],
    detached: true, // own process group: stop() kills containerd and its shims, nothing else
  });
  await logFile.close();
  let exited = false;
  const exitPromise = new Promise<void>((resolve) => {
    const done = (): void => {
      exited = true;
      resolve();
    };
    child.on('exit', done);
    child.on('error', done);
  });

  const crictl = (args: readonly string[], o: { timeoutMs?: number } = {}): Promise<ToolResult> => {
    const timeoutMs = o.timeoutMs ?? DEFAULT_PULL_TIMEOUT_MS;
    // crictl's --timeout bounds each gRPC call; runTool's timeout bounds the process (a little later, to let
    // crictl report its own deadline error first).
    const secs = Math.max(1, Math.ceil(timeoutMs / 1000));
    return runTool(crictlBin, ['--config', crictlConfig, '--timeout', `${secs}s`, ...args], { timeoutMs: timeoutMs + 5_000 });
  };

  const stop = async (): Promise<void> => {
    if (!exited) await stopGroup(child.pid, exitPromise);
    await rm(dir, { recursive: true, force: true, maxRetries: 3 });
  };

  const deadline = Date.now() + (opts.startTimeoutMs ?? 60_000);
  let last: ToolResult | undefined;
  while (Date.now() < deadline && !exited) {
    last = await crictl(['images', '-q'], { timeoutMs: 5_000 });
    if (last.code === 0) break;
    await new Promise((r) => setTimeout(r, 250));
  }
  if (!last || last.code !== 0) {
    const logText = await readFile(logPath, 'utf8').catch(() => '');
    await stop();
    throw new Error(
      `containerd (CRI) did not come up (${exited ? 'it exited' : 'timeout'}); last crictl: ${last?.stderr ?? 'n/a'}\n` +
        `--- containerd log ---\n${logText.slice(-4000)}`,
    );
  }

  return {
    address,
    dir,
    hostsDir,
    writeHosts,
    async pull(image, p = {}) {
      const args = ['pull'];
      if (p.auth && 'auth' in p.auth) args.push('--auth', p.auth.auth);
      else if (p.auth) args.push('--creds', `${p.auth.username}:${p.auth.password}`);
      args.push(image);
      const r = await crictl(args, { timeoutMs: p.timeoutMs });
      // Success prints `Image is up to date for sha256:<id>`: PullImageResponse.image_ref.
      const ref = /Image is up to date for (\S+)/.exec(r.stdout)?.[1] ?? '';
      const ok = r.code === 0 && ref !== '';
      return { ok, imageRef: ok ? ref : '', error: ok ? '' : criError(r.stderr), stderr: r.stderr, timedOut: r.timedOut };
    },
    remove: (image) => crictl(['rmi', image], { timeoutMs: 30_000 }),
    async status(image) {
      const r = await crictl(['inspecti', '-o', 'json', image], { timeoutMs: 30_000 });
      if (r.code !== 0) return undefined;
      return JSON.parse(r.stdout) as unknown;
    },
    crictl,
    log: () => readFile(logPath, 'utf8'),
    stop,
  };
}
