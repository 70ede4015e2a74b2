/**
 * Warming before a rollout (`portcullis warm`, POST /api/v1/admin/warm): decide images and fetch them into the
 * cache ahead of a deployment, so the first node does not wait for a cold pull. For each image: the tag is
 * resolved, the manifest decided like a pull's (by tag: a root; by digest: a child of an admitted index, or a root),
 * then every runnable child of an index is decided in turn, and the config and layers of everything admitted are
 * fetched through the same single-flight downloads as pulls (BlobService). A denied image or child is reported
 * with its reason, and nothing of it is fetched.
 *
 * Limits: at most `warm.maxImages` images and `warm.maxBlobs` blobs per request; `warm.concurrency` blobs at once
 * (the upstream's `concurrency` applies underneath, shared with pulls); and the quotas of a client named
 * `portcullis-warm` at the caller's address (config `quotas`), taken only for what is not cached, as for a pull. A
 * quota that runs out fails the image (the report says when to retry); what was fetched stays.
 */
import type { Identity } from '../auth/authenticator.js';
import type { QuotaKind, Quotas } from '../auth/quota.js';
import type { BlobStore } from '../cache/blobstore.js';
import type { MetaStore } from '../cache/metastore.js';
import type { DownloadManager } from '../cache/download-manager.js';
import type { WarmConfig } from '../config/reevaluate.js';
import type { Gate } from '../gate/gate.js';
import type { Client } from '../gate/input.js';
import type { Metrics } from '../metrics/metrics.js';
import type { Admission } from '../policy/contract.js';
import type { BlobService } from '../proxy/blobs.js';
import type { Manifest, ManifestService } from '../proxy/manifests.js';
import type { Digest } from '../routing/reference.js';
import type { Route, Router } from '../routing/route.js';
import { isRunnable } from '../oci/artifacts.js';
import { parseImageRef } from './check.js';
import { errorText } from '../util/error-text.js';

export interface WarmTarget {
  router: Router;
  manifests: ManifestService;
  gate: Gate;
  blobs: BlobService;
  blobStore: Pick<BlobStore, 'has'>;
  downloads: Pick<DownloadManager, 'get'>;
  quotas: Quotas | undefined;
  metrics: Metrics;
  /** Whether a tag or manifest is cached (a cached one takes no quota token, as for a pull). */
  meta: Pick<MetaStore, 'getTag' | 'getManifest'>;
  tagTTL: number;
  now: () => number;
}

export interface WarmImageResult {
  image: string;
  result: 'admitted' | 'denied' | 'failed';
  digest?: string;
  decision_id?: string;
  /** Why it was denied (the policy's rules and messages) or why it failed. */
  reason?: string;
  rules?: string[];
  /** Runnable children of an index, each decided on its own. */
  children?: Array<{ digest: string; platform: string; result: 'admitted' | 'denied'; reason?: string }>;
  blobs?: { total: number; cached: number; fetched: number; bytes: number };
}

export interface WarmReport {
  admitted: number;
  denied: number;
  failed: number;
  images: WarmImageResult[];
}

export class WarmLimitError extends Error {}

/** Who warming is, for quotas: its own identity bucket, and the caller's address bucket. */
const WARM_IDENTITY: Identity = { user: 'portcullis-warm', groups: [], method: 'token' };

class QuotaExhausted extends Error {}

/** Who the policy decides for (policy `clients` rules): anonymous unless the request names an identity. */
export interface WarmIdentity {
  user: string | null;
  groups: string[];
  method: string;
}

export async function warm(
  t: WarmTarget,
  cfg: WarmConfig,
  refs: string[],
  callerIp: string,
  as: WarmIdentity = { user: null, groups: [], method: 'anonymous' },
): Promise<WarmReport> {
  if (refs.length === 0) throw new WarmLimitError('name at least one image');
  if (refs.length > cfg.maxImages) throw new WarmLimitError(`${refs.length} images is more than warm.maxImages (${cfg.maxImages}) for one request`);
  const budget = { blobs: cfg.maxBlobs };
  const images: WarmImageResult[] = [];
  // One image at a time: its blobs go in parallel (bounded), and a quota that runs out stops the rest early.
  for (const ref of refs) {
    const r = await warmOne(t, cfg, ref, { ip: callerIp, ...as, userAgent: 'portcullis-warm' }, budget);
    t.metrics.warmed.inc({ result: r.result });
    images.push(r);
  }
  const count = (k: WarmImageResult['result']): number => images.filter((i) => i.result === k).length;
  return { admitted: count('admitted'), denied: count('denied'), failed: count('failed'), images };
}

