/**
 * Which manifests are accessories (signatures, attestations, SBOMs, referrers indexes) rather than images.
 *
 * Accessories get a separate, lighter decision (registry and scope rules only), so the classification must not be
 * a way around the image rules: a manifest is an accessory only if nothing in it can run. An image manifest with a
 * filesystem layer is never an accessory, whatever its tag, `subject` or `artifactType` say; an index is one only
 * when every entry is a typed artifact without a platform, and a runnable manifest reached through such an index
 * gets a decision of its own (see `needsOwnDecision`).
 */
import type { ParsedManifest } from '../oci/mediatypes.js';

/** cosign `.sig`/`.att`/`.sbom` tags and the referrers tag schema. */
export const ACCESSORY_TAG = /^sha256-[a-f0-9]{64}(\.(sig|att|sbom))?$/;

const FILESYSTEM_LAYER = /^application\/vnd\.(oci\.image\.layer\.|docker\.image\.rootfs\.|docker\.container\.image\.rootfs)/;

/** Artifact and layer types that signers and attesters write. */
const KNOWN_ARTIFACT = [
  /^application\/vnd\.dev\.sigstore\.bundle/,
  /^application\/vnd\.cncf\.notary\.signature$/,
  /^application\/vnd\.dev\.cosign\./,
  /^application\/vnd\.dsse\.envelope\.v1\+json$/,
  /^application\/vnd\.in-toto/,
  /^application\/jose\+json$/,
  /^application\/cose$/,
  /^application\/(spdx|vnd\.cyclonedx|vnd\.syft)/,
  /^text\/spdx/,
];

const known = (t: string | undefined): boolean => t !== undefined && KNOWN_ARTIFACT.some((re) => re.test(t));

/** Can a runtime run this manifest (an image with a filesystem layer, or an index of platforms)? */
export function isRunnable(m: ParsedManifest): boolean {
  if (m.kind === 'index') return !isArtifactIndex(m);
  return m.blobs.slice(1).some((l) => FILESYSTEM_LAYER.test(l.mediaType));
}

/** An index whose entries are all typed artifacts without a platform: a referrers index. */
function isArtifactIndex(m: ParsedManifest): boolean {
  return m.manifests.every((d) => typeof d.artifactType === 'string' && d.artifactType !== '' && d.platform === undefined);
}

/**
 * Is this manifest an accessory? `tag` is how it was asked for (null: by digest). By tag, the cosign and
 * referrers-schema tags qualify any non-runnable manifest; by digest, the manifest must say what it is: a
 * `subject`, or a known signature/attestation type.
 */
export function isAccessory(m: ParsedManifest, tag: string | null): boolean {
  if (isRunnable(m)) return false;
  if (tag !== null && ACCESSORY_TAG.test(tag)) return true;
  if (m.subject) return true;
  if (known(m.artifactType) || known(m.config?.mediaType)) return true;
  return m.kind === 'image' && m.blobs.length > 1 && m.blobs.slice(1).every((l) => known(l.mediaType));
}

/**
 * A child manifest reached through an admitted root's closure is normally covered by the root's decision; not
 * when the root is an accessory and the child could run (an image smuggled into a referrers index).
 */
export function needsOwnDecision(root: ParsedManifest, child: ParsedManifest): boolean {
  return !isRunnable(root) && isRunnable(child);
}
