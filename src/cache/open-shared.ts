/**
 * Builds what `storage.meta` names (the composition root calls this once): with `sqlite` nothing is shared and no
 * Redis module is loaded; with `redis`, ioredis (imported only then, as the AWS SDK is for S3: a node instance carries
 * none of it), the shared state, and the invalidation epoch with its durable copy in S3 when storage.blobs is s3.
 */
import { readSecret } from '../config/load.js';
import type { SharedBuckets } from '../auth/rate-limit.js';
import type { Config } from '../config/schema.js';
import { TieredHints } from './closure-hints.js';
import { DurableState } from './durable-state.js';
import type { DurableEpoch } from './epoch.js';
import { LOCAL_ONLY, type DurableDocuments, type EpochSource, type HintStore, type SharedState } from './shared.js';

export interface OpenShared {
  shared: SharedState;
  /** Undefined with storage.meta: sqlite (one replica: the basis alone covers every change). */
  epoch: EpochSource | undefined;
  /** Durable documents in the bucket (storage.blobs: s3): pushed reports every replica reads. */
  documents: DurableDocuments | undefined;
  /** Rate-limit buckets every replica shares (storage.meta: redis); undefined: each replica its own. */
  buckets: SharedBuckets | undefined;
  /** Admitted manifests, closure hints, tag mappings and evidence in the bucket (storage.blobs: s3). */
  durable: DurableState | undefined;
  /** Closure hints from Redis, then the bucket; undefined when neither is configured (nothing to share). */
  hints: HintStore | undefined;
  close(): Promise<void>;
}

export async function openShared(config: Config, o: { now?: () => number; onError: (what: string, err: unknown) => void }): Promise<OpenShared> {
  const r = config.storage.redis;
  const s3 = config.storage.s3;
  let documents: DurableDocuments | undefined;
  let durableEpoch: DurableEpoch | undefined;
  if (config.storage.blobs === 's3' && s3) {
    const [{ s3Client }, { S3DurableEpoch }, { S3Documents }] = await Promise.all([
      import('./s3-client.js'),
      import('./s3-epoch.js'),
      import('./s3-documents.js'),
    ]);
    const client = s3Client(s3, (ref) => readSecret(ref));
    documents = new S3Documents({ client, bucket: s3.bucket, prefix: s3.prefix });
    durableEpoch = new S3DurableEpoch({ client, bucket: s3.bucket, prefix: s3.prefix });
  }
  if (config.storage.meta !== 'redis' || !r) {
    const durable = documents ? new DurableState({ docs: documents, onError: o.onError }) : undefined;
    return { shared: LOCAL_ONLY, epoch: undefined, documents, buckets: undefined, durable, hints: durable, close: () => Promise.resolve() };
  }
  const [{ redisClients }, { RedisShared }, { EpochTracker }, { RedisBuckets }] = await Promise.all([
    import('./redis-client.js'),
    import('./redis-shared.js'),
    import('./epoch.js'),
    import('./redis-buckets.js'),
  ]);
  const conns = redisClients(
    r,
    (ref) => readSecret(ref),
    (err) => o.onError('redis connection', err),
  );
  const shared = new RedisShared({ ...conns, keyPrefix: r.keyPrefix, onError: o.onError });
  const buckets = new RedisBuckets({ client: conns.client, keyPrefix: r.keyPrefix, attempt: (what, f) => shared.attempt(what, f) });
  const durable = documents ? new DurableState({ docs: documents, signingKey: conns.signingKey, onError: o.onError }) : undefined;
  const epoch = new EpochTracker({
    channel: shared,
    durable: durableEpoch,
    dataDir: config.dataDir,
    maxStaleness: r.maxStaleness,
    pollInterval: r.pollInterval,
    now: o.now ?? Date.now,
    onError: o.onError,
  });
  // The first read before anything serves: a replica starts confirmed when Redis (or S3) answers. Commands are not
  // queued while connecting (enableOfflineQueue: false), so wait for the connection first, boundedly.
  await shared.connected(Math.max(1_000, r.commandTimeout * 4));
  await epoch.poll();
  return {
    shared,
    epoch,
    documents,
    buckets,
    durable,
    hints: durable ? new TieredHints([shared, durable]) : shared,
    close: async () => {
      epoch.close();
      await shared.close();
    },
  };
}
