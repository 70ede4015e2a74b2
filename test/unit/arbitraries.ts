/** fast-check generators shared by the unit tests. */
import fc from 'fast-check';
import { MAX_NAME_LENGTH } from '../../src/routing/reference.js';

export const alnum = fc.string({ unit: fc.constantFrom(...'abcdefghijklmnopqrstuvwxyz0123456789'), minLength: 1, maxLength: 8 });
export const separator = fc.oneof(fc.constant('.'), fc.constant('_'), fc.constant('__'), fc.string({ unit: fc.constant('-'), minLength: 1, maxLength: 3 }));
/** One path component per the distribution-spec grammar: [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)* */
export const component = fc
  .tuple(alnum, fc.array(fc.tuple(separator, alnum), { maxLength: 3 }))
  .map(([first, rest]) => first + rest.map(([s, a]) => s + a).join(''));
/** A valid repository name: components joined by '/', at most 255 characters. */
export const validName = fc
  .array(component, { minLength: 1, maxLength: 6 })
  .map((cs) => cs.join('/'))
  .filter((n) => n.length <= MAX_NAME_LENGTH);

export const hexChar = fc.constantFrom(...'0123456789abcdef');
export const hexOf = (n: number) => fc.string({ unit: hexChar, minLength: n, maxLength: n });
export const sha256Digest = hexOf(64).map((h) => `sha256:${h}` as const);

/** Arbitrary strings over a mix of ASCII, control characters and some non-ASCII (fast; `unit: 'binary'` is slow). */
export const wideString = (maxLength = 40) =>
  fc.string({
    unit: fc.oneof(
      { weight: 6, arbitrary: fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)) },
      { weight: 1, arbitrary: fc.integer({ min: 0, max: 0x1f }).map((c) => String.fromCharCode(c)) },
      { weight: 1, arbitrary: fc.constantFrom('é', 'ı', 'ſ', 'K', '\u2028', '\uff0e', '\uff0f', '🐳', '\u0000') },
    ),
    maxLength,
  });
