/** Manifest media types and the parsing the proxy needs: validation, schema1 refusal, and the closure of children. */
import type { Digest } from '../routing/reference.js';
import { isDigest } from '../routing/reference.js';

export const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
export const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
export const DOCKER_LIST = 'application/vnd.docker.distribution.manifest.list.v2+json';
export const DOCKER_MANIFEST = 'application/vnd.docker.distribution.manifest.v2+json';
export const DOCKER_SCHEMA1 = 'application/vnd.docker.distribution.manifest.v1+json';
export const DOCKER_SCHEMA1_SIGNED = 'application/vnd.docker.distribution.manifest.v1+prettyjws';

/** Always sent upstream: Distribution answers 404 for OCI content when the Accept list lacks OCI types. */
export const UPSTREAM_ACCEPT = [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST].join(', ');

export const INDEX_TYPES = new Set([OCI_INDEX, DOCKER_LIST]);
export const IMAGE_TYPES = new Set([OCI_MANIFEST, DOCKER_MANIFEST]);
export const SUPPORTED_TYPES = new Set([...INDEX_TYPES, ...IMAGE_TYPES]);

export interface Descriptor {
  mediaType: string;
  digest: Digest;
  size: number;
  platform?: { os?: string; architecture?: string; variant?: string };
  artifactType?: string;
  annotations?: Record<string, string>;
}

export interface ParsedManifest {
  mediaType: string;
  kind: 'index' | 'image';
  /** For an index: its manifests. */
  manifests: Descriptor[];
  /** For an image: config then layers. */
  blobs: Descriptor[];
  subject?: Descriptor;
  artifactType?: string;
  annotations?: Record<string, string>;
  config?: Descriptor;
}

export class ManifestFormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ManifestFormatError';
  }
}

function descriptor(v: unknown, where: string): Descriptor {
  if (typeof v !== 'object' || v === null) throw new ManifestFormatError(`${where}: not an object`);
  const d = v as Record<string, unknown>;
  if (typeof d.digest !== 'string' || !isDigest(d.digest)) throw new ManifestFormatError(`${where}: invalid digest`);
  if (typeof d.size !== 'number' || !Number.isSafeInteger(d.size) || d.size < 0) throw new ManifestFormatError(`${where}: invalid size`);
  if (typeof d.mediaType !== 'string') throw new ManifestFormatError(`${where}: missing mediaType`);
  const out: Descriptor = { mediaType: d.mediaType, digest: d.digest, size: d.size };
  if (typeof d.platform === 'object' && d.platform !== null) out.platform = d.platform;
  if (typeof d.artifactType === 'string') out.artifactType = d.artifactType;
  if (typeof d.annotations === 'object' && d.annotations !== null) out.annotations = d.annotations as Record<string, string>;
  return out;
}

/**
 * Parses manifest bytes. The media type is the body's `mediaType` when present, else the upstream Content-Type;
 * when both are present they must agree (distribution-spec §1.2), or a client could be told one type and parse
 * another.
 */
export function parseManifest(bytes: Buffer, contentType: string | undefined): ParsedManifest {
  let doc: unknown;
  try {
    doc = JSON.parse(bytes.toString('utf8'));
  } catch {
    throw new ManifestFormatError('manifest is not valid JSON');
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw new ManifestFormatError('manifest is not a JSON object');
  const m = doc as Record<string, unknown>;
  const ct = contentType?.split(';')[0]?.trim();
  if (m.schemaVersion === 1 || ct === DOCKER_SCHEMA1 || ct === DOCKER_SCHEMA1_SIGNED) {
    throw new ManifestFormatError('Docker schema1 manifests are not supported (deprecated, and they carry no content digest to verify)');
  }
  if (m.schemaVersion !== 2) throw new ManifestFormatError('unsupported schemaVersion');
  const bodyType = typeof m.mediaType === 'string' ? m.mediaType : undefined;
  if (bodyType && ct && ct !== bodyType && SUPPORTED_TYPES.has(ct)) {
    throw new ManifestFormatError(`Content-Type ${ct} disagrees with the manifest's mediaType ${bodyType}`);
  }
  let mediaType = bodyType ?? ct;
  // OCI manifests may omit mediaType; their shape says which one they are.
  if (!mediaType || !SUPPORTED_TYPES.has(mediaType)) {
    if (Array.isArray(m.manifests)) mediaType = OCI_INDEX;
    else if (m.config && Array.isArray(m.layers)) mediaType = OCI_MANIFEST;
    else throw new ManifestFormatError(`unsupported manifest media type ${mediaType ?? '(none)'}`);
  }
  const out: ParsedManifest = { mediaType, kind: INDEX_TYPES.has(mediaType) ? 'index' : 'image', manifests: [], blobs: [] };
  if (out.kind === 'index') {
    if (!Array.isArray(m.manifests)) throw new ManifestFormatError('index without manifests');
    out.manifests = m.manifests.map((d, i) => descriptor(d, `manifests[${i}]`));
  } else {
    if (!m.config) throw new ManifestFormatError('image manifest without config');
    out.config = descriptor(m.config, 'config');
    if (!Array.isArray(m.layers)) throw new ManifestFormatError('image manifest without layers');
    out.blobs = [out.config, ...m.layers.map((d, i) => descriptor(d, `layers[${i}]`))];
  }
  if (m.subject !== undefined) out.subject = descriptor(m.subject, 'subject');
  if (typeof m.artifactType === 'string') out.artifactType = m.artifactType;
  if (typeof m.annotations === 'object' && m.annotations !== null) out.annotations = m.annotations as Record<string, string>;
  return out;
}

/**
 * Does the client's Accept header allow this media type? No header, or a wildcard, accepts anything: containerd
 * ends its list with `*\/*` and crane sends broad lists.
 */
export function accepts(acceptHeader: string | undefined, mediaType: string): boolean {
  if (!acceptHeader) return true;
  for (const part of acceptHeader.split(',')) {
    const t = part.split(';')[0]?.trim().toLowerCase();
    if (!t) continue;
    if (t === '*/*' || t === mediaType || t === 'application/*' || t === 'application/json') return true;
  }
  return false;
}
