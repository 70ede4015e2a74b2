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
 * a discovery error, reported as evidence.
 */
import { createHash } from 'node:crypto';
import type { Manifest, ManifestService } from '../proxy/manifests.js';
import type { Descriptor } from '../proxy/mediatypes.js';
import { ReferrersService } from '../proxy/referrers.js';
import { digestHex, isDigest, type Digest } from '../routing/reference.js';
import type { Route } from '../routing/route.js';
import { RegistryError } from '../server/errors.js';
import { headerString, type UpstreamClient } from '../upstream/client.js';

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

  constructor(
    private readonly clientFor: (upstream: string) => UpstreamClient,
    private readonly manifests: ManifestService,
    private readonly maxSignatures: number,
    private readonly maxBlobSize: number,
  ) {
    this.referrers = new ReferrersService(clientFor, manifests);
  }

  async discover(route: Route, digest: Digest): Promise<Discovery> {
    const errors: string[] = [];
    const note = (what: string) => (e: unknown): undefined => {
      if (!isNotFound(e)) errors.push(`${what}: ${errorText(e)}`);
      return undefined;
    };
    const hex = digestHex(digest);
    const [refs, sig, att] = await Promise.all([
      this.fromReferrers(route, digest).catch(note('referrers')),
      this.byTag(route, `sha256-${hex}.sig`, 'cosign-sig', 'sig-tag').catch(note(`tag sha256-${hex.slice(0, 12)}….sig`)),
      this.byTag(route, `sha256-${hex}.att`, 'cosign-att', 'att-tag').catch(note(`tag sha256-${hex.slice(0, 12)}….att`)),
    ]);
    return { artifacts: [...(refs ?? []), ...(sig ? [sig] : []), ...(att ? [att] : [])], errors };
  }

  private async fromReferrers(route: Route, digest: Digest): Promise<FoundArtifact[]> {
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
          const manifest = await this.manifests.get(route, d.digest);
          // The index is the upstream's claim; the manifest itself must say what it is and what it refers to.
          const actualKind = artifactKindOf(manifest.parsed.artifactType ?? manifest.parsed.config?.mediaType) ?? kind;
          if (manifest.parsed.subject && manifest.parsed.subject.digest !== digest) return;
          out.push({ kind: actualKind, via, manifest });
        } catch (e) {
          if (!isNotFound(e)) errors.push(`referrer ${d.digest}: ${errorText(e)}`);
        }
      }),
    );
    if (out.length === 0 && errors.length) throw new Error(errors.join('; '));
    return out;
  }

  private async byTag(route: Route, tag: string, kind: ArtifactKind, via: FoundArtifact['via']): Promise<FoundArtifact | undefined> {
    const resolved = await this.manifests.resolveTag(route, tag);
    const manifest = await this.manifests.get(route, resolved.digest);
    if (manifest.parsed.kind !== 'image') return undefined;
    return { kind, via, manifest };
  }

  /** A blob of an artifact, size-capped and checked against its digest. */
  async blob(route: Route, d: Descriptor): Promise<Buffer> {
    if (d.size > this.maxBlobSize) throw new Error(`blob ${d.digest} is ${d.size} bytes, over the ${this.maxBlobSize}-byte limit`);
    if (!d.digest.startsWith('sha256:')) throw new Error(`unsupported digest algorithm in ${d.digest}`);
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
    if (Number.isFinite(declared) && declared > this.maxBlobSize) {
      res.body.destroy();
      throw new Error(`blob ${d.digest} is ${declared} bytes, over the ${this.maxBlobSize}-byte limit`);
    }
    const chunks: Buffer[] = [];
    let total = 0;
    for await (const c of res.body) {
      total += (c as Buffer).length;
      if (total > this.maxBlobSize) {
        res.body.destroy();
        throw new Error(`blob ${d.digest} is over the ${this.maxBlobSize}-byte limit`);
      }
      chunks.push(c as Buffer);
    }
    const bytes = Buffer.concat(chunks);
    const actual = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
    if (actual !== d.digest) throw new Error(`blob ${d.digest} hashes to ${actual}; refused`);
    return bytes;
  }
}

function isNotFound(e: unknown): boolean {
  return e instanceof RegistryError && e.status === 404;
}

export function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
