/**
 * `portcullis client-config`: the client configuration that cannot be bypassed (a client that falls back to
 * the real registry on a 403 enforces nothing; README "Client configuration that cannot be bypassed"), generated from the proxy's own list of upstreams so that the two never
 * drift apart.
 *
 * - containerd (and Docker 29+ with the containerd image store): `certs.d/<registry>/hosts.toml` with the proxy as
 *   the `server` AND the only `[host]`. containerd appends `server` as the last host it tries, so the real registry
 *   appears nowhere and a 403 cannot fall back; and containerd 1.6 ignores a file without a `[host]` table (it then
 *   pulls straight from the upstream). `_default` sends every other registry to the proxy too, which refuses what it
 *   does not proxy: only configured upstreams can be pulled at all.
 * - A node instance chained to a central tier (`--fallback <central>`): the node first, then the central tier as a
 *   further `[host]` (and as `server`). containerd tries the next host when one cannot be reached (the node instance
 *   down or being replaced), and also after a 403 or 404: both gate, so a fallback is never a way around a denial, as
 *   long as the node's own policy is no stricter than the central tier's (README "Running a central tier").
 * - podman, CRI-O, skopeo, buildah: `[[registry]]` entries whose `location` is the proxy's path prefix, so the real
 *   registry is not a source at all. A path prefix cannot carry a port, so a registry named `host:port` is routed
 *   through an alias without one, or left out with a note saying so.
 */
import type { Config } from '../config/schema.js';

export type ClientKind = 'containerd' | 'docker' | 'podman';

export interface ClientConfigOptions {
  /** How clients reach the proxy, e.g. http://127.0.0.1:5000 (a node-local DaemonSet) or https://portcullis.internal. */
  proxyUrl: string;
  /** containerd/docker: a CA bundle for an https proxy, as a path on the client's machine. */
  caFile?: string;
  /** containerd/docker: skip TLS verification of the proxy (labs only). */
  skipVerify?: boolean;
  /** containerd/docker: also write `_default` (default true). */
  defaultHost?: boolean;
  /**
   * containerd/docker: gating proxies tried in this order after `proxyUrl` (a node instance's central tier), each
   * serving the same registries. Never a real registry: each must gate as the first does.
   */
  fallback?: string[];
}

export interface ClientConfigFile {
  /** Relative to the client's configuration directory (see `directoryFor`). */
  path: string;
  content: string;
}

export interface ClientConfig {
  /** Where the client reads these files; `path`s are relative to it. */
  directory: string;
  files: ClientConfigFile[];
  /** Things the operator must know or do besides installing the files. */
  notes: string[];
}

export function directoryFor(kind: ClientKind): string {
  return kind === 'containerd' ? '/etc/containerd/certs.d' : kind === 'docker' ? '/etc/docker/certs.d' : '/etc/containers/registries.conf.d';
}

export function clientConfig(kind: ClientKind, config: Config, opts: ClientConfigOptions): ClientConfig {
  const proxy = parseProxyUrl(opts.proxyUrl);
  return kind === 'podman' ? podman(config, proxy) : hostsToml(kind, config, proxy, opts);
}

