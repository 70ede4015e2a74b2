/**
 * A node chained to a central Portcullis (`upstreams[].kind: portcullis`): the central tier decides, the node caches.
 *
 * - Its refusals are its decisions. A 403 from it is passed on as it came (code DENIED, message, detail, reason
 *   phrase and decision headers), never re-worded into "check the upstream credentials".
 * - What the node serves from its cache stays the central tier's to revoke. A manifest digest, and a blob through the
 *   root that vouches for it, is served only while the central tier's last yes to that digest (a GET by digest,
 *   which it decides like any pull, and whose bytes must still hash to it) is younger than `recheck`. A GET, not a
 *   HEAD: its denial then carries the central tier's message and violations, passed on as they came. Past that the node asks again before serving; if the
 *   central tier says no, that no is the answer, and if it cannot be asked, nothing is served (503): a node never
 *   serves an image longer than `recheck` after the central tier started denying it.
 */
import { createHash } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import { UPSTREAM_ACCEPT } from '../oci/mediatypes.js';
import { errors } from '../oci/errors.js';
import { digestAlgorithm, type Digest } from '../routing/reference.js';
import type { Route } from '../routing/route.js';
import type { UpstreamClient, UpstreamResponse } from '../upstream/client.js';
import { readCapped } from '../util/capped-body.js';
import { SingleFlight } from '../util/single-flight.js';
import { centralRefusal } from './central-refusal.js';
import { statusError, toRegistryError } from './manifests.js';

/** What the handlers ask before serving anything of a chained upstream (the implementation, CentralCheck, follows). */
export interface CentralConfirmation {
  /**
   * Resolves when the central tier allows `digest` for this client (asked at most once per `recheck`); throws its
   * denial as it came, or UNAVAILABLE when it cannot be asked. A no-op for upstreams that are not a Portcullis.
   * @param who the client's identity (a key): with `forwardIdentity`, the central tier decides per client
   */
  confirm(route: Route, digest: Digest, who: string): Promise<void>;
}

export interface CentralCheckOptions {
  clientFor: (upstream: string) => UpstreamClient;
  /** limits.maxManifestSize: the most of an answer that is read. */
  maxManifestSize: number;
  now?: () => number;
  /** How many confirmations are remembered (LRU; keys hold names clients choose). */
  max?: number;
}

export class CentralCheck implements CentralConfirmation {
  /** key → when the central tier's allow was asked for (the answer holds as of the question). */
  private readonly confirmed: LRUCache<string, number>;
  private readonly flights = new SingleFlight<string, void>();
  private readonly clientFor: (upstream: string) => UpstreamClient;
  private readonly maxManifestSize: number;
  private readonly now: () => number;

  constructor(o: CentralCheckOptions) {
    this.clientFor = o.clientFor;
    this.maxManifestSize = o.maxManifestSize;
    this.now = o.now ?? Date.now;
    this.confirmed = new LRUCache({ max: o.max ?? 50_000 });
  }

  confirm(route: Route, digest: Digest, who: string): Promise<void> {
    const u = route.upstream;
    if (u.kind !== 'portcullis') return Promise.resolve();
    // Without forwardIdentity the central tier sees only the node, whoever the client is: one answer for all.
    const key = [u.name, route.repository, digest, u.forwardIdentity ? who : ''].join('\n');
    const at = this.confirmed.get(key);
    if (at !== undefined && this.now() - at < u.recheck) return Promise.resolve();
    return this.flights.run(key, () => this.ask(route, digest, key));
  }

  private async ask(route: Route, digest: Digest, key: string): Promise<void> {
    const u = route.upstream;
    const ref = `${route.registry}/${route.repository}@${digest}`;
    const asked = this.now();
    let res: UpstreamResponse;
    try {
      res = await this.clientFor(u.name).send({
        method: 'GET',
        path: `/v2/${route.repository}/manifests/${digest}`,
        kind: 'manifest',
        repository: route.repository,
        headers: { accept: UPSTREAM_ACCEPT },
      });
    } catch (e) {
      // Fail closed: an answer the central tier could not give is not an allow.
      throw toRegistryError(e, u.name);
    }
    const refusal = await centralRefusal(res, u, ref);
    if (refusal) {
      this.confirmed.delete(key);
      throw refusal;
    }
    if (res.status !== 200) {
      res.body.resume();
      if (res.status === 404) throw errors.manifestUnknown(`manifest unknown: ${ref} not found on the central tier "${u.name}"`);
      throw statusError(res, u.name, ref);
    }
    const bytes = await readCapped(res.body, this.maxManifestSize, () =>
      errors.upstream(`the central tier "${u.name}" sent an oversized manifest for ${ref}`),
    ).catch((e: unknown) => {
      throw toRegistryError(e, u.name);
    });
    const alg = digestAlgorithm(digest);
    if (`${alg}:${createHash(alg).update(bytes).digest('hex')}` !== digest) {
      throw errors.upstream(`the central tier "${u.name}" answered for ${ref} with bytes of another digest; refused`);
    }
    this.confirmed.set(key, asked);
  }
}
