/**
 * HMAC-SHA256 on entries that replicas leave for each other in shared or durable state (storage.redis.signingKey):
 * whoever can write to Redis or to the bucket, but does not hold the key, cannot make an entry that verifies. The
 * MAC covers the entry's own key (its name in Redis or the bucket) and its JSON, so an entry copied elsewhere fails.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';

export class EntryMac {
  constructor(private readonly key: Buffer | undefined) {}

  get signing(): boolean {
    return this.key !== undefined;
  }

  /** The entry as stored: its JSON, with `mac` (HMAC-SHA256 of `<scope>\n<JSON without mac>`) when signing. */
  sign(scope: string, payload: Record<string, unknown>): string {
    const text = JSON.stringify(payload);
    return this.key ? JSON.stringify({ ...payload, mac: this.mac(scope, text) }) : text;
  }

  /**
   * The entry without its mac, and whether a valid mac vouched for it. With a key, an entry whose mac is missing or
   * wrong is undefined (forged, or from a replica with another key); without one, nothing is `signed`.
   */
  open(scope: string, text: string | undefined | null): { payload: Record<string, unknown>; signed: boolean } | undefined {
    if (typeof text !== 'string' || text.length > 64 * 1024) return undefined;
    let v: unknown;
    try {
      v = JSON.parse(text);
    } catch {
      return undefined;
    }
    if (typeof v !== 'object' || v === null || Array.isArray(v)) return undefined;
    const { mac, ...payload } = v as Record<string, unknown>;
    if (!this.key) return { payload, signed: false };
    if (typeof mac !== 'string' || !/^[0-9a-f]{64}$/.test(mac)) return undefined;
    const want = Buffer.from(this.mac(scope, JSON.stringify(payload)), 'hex');
    return timingSafeEqual(want, Buffer.from(mac, 'hex')) ? { payload, signed: true } : undefined;
  }

  private mac(scope: string, text: string): string {
    return createHmac('sha256', this.key!).update(`${scope}\n${text}`).digest('hex');
  }
}
