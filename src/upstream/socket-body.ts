/**
 * The body of a response read by socket-request.ts. As a ByteSource (pipeTo) it hands out views of the
 * connection's read buffer, valid during the callback; as a Readable it hands out copies, for consumers that only
 * drain or discard an error body. The connection feeds it (receive, end, fail) and it steers the connection back
 * (pause, resume, fail) through BodyFeed.
 */
import { Readable } from 'node:stream';
import type { ByteSource, ChunkHandler } from '../util/byte-source.js';

/** What the body needs of the connection that feeds it. */
export interface BodyFeed {
  /** Stop reading from the socket (the consumer is behind). */
  pause(): void;
  /** Hand over what is held and read on. */
  resume(): void;
  /** Give up the transfer (the consumer failed or went away). */
  fail(e: Error): void;
}

export class SocketBody extends Readable implements ByteSource {
  private mode: 'idle' | 'pipe' | 'stream' = 'idle';
  private onChunk: ChunkHandler | undefined;
  private pipeResult: { resolve: () => void; reject: (e: Error) => void } | undefined;
  /** Bytes that arrived with the head, before a consumer chose a mode (at most one read's worth). */
  private early: Buffer[] = [];
  /** The connection has delivered the whole body. */
  complete = false;
  private failure: Error | undefined;
  /** The outcome has been reported to the consumer. */
  private reported = false;
  /** A pipeTo consumer's promise is pending: no chunk may be delivered. */
  blocked = false;
  private streamFull = false;

  constructor(private readonly conn: BodyFeed) {
    super({ highWaterMark: 1024 * 1024 });
  }

  /** Whether the connection should stop reading after the current buffer. */
  wantsPause(): boolean {
    return this.mode === 'idle' || this.blocked || this.streamFull;
  }

  pipeTo(onChunk: ChunkHandler): Promise<void> {
    if (this.mode !== 'idle') return Promise.reject(new Error('response body already consumed'));
    this.mode = 'pipe';
    this.onChunk = onChunk;
    return new Promise<void>((resolve, reject) => {
      this.pipeResult = { resolve, reject };
      const early = this.early.splice(0);
      if (early.length > 0) this.receive(Buffer.concat(early));
      if (!this.blocked) this.conn.resume();
      this.report();
    });
  }

  override _read(): void {
    if (this.mode === 'idle') {
      this.mode = 'stream';
      for (const c of this.early.splice(0)) this.push(c);
    }
    this.streamFull = false;
    this.conn.resume();
    this.report();
  }

  override _destroy(err: Error | null, cb: (error?: Error | null) => void): void {
    if (!this.reported) {
      this.reported = true;
      this.conn.fail(err ?? new Error('response body destroyed'));
      this.pipeResult?.reject(err ?? new Error('response body destroyed'));
    }
    cb(err);
  }

  /** @internal From the connection: one chunk of body bytes, valid only during this call. */
  receive(chunk: Buffer): void {
    if (this.mode === 'idle') {
      this.early.push(Buffer.from(chunk));
      return;
    }
    if (this.mode === 'stream') {
      if (!this.push(Buffer.from(chunk))) {
        this.streamFull = true;
        this.conn.pause();
      }
      return;
    }
    let wait: Promise<void> | void;
    try {
      wait = (this.onChunk as ChunkHandler)(chunk);
    } catch (e) {
      this.conn.fail(e instanceof Error ? e : new Error(String(e)));
      return;
    }
    if (!wait) return;
    this.blocked = true;
    this.conn.pause();
    wait.then(
      () => {
        this.blocked = false;
        this.conn.resume();
        this.report();
      },
      (e: unknown) => {
        this.blocked = false;
        this.conn.fail(e instanceof Error ? e : new Error(String(e)));
      },
    );
  }

  /** @internal From the connection: the body is complete. */
  end(): void {
    this.complete = true;
    this.report();
  }

  /** @internal From the connection: the transfer failed. */
  fail(e: Error): void {
    this.failure ??= e;
    this.report();
  }

  /** Tells the consumer how the transfer ended, once it has taken every byte delivered before. */
  private report(): void {
    if (this.reported || this.mode === 'idle' || this.blocked) return;
    if (this.failure) {
      this.reported = true;
      // A piped body's consumer hears of the failure from pipeTo; as a stream it would be an unhandled 'error'.
      if (this.mode === 'pipe') {
        this.pipeResult?.reject(this.failure);
        this.destroy();
      } else {
        this.destroy(this.failure);
      }
    } else if (this.complete) {
      this.reported = true;
      if (this.mode === 'pipe') {
        this.pipeResult?.resolve();
        // Nobody reads a piped body as a stream: close it, so that 'close' listeners (the client's slot) run.
        this.destroy();
      } else {
        this.push(null);
      }
    }
  }
}
