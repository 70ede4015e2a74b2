/**
 * The shape of a policy scope's `attestations` setting (`policy.settings.scopes[].attestations`), which the built-in
 * policy enforces (policies/portcullis/attestations.rego):
 *
 * ```yaml
 * attestations:
 *   required:
 *     - name: build                       # optional; messages say "build (slsa-provenance): …"
 *       predicateType: slsa-provenance    # slsa-provenance | slsa-provenance-v0.2 | slsa-provenance-v1 | spdx |
 *                                         # cyclonedx | sbom | vuln | a predicate type URI
 *       authorities: [release-team]       # names from signatures.authorities; one of them must have signed it
 *       conditions:                       # SLSA provenance only; every one must hold
 *         builderId: https://github.com/slsa-framework/slsa-github-generator/**   # a glob ('/' delimits, ** crosses)
 *         sourceRepository: { regex: 'https://github\.com/acme/[a-z-]+' }        # or an anchored RE2 regex
 *         sourceRef: [refs/heads/main, refs/tags/v*]                              # or a list: any one matches
 *         buildType: https://slsa-framework.github.io/github-actions-buildtypes/workflow/v1
 * ```
 *
 * The policy settings are free-form (the policy reads them); this checks the part that is ours when the config is
 * loaded, so that a typo (an unknown condition, a regex that does not compile, an authority that does not exist)
 * is a startup error naming the field rather than a deny for every image at run time. The policy fails closed on
 * the same mistakes anyway.
 */
import { z } from 'zod';

const PREDICATE_ALIASES = ['slsa-provenance', 'slsa-provenance-v0.2', 'slsa-provenance-v1', 'spdx', 'cyclonedx', 'sbom', 'vuln'] as const;
const PROVENANCE = new Set<string>([
  'slsa-provenance',
  'slsa-provenance-v0.2',
  'slsa-provenance-v1',
  'https://slsa.dev/provenance/v0.2',
  'https://slsa.dev/provenance/v1',
]);

/** RE2 (what the policy's regex.match runs) has no lookaround and no backreferences; JavaScript would accept them. */
const NOT_RE2 = /\(\?<?[=!]|\\[1-9]|\\k</;

const pattern = z.union([
  z.string().min(1),
  z
    .object({
      regex: z
        .string()
        .min(1)
        .superRefine((r, ctx) => {
          if (NOT_RE2.test(r)) ctx.addIssue({ code: 'custom', message: 'lookaround and backreferences are not RE2 (the policy engine) syntax' });
          try {
            new RegExp(r, 'u');
          } catch (e) {
            ctx.addIssue({ code: 'custom', message: `invalid regular expression: ${(e as Error).message}` });
          }
        }),
    })
    .strict(),
]);
const patterns = z.union([pattern, z.array(pattern).min(1).max(32)]);

const requirement = z
  .object({
    name: z.string().min(1).max(128).optional(),
    predicateType: z.union([z.enum(PREDICATE_ALIASES), z.string().regex(/^[a-z][a-z0-9+.-]*:\S+$/, 'expected a predicate type name or URI')]),
    authorities: z.array(z.string().min(1)).min(1, 'name at least one authority'),
    conditions: z.object({ builderId: patterns, sourceRepository: patterns, sourceRef: patterns, buildType: patterns }).partial().strict().optional(),
  })
  .strict()
  .superRefine((r, ctx) => {
    if (r.conditions && Object.keys(r.conditions).length > 0 && !PROVENANCE.has(r.predicateType)) {
      ctx.addIssue({ code: 'custom', path: ['conditions'], message: 'conditions apply to SLSA provenance only' });
    }
  });

const setting = z.object({ required: z.array(requirement).max(32).default([]) }).strict();

interface SettingIssue {
  path: Array<string | number>;
  message: string;
}

/**
 * Problems with the `attestations` settings of the policy scopes, each with its path under `policy.settings` and
 * a message naming the scope. `authorities` (when non-empty) are the names `signatures.authorities` defines.
 */
export function attestationSettingIssues(settings: Record<string, unknown>, authorities: ReadonlySet<string>): SettingIssue[] {
  const scopes = Array.isArray(settings.scopes) ? (settings.scopes as unknown[]) : [];
  const out: SettingIssue[] = [];
  scopes.forEach((s, i) => {
    if (typeof s !== 'object' || s === null || !('attestations' in s)) return;
    const name = (s as { name?: unknown }).name;
    const label = typeof name === 'string' ? `scope "${name}"` : `scopes[${i}]`;
    const r = setting.safeParse(s.attestations);
    if (!r.success) {
      for (const issue of r.error.issues) {
        const rest = issue.path.map((p) => (typeof p === 'symbol' ? String(p) : p));
        out.push({ path: ['scopes', i, 'attestations', ...rest], message: `${label}: attestations.${rest.join('.')}: ${issue.message}` });
      }
      return;
    }
    if (authorities.size === 0) return;
    r.data.required.forEach((req, j) => {
      req.authorities.forEach((a, k) => {
        if (!authorities.has(a))
          out.push({
            path: ['scopes', i, 'attestations', 'required', j, 'authorities', k],
            message: `${label}: attestations.required.${j}: no authority named "${a}" in signatures.authorities`,
          });
      });
    });
  });
  return out;
}
