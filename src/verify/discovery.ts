/**
 * Finds the signature and attestation artifacts of one digest, through the same authenticated, rate-limited
 * upstream client as pulls (and the verified manifest service, so every manifest is checked against its digest):
 *
 *   1. the OCI referrers API, else the referrers tag schema `sha256-<hex>` (ReferrersService does the fallback):
 *      cosign 3 Sigstore bundles, Notation signatures, cosign's OCI 1.1 experimental signatures;
 *   2. the legacy cosign tag `sha256-<hex>.sig` (cosign ≤ 2, and cosign 3 still reads it);
 *   3. the legacy cosign tag `sha256-<hex>.att` (attestations).
 *
 * The three lookups run concurrently. A 404 means "none there"; anything else (an unreachable upstream, a 401) is
 * a discovery error, reported as evidence. Every artifact manifest and blob fetched is charged to one budget per
 * digest (budget.ts): past it, nothing more is fetched and the evidence is an error.
 */
import { createHash } from 'node:crypto';
import type { Manifest, ManifestService } from '../proxy/manifests.js';
import type { Descriptor } from '../oci/mediatypes.js';
import { ProxyReferrersService, type ReferrersService } from '../proxy/referrers.js';
import { digestHex, isDigest, type Digest } from '../routing/reference.js';
import type { Route } from '../routing/route.js';
import { isNotFound } from '../oci/errors.js';
import { headerString, type UpstreamClient } from '../upstream/client.js';
import { readCapped } from '../util/capped-body.js';
import { errorText } from '../util/error-text.js';
import { BudgetExceededError, type DiscoveryBudget } from './budget.js';

export const MT = {
  sigstoreBundlePrefix: 'application/vnd.dev.sigstore.bundle',
  notarySignature: 'application/vnd.cncf.notary.signature',
  cosignSigArtifact: 'application/vnd.dev.cosign.artifact.sig.v1+json',
  cosignAttArtifact: 'application/vnd.dev.cosign.artifact.att.v1+json',
  simpleSigning: 'application/vnd.dev.cosign.simplesigning.v1+json',
  dsseEnvelope: 'application/vnd.dsse.envelope.v1+json',
  jose: 'application/jose+json',
  cose: 'application/cose',
} as const;

export type ArtifactKind = 'sigstore-bundle' | 'cosign-sig' | 'cosign-att' | 'notation';

export interface FoundArtifact {
  kind: ArtifactKind;
  /** Where it was found, for logs and rejection reasons. */
  via: 'referrers' | 'tag-schema' | 'sig-tag' | 'att-tag';
  manifest: Manifest;
}

export interface Discovery {
  artifacts: FoundArtifact[];
  /** Lookups that failed for another reason than "not found". */
  errors: string[];
}

export function artifactKindOf(artifactType: string | undefined): ArtifactKind | undefined {
  if (!artifactType) return undefined;
  if (artifactType.startsWith(MT.sigstoreBundlePrefix)) return 'sigstore-bundle';
  if (artifactType === MT.notarySignature) return 'notation';
  if (artifactType === MT.cosignSigArtifact) return 'cosign-sig';
  if (artifactType === MT.cosignAttArtifact) return 'cosign-att';
  return undefined;
}

export class Discoverer {
  private readonly referrers: ReferrersService;

  private readonly clientFor: (upstream: string) => UpstreamClient;
  private readonly manifests: ManifestService;
  private readonly maxSignatures: number;
  private readonly maxBlobSize: number;

  constructor(o: { clientFor: (upstream: string) => UpstreamClient; manifests: ManifestService; maxSignatures: number; maxBlobSize: number }) {
    this.clientFor = o.clientFor;
    this.manifests = o.manifests;
    this.maxSignatures = o.maxSignatures;
    this.maxBlobSize = o.maxBlobSize;
    this.referrers = new ProxyReferrersService(o.clientFor, o.manifests);
  }

