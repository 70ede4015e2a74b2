/**
 * The facts of a SLSA provenance predicate that policies put conditions on, read the same way from v0.2 and v1, so
 * that a scope's `builderId` / `sourceRepository` / `sourceRef` / `buildType` conditions (policies/attestations.rego)
 * do not depend on which version the builder wrote:
 *
 * | field               | v0.2 (`https://slsa.dev/provenance/v0.2`)  | v1 (`https://slsa.dev/provenance/v1`)                           |
 * |---------------------|--------------------------------------------|-----------------------------------------------------------------|
 * | `builder_id`        | `builder.id`                               | `runDetails.builder.id`                                         |
 * | `build_type`        | `buildType`                                | `buildDefinition.buildType`                                     |
 * | `source_repository` | `invocation.configSource.uri` without `@ref` | `externalParameters.workflow.repository`, else `externalParameters.source(.uri)`, else the first `resolvedDependencies[].uri`, without `@ref` |
 * | `source_ref`        | the `@ref` of `invocation.configSource.uri` | `externalParameters.workflow.ref`, else the `@ref` of that URI |
 *
 * Source URIs lose a `git+` prefix (`git+https://github.com/acme/app@refs/heads/main` is repository
 * `https://github.com/acme/app`, ref `refs/heads/main`). A field the predicate does not have, or that is not a
 * string, or that is longer than MAX_FIELD, is null: a condition on it then fails (fail closed).
 *
 * Only read from a predicate that verified; what it says is the signer's claim, which the authority vouches for.
 */
import type { ProvenanceFacts } from '../policy/contract.js';

export const SLSA_PROVENANCE_V02 = 'https://slsa.dev/provenance/v0.2';
export const SLSA_PROVENANCE_V1 = 'https://slsa.dev/provenance/v1';

/** Longer strings are not facts a condition can be put on; they are null (and fail any condition). */
const MAX_FIELD = 2048;

/** The facts of a SLSA provenance predicate; undefined for any other predicate type. */
export function provenanceFacts(predicateType: string, predicate: unknown): ProvenanceFacts | undefined {
  if (predicateType === SLSA_PROVENANCE_V02) return v02(predicate);
  if (predicateType === SLSA_PROVENANCE_V1) return v1(predicate);
  return undefined;
}

function v02(p: unknown): ProvenanceFacts {
  const configSource = at(p, 'invocation', 'configSource');
  const uri = str(at(configSource, 'uri'));
  const src = uri === null ? undefined : splitSourceUri(uri);
  return {
    version: 'v0.2',
    builder_id: str(at(p, 'builder', 'id')),
    build_type: str(at(p, 'buildType')),
    source_repository: src?.repository ?? null,
    source_ref: src?.ref ?? null,
  };
}

function v1(p: unknown): ProvenanceFacts {
  const def = at(p, 'buildDefinition');
  const ext = at(def, 'externalParameters');
  // GitHub Actions build types (actions.github.io and slsa-framework.github.io workflow/v1) name both directly.
  const workflowRepo = str(at(ext, 'workflow', 'repository'));
  const workflowRef = str(at(ext, 'workflow', 'ref'));
  const sourceUri = str(at(ext, 'source')) ?? str(at(ext, 'source', 'uri')) ?? firstDependencyUri(at(def, 'resolvedDependencies'));
  const src = sourceUri === null ? undefined : splitSourceUri(sourceUri);
  return {
    version: 'v1',
    builder_id: str(at(p, 'runDetails', 'builder', 'id')),
    build_type: str(at(def, 'buildType')),
    source_repository: workflowRepo !== null ? stripGitPrefix(workflowRepo) : (src?.repository ?? null),
    source_ref: workflowRef ?? src?.ref ?? null,
  };
}

function firstDependencyUri(deps: unknown): string | null {
  if (!Array.isArray(deps)) return null;
  for (const d of deps.slice(0, 64)) {
    const uri = str(at(d, 'uri'));
    if (uri !== null) return uri;
  }
  return null;
}

/**
 * `git+https://github.com/acme/app@refs/heads/main` → repository `https://github.com/acme/app`, ref
 * `refs/heads/main`. Only an `@` after the host counts (`ssh://git@github.com/…` has its user there).
 */
export function splitSourceUri(uri: string): { repository: string; ref: string | null } {
  const u = stripGitPrefix(uri);
  const scheme = u.indexOf('://');
  const pathStart = scheme < 0 ? 0 : u.indexOf('/', scheme + 3);
  const at = u.lastIndexOf('@');
  if (pathStart < 0 || at <= pathStart) return { repository: u, ref: null };
  return { repository: u.slice(0, at), ref: u.slice(at + 1) || null };
}

function stripGitPrefix(s: string): string {
  return s.startsWith('git+') ? s.slice(4) : s;
}

function at(o: unknown, ...path: string[]): unknown {
  let cur = o;
  for (const k of path) {
    if (typeof cur !== 'object' || cur === null || Array.isArray(cur) || !Object.hasOwn(cur, k)) return undefined;
    cur = (cur as Record<string, unknown>)[k];
  }
  return cur;
}

function str(v: unknown): string | null {
  return typeof v === 'string' && v.length > 0 && v.length <= MAX_FIELD ? v : null;
}
