/**
 * The attestation condition matcher as the proxy runs it: the committed policy bundle (policies/attestations.rego
 * compiled to WASM), evaluated with generated provenance facts and patterns. Globs use `/` as the only delimiter;
 * `{regex}` is anchored; anything the matcher cannot positively match denies.
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';
import type { PolicyInput, ProvenanceFacts } from '../../src/policy/contract.js';
import { readBundle, type PolicyBundle } from '../../src/policy/bundle.js';
import { WasmDecider } from '../../src/policy/wasm.js';

const SLSA_V1 = 'https://slsa.dev/provenance/v1';
const SPDX = 'https://spdx.dev/Document';

let bundle: PolicyBundle;
beforeAll(async () => {
  bundle = await readBundle(readFileSync(resolve('policies/bundle.tar.gz')));
});

function facts(over: Partial<ProvenanceFacts>): ProvenanceFacts {
  return {
    version: 'v1',
    builder_id: 'https://github.com/slsa-framework/slsa-github-generator/.github/workflows/x.yml@refs/tags/v2.0.0',
    build_type: 'https://slsa-framework.github.io/github-actions-buildtypes/workflow/v1',
    source_repository: 'https://github.com/acme/app',
    source_ref: 'refs/heads/main',
    ...over,
  };
}

function input(attestations: PolicyInput['attestations']): PolicyInput {
  return {
    version: 1,
    now: '2026-06-01T12:00:00Z',
    request: { kind: 'manifest', method: 'GET', client: { ip: '127.0.0.1', user: null, groups: [], method: 'anonymous', user_agent: 'test' }, routing: 'ns' },
    image: {
      registry: 'ghcr.io',
      repository: 'acme/app',
      tag: 'v1',
      digest: `sha256:${'a'.repeat(64)}`,
      media_type: 'application/vnd.oci.image.manifest.v1+json',
      platforms: [],
      labels: {},
      created: null,
    },
    upstream: { name: 'ghcr', url: 'https://ghcr.io' },
    signatures: { status: 'ok', verified: [], rejected: [] },
    attestations,
    attestations_rejected: [],
    scan: { status: 'not_configured' },
  };
}

const provenance = (f: ProvenanceFacts): PolicyInput['attestations'][number] => ({
  predicate_type: SLSA_V1,
  authority: 'release',
  predicate: {},
  provenance: f,
});

async function decider(conditions: Record<string, unknown>): Promise<WasmDecider> {
  const required = [{ name: 'build', predicateType: 'slsa-provenance', authorities: ['release'], conditions }];
  return WasmDecider.create(bundle, { scopes: [{ name: 'all', images: ['**'], attestations: { required } }] });
}

const escapeRegExp = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
/** Path segments without glob metacharacters. */
const segment = fc.stringMatching(/^[a-z0-9._@:-]{1,10}$/);

describe('attestation conditions (policy WASM)', () => {
  it('a regex condition is anchored: the exact value matches, a value with anything before or after does not', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(segment, { minLength: 1, maxLength: 4 }), segment, async (parts, extra) => {
        const value = `https://${parts.join('/')}`;
        const d = await decider({ builderId: { regex: escapeRegExp(value) } });
        expect((await d.evaluate(input([provenance(facts({ builder_id: value }))]))).allow).toBe(true);
        for (const other of [`${value}${extra}`, `${extra}${value}`, `${value}/${extra}`]) {
          const r = await d.evaluate(input([provenance(facts({ builder_id: other }))]));
          expect(r.allow).toBe(false);
          expect(r.deny).toEqual([
            {
              rule: 'attestation.condition',
              message: `build (slsa-provenance): builder.id "${other}" does not match regex "${escapeRegExp(value)}"`,
            },
          ]);
        }
      }),
      { numRuns: 25 },
    );
  });

  it('a glob: `*` stays within a path segment, `**` crosses segments; neither matches the prefix itself', async () => {
    const one = await decider({ sourceRepository: 'https://github.com/acme/*' });
    const any = await decider({ sourceRepository: 'https://github.com/acme/**' });
    await fc.assert(
      fc.asyncProperty(fc.array(segment, { minLength: 1, maxLength: 3 }), async (parts) => {
        const repo = `https://github.com/acme/${parts.join('/')}`;
        const verdict = async (d: WasmDecider, r: string): Promise<boolean> => (await d.evaluate(input([provenance(facts({ source_repository: r }))]))).allow;
        expect(await verdict(one, repo)).toBe(parts.length === 1);
        expect(await verdict(any, repo)).toBe(true);
        expect(await verdict(any, `https://github.com/acme-evil/${parts.join('/')}`)).toBe(false);
      }),
      { numRuns: 40 },
    );
  });

  it('a list matches when any of its patterns does', async () => {
    const d = await decider({ sourceRef: ['refs/heads/main', 'refs/tags/v*', { regex: 'refs/heads/release-[0-9]+' }] });
    await fc.assert(
      fc.asyncProperty(fc.oneof(segment, fc.constantFrom('refs/heads/main', 'refs/tags/v1.2', 'refs/heads/release-12', 'refs/tags/v1/x')), async (ref) => {
        const expected = ref === 'refs/heads/main' || /^refs\/tags\/v[^/]*$/.test(ref) || /^refs\/heads\/release-[0-9]+$/.test(ref);
        expect((await d.evaluate(input([provenance(facts({ source_ref: ref }))]))).allow).toBe(expected);
      }),
      { numRuns: 40 },
    );
  });

  it('fails closed: a missing fact, an oversized predicate, another authority or another type never meets a condition', async () => {
    const d = await decider({ builderId: '**' });
    expect((await d.evaluate(input([provenance(facts({}))]))).allow).toBe(true);
    const cases: PolicyInput['attestations'] = [
      provenance(facts({ builder_id: null })),
      { predicate_type: SLSA_V1, authority: 'release', predicate: null, oversized: true },
      { ...provenance(facts({})), authority: 'other' },
      { ...provenance(facts({})), predicate_type: SPDX },
      { ...provenance(facts({})), subject_digest: `sha256:${'b'.repeat(64)}` },
    ];
    for (const a of cases) expect((await d.evaluate(input([a]))).allow, JSON.stringify(a)).toBe(false);
  });

  it('one verified attestation that meets every condition is enough, whatever other attestations say', async () => {
    const d = await decider({ builderId: 'https://github.com/slsa-framework/**', sourceRef: 'refs/heads/main' });
    await fc.assert(
      fc.asyncProperty(fc.array(fc.record({ builder_id: fc.option(segment), source_ref: fc.option(segment) }), { maxLength: 4 }), async (others) => {
        const noise = others.map((o) => provenance(facts(o)));
        expect((await d.evaluate(input([...noise, provenance(facts({}))]))).allow).toBe(true);
        expect((await d.evaluate(input(noise))).allow).toBe(false);
      }),
      { numRuns: 25 },
    );
  });
});