  /**
   * @param onFound called with each artifact as soon as it is found, so that the caller can fetch its blobs while
   *   the other lookups are still out (the blobs of the `.sig` tag need not wait for the referrers fallback): every
   *   artifact passed to it is also in the result.
   */
  async discover(route: Route, digest: Digest, budget: DiscoveryBudget, onFound?: (a: FoundArtifact) => void): Promise<Discovery> {
    const errors: string[] = [];
    const note =
      (what: string) =>
      (e: unknown): undefined => {
        // A spent budget is reported once, by the caller, from budget.exceeded.
        if (!isNotFound(e) && !(e instanceof BudgetExceededError)) errors.push(`${what}: ${errorText(e)}`);
        return undefined;
      };
    const hex = digestHex(digest);
    const found = <T extends FoundArtifact | undefined>(a: T): T => {
      if (a) onFound?.(a);
      return a;
    };
    const [refs, sig, att] = await Promise.all([
      this.fromReferrers(route, digest, budget, found).catch(note('referrers')),
      this.byTag(route, `sha256-${hex}.sig`, 'cosign-sig', 'sig-tag', budget).then(found, note(`tag sha256-${hex.slice(0, 12)}….sig`)),
      this.byTag(route, `sha256-${hex}.att`, 'cosign-att', 'att-tag', budget).then(found, note(`tag sha256-${hex.slice(0, 12)}….att`)),
    ]);
    return { artifacts: [...(refs ?? []), ...(sig ? [sig] : []), ...(att ? [att] : [])], errors };
  }

  private async fromReferrers(route: Route, digest: Digest, budget: DiscoveryBudget, found: (a: FoundArtifact) => FoundArtifact): Promise<FoundArtifact[]> {
    if (!digest.startsWith('sha256:')) return [];
    const list = await this.referrers.list(route, digest, undefined);
    const via = list.source === 'tag-schema' ? 'tag-schema' : 'referrers';
    const wanted = list.index.manifests
      .map((d: Descriptor) => ({ d, kind: artifactKindOf(d.artifactType) }))
      .filter((x): x is { d: Descriptor; kind: ArtifactKind } => x.kind !== undefined && isDigest(x.d.digest))
      .slice(0, this.maxSignatures);
    const out: FoundArtifact[] = [];
    const errors: string[] = [];
    await Promise.all(
      wanted.map(async ({ d, kind }) => {
        try {
          budget.artifact();
          const manifest = await this.manifests.get(route, d.digest);
          budget.bytes(manifest.bytes.length);
          // The index is the upstream's claim; the manifest itself must say what it is and what it refers to.
          const actualKind = artifactKindOf(manifest.parsed.artifactType ?? manifest.parsed.config?.mediaType) ?? kind;
          if (manifest.parsed.subject && manifest.parsed.subject.digest !== digest) return;
          out.push(found({ kind: actualKind, via, manifest }));
        } catch (e) {
          if (!isNotFound(e) && !(e instanceof BudgetExceededError)) errors.push(`referrer ${d.digest}: ${errorText(e)}`);
        }
      }),
    );
    if (out.length === 0 && errors.length) throw new Error(errors.join('; '));
    return out;
  }

  private async byTag(route: Route, tag: string, kind: ArtifactKind, via: FoundArtifact['via'], budget: DiscoveryBudget): Promise<FoundArtifact | undefined> {
    // Charged before the lookup: resolving a tag already fetches its manifest (a 404 costs the same request).
    budget.artifact();
    const { manifest } = await this.manifests.resolveTag(route, tag, { getWhenUnknown: true });
    budget.bytes(manifest.bytes.length);
    if (manifest.parsed.kind !== 'image') return undefined;
    return { kind, via, manifest };
  }

  /**
   * A blob of an artifact, size-capped, charged to the budget at its declared size (no more is read), and checked
   * against its digest.
   */
  async blob(route: Route, d: Descriptor, budget: DiscoveryBudget): Promise<Buffer> {
    if (d.size > this.maxBlobSize) throw new Error(`blob ${d.digest} is ${d.size} bytes, over the ${this.maxBlobSize}-byte limit`);
    if (!d.digest.startsWith('sha256:')) throw new Error(`unsupported digest algorithm in ${d.digest}`);
    if (!Number.isSafeInteger(d.size) || d.size < 0) throw new Error(`blob ${d.digest} has an invalid size`);
    budget.blob(d.size);
    const max = d.size;
    const res = await this.clientFor(route.upstream.name).send({
      method: 'GET',
      path: `/v2/${route.repository}/blobs/${d.digest}`,
      kind: 'blob',
      repository: route.repository,
    });
    if (res.status !== 200) {
      res.body.resume();
      throw new Error(`upstream answered HTTP ${res.status} for blob ${d.digest}`);
    }
    const declared = Number(headerString(res.headers['content-length']));
    if (Number.isFinite(declared) && declared > max) {
      res.body.destroy();
      throw new Error(`blob ${d.digest} is ${declared} bytes, more than the ${max} its descriptor says`);
    }
    const bytes = await readCapped(res.body, max, () => new Error(`blob ${d.digest} is more than the ${max} bytes its descriptor says`));
    const actual = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
    if (actual !== d.digest) throw new Error(`blob ${d.digest} hashes to ${actual}; refused`);
    return bytes;
  }
}
