/**
 * Builds the signature evidence provider from the config; undefined when no authority is configured (the policy
 * input then says `not_configured`, and a scope that requires signatures denies).
 *
 * Startup fails, naming the authority, when a key or trust file cannot be used, or when a policy scope in
 * `policy.settings` requires an authority that `signatures.authorities` does not define.
 */
import type { SignatureProvider } from '../gate/types.js';
import type { EvidenceDeps } from '../gate/evidence.js';
import type { Config } from '../config/schema.js';
import { SignatureEvidenceProvider } from './provider.js';
import { loadTrust } from './trust.js';

export function createSignatureProvider(deps: EvidenceDeps): SignatureProvider | undefined {
  const cfg = deps.config.signatures;
  if (!cfg || cfg.authorities.length === 0) return undefined;
  checkScopeAuthorities(deps.config);
  return new SignatureEvidenceProvider(deps, cfg);
}

/**
 * What `portcullis config check` adds to schema validation: every key and trust file loads, and every authority a
 * scope names is defined. Throws an error naming the authority; a no-op without signature authorities.
 */
export function checkSignatureConfig(config: Config): void {
  const cfg = config.signatures;
  if (!cfg || cfg.authorities.length === 0) return;
  checkScopeAuthorities(config);
  loadTrust(cfg);
}

function checkScopeAuthorities(config: Config): void {
  const names = new Set((config.signatures?.authorities ?? []).map((a) => a.name));
  const missing = requiredAuthorities(config.policy.settings).filter((r) => !names.has(r.authority));
  if (missing.length) {
    const m = missing[0]!;
    throw new Error(
      `policy.settings.scopes: scope "${m.scope}" requires signature authority "${m.authority}", which signatures.authorities does not define (defined: ${[...names].map((n) => `"${n}"`).join(', ')})`,
    );
  }
}

/** The authorities that policy scopes name (`scopes[].signatures.authorities`). */
export function requiredAuthorities(settings: Record<string, unknown>): Array<{ scope: string; authority: string }> {
  const scopes = Array.isArray(settings.scopes) ? (settings.scopes as unknown[]) : [];
  const out: Array<{ scope: string; authority: string }> = [];
  scopes.forEach((s, i) => {
    if (typeof s !== 'object' || s === null) return;
    const scope = typeof (s as { name?: unknown }).name === 'string' ? (s as { name: string }).name : `scopes[${i}]`;
    const sig = (s as { signatures?: unknown }).signatures;
    const list = typeof sig === 'object' && sig !== null ? (sig as { authorities?: unknown }).authorities : undefined;
    if (Array.isArray(list)) for (const a of list) if (typeof a === 'string') out.push({ scope, authority: a });
  });
  return out;
}