function parseProxyUrl(raw: string, flag = '--proxy'): URL {
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    throw new Error(`${flag}: not a URL: ${JSON.stringify(raw)}`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new Error(`${flag}: must be http:// or https://, not ${u.protocol}`);
  if (u.pathname !== '/' || u.search || u.hash || u.username) throw new Error(`${flag}: give scheme, host and port only`);
  return u;
}

/** Every registry host that clients may name, once: each upstream's registry and its aliases. */
function registries(config: Config): string[] {
  return [...new Set(config.upstreams.flatMap((u) => [u.registry, ...u.aliases]))];
}

/** One hosts.toml: the proxy as the server and as the only [host]. */
export function hostsTomlFile(
  kind: 'containerd' | 'docker',
  registry: string,
  proxyUrl: string,
  opts: Pick<ClientConfigOptions, 'caFile' | 'skipVerify' | 'fallback'> = {},
): ClientConfigFile {
  const hosts = [parseProxyUrl(proxyUrl).origin, ...(opts.fallback ?? []).map((u) => parseProxyUrl(u, '--fallback').origin)];
  // containerd tries `server` after every [host]: the last gating proxy, so that nothing else is ever tried.
  const server = hosts[hosts.length - 1]!;
  const tables = [...new Set(hosts)].flatMap((h) => {
    const t = [`[host."${h}"]`, '  capabilities = ["pull", "resolve"]'];
    if (opts.caFile) t.push(`  ca = ${JSON.stringify(opts.caFile)}`);
    if (opts.skipVerify) t.push('  skip_verify = true');
    return [...t, ''];
  });
  return {
    // containerd's directory for a registry is its host name, with the port's colon as it is (`host:5000`).
    path: `${registry}/hosts.toml`,
    content: [
      `# ${directoryFor(kind)}/${registry}/hosts.toml, generated by \`portcullis client-config ${kind}\`.`,
      hosts.length > 1
        ? '# Gating proxies only, tried in order (the node instance, then the central tier): the real registry appears nowhere.'
        : '# The proxy is the server AND the only [host]: the real registry appears nowhere, so a 403 cannot fall back.',
      `server = "${server}"`,
      '',
      // Keep the table: without any [host] table containerd 1.6 rejects the file and pulls from the registry.
      ...tables,
    ].join('\n'),
  };
}

function hostsToml(kind: 'containerd' | 'docker', config: Config, proxy: URL, opts: ClientConfigOptions): ClientConfig {
  const file = (registry: string): ClientConfigFile => hostsTomlFile(kind, registry, proxy.origin, opts);
  const names = registries(config);
  const files = names.map(file);
  const withDefault = opts.defaultHost ?? true;
  if (withDefault) files.push(file('_default'));
  const fallback = opts.fallback ?? [];
  for (const f of fallback) parseProxyUrl(f, '--fallback');
  const notes = [
    `containerd routes each registry to the proxy with ?ns=<registry>; the proxy serves ${names.join(', ')}` +
      (withDefault ? ' and refuses any other registry (_default).' : '; other registries are not sent to it (--no-default): block them at the egress.'),
    'A registry-specific directory takes precedence over _default: remove any other hosts.toml for these registries.',
  ];
  if (fallback.length > 0) {
    notes.push(
      `Fallback: ${fallback.join(', ')} after ${proxy.origin}. containerd moves to the next host when one is unreachable, and also after a 403 or 404: each must gate and serve the same registries, and the node's policy must be no stricter than the central tier's.`,
    );
  }
  if (kind === 'containerd')
    notes.push('CRI: set config_path = "/etc/containerd/certs.d" under [plugins."io.containerd.grpc.v1.cri".registry], then restart containerd.');
  else {
    notes.push(
      'Docker 29+ with the containerd image store only: remove "registry-mirrors" from daemon.json. The legacy (graphdriver) store falls back to the registry on any error; there, only egress blocking enforces the proxy.',
    );
  }
  if (proxy.protocol === 'http:' && !['127.0.0.1', 'localhost', '[::1]'].includes(proxy.hostname)) {
    notes.push('The proxy URL is plain http on a non-loopback address: requests and the images they carry cross the network unencrypted.');
  }
  notes.push('Defence in depth: block egress from nodes to the real registries.');
  return { directory: directoryFor(kind), files, notes };
}

function podman(config: Config, proxy: URL): ClientConfig {
  const lines = [
    '# /etc/containers/registries.conf.d/portcullis.conf, generated by `portcullis client-config podman`.',
    '# prefix → location: the real registry is not a source at all, so a 403 from the proxy cannot fall back to it.',
  ];
  const notes: string[] = [];
  for (const u of config.upstreams) {
    // The location's first path component names the upstream; it cannot contain a port (see README, routing).
    const via = [u.registry, ...u.aliases].find((h) => !h.includes(':'));
    for (const prefix of [u.registry, ...u.aliases]) {
      if (!via) {
        notes.push(`${prefix}: left out. A path prefix cannot name a registry with a port; give upstream "${u.name}" an alias without one.`);
        continue;
      }
      lines.push('', '[[registry]]', `prefix = ${JSON.stringify(prefix)}`, `location = ${JSON.stringify(`${proxy.host}/${via}`)}`);
      if (proxy.protocol === 'http:') lines.push('insecure = true');
    }
  }
  lines.push('');
  notes.push('Images from registries not listed here still go to those registries: set `blocked = true` for them, or block egress.');
  return { directory: directoryFor('podman'), files: [{ path: 'portcullis.conf', content: lines.join('\n') }], notes };
}
