/**
 * The replica-to-replica client: streams a blob from its owner (GET /internal/v1/blobs/<upstream>/<repo>/<digest>)
 * and probes a peer's health (GET /internal/v1/health), every request signed with a fresh peer token. Bounded in
 * time: the owner must start answering within ownerTimeout (it may be fetching from its upstream) and may not fall
 * silent for longer than ownerIdleTimeout mid-stream; a probe gets probeTimeout in all.
 */
import { readFileSync } from 'node:fs';
import { Agent, request } from 'undici';
import type { Digest } from '../routing/reference.js';
import { PEER_AUTH_SCHEME, signPeerToken } from './peer-token.js';

export const INTERNAL_PREFIX = '/internal/v1/';

export interface PeerClientOptions {
  /** The shared secret, read per use (a rotated file takes effect without a restart). */
  key: () => Buffer;
  tokenTTL: number;
  ownerTimeout: number;
  ownerIdleTimeout: number;
  probeTimeout: number;
  caFile?: string;
  now?: () => number;
}

/** A blob stream from its owner. */
export interface PeerBlob {
  size: number;
  body: AsyncIterable<Buffer>;
  cancel(): void;
}

/** The owner answered, but not with the blob (it could not fetch it either, or refused us): no retry elsewhere. */
export class PeerRefusedError extends Error {
  constructor(
    readonly peer: string,
    readonly status: number,
  ) {
    super(`peer ${peer} answered HTTP ${status}`);
  }
}

/** The path of the internal blob endpoint. */
export function peerBlobPath(upstream: string, repository: string, digest: Digest): string {
  return `${INTERNAL_PREFIX}blobs/${upstream}/${repository}/${digest}`;
}

export const PEER_HEALTH_PATH = `${INTERNAL_PREFIX}health`;

export class PeerClient {
  private readonly agent: Agent;
  private readonly now: () => number;

  constructor(private readonly o: PeerClientOptions) {
    this.now = o.now ?? Date.now;
    this.agent = new Agent({
      connect: { timeout: Math.min(o.ownerTimeout, 10_000), ...(o.caFile ? { ca: readFileSync(o.caFile, 'utf8') } : {}) },
      headersTimeout: o.ownerTimeout,
      bodyTimeout: o.ownerIdleTimeout,
    });
  }

  private auth(method: string, path: string): string {
    return `${PEER_AUTH_SCHEME} ${signPeerToken(this.o.key(), method, path, this.now(), this.o.tokenTTL)}`;
  }

  /** Rejects with PeerRefusedError on an answer other than 200, with the transport error when the peer is unreachable. */
  async fetchBlob(peer: string, upstream: string, repository: string, digest: Digest): Promise<PeerBlob> {
    const path = peerBlobPath(upstream, repository, digest);
    const ac = new AbortController();
    const res = await request(`${peer}${path}`, {
      method: 'GET',
      headers: { authorization: this.auth('GET', path) },
      dispatcher: this.agent,
      signal: ac.signal,
    });
    const len = Number(res.headers['content-length']);
    if (res.statusCode !== 200 || !Number.isSafeInteger(len) || len < 0) {
      res.body.resume();
      throw new PeerRefusedError(peer, res.statusCode);
    }
    return {
      size: len,
      body: res.body as AsyncIterable<Buffer>,
      cancel: () => {
        ac.abort();
        res.body.destroy();
      },
    };
  }

  /** True when the peer answers its health endpoint with 200 within probeTimeout (which proves it holds the secret too). */
  async probe(peer: string): Promise<boolean> {
    try {
      const res = await request(`${peer}${PEER_HEALTH_PATH}`, {
        method: 'GET',
        headers: { authorization: this.auth('GET', PEER_HEALTH_PATH) },
        dispatcher: this.agent,
        signal: AbortSignal.timeout(this.o.probeTimeout),
      });
      res.body.resume();
      return res.statusCode === 200;
    } catch {
      return false;
    }
  }

  async close(): Promise<void> {
    await this.agent.close();
  }
}
