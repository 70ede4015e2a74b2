/**
 * Re-evaluation: which cached images would the current policy, with the current signatures and scan data, now
 * deny? Cached decisions expire on their own (gate.allowTTL / denyTTL); this answers the operator's question
 * before then ("a CVE was published: what that we already let through is affected?"). It reads the images the
 * proxy has served from the metadata store (tag mappings and admitted closures), and runs the same evidence and
 * policy pipeline as a pull, without caching, recording closures or logging decisions.
 *
 * Used by `GET /api/v1/admin/reevaluate` and `portcullis report`.
 */
import type { MetaStore } from '../cache/metastore.js';
import type { Gate } from './gate.js';
import type { ManifestService } from '../proxy/manifests.js';
import type { Digest } from '../routing/reference.js';
import type { Route, Router } from '../routing/route.js';
import { errorText } from '../util/error-text.js';

export interface ReevalTarget {
  gate: Gate;
  meta: MetaStore;
  manifests: ManifestService;
  router: Pick<Router, 'upstreams'>;
}

export interface ReevalEntry {
  image: string;
  upstream: string;
  registry: string;
  repository: string;
  tag: string | null;
  digest: string;
  /** What a pull would get now. */
  outcome: 'allow' | 'deny' | 'warn' | 'dry-run-deny' | 'error';
  /** The policy would not allow it (enforced, or only reported because of the scope's mode). */
  would_deny: boolean;
  mode: string;
  deny: Array<{ rule: string; message: string }>;
  warn: Array<{ rule: string; message: string }>;
  scan: { status: string; source?: string; counts?: Record<string, number>; scanned_at?: string } | null;
  /** The signature evidence's status (ok, none, error, not_configured); absent when evaluation failed. */
  signatures?: string;
  error?: string;
}

export interface ReevalReport {
  policy_revision: string;
  evaluated_at: string;
  evaluated: number;
  would_deny: number;
  images: ReevalEntry[];
}

const ACCESSORY_TAG = /^sha(256|512)-[a-f0-9]+(\.[a-z]+)?$/;

export async function reevaluate(t: ReevalTarget, opts: { all?: boolean; concurrency?: number; now?: () => number } = {}): Promise<ReevalReport> {
  const roots = t.meta.listRoots().filter((r) => r.tag === null || !ACCESSORY_TAG.test(r.tag));
  const entries: ReevalEntry[] = [];
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < roots.length) {
      const r = roots[next++]!;
      entries.push(await evaluateOne(t, r));
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, opts.concurrency ?? 4) }, worker));
  entries.sort((a, b) => (a.image < b.image ? -1 : a.image > b.image ? 1 : 0));
  const denied = entries.filter((e) => e.would_deny);
  return {
    policy_revision: t.gate.policyRevision,
    evaluated_at: new Date((opts.now ?? Date.now)()).toISOString(),
    evaluated: entries.length,
    would_deny: denied.length,
    images: opts.all ? entries : denied,
  };
}

async function evaluateOne(t: ReevalTarget, r: { upstream: string; repository: string; digest: string; tag: string | null }): Promise<ReevalEntry> {
  const upstream = t.router.upstreams.find((u) => u.name === r.upstream);
  const base = {
    image: `${upstream?.registry ?? r.upstream}/${r.repository}${r.tag ? `:${r.tag}` : ''}@${r.digest}`,
    upstream: r.upstream,
    registry: upstream?.registry ?? r.upstream,
    repository: r.repository,
    tag: r.tag,
    digest: r.digest,
  };
  if (!upstream)
    return {
      ...base,
      outcome: 'error',
      would_deny: true,
      mode: 'enforce',
      deny: [],
      warn: [],
      scan: null,
      error: `upstream "${r.upstream}" is no longer configured`,
    };
  try {
    const route: Route = { upstream, registry: upstream.registry, repository: r.repository, routing: 'prefix' };
    const manifest = await t.manifests.get(route, r.digest as Digest);
    const { input, admission } = await t.gate.evaluate({
      route,
      method: 'GET',
      tag: r.tag,
      manifest,
      kind: 'manifest',
      client: { ip: 'reevaluate', user: null, groups: [], method: 'anonymous', userAgent: 'portcullis-report' },
    });
    const s = input.scan;
    return {
      ...base,
      outcome: admission.outcome,
      would_deny: admission.outcome !== 'allow',
      mode: admission.mode,
      deny: admission.violations,
      warn: admission.warnings,
      signatures: input.signatures.status,
      scan: {
        status: s.status,
        ...(s.source ? { source: s.source } : {}),
        ...(s.counts ? { counts: s.counts } : {}),
        ...(s.scanned_at ? { scanned_at: s.scanned_at } : {}),
      },
    };
  } catch (e) {
    return { ...base, outcome: 'error', would_deny: true, mode: 'enforce', deny: [], warn: [], scan: null, error: errorText(e) };
  }
}

/** One line per image for the CLI. */
export function formatReport(r: ReevalReport): string {
  const lines = [`policy ${r.policy_revision}: ${r.would_deny} of ${r.evaluated} cached image${r.evaluated === 1 ? '' : 's'} would now be denied`];
  for (const e of r.images) {
    const why = e.error ?? e.deny.map((v) => `${v.message} [${v.rule}]`).join('; ');
    lines.push(`${e.would_deny ? 'DENY ' : 'ALLOW'} ${e.image}${why ? `: ${why}` : ''}`);
  }
  return lines.join('\n');
}

/** The cached root images whose upstream is still configured, with their routes (for impact reports). */
export function cachedRoots(t: ReevalTarget): Array<{ route: Route; digest: Digest; tag: string | null }> {
  const out: Array<{ route: Route; digest: Digest; tag: string | null }> = [];
  for (const r of t.meta.listRoots()) {
    if (r.tag !== null && ACCESSORY_TAG.test(r.tag)) continue;
    const upstream = t.router.upstreams.find((u) => u.name === r.upstream);
    if (upstream) out.push({ route: { upstream, registry: upstream.registry, repository: r.repository, routing: 'prefix' }, digest: r.digest, tag: r.tag });
  }
  return out;
}
