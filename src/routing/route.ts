/**
 * Maps a client's request onto one configured upstream and the repository name to use there.
 *
 * Three ways to name the registry: containerd's `?ns=<host>`, a path prefix `/v2/<host>/<repo>/…`
 * (podman, skopeo, crane), or nothing at all (Docker's registry-mirrors), which means the default upstream. Only
 * configured upstreams can ever be selected: an unknown host is a routing failure, never a URL to fetch.
 */
import type { Config, UpstreamConfig } from '../config/schema.js';
import { isValidName, looksLikeHost } from './reference.js';

export type RoutingMode = 'ns' | 'prefix' | 'default';

export interface Route {
  upstream: UpstreamConfig;
  /** The canonical registry host of the upstream (`docker.io`), as policies and logs name it. */
  registry: string;
  /** Repository path on the upstream, after the library/ rule. */
  repository: string;
  routing: RoutingMode;
  /** The raw `ns` value, echoed back as OCI-Namespace. */
  ns?: string;
}

export type RouteError = { code: 'NAME_UNKNOWN'; message: string } | { code: 'NAME_INVALID'; message: string };

export class Router {
  private readonly byHost = new Map<string, UpstreamConfig>();
  private readonly defaultUpstream: UpstreamConfig | undefined;

  constructor(config: Config) {
    for (const u of config.upstreams) {
      for (const h of [u.registry, ...u.aliases]) this.byHost.set(h, u);
    }
    this.defaultUpstream = config.defaultUpstream ? config.upstreams.find((u) => u.name === config.defaultUpstream) : undefined;
  }

  get upstreams(): UpstreamConfig[] {
    return [...new Set(this.byHost.values())];
  }

  /** Looks up a host or alias; undefined for anything not configured. */
  upstreamFor(host: string): UpstreamConfig | undefined {
    return this.byHost.get(host.toLowerCase());
  }

  /**
   * @param name the `<name>` part of `/v2/<name>/…` as the client sent it (already percent-decoded)
   * @param ns the `ns` query parameter, if any
   */
  resolve(name: string, ns: string | undefined): Route | RouteError {
    let upstream: UpstreamConfig | undefined;
    let repository = name;
    let routing: RoutingMode;
    if (ns !== undefined) {
      upstream = this.upstreamFor(ns);
      if (!upstream) return { code: 'NAME_UNKNOWN', message: `registry "${truncate(ns)}" (from ns) is not configured on this proxy` };
      routing = 'ns';
      // containerd with a `_default` hosts.toml may still send a host-prefixed name; accept it when it agrees.
      const first = name.split('/', 1)[0] ?? '';
      if (looksLikeHost(first) && this.upstreamFor(first) === upstream && name.includes('/')) repository = name.slice(first.length + 1);
    } else {
      const slash = name.indexOf('/');
      const first = slash === -1 ? name : name.slice(0, slash);
      if (slash !== -1 && looksLikeHost(first)) {
        upstream = this.upstreamFor(first);
        if (!upstream) return { code: 'NAME_UNKNOWN', message: `registry "${truncate(first)}" is not configured on this proxy` };
        repository = name.slice(slash + 1);
        routing = 'prefix';
      } else {
        upstream = this.defaultUpstream;
        if (!upstream) return { code: 'NAME_UNKNOWN', message: `repository "${truncate(name)}" names no registry and no default upstream is configured` };
        routing = 'default';
      }
    }
    if (usesLibraryPrefix(upstream) && !repository.includes('/')) repository = `library/${repository}`;
    if (!isValidName(repository)) return { code: 'NAME_INVALID', message: `invalid repository name "${truncate(repository)}"` };
    const route: Route = { upstream, registry: upstream.registry, repository, routing };
    if (ns !== undefined) route.ns = ns;
    return route;
  }
}

export function usesLibraryPrefix(u: UpstreamConfig): boolean {
  return u.libraryPrefix ?? u.registry === 'docker.io';
}

function truncate(s: string): string {
  return s.length > 100 ? `${s.slice(0, 100)}…` : s;
}
