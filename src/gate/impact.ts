/**
 * A policy's impact before it goes live (`portcullis policy impact`, POST /api/v1/admin/impact): a candidate
 * decider (a new bundle, new settings, or both) decides every cached image and every recent decision next to the
 * policy in use, on the same input, and the images whose verdict would change are listed with the rules and
 * reasons on each side. Nothing is activated, cached, recorded or logged as a decision.
 *
 * Both policies see one input per image, gathered once (the latest signatures and scan data), so a change in the
 * list is the policy's doing, not the evidence's. Recent decisions are re-run on the input they were made with
 * (RecentDecisions below), with `now` moved to the present; the ring holds the latest decision per image and
 * client, so a rule about clients shows its effect too.
 */
import { randomUUID } from 'node:crypto';
import type { Decider, PolicyInput, Violation } from '../policy/contract.js';
import type { Route } from '../routing/route.js';
import type { DecisionObserver } from './gate.js';
import { errorAdmission, toAdmission } from './input.js';
import { cachedRoots, type ReevalTarget } from './reeval.js';

type Verdict = 'allow' | 'deny' | 'warn' | 'dry-run-deny';

export interface ImpactSide {
  outcome: Verdict;
  deny: Violation[];
  warn: Violation[];
}

export interface ImpactChange {
  /** `cached`: an image in the cache; `recent`: a recent decision (which may be a client's request for it). */
  source: 'cached' | 'recent';
  image: string;
  digest: string | null;
  /** For recent decisions: who asked (user, or anonymous, and how they authenticated). */
  client?: string;
  /** allowed→denied and denied→allowed change what is served; `outcome` is any other change (allow→warn, …). */
  change: 'allowed→denied' | 'denied→allowed' | 'outcome';
  active: ImpactSide;
  candidate: ImpactSide;
}

export interface ImpactReport {
  active_revision: string;
  candidate_revision: string;
  evaluated_at: string;
  evaluated: { cached: number; recent: number; errors: number };
  changed: number;
  changes: ImpactChange[];
  /** Cached images whose evidence could not be gathered (not compared). */
  errors: Array<{ image: string; error: string }>;
}

/**
 * The latest root decisions (per image and client), with the input they were made with, for impact reports. An
 * observer of the gate; bounded, in memory only.
 */
export class RecentDecisions implements DecisionObserver {
  private readonly ring = new Map<string, { input: PolicyInput; route: Route }>();

  constructor(private readonly max = 200) {}

  onDecision(e: Parameters<DecisionObserver['onDecision']>[0]): void {
    const i = e.input;
    const c = i.request.client;
    const key = [
      i.request.kind,
      i.image.registry,
      i.image.repository,
      i.image.tag ?? '',
      i.image.digest ?? '',
      i.image.root?.digest ?? '',
      c.method,
      c.user ?? '',
      c.groups.join(','),
    ].join('\n');
    // Newest last: delete first so that a repeat moves to the end, then drop the oldest beyond the bound.
    this.ring.delete(key);
    this.ring.set(key, { input: i, route: e.route });
    while (this.ring.size > this.max) this.ring.delete(this.ring.keys().next().value!);
  }

  entries(): Array<{ input: PolicyInput; route: Route }> {
    return [...this.ring.values()];
  }
}

export interface ImpactOptions {
  /** The policy in use (the PolicyManager). */
  active: Decider;
  candidate: Decider;
  recent?: RecentDecisions;
  concurrency?: number;
  now?: () => number;
}

