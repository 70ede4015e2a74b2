/**
 * The `cluster` section: the replicas of a central tier that share one blob store (DESIGN §11). Absent: a single
 * replica, and nothing below is used. Present: each cold blob has one owner among the live replicas (rendezvous
 * hashing of its digest, src/cluster/rendezvous.ts), which alone fetches it from the upstream; the others stream it
 * from the owner over an internal endpoint authenticated with the shared secret (src/cluster/peer-token.ts).
 *
 *   cluster:
 *     self: http://10.0.0.11:5000          # this replica, as the others reach it
 *     peers: [http://10.0.0.11:5000, http://10.0.0.12:5000, http://10.0.0.13:5000]
 *     secret: { file: /run/secrets/portcullis-cluster }
 */
import { z } from 'zod';
import { duration, secretRef } from './primitives.js';
import { httpUrl } from './url.js';

const peerUrl = httpUrl().transform((u) => u.replace(/\/+$/, ''));

export const clusterSchema = z
  .object({
    /** This replica's internal base URL, exactly as it appears in every replica's `peers`. */
    self: peerUrl,
    /** Every replica's internal base URL (this one may be listed too; it is added if not). */
    peers: z.array(peerUrl).min(1, 'list at least one peer'),
    /** Shared HMAC key (at least 32 bytes) that signs the replicas' requests to each other. */
    secret: secretRef,
    /** How often each peer's health endpoint is probed. */
    probeInterval: duration.refine((ms) => ms >= 100, 'at least 100ms').default(2_000),
    /**
     * A probe that has not answered within this counts as failed. Generous: a busy replica (event loop behind under a
     * herd) must not lose its blobs to a probe, while a dead one is caught at once by a refused connection.
     */
    probeTimeout: duration.refine((ms) => ms >= 50, 'at least 50ms').default(5_000),
    /** Consecutive failed probes after which a peer owns nothing, until it answers a probe again. */
    failuresToDown: z.number().int().min(1).max(100).default(3),
    /** How long an owner may take to start sending a blob (its own upstream fetch) before this replica fetches it itself. */
    ownerTimeout: duration.refine((ms) => ms >= 100, 'at least 100ms').default(30_000),
    /** Longest silence inside an owner's blob stream before it counts as dead (the transfer resumes from the upstream). */
    ownerIdleTimeout: duration.refine((ms) => ms >= 100, 'at least 100ms').default(30_000),
    /** Lifetime of the signed token on each internal request (a replayed token is refused after it). */
    tokenTTL: duration.refine((ms) => ms >= 1_000 && ms <= 300_000, 'between 1s and 5m').default(30_000),
    /** PEM CA bundle that the peers' https certificates must chain to (instead of the system's). */
    caFile: z.string().min(1).optional(),
  })
  .strict()
  .transform((c) => ({ ...c, peers: [...new Set([...c.peers, c.self])].sort() }));

export type ClusterConfig = z.output<typeof clusterSchema>;
