/**
 * The token on every request one replica sends another: an HMAC-SHA256, under the cluster's shared secret, of the
 * method, the exact path and an expiry. It proves the sender holds the secret (only replicas do) and is good for
 * that one request line until it expires: a token seen on the wire cannot fetch another blob, and replaying it
 * after expiry is refused. Expiries further ahead than the configured lifetime (plus clock skew) are refused too, so
 * no token outlives its TTL whatever a sender wrote into it.
 *
 * Format: `v1.<expiry, ms since the epoch>.<base64url MAC>`, sent as `Authorization: PortcullisPeer <token>`.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';

export const PEER_AUTH_SCHEME = 'PortcullisPeer';
/** Clock difference between replicas that a token's expiry tolerates. */
const SKEW_MS = 5_000;
/** Shorter keys are refused at start: the MAC is only as strong as the key. */
export const MIN_KEY_BYTES = 32;

export type PeerTokenOutcome = { ok: true } | { ok: false; code: 'MALFORMED' | 'EXPIRED' | 'TOO_LONG' | 'BAD_MAC' };

function mac(key: Buffer, method: string, path: string, expiry: number): Buffer {
  return createHmac('sha256', key).update(`v1\n${method}\n${path}\n${expiry}`).digest();
}

/** A token for `method path`, valid until now + ttl. */
export function signPeerToken(key: Buffer, method: string, path: string, now: number, ttl: number): string {
  const expiry = Math.floor(now + ttl);
  return `v1.${expiry}.${mac(key, method, path, expiry).toString('base64url')}`;
}

/** Checks a token for `method path` at time now; maxTtl is the configured lifetime. */
export function verifyPeerToken(key: Buffer, token: string, method: string, path: string, now: number, maxTtl: number): PeerTokenOutcome {
  const m = /^v1\.(\d{1,16})\.([A-Za-z0-9_-]{43})$/.exec(token);
  if (!m) return { ok: false, code: 'MALFORMED' };
  const expiry = Number(m[1]);
  // The MAC first, in constant time, so that the expiry checks say nothing to someone without the key.
  const given = Buffer.from(m[2]!, 'base64url');
  const want = mac(key, method, path, expiry);
  if (given.length !== want.length || !timingSafeEqual(given, want)) return { ok: false, code: 'BAD_MAC' };
  if (expiry <= now) return { ok: false, code: 'EXPIRED' };
  if (expiry > now + maxTtl + SKEW_MS) return { ok: false, code: 'TOO_LONG' };
  return { ok: true };
}

/** The token in an Authorization header value, or undefined. */
export function peerTokenOf(authorization: string | undefined): string | undefined {
  if (!authorization) return undefined;
  const sp = authorization.indexOf(' ');
  if (sp < 0 || authorization.slice(0, sp) !== PEER_AUTH_SCHEME) return undefined;
  return authorization.slice(sp + 1).trim();
}