export async function impact(t: ReevalTarget, o: ImpactOptions): Promise<ImpactReport> {
  const now = o.now ?? Date.now;
  const changes: ImpactChange[] = [];
  const errors: ImpactReport['errors'] = [];
  const roots = cachedRoots(t);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < roots.length) {
      const r = roots[next++]!;
      const image = `${r.route.registry}/${r.route.repository}${r.tag ? `:${r.tag}` : ''}@${r.digest}`;
      try {
        const manifest = await t.manifests.get(r.route, r.digest);
        // The active side through the gate's own evaluation; the candidate on exactly that input.
        const { input, admission } = await t.gate.evaluate({ route: r.route, method: 'GET', tag: r.tag, manifest, kind: 'manifest', client: REEVAL_CLIENT });
        const c = compare('cached', image, r.digest, undefined, side(admission), await decide(o.candidate, input));
        if (c) changes.push(c);
      } catch (e) {
        errors.push({ image, error: e instanceof Error ? e.message : String(e) });
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, o.concurrency ?? 4) }, worker));
  const recent = o.recent?.entries() ?? [];
  for (const { input: recorded } of recent) {
    const input = { ...recorded, now: new Date(now()).toISOString() };
    const img = recorded.image;
    const image = `${img.registry}/${img.repository}${img.tag ? `:${img.tag}` : ''}${img.digest ? `@${img.digest}` : ` (${recorded.request.kind})`}`;
    const who = recorded.request.client;
    const c = compare(
      'recent',
      image,
      img.digest,
      `${who.user ?? 'anonymous'} via ${who.method}`,
      await decide(o.active, input),
      await decide(o.candidate, input),
    );
    if (c) changes.push(c);
  }
  const rank = { 'allowed→denied': 0, 'denied→allowed': 1, outcome: 2 } as const;
  changes.sort((a, b) => rank[a.change] - rank[b.change] || (a.image < b.image ? -1 : a.image > b.image ? 1 : 0));
  return {
    active_revision: o.active.revision,
    candidate_revision: o.candidate.revision,
    evaluated_at: new Date(now()).toISOString(),
    evaluated: { cached: roots.length - errors.length, recent: recent.length, errors: errors.length },
    changed: changes.length,
    changes,
    errors,
  };
}

/** The identity re-evaluation decides as (reeval.ts does the same). */
const REEVAL_CLIENT = { ip: 'reevaluate', user: null, groups: [], method: 'anonymous', userAgent: 'portcullis-impact' };

async function decide(d: Decider, input: PolicyInput): Promise<ImpactSide> {
  try {
    return side(toAdmission(randomUUID(), await d.evaluate(input)));
  } catch (e) {
    return side(errorAdmission('', 'policy.error', `policy evaluation failed: ${e instanceof Error ? e.message : String(e)}`));
  }
}

function side(a: { outcome: Verdict; violations: Violation[]; warnings: Violation[] }): ImpactSide {
  return { outcome: a.outcome, deny: a.violations, warn: a.warnings };
}

function compare(
  source: ImpactChange['source'],
  image: string,
  digest: string | null,
  client: string | undefined,
  active: ImpactSide,
  candidate: ImpactSide,
): ImpactChange | undefined {
  if (active.outcome === candidate.outcome) return undefined;
  const served = (s: ImpactSide): boolean => s.outcome !== 'deny';
  const change = served(active) && !served(candidate) ? 'allowed→denied' : !served(active) && served(candidate) ? 'denied→allowed' : 'outcome';
  return { source, image, digest, ...(client ? { client } : {}), change, active, candidate };
}

/** One line per change for the CLI. */
export function formatImpact(r: ImpactReport): string {
  const lines = [
    `candidate ${r.candidate_revision} against active ${r.active_revision}: ${r.changed} change${r.changed === 1 ? '' : 's'} (${r.evaluated.cached} cached image${r.evaluated.cached === 1 ? '' : 's'}, ${r.evaluated.recent} recent decision${r.evaluated.recent === 1 ? '' : 's'})`,
  ];
  const why = (s: ImpactSide): string => s.deny.map((v) => `${v.message} [${v.rule}]`).join('; ') || s.outcome;
  for (const c of r.changes) {
    const who = c.client ? ` (${c.client})` : '';
    if (c.change === 'allowed→denied') lines.push(`DENY   ${c.image}${who}: ${why(c.candidate)}`);
    else if (c.change === 'denied→allowed') lines.push(`ALLOW  ${c.image}${who}: was ${why(c.active)}`);
    else lines.push(`CHANGE ${c.image}${who}: ${c.active.outcome} → ${c.candidate.outcome}: ${why(c.candidate)}`);
  }
  for (const e of r.errors) lines.push(`ERROR  ${e.image}: ${e.error}`);
  return lines.join('\n');
}
