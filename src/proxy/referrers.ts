/**
 * The OCI referrers API. Upstreams that implement it are passed through; for those that do not (Distribution 2.8
 * answers a plain-text 404), the proxy falls back to the referrers tag schema `sha256-<hex>` itself, so clients
 * get a valid, possibly empty, index either way.
 */
import type { Digest } from '../routing/reference.js';
import { digestHex } from '../routing/reference.js';
import type { Route } from '../routing/route.js';
import { readCapped } from '../util/capped-body.js';
import { headerString, type UpstreamClient } from '../upstream/client.js';
import type { Manifest, ManifestService } from './manifests.js';
import { centralRefusal } from './central-refusal.js';
import { statusError, toRegistryError } from './manifests.js';
import { OCI_INDEX, type Descriptor } from '../oci/mediatypes.js';
import { errors, isNotFound } from '../oci/errors.js';

/** What the handlers need of the referrers API (the implementation, ProxyReferrersService, follows). */
export interface ReferrersService {
  /** The referrers of `subject`, filtered by `artifactType` when given: always a valid index, possibly empty. */
  list(route: Route, subject: Digest, artifactType: string | undefined): Promise<ReferrersResult>;
}

export interface ReferrersResult {
  index: { schemaVersion: 2; mediaType: typeof OCI_INDEX; manifests: Descriptor[] };
  filtersApplied: boolean;
  source: 'api' | 'tag-schema' | 'none';
}

const MAX_BODY = 4 * 1024 * 1024;

export class ProxyReferrersService implements ReferrersService {
  constructor(
    private readonly clientFor: (upstream: string) => UpstreamClient,
    private readonly manifests: ManifestService,
  ) {}

  async list(route: Route, subject: Digest, artifactType: string | undefined): Promise<ReferrersResult> {
    const qs = artifactType ? `?artifactType=${encodeURIComponent(artifactType)}` : '';
    let res;
    try {
      res = await this.clientFor(route.upstream.name).send({
        method: 'GET',
        path: `/v2/${route.repository}/referrers/${subject}${qs}`,
        kind: 'referrers',
        repository: route.repository,
        headers: { accept: OCI_INDEX },
      });
    } catch (e) {
      throw toRegistryError(e, route.upstream.name);
    }
    const ct = headerString(res.headers['content-type'])?.split(';')[0]?.trim();
    if (res.status === 200 && ct === OCI_INDEX) {
      // A body cut short is the upstream's failure (502 naming it), not an internal error.
      const body = await readCapped(res.body, MAX_BODY, () => errors.upstream('oversized referrers response')).catch((e: unknown) => {
        throw toRegistryError(e, route.upstream.name);
      });
      const doc = safeJson(body);
      const manifests = Array.isArray(doc?.manifests) ? (doc.manifests as Descriptor[]) : [];
      const applied = (headerString(res.headers['oci-filters-applied']) ?? '')
        .split(',')
        .map((s) => s.trim())
        .includes('artifactType');
      return this.finish(manifests, artifactType, applied, 'api');
    }
    const refusal = await centralRefusal(res, route.upstream, `${route.registry}/${route.repository} (referrers of ${subject})`);
    if (refusal) throw refusal;
    res.body.resume();
    if (res.status !== 404 && res.status !== 200) throw statusError(res, route.upstream.name, `referrers of ${subject}`);
    // No referrers API upstream: the tag schema is the standard fallback.
    try {
      const m = await this.resolveFallbackTag(route, subject);
      if (m.parsed.kind !== 'index') return this.finish([], artifactType, false, 'none');
      return this.finish(m.parsed.manifests, artifactType, false, 'tag-schema');
    } catch (e) {
      if (isNotFound(e)) return this.finish([], artifactType, false, 'none');
      throw e;
    }
  }

  private async resolveFallbackTag(route: Route, subject: Digest): Promise<Manifest> {
    const tag = `${subject.slice(0, subject.indexOf(':'))}-${digestHex(subject)}`;
    return (await this.manifests.resolveTag(route, tag, { getWhenUnknown: true })).manifest;
  }

  private finish(manifests: Descriptor[], artifactType: string | undefined, applied: boolean, source: ReferrersResult['source']): ReferrersResult {
    // Filter ourselves whatever the upstream said, and then say so.
    const list = artifactType ? manifests.filter((d) => d.artifactType === artifactType) : manifests;
    return { index: { schemaVersion: 2, mediaType: OCI_INDEX, manifests: list }, filtersApplied: artifactType !== undefined || applied, source };
  }
}

function safeJson(b: Buffer): { manifests?: unknown } | undefined {
  try {
    return JSON.parse(b.toString('utf8')) as { manifests?: unknown };
  } catch {
    return undefined;
  }
}
