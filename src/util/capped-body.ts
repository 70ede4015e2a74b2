/**
 * Reading a whole upstream body into memory, for the small documents: manifests, tag lists, referrer indexes, token
 * responses, policy bundles, OPA answers, signature blobs, scanner reports. Every upstream read that buffers goes
 * through here, so none can be made to buffer without bound.
 */
import type { Readable } from 'node:stream';

/**
 * Collects a body of at most `max` bytes. Past that the upstream transfer is destroyed and `oversized()` is thrown,
 * so a hostile or broken upstream cannot make the proxy buffer without bound.
 */
export async function readCapped(body: Readable, max: number, oversized: () => Error): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const c of body) {
    const b = c as Buffer;
    total += b.length;
    if (total > max) {
      body.destroy();
      throw oversized();
    }
    chunks.push(b);
  }
  return Buffer.concat(chunks);
}
