/**
 * Grammar of the OCI distribution spec for names, tags and digests. Everything that reaches the upstream client or
 * the cache passes through these checks first, so no request-controlled string ever becomes a file path or a URL
 * without matching one of them.
 */

// distribution-spec v1.1: [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*
const COMPONENT = '[a-z0-9]+(?:(?:\\.|_|__|-+)[a-z0-9]+)*';
const NAME_RE = new RegExp(`^${COMPONENT}(?:/${COMPONENT})*$`);
const TAG_RE = /^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$/;
const DIGEST_RE = /^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$/;
// A digest with an algorithm we do not implement is syntactically valid but unsupported.
const ANY_DIGEST_RE = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;

export const MAX_NAME_LENGTH = 255;

export type Digest = `sha256:${string}` | `sha512:${string}`;

export function isValidName(name: string): boolean {
  return name.length <= MAX_NAME_LENGTH && NAME_RE.test(name);
}

export function isValidTag(tag: string): boolean {
  return TAG_RE.test(tag);
}

export function isDigest(ref: string): ref is Digest {
  return DIGEST_RE.test(ref);
}

/** True for strings shaped like a digest, including algorithms we reject; tells "bad digest" from "bad tag". */
export function looksLikeDigest(ref: string): boolean {
  return ref.includes(':') && ANY_DIGEST_RE.test(ref);
}

export type Reference = { kind: 'tag'; tag: string } | { kind: 'digest'; digest: Digest };

export function parseReference(ref: string): Reference | undefined {
  if (isDigest(ref)) return { kind: 'digest', digest: ref };
  if (isValidTag(ref)) return { kind: 'tag', tag: ref };
  return undefined;
}

/** Docker reference grammar: a first path component is a registry host iff it has a dot or a colon or is localhost. */
export function looksLikeHost(component: string): boolean {
  return component.includes('.') || component.includes(':') || component === 'localhost';
}

export function digestAlgorithm(d: Digest): 'sha256' | 'sha512' {
  return d.startsWith('sha256:') ? 'sha256' : 'sha512';
}

export function digestHex(d: Digest): string {
  return d.slice(d.indexOf(':') + 1);
}
