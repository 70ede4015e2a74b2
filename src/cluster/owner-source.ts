/**
 * Where a replica gets a cold blob from in a cluster: from the blob's owner (the first live replica in rendezvous
 * order, membership.ts), which runs the one upstream fetch of the cluster and streams it to every replica that asks
 * (its single-flight download, cache/download.ts); or from the upstream itself when this replica is the owner.
 *
 * Failures cost at worst a duplicate upstream fetch, never wrong bytes (the download that consumes this source
 * hashes every byte and withholds the last one until the digest matched):
 * - the owner is unreachable (refused, reset, no answer within ownerTimeout): it is marked down and the next replica
 *   in rendezvous order is asked, which every replica agrees on, so the replicas that lost the owner converge on one
 *   new owner; when that is this replica, it fetches from the upstream;
 * - the owner answers, but not with the blob (it failed to fetch it, or refused our token): this replica fetches
 *   it from the upstream itself;
 * - the owner's stream breaks mid-way (killed, partitioned, silent for ownerIdleTimeout): the transfer resumes from
 *   the upstream at the byte it reached (a Range request), so this replica's clients see no break at all.
 */
import type { DownloadSource } from '../cache/download.js';
import type { Digest } from '../routing/reference.js';
import { byteSourceOf } from '../util/byte-source.js';
import type { Membership } from './membership.js';
import { PeerRefusedError, type PeerBlob, type PeerClient } from './peer-client.js';

/** The upstream side, from the blob service: the blob from byte offset on (size is the whole blob's). */
export type UpstreamFetch = (offset: number) => Promise<DownloadSource>;

export type ClusterEvent =
  | { kind: 'owner'; peer: string; digest: Digest }
  | { kind: 'unreachable'; peer: string; digest: Digest; error: unknown }
  | { kind: 'refused'; peer: string; digest: Digest; status: number }
  | { kind: 'resume'; peer: string; digest: Digest; offset: number; error: unknown };

export interface OwnerSourceOptions {
  membership: Membership;
  client: PeerClient;
  onEvent?: (e: ClusterEvent) => void;
}

export class OwnerSource {
  constructor(private readonly o: OwnerSourceOptions) {}

  /** The blob's bytes from its owner, or from the upstream (see the file comment for every fallback). */
  async source(upstream: string, repository: string, digest: Digest, fromUpstream: UpstreamFetch): Promise<DownloadSource> {
    const { membership, client } = this.o;
    // Bounded: each replica is tried at most once.
    for (const owner of membership.owners(digest)) {
      if (owner === membership.self) return fromUpstream(0);
      let blob: PeerBlob;
      try {
        blob = await client.fetchBlob(owner, upstream, repository, digest);
      } catch (e) {
        if (e instanceof PeerRefusedError) {
          this.o.onEvent?.({ kind: 'refused', peer: owner, digest, status: e.status });
          return fromUpstream(0);
        }
        membership.markDown(owner);
        this.o.onEvent?.({ kind: 'unreachable', peer: owner, digest, error: e });
        continue;
      }
      this.o.onEvent?.({ kind: 'owner', peer: owner, digest });
      return this.resumable(owner, digest, blob, fromUpstream);
    }
    return fromUpstream(0);
  }

  /** The owner's stream, continued from the upstream if it breaks. */
  private resumable(owner: string, digest: Digest, blob: PeerBlob, fromUpstream: UpstreamFetch): DownloadSource {
    let current: { cancel(): void } = blob;
    let cancelled = false;
    let ownerLost = false;
    return {
      size: blob.size,
      // The owner stores the blob in the shared store: this replica waits for that copy instead of uploading its own,
      // unless the owner went away.
      writtenElsewhere: () => !ownerLost,
      cancel: () => {
        cancelled = true;
        current.cancel();
      },
      body: {
        pipeTo: async (onChunk) => {
          let got = 0;
          let consumerError: unknown;
          // Errors of the consumer (size or write failures) are not the owner's fault and are not resumed.
          const deliver = async (chunk: Buffer): Promise<void> => {
            try {
              const wait = onChunk(chunk);
              if (wait) await wait;
            } catch (e) {
              consumerError = e;
              throw e;
            }
          };
          try {
            for await (const chunk of blob.body) {
              await deliver(chunk);
              got += chunk.length;
            }
            if (got === blob.size) return;
            throw new Error(`owner ${owner} ended the stream at byte ${got} of ${blob.size}`);
          } catch (e) {
            if (cancelled || consumerError !== undefined) throw e;
            ownerLost = true;
            this.o.membership.markDown(owner);
            this.o.onEvent?.({ kind: 'resume', peer: owner, digest, offset: got, error: e });
          }
          blob.cancel();
          const rest = await fromUpstream(got);
          current = rest;
          if (cancelled) {
            rest.cancel();
            throw new Error('download cancelled');
          }
          if (rest.size !== undefined && rest.size !== blob.size) {
            rest.cancel();
            throw new Error(`upstream size ${rest.size} for ${digest} differs from the owner's ${blob.size}`);
          }
          await byteSourceOf(rest.body).pipeTo(onChunk);
        },
      },
    };
  }
}
