/**
 * What a decision was made under: the policy revision, the settings hash and the trust revision. An
 * admission is served on its own strength only while all three are unchanged; after any change (a bundle pushed, an
 * external OPA's bundle revision, a new config at restart, a rotated key or trust root) its root is decided again
 * before a child or blob of it is served.
 */
import { createHash } from 'node:crypto';

export interface Basis {
  policy: string;
  settings: string;
  trust: string;
  /**
   * The cluster's invalidation epoch (cache/epoch.ts) with storage.meta: redis: a scan report pushed to any replica
   * bumps it, and every replica's decisions and admissions made under an older one stop holding. Absent on one node.
   */
  epoch?: string | undefined;
}

/** The form stored with admissions and compared on every request. */
export function basisKey(b: Basis): string {
  const base = `policy=${b.policy};settings=${b.settings};trust=${b.trust}`;
  return b.epoch === undefined ? base : `${base};epoch=${b.epoch}`;
}

/**
 * A stable hash of the operator settings that shape decisions (key order does not matter), so that a restart with
 * changed settings and the same bundle still counts as a change.
 */
export function settingsHash(settings: unknown): string {
  return createHash('sha256').update(canonicalJson(settings)).digest('hex').slice(0, 16);
}

function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  if (v !== null && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    return `{${Object.keys(o)
      .filter((k) => o[k] !== undefined)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonicalJson(o[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v) ?? 'null';
}
