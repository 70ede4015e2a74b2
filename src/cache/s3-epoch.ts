/**
 * The durable copy of the invalidation epoch (epoch.ts) in the blob bucket, so that a Redis flush or failover never
 * loses a bump, and a replica cut off from Redis still confirms the epoch.
 *
 * Layout: `<prefix>meta/v1/epoch/<epoch, 16 digits>` (empty objects), next to the blobs under `<prefix>v1/blobs/`
 * (never listed by the blob sweeper). One object per epoch rather than one overwritten object: two replicas bumping
 * at once write two different keys, so a slow writer can never put a lower epoch back; the epoch is the highest key.
 * Older keys are deleted after a write, keeping the last few.
 */
import { DeleteObjectCommand, ListObjectsV2Command, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import type { DurableEpoch } from './epoch.js';

const KEEP = 4;
const DIGITS = 16;
/** Bounded listing: with KEEP objects left after each write, more pages mean only a backlog of crashed deletes. */
const MAX_PAGES = 20;

export class S3DurableEpoch implements DurableEpoch {
  private readonly dir: string;

  constructor(private readonly o: { client: S3Client; bucket: string; prefix: string }) {
    this.dir = `${o.prefix}meta/v1/epoch/`;
  }

  async read(): Promise<number> {
    return (await this.list()).at(-1) ?? 0;
  }

  async write(n: number): Promise<void> {
    await this.o.client.send(new PutObjectCommand({ Bucket: this.o.bucket, Key: this.key(n), Body: Buffer.from(`${n}\n`) }));
    const old = (await this.list()).filter((e) => e < n).slice(0, -KEEP + 1 || undefined);
    // One DeleteObject each (DeleteObjects needs a Content-MD5 that some S3-compatible stores check differently).
    for (const e of old) await this.o.client.send(new DeleteObjectCommand({ Bucket: this.o.bucket, Key: this.key(e) }));
  }

  /** Every stored epoch, ascending (S3 lists keys in order; zero-padded, that is numeric order). */
  private async list(): Promise<number[]> {
    const out: number[] = [];
    let token: string | undefined;
    for (let page = 0; page < MAX_PAGES; page++) {
      const r = await this.o.client.send(new ListObjectsV2Command({ Bucket: this.o.bucket, Prefix: this.dir, ContinuationToken: token }));
      for (const c of r.Contents ?? []) {
        const n = Number(c.Key?.slice(this.dir.length));
        if (Number.isSafeInteger(n) && n >= 0) out.push(n);
      }
      if (!r.IsTruncated || !r.NextContinuationToken) break;
      token = r.NextContinuationToken;
    }
    return out.sort((a, b) => a - b);
  }

  private key(n: number): string {
    return `${this.dir}${String(n).padStart(DIGITS, '0')}`;
  }
}
