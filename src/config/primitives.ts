/**
 * The value types every config section shares, defined once: durations, sizes and secret references. A section
 * (schema.ts, auth.ts, scan.ts, signatures.ts) imports these instead of its own copy, so `30s` or `16MiB` means the
 * same everywhere and every section gives the same error for a bad one.
 */
import { z } from 'zod';

const DURATION = /^(\d+)(ms|s|m|h|d)$/;
const DURATION_UNITS = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const;
const SIZE = /^(\d+)(B|KiB|MiB|GiB|TiB)$/;
const SIZE_EXPONENTS = { B: 0, KiB: 1, MiB: 2, GiB: 3, TiB: 4 } as const;

/** `500ms`, `30s`, `5m`, `1h`, `7d` in milliseconds. */
export function parseDuration(s: string): number {
  const m = DURATION.exec(s);
  if (!m) throw new Error(`bad duration ${s}`);
  return Number(m[1]) * DURATION_UNITS[m[2] as keyof typeof DURATION_UNITS];
}

/** `512B`, `64KiB`, `16MiB`, `20GiB`, `1TiB` in bytes (binary units only: `MB` is ambiguous, so it is refused). */
export function parseSize(s: string): number {
  const m = SIZE.exec(s);
  if (!m) throw new Error(`bad size ${s}`);
  return Number(m[1]) * 1024 ** SIZE_EXPONENTS[m[2] as keyof typeof SIZE_EXPONENTS];
}

/** A duration with a unit, or a plain number of seconds; the output is milliseconds. */
export const duration = z
  .union([z.number().nonnegative(), z.string().regex(DURATION, 'expected a duration such as 500ms, 30s, 5m, 1h, 7d')])
  .transform((v) => (typeof v === 'number' ? v * 1000 : parseDuration(v)));

/** A size with a binary unit, or a plain number of bytes; the output is bytes. */
export const size = z
  .union([z.number().int().nonnegative(), z.string().regex(SIZE, 'expected a size such as 64KiB, 16MiB or 20GiB')])
  .transform((v) => (typeof v === 'number' ? v : parseSize(v)));

/** A size that must not be zero: a limit of 0 bytes would refuse everything it limits. */
export const positiveSize = size.refine((n) => n > 0, 'expected a size above 0');

/** Secrets never sit inline in the file: they come from an environment variable or a file (read per use). */
export const secretRef = z
  .object({ env: z.string().min(1).optional(), file: z.string().min(1).optional() })
  .strict()
  .refine((s) => (s.env === undefined) !== (s.file === undefined), 'give exactly one of env or file');

export type SecretRef = z.output<typeof secretRef>;
