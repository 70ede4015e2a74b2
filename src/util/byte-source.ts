/**
 * A push-style byte stream whose chunks are only valid during the callback. It exists for blob downloads: a
 * Readable must hand every chunk over in a buffer of its own, and for a socket that means a fresh 64 KiB allocation
 * per read, whose churn kept V8's major GC busy for a large share of a cold pull (bench/README.md). A ByteSource
 * can read into one reused buffer instead, because the consumer copies what it keeps before returning.
 */
export type ChunkHandler = (chunk: Buffer) => Promise<void> | void;

export interface ByteSource {
  /**
   * Calls `onChunk` for every chunk, in order. A chunk's memory may be reused once the call returns, so a consumer
   * copies what it keeps. When `onChunk` returns a promise, no further chunk is delivered until it settles (that is
   * the backpressure); a rejection stops the transfer and rejects the result. Resolves after the last chunk; rejects
   * on a transfer error. Callable once.
   */
  pipeTo(onChunk: ChunkHandler): Promise<void>;
}

export function isByteSource(x: unknown): x is ByteSource {
  return typeof x === 'object' && x !== null && typeof (x as Partial<ByteSource>).pipeTo === 'function';
}

/** The same contract over an async iterable of buffers (undici bodies, tests). */
export function byteSourceOf(body: AsyncIterable<Buffer> | AsyncIterable<unknown> | ByteSource): ByteSource {
  if (isByteSource(body)) return body;
  return {
    async pipeTo(onChunk) {
      for await (const chunk of body as AsyncIterable<Buffer>) {
        const wait = onChunk(chunk);
        if (wait) await wait;
      }
    },
  };
}
