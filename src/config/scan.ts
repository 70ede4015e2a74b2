/**
 * Configuration of vulnerability scan sources (`scan:` in the config file).
 *
 * ```yaml
 * scan:
 *   order: [attestations, reports, scanner]   # default: this order, limited to the configured sources
 *   attestations:                              # cosign `vuln` predicates, verified by the signatures capability
 *     authorities: [release-team]              # which verified authorities are trusted for scan results ("*" = any)
 *   reports:                                   # the push API: PUT /api/v1/reports/<registry>/<repository>@<digest>
 *     token: { env: PORTCULLIS_REPORT_TOKEN }  # bearer token CI sends (every repository)
 *     tokens:                                  # or tokens scoped to the repositories a pipeline builds
 *       - { token: { file: /run/secrets/ci-payments }, repositories: ["ghcr.io/acme/payments/**"] }
 *     maxSize: 16MiB
 *     requireDigestBinding: true               # refuse reports that name no digest at all (false relaxes it)
 *     history: 10                              # versions kept per image (append-only; oldest pruned first)
 *     maxClockSkew: 5m                         # a report dated further in the future than this is refused
 *   scanner:                                   # a Harbor Pluggable Scanner API v1.1/v1.2 adapter
 *     url: http://harbor-scanner-trivy:8080    # the proxy calls <url>/api/v1/...
 *     auth: { bearer: { file: /run/secrets/scanner-token } }   # or { username: u, password: { env: … } }
 *     pullThrough: { url: http://portcullis:5000 }   # the scanner pulls through Portcullis with a per-job token
 *     registries:                              # or: what the scanner pulls from, per upstream (default: upstream url)
 *       dockerhub: { url: https://mirror.example, authorization: { env: SCANNER_PULL_AUTH } }
 *     pollInterval: 2s
 *     requestTimeout: 5s      # one call; a pull that triggers a scan request waits at most this (errors are cached)
 *     scanTimeout: 10m
 *     retryAfterError: 1m
 *   staleAfter: 7d          # a result older than this has status "stale" (the scanner is asked to rescan)
 *   maxWait: 20s            # upper bound for `on_pending: wait` in the policy
 *   maxVulnerabilities: 50  # how many vulnerabilities the policy input lists (counts are always complete)
 *   cacheTTL: 5m            # in-memory reuse of per-digest results (pushes and deletes invalidate it)
 *   admin: { token: { env: PORTCULLIS_ADMIN_TOKEN } }   # deleting reports (required for it); /api/v1/admin/reevaluate
 * ```
 */
import { z } from 'zod';
import { httpUrl } from './url.js';
import { duration, positiveSize, secretRef } from './primitives.js';

export const VULN_PREDICATE_TYPE = 'https://cosign.sigstore.dev/attestation/vuln/v1';

export const SOURCES = ['attestations', 'reports', 'scanner'] as const;
export type SourceName = (typeof SOURCES)[number];

const attestations = z
  .object({
    /** Authorities (names from `signatures.authorities`) whose verified vuln attestations count; "*" = any. */
    authorities: z.array(z.string().min(1)).min(1, 'name at least one authority (or "*")'),
    predicateTypes: z.array(z.string().min(1)).min(1).default([VULN_PREDICATE_TYPE]),
  })
  .strict();

const reports = z
  .object({
    /** A CI token for every repository (the original single token). */
    token: secretRef.optional(),
    /**
     * CI tokens scoped to the repositories they build: globs on `<registry>/<repository>` (`*` within a path
     * segment, `**` across). A push or read for another repository is 403; a scoped token cannot list or delete.
     */
    tokens: z.array(z.object({ token: secretRef, repositories: z.array(z.string().min(1)).min(1, 'name at least one repository glob') }).strict()).default([]),
    maxSize: positiveSize.default(16 * 1024 * 1024),
    /**
     * Refuse a report that names no digest at all (a report naming another digest is always refused). On by
     * default: an unbound report (`trivy image --input x.tar`) could be filed under any image.
     */
    requireDigestBinding: z.boolean().default(true),
    /** Versions kept per image: pushes never overwrite, the oldest beyond this are pruned (never the one in force). */
    history: z.number().int().min(1).max(1000).default(10),
    /** How far in the future a report's scan time may be (clock skew between CI and proxy); beyond it, 400. */
    maxClockSkew: duration.refine((ms) => ms <= 3_600_000, 'at most 1h').default(300_000),
  })
  .strict()
  .refine((r) => r.token !== undefined || r.tokens.length > 0, { message: 'give token or tokens', path: ['token'] });

const scannerAuth = z.union([z.object({ bearer: secretRef }).strict(), z.object({ username: z.string().min(1), password: secretRef }).strict()]);

const scanner = z
  .object({
    url: httpUrl().transform((u) => u.replace(/\/+$/, '').replace(/\/api\/v1$/, '')),
    auth: scannerAuth.optional(),
    /** Per upstream name: the registry URL the scanner pulls from, and the Authorization it sends there. */
    registries: z.record(z.string(), z.object({ url: httpUrl().optional(), authorization: secretRef.optional() }).strict()).default({}),
    /**
     * The scanner pulls through Portcullis (at this URL, as the scanner reaches it) with a token Portcullis issues
     * per job: pull on that repository, that digest only, for `scanTimeout`. Instead of `registries`.
     */
    pullThrough: z
      .object({ url: httpUrl().transform((u) => u.replace(/\/+$/, '')) })
      .strict()
      .optional(),
    /** Shortest time between two polls of one scan; a longer Refresh-After from the scanner wins (up to 60 s). */
    pollInterval: duration.default(2_000),
    requestTimeout: duration.default(5_000),
    /** A scan still pending after this long is given up (status error) and requested again later. */
    scanTimeout: duration.default(600_000),
    /** After a failed scan or an unreachable scanner, how long the error stands before the scan is requested again. */
    retryAfterError: duration.default(60_000),
  })
  .strict();

export const scanSchema = z
  .object({
    order: z
      .array(z.enum(SOURCES))
      .refine((a) => new Set(a).size === a.length, 'each source at most once')
      .optional(),
    attestations: attestations.optional(),
    reports: reports.optional(),
    scanner: scanner.optional(),
    staleAfter: duration.default(7 * 86_400_000),
    maxWait: duration.refine((ms) => ms <= 60_000, 'at most 60s: clients time out').default(20_000),
    maxVulnerabilities: z.number().int().min(0).max(10_000).default(50),
    cacheTTL: duration.default(300_000),
    admin: z.object({ token: secretRef }).strict().optional(),
  })
  .strict()
  .superRefine((s, ctx) => {
    for (const [i, name] of (s.order ?? []).entries()) {
      if (s[name] === undefined) ctx.addIssue({ code: 'custom', path: ['order', i], message: `source "${name}" is listed but not configured` });
    }
  });

export type ScanConfig = z.output<typeof scanSchema>;

/** The configured sources in the order they are consulted. */
export function sourceOrder(c: ScanConfig): SourceName[] {
  return (c.order ?? [...SOURCES]).filter((s) => c[s] !== undefined);
}
