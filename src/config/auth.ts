/**
 * The `auth` section (client authentication of the registry listener) and the `quotas` section (upstream-costly
 * work per identity and per address). Without an `auth` section the listener is anonymous, as the loopback quick
 * start needs; config/examples/strict.yaml requires an identity.
 *
 *   auth:
 *     anonymous: false
 *     htpasswd: { file: /etc/portcullis/htpasswd, groups: { team-a: [alice] } }
 *     token: { service: portcullis, ttl: 5m, keyFile: /etc/portcullis/token-key.pem }
 *     mtls: { user: uri, map: [{ uri: "spiffe://example.org/ns/team-a/**", groups: [team-a] }] }
 *     oidc: [{ issuer: https://token.actions.githubusercontent.com, audience: portcullis, jwksUrl: … }]
 */
import { z } from 'zod';
import { duration } from './primitives.js';

const names = z.array(z.string().min(1));

const mtlsMapping = z
  .object({
    uri: z.string().min(1).optional(),
    dns: z.string().min(1).optional(),
    cn: z.string().min(1).optional(),
    user: z.string().min(1).optional(),
    groups: names.default([]),
  })
  .strict()
  .refine((m) => m.uri !== undefined || m.dns !== undefined || m.cn !== undefined, 'give at least one of uri, dns or cn to match');

const oidcProvider = z
  .object({
    issuer: z.string().min(1),
    audience: z.union([z.string().min(1), names.min(1)]).transform((a) => (typeof a === 'string' ? [a] : a)),
    jwksFile: z.string().min(1).optional(),
    jwksUrl: z.url({ protocol: /^https?$/ }).optional(),
    userClaim: z.string().min(1).default('sub'),
    groupsClaim: z.string().min(1).default('groups'),
    groups: names.default([]),
  })
  .strict()
  .refine((p) => (p.jwksFile === undefined) !== (p.jwksUrl === undefined), 'give exactly one of jwksFile or jwksUrl');

export const authSchema = z
  .object({
    /** Requests without credentials are served as the anonymous identity. */
    anonymous: z.boolean().default(true),
    /** The Basic realm in challenges. */
    realm: z
      .string()
      .regex(/^[\x20-\x7e]{1,100}$/)
      .refine((s) => !s.includes('"'), 'no quotes')
      .default('portcullis'),
    htpasswd: z
      .object({
        file: z.string().min(1),
        /** group → members (htpasswd user names). */
        groups: z.record(z.string(), names).default({}),
      })
      .strict()
      .optional(),
    /** The registry token flow, with Portcullis issuing the tokens (credentials: htpasswd, OIDC or mTLS). */
    token: z
      .object({
        service: z
          .string()
          .regex(/^[\x21-\x7e]{1,100}$/)
          .refine((s) => !s.includes('"'), 'no quotes')
          .default('portcullis'),
        ttl: duration.default(300_000),
        /** PKCS#8 PEM P-256 key; absent: generated at start (tokens then die with the process). */
        keyFile: z.string().min(1).optional(),
        /** The token endpoint's external URL for the challenge; default: from the request's Host header. */
        realm: z.url({ protocol: /^https?$/ }).optional(),
      })
      .strict()
      .optional(),
    mtls: z
      .object({ user: z.enum(['uri', 'dns', 'cn']).default('uri'), map: z.array(mtlsMapping).default([]) })
      .strict()
      .optional(),
    oidc: z.array(oidcProvider).default([]),
    /**
     * Trust chained nodes to name their clients (src/auth/forwarded.ts): each key belongs to one node identity, and
     * a `Portcullis-Forwarded-Identity` JWT is believed only from that node, for this audience, for at most 60 s.
     */
    forwarded: z
      .object({
        audience: z.string().min(1),
        trustedKeys: z
          .array(
            z
              .object({ node: z.string().min(1), publicKey: z.string().min(1).optional(), jwksFile: z.string().min(1).optional() })
              .strict()
              .refine((k) => (k.publicKey === undefined) !== (k.jwksFile === undefined), 'give exactly one of publicKey or jwksFile'),
          )
          .min(1),
      })
      .strict()
      .optional(),
    /** How long a verified password is remembered (keyed by an HMAC, never the password). */
    cacheTTL: duration.default(60_000),
    /** Failed logins per client address, counted before any hashing. */
    failedLogins: z
      .object({ burst: z.number().int().positive().default(10), perMinute: z.number().positive().default(10) })
      .strict()
      .default({ burst: 10, perMinute: 10 }),
  })
  .strict()
  .superRefine((a, ctx) => {
    // anonymous: false without a method is checked with the listener (tls.clientCA) in src/config/schema.ts.
    if (a.token && !a.htpasswd && a.oidc.length === 0 && !a.mtls && !a.anonymous) {
      ctx.addIssue({ code: 'custom', path: ['token'], message: 'the token endpoint needs htpasswd, oidc or mtls to authenticate clients' });
    }
  });

/** `upstreams[].forwardIdentity`: sign the client's identity for a central Portcullis upstream (forwarded.ts). */
export const forwardIdentitySchema = z
  .object({
    /** PKCS#8 PEM private key, EC P-256 or Ed25519. */
    key: z.string().min(1),
    keyId: z.string().regex(/^[\x21-\x7e]{1,100}$/),
    /** The central tier's `auth.forwarded.audience`. */
    audience: z.string().min(1),
    ttl: duration.default(30_000).refine((t) => t >= 1000 && t <= 60_000, 'between 1s and 60s'),
  })
  .strict();

const bucket = z.object({ burst: z.number().int().positive(), perMinute: z.number().positive() }).strict();

const quotaKinds = z
  .object({
    /** Manifests not in the cache (each one a GET upstream). */
    coldManifests: bucket.optional(),
    /** Blobs not in the cache. */
    coldBlobs: bucket.optional(),
    /** Root decisions not in the decision cache: signature discovery and scanner jobs. */
    decisions: bucket.optional(),
  })
  .strict();

export const quotasSchema = z
  .object({
    /** Per identity (user); anonymous requests share one bucket per address instead. */
    perIdentity: quotaKinds.default({}),
    perAddress: quotaKinds.default({}),
  })
  .strict();

export type AuthConfig = z.output<typeof authSchema>;
export type QuotasConfig = z.output<typeof quotasSchema>;
