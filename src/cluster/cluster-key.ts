/**
 * The cluster's HMAC key as the peer client and the internal API use it: read from its secret (a file or an
 * environment variable), kept in memory and read again at most every `refresh` ms.
 *
 * Why not read it on every request: a synchronous file read per internal request blocks the event loop on the path
 * of every cold blob that another replica streams. Why read it again at all: the key is rotated by rewriting the
 * secret (a Kubernetes Secret mounted as a file is swapped in place), and replicas pick it up without a restart.
 *
 * A re-read that fails or yields a key shorter than MIN_KEY_BYTES keeps the last good key (a half-written file or a
 * botched rotation must not stop the cluster, nor weaken its MAC) and is reported once per change of error.
 */
import { errorText } from '../util/error-text.js';
import { MIN_KEY_BYTES } from './peer-token.js';

export interface ClusterKeyOptions {
  /** Reads the secret now; throws when it cannot. */
  read: () => string;
  /** How long a key read is used before the secret is read again, in ms. */
  refresh: number;
  now: () => number;
  /** Called when a re-read is refused (the last good key stays in use). */
  onRefused?: (reason: string) => void;
}

export class ClusterKey {
  private key: Buffer;
  private readAt: number;
  private lastRefusal: string | undefined;

  /** Reads the key at once: a missing, unreadable or short secret throws here, which stops the start. */
  constructor(private readonly o: ClusterKeyOptions) {
    const first = this.load();
    if (typeof first === 'string') throw new Error(first);
    this.key = first;
    this.readAt = o.now();
  }

  /** The key to sign and verify with now. */
  get(): Buffer {
    const now = this.o.now();
    if (now - this.readAt < this.o.refresh) return this.key;
    this.readAt = now;
    const next = this.load();
    if (typeof next === 'string') {
      if (next !== this.lastRefusal) this.o.onRefused?.(next);
      this.lastRefusal = next;
      return this.key;
    }
    this.lastRefusal = undefined;
    this.key = next;
    return next;
  }

  /** The key, or why it cannot be used. */
  private load(): Buffer | string {
    let key: Buffer;
    try {
      key = Buffer.from(this.o.read(), 'utf8');
    } catch (e) {
      return errorText(e);
    }
    if (key.length < MIN_KEY_BYTES) return `at least ${MIN_KEY_BYTES} bytes are needed for the HMAC key`;
    return key;
  }
}
