/**
 * The SLSA provenance facts that attestation conditions are put on (src/verify/provenance.ts): v0.2 and v1 read
 * alike, the `@ref` split only after the host, and nothing but a present, bounded string ever becomes a fact.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { provenanceFacts, splitSourceUri, SLSA_PROVENANCE_V02, SLSA_PROVENANCE_V1 } from '../../src/verify/provenance.js';

const BUILDER = 'https://github.com/slsa-framework/slsa-github-generator/.github/workflows/generator_generic_slsa3.yml@refs/tags/v1.9.0';

describe('provenance facts', () => {
  it('reads v0.2: builder.id, buildType, and the repository and ref of invocation.configSource.uri', () => {
    const p = {
      builder: { id: BUILDER },
      buildType: 'https://github.com/slsa-framework/slsa-github-generator/generic@v1',
      invocation: { configSource: { uri: 'git+https://github.com/acme/app@refs/heads/main', digest: { sha1: 'a'.repeat(40) }, entryPoint: 'x.yml' } },
    };
    expect(provenanceFacts(SLSA_PROVENANCE_V02, p)).toEqual({
      version: 'v0.2',
      builder_id: BUILDER,
      build_type: 'https://github.com/slsa-framework/slsa-github-generator/generic@v1',
      source_repository: 'https://github.com/acme/app',
      source_ref: 'refs/heads/main',
    });
  });

  it('reads v1: runDetails.builder.id, buildDefinition.buildType, externalParameters.workflow', () => {
    const p = {
      buildDefinition: {
        buildType: 'https://actions.github.io/buildtypes/workflow/v1',
        externalParameters: { workflow: { ref: 'refs/tags/v1.2.3', repository: 'https://github.com/acme/app', path: '.github/workflows/r.yml' } },
        resolvedDependencies: [{ uri: 'git+https://github.com/evil/other@refs/heads/x' }],
      },
      runDetails: { builder: { id: BUILDER } },
    };
    expect(provenanceFacts(SLSA_PROVENANCE_V1, p)).toEqual({
      version: 'v1',
      builder_id: BUILDER,
      build_type: 'https://actions.github.io/buildtypes/workflow/v1',
      source_repository: 'https://github.com/acme/app',
      source_ref: 'refs/tags/v1.2.3',
    });
  });

  it('v1 without a workflow: externalParameters.source (GitLab), else the first resolved dependency', () => {
    const gitlab = { buildDefinition: { externalParameters: { source: 'https://gitlab.com/acme/app' } }, runDetails: { builder: { id: 'b' } } };
    expect(provenanceFacts(SLSA_PROVENANCE_V1, gitlab)).toMatchObject({ source_repository: 'https://gitlab.com/acme/app', source_ref: null });
    const deps = {
      buildDefinition: { externalParameters: {}, resolvedDependencies: [{ digest: {} }, { uri: 'git+https://github.com/acme/app@refs/heads/main' }] },
    };
    expect(provenanceFacts(SLSA_PROVENANCE_V1, deps)).toMatchObject({
      source_repository: 'https://github.com/acme/app',
      source_ref: 'refs/heads/main',
      builder_id: null,
    });
  });

  it('other predicate types have no provenance facts', () => {
    expect(provenanceFacts('https://spdx.dev/Document', { builder: { id: BUILDER } })).toBeUndefined();
    expect(provenanceFacts('https://slsa.dev/provenance/v0.1', { builder: { id: BUILDER } })).toBeUndefined();
  });

  it('an @ in the authority is a user, not a ref', () => {
    expect(splitSourceUri('git+ssh://git@github.com/acme/app')).toEqual({ repository: 'ssh://git@github.com/acme/app', ref: null });
    expect(splitSourceUri('git+ssh://git@github.com/acme/app@refs/heads/main')).toEqual({
      repository: 'ssh://git@github.com/acme/app',
      ref: 'refs/heads/main',
    });
  });

  it('never throws, and a fact is only ever a non-empty string of at most 2048 characters found at its place', () => {
    fc.assert(
      fc.property(fc.constantFrom(SLSA_PROVENANCE_V02, SLSA_PROVENANCE_V1), fc.anything({ maxDepth: 5 }), (type, predicate) => {
        const f = provenanceFacts(type, predicate)!;
        for (const v of [f.builder_id, f.build_type, f.source_repository, f.source_ref]) {
          expect(v === null || (typeof v === 'string' && v.length > 0 && v.length <= 2048)).toBe(true);
        }
      }),
    );
  });

  it('a field of the wrong type, or too long, is null (so a condition on it fails)', () => {
    fc.assert(
      fc.property(fc.oneof(fc.integer(), fc.boolean(), fc.array(fc.string()), fc.constant(null), fc.string({ minLength: 2049, maxLength: 2100 })), (bad) => {
        expect(provenanceFacts(SLSA_PROVENANCE_V02, { builder: { id: bad }, buildType: bad })).toMatchObject({ builder_id: null, build_type: null });
        expect(provenanceFacts(SLSA_PROVENANCE_V1, { runDetails: { builder: { id: bad } } })).toMatchObject({ builder_id: null });
      }),
    );
  });

  it('repository and ref of a source URI recombine to it, whatever the repository and ref', () => {
    const segment = fc.stringMatching(/^[a-z0-9._-]{1,12}$/);
    fc.assert(
      fc.property(fc.array(segment, { minLength: 1, maxLength: 4 }), fc.array(segment, { minLength: 1, maxLength: 3 }), (path, ref) => {
        const repository = `https://github.com/${path.join('/')}`;
        const r = ref.join('/');
        expect(splitSourceUri(`git+${repository}@${r}`)).toEqual({ repository, ref: r });
        expect(splitSourceUri(repository)).toEqual({ repository, ref: null });
      }),
    );
  });

  it('inherited keys are not read (a predicate is JSON: only own members count)', () => {
    const proto = { builder: { id: BUILDER } };
    const p = Object.create(proto) as object;
    expect(provenanceFacts(SLSA_PROVENANCE_V02, p)).toMatchObject({ builder_id: null });
  });
});
