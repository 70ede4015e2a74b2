/**
 * Configuration of continuous re-evaluation (`reevaluate:`) and of warming (`warm:`) in the config file.
 *
 * ```yaml
 * reevaluate:
 *   interval: 15m      # re-decide every cached image on this schedule (0, the default: only on demand)
 *   purge: false       # true: an image now denied loses its admissions and its blobs leave the cache
 *   concurrency: 4     # images re-decided at once
 * warm:                # POST /api/v1/admin/warm and `portcullis warm`
 *   maxImages: 50      # images one request may name
 *   maxBlobs: 5000     # blobs one request may make the proxy hold (fetched or already cached)
 *   concurrency: 4     # blobs fetched at once for one request (the upstream's own limit applies too)
 * ```
 */
import { z } from 'zod';

const UNITS = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const;

const duration = z
  .union([z.number().nonnegative(), z.string().regex(/^\d+(ms|s|m|h|d)$/, 'expected a duration such as 500ms, 30s, 5m, 1h, 7d')])
  .transform((v) => {
    if (typeof v === 'number') return v * 1000;
    const m = /^(\d+)(ms|s|m|h|d)$/.exec(v)!;
    return Number(m[1]) * UNITS[m[2] as keyof typeof UNITS];
  });

export const reevaluateSchema = z
  .object({
    /**
     * Every re-evaluation decides every cached image again (signature discovery, scan look-ups): more often than
     * once a minute would mostly load the upstreams. 0 turns the schedule off.
     */
    interval: duration.refine((ms) => ms === 0 || ms >= 60_000, '0 (off) or at least 1m').default(0),
    purge: z.boolean().default(false),
    concurrency: z.number().int().min(1).max(32).default(4),
  })
  .strict();

export const warmSchema = z
  .object({
    maxImages: z.number().int().min(1).max(1000).default(50),
    maxBlobs: z.number().int().min(1).max(100_000).default(5000),
    concurrency: z.number().int().min(1).max(32).default(4),
  })
  .strict();

export type ReevaluateConfig = z.output<typeof reevaluateSchema>;
export type WarmConfig = z.output<typeof warmSchema>;