async function warmOne(t: WarmTarget, cfg: WarmConfig, ref: string, client: Client, budget: { blobs: number }): Promise<WarmImageResult> {
  const ip = client.ip;
  const take = async (kind: QuotaKind, cold: boolean): Promise<void> => {
    if (!cold || !t.quotas?.limits(kind)) return;
    const q = await t.quotas.take(kind, WARM_IDENTITY, ip);
    if (!q.ok) throw new QuotaExhausted(`quota for ${kind} per ${q.scope} exceeded; retry in ${q.retryAfterSeconds}s`);
  };
  try {
    const p = parseImageRef(ref);
    const route = t.router.resolve(p.host ? `${p.host}/${p.name}` : p.name, undefined);
    if ('code' in route) return { image: ref, result: 'failed', reason: route.message };
    const name = `${route.registry}/${route.repository}`;
    let digest = p.digest as Digest | undefined;
    if (!digest) {
      const cached = t.meta.getTag(route.upstream.name, route.repository, p.tag!);
      await take('coldManifests', cached === undefined || t.now() - cached.checkedAt >= t.tagTTL);
      digest = (await t.manifests.resolveTag(route, p.tag!)).manifest.digest;
    }
    const manifest = await getManifest(t, route, digest, take);
    const image = `${name}${p.tag && !p.digest ? `:${p.tag}` : ''}@${digest}`;
    const root = { route, method: 'GET' as const, tag: p.digest ? null : (p.tag ?? null), manifest, kind: 'manifest' as const, client };
    await take('decisions', !t.gate.hasCachedDecision(root));
    const admission = p.digest ? await t.gate.admitByDigest({ route, method: 'GET', manifest, client }) : await t.gate.admitRoot(root);
    if (!admission.serve) return { image, digest, ...denial(admission), result: 'denied' };
    const blobs = new Set<Digest>();
    const children: NonNullable<WarmImageResult['children']> = [];
    if (manifest.parsed.kind === 'image') manifest.parsed.blobs.forEach((b) => blobs.add(b.digest));
    else {
      for (const c of manifest.parsed.manifests) {
        const child = await getManifest(t, route, c.digest, take);
        if (child.parsed.kind !== 'image' || !isRunnable(child.parsed)) continue;
        const platform = [c.platform?.os, c.platform?.architecture, c.platform?.variant].filter(Boolean).join('/') || 'unknown';
        const a = await t.gate.admitByDigest({ route, method: 'GET', manifest: child, client });
        if (!a.serve) {
          children.push({ digest: c.digest, platform, result: 'denied', reason: a.message });
          continue;
        }
        children.push({ digest: c.digest, platform, result: 'admitted' });
        child.parsed.blobs.forEach((b) => blobs.add(b.digest));
      }
    }
    if (blobs.size > budget.blobs) {
      return {
        image,
        digest,
        result: 'failed',
        reason: `${blobs.size} blobs is more than what is left of warm.maxBlobs (${budget.blobs}) for this request`,
        ...(children.length ? { children } : {}),
      };
    }
    budget.blobs -= blobs.size;
    const fetched = await fetchAll(t, cfg, route, [...blobs], take);
    return { image, digest, result: 'admitted', decision_id: admission.decisionId, ...(children.length ? { children } : {}), blobs: fetched };
  } catch (e) {
    return { image: ref, result: 'failed', reason: e instanceof Error ? e.message : String(e) };
  }
}

async function getManifest(t: WarmTarget, route: Route, digest: Digest, take: (k: QuotaKind, cold: boolean) => Promise<void>): Promise<Manifest> {
  await take('coldManifests', t.meta.getManifest(route.upstream.name, route.repository, digest) === undefined);
  return t.manifests.get(route, digest);
}

function denial(a: Admission): Pick<WarmImageResult, 'decision_id' | 'reason' | 'rules'> {
  return { decision_id: a.decisionId, reason: a.message, rules: a.violations.map((v) => v.rule) };
}

/** Fetches what is not cached, `cfg.concurrency` at a time; each blob joins a running download when there is one. */
async function fetchAll(
  t: WarmTarget,
  cfg: WarmConfig,
  route: Route,
  digests: Digest[],
  take: (k: QuotaKind, cold: boolean) => Promise<void>,
): Promise<NonNullable<WarmImageResult['blobs']>> {
  const out = { total: digests.length, cached: 0, fetched: 0, bytes: 0 };
  let next = 0;
  let failure: unknown;
  const worker = async (): Promise<void> => {
    while (next < digests.length && failure === undefined) {
      const d = digests[next++]!;
      try {
        if (t.blobStore.has(d)) {
          out.cached++;
          continue;
        }
        // A download already running costs the upstream nothing more: joined, like a pull joins it.
        await take('coldBlobs', t.downloads.get(d) === undefined);
        const blob = await t.blobs.open(route, d);
        if (blob.source === 'cache') {
          blob.release();
          out.cached++;
          continue;
        }
        const running = t.downloads.get(d);
        if (running) await running.finished;
        if (!t.blobStore.has(d)) throw running?.error ?? new Error(`blob ${d} did not reach the cache`);
        out.fetched++;
        out.bytes += blob.size;
      } catch (e) {
        failure ??= e;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(cfg.concurrency, Math.max(1, digests.length)) }, worker));
  if (failure !== undefined) throw failure instanceof Error ? failure : new Error(errorText(failure));
  return out;
}

/** One line per image (and denied child) for the CLI. */
export function formatWarm(r: WarmReport): string {
  const lines = [`${r.admitted} admitted, ${r.denied} denied, ${r.failed} failed`];
  for (const i of r.images) {
    if (i.result === 'admitted') {
      const b = i.blobs;
      lines.push(`ADMITTED ${i.image}${b ? `: ${b.total} blobs, ${b.fetched} fetched (${b.bytes} bytes), ${b.cached} already cached` : ''}`);
    } else lines.push(`${i.result === 'denied' ? 'DENIED' : 'FAILED'} ${i.image}: ${i.reason ?? ''}`);
    for (const c of i.children ?? []) if (c.result === 'denied') lines.push(`  DENIED ${c.platform} ${c.digest}: ${c.reason ?? ''}`);
  }
  return lines.join('\n');
}
