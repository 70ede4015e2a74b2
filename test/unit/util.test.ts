/** The shared helpers in src/util/: single flight, the capped upstream body, error text. */
import { PassThrough, Readable } from 'node:stream';
import { describe, expect, test } from 'vitest';
import { readCapped } from '../../src/util/capped-body.js';
import { errorText } from '../../src/util/error-text.js';
import { SingleFlight } from '../../src/util/single-flight.js';

/** A promise with its resolve and reject, so the test decides when a call settles. */
function deferred<T>(): { promise: Promise<T>; resolve: (v: T) => void; reject: (e: unknown) => void } {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

describe('SingleFlight', () => {
  test('concurrent callers of one key share one call and its result', async () => {
    const sf = new SingleFlight<string, number>();
    const d = deferred<number>();
    let calls = 0;
    const fn = (): Promise<number> => {
      calls++;
      return d.promise;
    };
    const a = sf.run('k', fn);
    const b = sf.run('k', fn);
    const c = sf.run('k', fn);
    expect(calls).toBe(1);
    expect(sf.has('k')).toBe(true);
    d.resolve(42);
    expect(await Promise.all([a, b, c])).toEqual([42, 42, 42]);
    expect(calls).toBe(1);
  });

  test('different keys run separately', async () => {
    const sf = new SingleFlight<string, string>();
    let calls = 0;
    const [x, y] = await Promise.all([
      sf.run('x', () => {
        calls++;
        return Promise.resolve('x');
      }),
      sf.run('y', () => {
        calls++;
        return Promise.resolve('y');
      }),
    ]);
    expect([x, y, calls]).toEqual(['x', 'y', 2]);
  });

  test('a failure reaches every caller of the flight and is not cached: the next caller starts a new call', async () => {
    const sf = new SingleFlight<string, number>();
    const d = deferred<number>();
    let calls = 0;
    const a = sf.run('k', () => {
      calls++;
      return d.promise;
    });
    const b = sf.run('k', () => {
      calls++;
      return Promise.resolve(0);
    });
    d.reject(new Error('upstream down'));
    await expect(a).rejects.toThrow('upstream down');
    await expect(b).rejects.toThrow('upstream down');
    expect(sf.has('k')).toBe(false);
    const c = await sf.run('k', () => {
      calls++;
      return Promise.resolve(7);
    });
    expect(c).toBe(7);
    expect(calls).toBe(2);
  });

  test('the entry is removed once the call settles, before a caller sees the result', async () => {
    const sf = new SingleFlight<string, number>();
    const d = deferred<number>();
    const p = sf.run('k', () => d.promise);
    expect(sf.size).toBe(1);
    d.resolve(1);
    const seen = await p.then(() => sf.has('k'));
    expect(seen).toBe(false);
    expect(sf.size).toBe(0);
  });

  test('a function that throws synchronously fails its callers and leaves no entry behind', async () => {
    const sf = new SingleFlight<string, number>();
    await expect(
      sf.run('k', () => {
        throw new Error('bad input');
      }),
    ).rejects.toThrow('bad input');
    expect(sf.size).toBe(0);
  });
});

describe('readCapped', () => {
  test('returns a body of at most max bytes whole', async () => {
    const body = Readable.from([Buffer.from('abc'), Buffer.from('def')]);
    expect((await readCapped(body, 6, () => new Error('too big'))).toString()).toBe('abcdef');
  });

  test('one byte over the cap: the oversized error, and the upstream transfer is destroyed without reading on', async () => {
    const body = new PassThrough();
    body.write(Buffer.from('abcd'));
    body.write(Buffer.from('efg'));
    const read = readCapped(body, 6, () => new Error('too big'));
    await expect(read).rejects.toThrow('too big');
    expect(body.destroyed).toBe(true);
  });
});

describe('errorText', () => {
  test('an Error gives its message; anything else its string form', () => {
    expect(errorText(new TypeError('boom'))).toBe('boom');
    expect(errorText('plain')).toBe('plain');
    expect(errorText(42)).toBe('42');
    expect(errorText(undefined)).toBe('undefined');
  });
});
