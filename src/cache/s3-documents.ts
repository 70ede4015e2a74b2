/**
 * DurableDocuments in the blob bucket: `<s3 prefix>meta/v1/<key>`, next to the blobs under `<s3 prefix>v1/blobs/`
 * (which the blob sweeper lists alone). Used for pushed scan reports, so every replica decides on every report.
 */
import { DeleteObjectCommand, GetObjectCommand, ListObjectsV2Command, NoSuchKey, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import type { DurableDocuments } from './shared.js';

/** A document is small (a scan report is bounded by scan.reports.maxSize); more than this is refused on read. */
const MAX_DOCUMENT = 64 * 1024 * 1024;

export class S3Documents implements DurableDocuments {
  private readonly root: string;

  constructor(private readonly o: { client: S3Client; bucket: string; prefix: string }) {
    this.root = `${o.prefix}meta/v1/`;
  }

  async put(key: string, body: Buffer): Promise<void> {
    await this.o.client.send(new PutObjectCommand({ Bucket: this.o.bucket, Key: this.root + key, Body: body, ContentLength: body.length }));
  }

  async get(key: string): Promise<Buffer | undefined> {
    try {
      const r = await this.o.client.send(new GetObjectCommand({ Bucket: this.o.bucket, Key: this.root + key }));
      if ((r.ContentLength ?? 0) > MAX_DOCUMENT) throw new Error(`document ${key} is over ${MAX_DOCUMENT} bytes`);
      return Buffer.from(await (r.Body as { transformToByteArray(): Promise<Uint8Array> }).transformToByteArray());
    } catch (e) {
      if (e instanceof NoSuchKey || (e as { name?: string }).name === 'NoSuchKey') return undefined;
      throw e;
    }
  }

  async list(prefix: string, limit: number): Promise<string[]> {
    const out: string[] = [];
    let token: string | undefined;
    while (out.length < limit) {
      const r = await this.o.client.send(
        new ListObjectsV2Command({ Bucket: this.o.bucket, Prefix: this.root + prefix, ContinuationToken: token, MaxKeys: Math.min(1000, limit - out.length) }),
      );
      for (const c of r.Contents ?? []) if (c.Key) out.push(c.Key.slice(this.root.length));
      if (!r.IsTruncated || !r.NextContinuationToken) break;
      token = r.NextContinuationToken;
    }
    return out.sort();
  }

  async delete(key: string): Promise<void> {
    await this.o.client.send(new DeleteObjectCommand({ Bucket: this.o.bucket, Key: this.root + key }));
  }
}
