/**
 * The bucket's layout marker (cache/layout.ts), `<s3 prefix>layout.json`: read on every start of an S3-backed
 * replica, before the blob listing; written when absent with `If-None-Match: *`, so two replicas starting at once on
 * a new bucket cannot overwrite each other (the loser reads the winner's). A marker from a release whose layout
 * this one cannot read stops the start (the blob store's `ready` rejects with LayoutTooNewError).
 */
import { GetObjectCommand, NoSuchKey, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { checkMarker, CURRENT_MARKER, type LayoutMarker } from './layout.js';
import { s3Status } from './s3-upload.js';

/** A marker is a few dozen bytes; anything larger is not one. */
const MAX_MARKER = 4096;

export async function ensureBucketLayout(o: { client: S3Client; bucket: string; prefix: string }): Promise<LayoutMarker> {
  const key = `${o.prefix}layout.json`;
  const where = `s3://${o.bucket}/${key}`;
  for (let attempt = 0; attempt < 2; attempt++) {
    const existing = await read(o.client, o.bucket, key, where);
    if (existing) return checkMarker(where, existing);
    try {
      const body = Buffer.from(`${JSON.stringify(CURRENT_MARKER)}\n`);
      await o.client.send(
        new PutObjectCommand({ Bucket: o.bucket, Key: key, Body: body, ContentLength: body.length, IfNoneMatch: '*', ContentType: 'application/json' }),
      );
      return CURRENT_MARKER;
    } catch (e) {
      // Another replica wrote it first: read theirs.
      if (s3Status(e) !== 412) throw e;
    }
  }
  throw new Error(`${where}: layout marker neither readable nor writable`);
}

async function read(client: S3Client, bucket: string, key: string, where: string): Promise<Buffer | undefined> {
  try {
    const r = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
    if ((r.ContentLength ?? 0) > MAX_MARKER) throw new Error(`${where}: layout marker is over ${MAX_MARKER} bytes`);
    return Buffer.from(await (r.Body as { transformToByteArray(): Promise<Uint8Array> }).transformToByteArray());
  } catch (e) {
    if (e instanceof NoSuchKey || (e as { name?: string }).name === 'NoSuchKey' || s3Status(e) === 404) return undefined;
    throw e;
  }
}
