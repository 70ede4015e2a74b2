/**
 * The endpoints replicas of a cluster call on each other (src/cluster/), on the registry listener:
 *
 *   GET /internal/v1/health                                   a peer's probe
 *   GET /internal/v1/blobs/<upstream>/<repository>/<digest>   a blob this replica owns, streamed as it arrives
 *
 * Only peers may call them: every request carries a peer token (an HMAC under the cluster's shared secret, bound to
 * the method, the exact path and a near expiry; cluster/peer-token.ts), checked before the path is even parsed.
 * This is not a way around the gate: the asking replica has already admitted the client's request for that blob, and
 * a token only names one digest in one repository of a configured upstream, which is all this endpoint serves. It
 * never asks another replica in turn (open(…, { local: true })), so requests between replicas never chain or loop.
 * Without a `cluster` section this handler is not mounted and /internal/ is a 404 like any unknown path.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { PEER_HEALTH_PATH, INTERNAL_PREFIX } from '../cluster/peer-client.js';
import { PEER_AUTH_SCHEME, peerTokenOf, verifyPeerToken } from '../cluster/peer-token.js';
import type { UpstreamConfig } from '../config/schema.js';
import { errors } from '../oci/errors.js';
import type { BlobService } from '../proxy/blobs.js';
import { isDigest, isValidName, type Digest } from '../routing/reference.js';
import type { Route } from '../routing/route.js';
import type { ApiHandler } from './scan-api.js';
import { sendJson } from './respond.js';

const BLOBS = `${INTERNAL_PREFIX}blobs/`;

export interface InternalApiOptions {
  /** The shared secret (read per use). */
  key: () => Buffer;
  tokenTTL: number;
  now: () => number;
  blobs: BlobService;
  upstreams: readonly UpstreamConfig[];
}

export class InternalApi implements ApiHandler {
  private readonly upstreams: Map<string, UpstreamConfig>;

  constructor(private readonly o: InternalApiOptions) {
    this.upstreams = new Map(o.upstreams.map((u) => [u.name, u]));
  }

  async handle(req: IncomingMessage, res: ServerResponse): Promise<boolean> {
    // The path exactly as sent (no dot-segment resolution): it is what the token was signed over.
    const target = req.url ?? '/';
    const q = target.indexOf('?');
    const path = q === -1 ? target : target.slice(0, q);
    if (!path.startsWith(INTERNAL_PREFIX)) return false;
    const method = req.method ?? 'GET';
    if (method !== 'GET') throw errors.unsupported(`${method} is not supported on the internal endpoints`);
    const token = peerTokenOf(req.headers.authorization);
    const verdict = token === undefined ? undefined : verifyPeerToken(this.o.key(), token, method, path, this.o.now(), this.o.tokenTTL);
    if (!verdict?.ok) throw errors.unauthorized(`the internal endpoints are for cluster peers (${verdict?.code ?? 'NO_TOKEN'})`, PEER_AUTH_SCHEME);
    if (path === PEER_HEALTH_PATH) {
      sendJson(res, 200, { status: 'ok' });
      return true;
    }
    const route = path.startsWith(BLOBS) ? this.routeOf(path.slice(BLOBS.length)) : undefined;
    if (!route) throw errors.notFound(`no such internal endpoint: ${path.slice(0, 200)}`);
    await this.sendBlob(res, route.route, route.digest);
    return true;
  }

  /** `<upstream>/<repository>/<digest>` of a configured upstream, a valid repository name and a digest. */
  private routeOf(rest: string): { route: Route; digest: Digest } | undefined {
    const parts = rest.split('/');
    if (parts.length < 3) return undefined;
    const upstream = this.upstreams.get(parts[0]!);
    const digest = parts[parts.length - 1]!;
    const repository = parts.slice(1, -1).join('/');
    if (!upstream || !isDigest(digest) || !isValidName(repository)) return undefined;
    return { route: { upstream, registry: upstream.registry, repository, routing: 'prefix' }, digest };
  }

  private async sendBlob(res: ServerResponse, route: Route, digest: Digest): Promise<void> {
    const blob = await this.o.blobs.open(route, digest, { local: true });
    res.statusCode = 200;
    res.setHeader('content-length', blob.size);
    res.setHeader('content-type', 'application/octet-stream');
    res.setHeader('docker-content-digest', digest);
    if (blob.size === 0) {
      blob.release();
      res.end();
      return;
    }
    // As to a client: the last byte waits for the digest to match, and a failure breaks the transfer.
    await blob.writeTo(res, 0, blob.size - 1, () => {});
  }
}
