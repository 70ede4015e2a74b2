/**
 * Builds the signature evidence provider from the config; undefined when no authority is configured (the policy
 * input then says `not_configured`, and a scope that requires signatures denies).
 *
 * Startup fails, naming the authority, when a key or trust file cannot be used. (A policy scope that requires an
 * authority `signatures.authorities` does not define is refused by the config schema, src/config/schema.ts.)
 * Trusted roots fed by TUF are refreshed first; one that cannot be fetched and has no last good copy fails startup.
 */
import type { SignatureProvider } from '../policy/contract.js';
import type { EvidenceDeps } from '../policy/evidence.js';
import type { Config } from '../config/schema.js';
import type { DurableEvidence } from './cache.js';
import { SignatureEvidenceProvider } from './provider.js';
import { loadTrust } from './trust.js';
import { TufTrustedRoot } from './tuf.js';

export async function createSignatureProvider(
  deps: EvidenceDeps,
  opts: { now?: () => number; durable?: DurableEvidence | undefined } = {},
): Promise<SignatureProvider | undefined> {
  const cfg = deps.config.signatures;
  if (!cfg || cfg.authorities.length === 0) return undefined;
  const now = opts.now ?? Date.now;
  const log = deps.log.child({ component: 'signatures' });
  const tuf = cfg.authorities.flatMap((a) => {
    const src = a.kind === 'keyless' ? a.trustedRoot : undefined;
    if (src === undefined || typeof src === 'string') return [];
    const where = { authority: a.name, mirror: src.tuf.mirror };
    return [
      new TufTrustedRoot({
        authority: a.name,
        config: src.tuf,
        now,
        onResult: (result, error) => {
          deps.metrics.trustRefresh.inc({ authority: a.name, result });
          if (result === 'failed') log.warn({ ...where, err: error }, 'TUF refresh failed; the last good trusted root stays in use');
          else if (result === 'updated') log.info(where, 'new trusted root from TUF');
        },
      }),
    ];
  });
  await Promise.all(tuf.map((s) => s.refresh()));
  return new SignatureEvidenceProvider(deps, cfg, { now, tuf, durable: opts.durable });
}

/**
 * What `portcullis config check` adds to schema validation: every key and trust file loads. Throws an error naming
 * the authority; a no-op without signature authorities. Offline: a TUF-fed trusted root not fetched yet is no error.
 */
export function checkSignatureConfig(config: Config): void {
  const cfg = config.signatures;
  if (!cfg || cfg.authorities.length === 0) return;
  loadTrust(cfg, { offline: true });
}
