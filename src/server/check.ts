/**
 * `portcullis check <image>`: the serving pipeline (route, resolve, verify, evidence, policy) for one image
 * reference, without a client. It reports what a pull would get, so an operator can test a policy change or
 * explain a denial.
 */
import type { App } from './app.js';

/** What a check runs on: the same router, manifests and gate as the proxy's pulls. */
export type CheckTarget = Pick<App, 'router' | 'manifests' | 'gate'>;
import { RegistryError } from './errors.js';
import { isDigest, isValidTag, looksLikeHost } from '../routing/reference.js';
import type { DecisionObserver } from '../gate/gate.js';
import type { Admission, PolicyInput, PolicyResult } from '../policy/contract.js';

export interface CheckReport {
  image: string;
  upstream: string;
  digest: string;
  admission: Admission;
  input: PolicyInput | undefined;
  result: PolicyResult | undefined;
}

export interface ParsedImageRef {
  host: string | undefined;
  name: string;
  tag: string | undefined;
  digest: string | undefined;
}

/** Docker-style reference: `[host[:port]/]path[:tag][@digest]`. */
export function parseImageRef(ref: string): ParsedImageRef {
  let rest = ref;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at !== -1) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!isDigest(digest)) throw new Error(`invalid digest in ${ref}`);
  }
  let tag: string | undefined;
  const lastSlash = rest.lastIndexOf('/');
  const colon = rest.lastIndexOf(':');
  if (colon > lastSlash) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!isValidTag(tag)) throw new Error(`invalid tag in ${ref}`);
  }
  const first = rest.split('/', 1)[0] ?? '';
  if (rest.includes('/') && looksLikeHost(first)) return { host: first, name: rest.slice(first.length + 1), tag, digest };
  return { host: undefined, name: rest, tag: digest ? tag : (tag ?? 'latest'), digest };
}

/** Who `check` evaluates as (`--as`): anonymous unless given. */
export interface CheckIdentity {
  user: string | null;
  groups: string[];
  method: string;
}

export async function checkImage(
  app: CheckTarget,
  ref: string,
  capture: { last?: Parameters<DecisionObserver['onDecision']>[0] },
  as: CheckIdentity = { user: null, groups: [], method: 'anonymous' },
): Promise<CheckReport> {
  const p = parseImageRef(ref);
  const route = app.router.resolve(p.host ? `${p.host}/${p.name}` : p.name, undefined);
  if ('code' in route) throw new RegistryError(route.code, route.message);
  const byDigest = p.digest;
  if (byDigest !== undefined && !isDigest(byDigest)) throw new Error('unreachable: invalid digest');
  // By tag, the manifest comes with the resolution: one lookup, one parse.
  const manifest = byDigest ? await app.manifests.get(route, byDigest) : (await app.manifests.resolveTag(route, p.tag as string)).manifest;
  const digest = manifest.digest;
  const client = { ip: 'cli', user: as.user, groups: as.groups, method: as.method, userAgent: 'portcullis-check' };
  // By digest, the same path as a pull: a platform manifest of an admitted index is decided as its child (with the
  // index's signatures), anything else as a root.
  const admission = p.digest
    ? await app.gate.admitByDigest({ route, method: 'GET', manifest, client })
    : await app.gate.admitRoot({ route, method: 'GET', tag: p.tag ?? null, manifest, kind: 'manifest', client });
  return {
    image: `${route.registry}/${route.repository}${p.tag && !p.digest ? `:${p.tag}` : ''}@${digest}`,
    upstream: route.upstream.name,
    digest,
    admission,
    input: capture.last?.input,
    result: capture.last?.result,
  };
}
