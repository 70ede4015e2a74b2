/**
 * Builds the blob store that `storage.blobs` names (the composition root calls this once). The S3 store and the AWS
 * SDK are imported only when configured: the SDK alone is about 35 MiB of resident memory that a node tier on local
 * disk should not carry (issue 10's peak-RSS budget).
 */
import { join } from 'node:path';
import { readSecret } from '../config/load.js';
import type { Config } from '../config/schema.js';
import type { BlobIndexEvents } from './blob-index.js';
import { FileBlobStore, type BlobStore } from './blobstore.js';

export async function openBlobStore(
  config: Config,
  events: BlobIndexEvents & { onError?: (what: string, err: unknown) => void },
  now?: () => number,
): Promise<BlobStore> {
  const s3 = config.storage.s3;
  if (config.storage.blobs !== 's3' || !s3) return new FileBlobStore(config.dataDir, config.cache.maxSize, events);
  const [{ s3Client }, { S3BlobStore, s3TmpDir }] = await Promise.all([import('./s3-client.js'), import('./s3-blobstore.js')]);
  return new S3BlobStore({
    client: s3Client(s3, (ref) => readSecret(ref)),
    config: s3,
    tmpDir: s3TmpDir(config.dataDir),
    maxSize: config.cache.maxSize,
    redirectExpiry: config.storage.redirectExpiry,
    events,
    ...(now ? { now } : {}),
    // The local tier counts toward neither the bucket's bound nor its metrics: it is a copy.
    ...(s3.localCache ? { hot: new FileBlobStore(join(config.dataDir, 's3-hot'), s3.localCache.maxSize) } : {}),
  });
}
