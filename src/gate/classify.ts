/**
 * Request classification: which decision a manifest request gets. A root (asked for by tag, or by a digest no
 * admitted index lists) is decided under the image rules, or as an accessory (registry and scope rules only) when
 * nothing in it can run; a child of an admitted index rides on its root's decision unless it could run where its
 * root could not. The content tests (runnable, accessory) are in src/oci/artifacts.ts.
 */
import { isAccessory, isRunnable } from '../oci/artifacts.js';
import type { ParsedManifest } from '../oci/mediatypes.js';

/** The kind of root decision: the image rules, or the accessory rules. */
export type RootKind = 'manifest' | 'accessory';

/**
 * A root asked for by a client. `tag` is how it was asked for (null: by digest): the cosign `.sig`/`.att`/`.sbom`
 * tags and the referrers tag schema qualify any non-runnable manifest as an accessory; by digest, the manifest must
 * say what it is (a `subject`, or a signature/attestation type).
 */
export function rootKind(m: ParsedManifest, tag: string | null): RootKind {
  return isAccessory(m, tag) ? 'accessory' : 'manifest';
}

/**
 * A root decided again for another identity, before a member of its closure is served: it was admitted already,
 * by whatever name it was asked for then, so it keeps the accessory kind whenever nothing in it can run.
 */
export function admittedRootKind(m: ParsedManifest): RootKind {
  return isRunnable(m) ? 'manifest' : 'accessory';
}

/**
 * A child manifest reached through an admitted root's closure is normally covered by the root's decision; not
 * when the root is an accessory and the child could run (an image smuggled into a referrers index).
 */
export function needsOwnDecision(root: ParsedManifest, child: ParsedManifest): boolean {
  return !isRunnable(root) && isRunnable(child);
}
