/**
 * Configuration of signature authorities (`signatures:` in the config file).
 *
 * ```yaml
 * signatures:
 *   authorities:
 *     - name: release-team            # cosign, key-based (legacy .sig or Sigstore bundle)
 *       kind: key
 *       key: /etc/portcullis/keys/release.pub      # PEM: ECDSA P-256/P-384/P-521, RSA or Ed25519
 *     - name: ci                      # cosign keyless (Fulcio certificate + Rekor)
 *       kind: keyless
 *       issuer: https://token.actions.githubusercontent.com            # exact
 *       subjectRegExp: ^https://github\.com/acme/.+/\.github/workflows/release\.yml@refs/tags/v.*$   # anchored
 *       extensions: { "1.3.6.1.4.1.57264.1.12": https://github.com/acme/api }   # Fulcio OIDs, exact
 *       trustedRoot: /etc/portcullis/sigstore/trusted_root.json
 *       tlogThreshold: 1
 *       ctlogThreshold: 1
 *       timestampThreshold: 1
 *     - name: inhouse                 # cosign with your own PKI (cosign sign --certificate --certificate-chain)
 *       kind: keyless
 *       ca: { roots: [/etc/portcullis/pki/root.pem], intermediates: [/etc/portcullis/pki/issuing.pem] }
 *       subject: release@acme.example   # issuer optional; thresholds default to 0
 *       trustedRoot: /etc/portcullis/pki/tsa-trusted-root.json         # optional: TSAs (and Rekor keys)
 *       tsaThreshold: 1                 # RFC 3161 timestamps from those TSAs required
 *     - name: ci-tuf                  # keyless with trusted_root.json from a TUF repository
 *       kind: keyless
 *       issuer: https://token.actions.githubusercontent.com
 *       subject: https://github.com/acme/api/.github/workflows/release.yml@refs/heads/main
 *       trustedRoot: { tuf: { mirror: https://tuf-repo-cdn.sigstore.dev, root: /etc/portcullis/sigstore/root.json, refresh: 24h, cacheDir: /var/lib/portcullis/tuf } }
 *     - name: notary                  # Notation (Notary Project) JWS and COSE signatures
 *       kind: notation
 *       trustStore: [/etc/portcullis/notation/ca]   # root certificates: PEM/DER files, or directories of them
 *       trustedIdentities: ["x509.subject: C=US, ST=WA, O=acme"]        # or ["*"]
 *       level: strict                 # strict | permissive: the defaults of the three checks below
 *       expiry: enforce               # enforce | log
 *       signingTime: enforce          # enforce | log   (Notation's authentic timestamp step)
 *       tsaTrustStore: [/etc/portcullis/notation/tsa]   # Notation's `tsa` store: timestamps verified against it
 *       verifyTimestamp: always       # always | afterCertExpiry
 *       revocation: enforce           # enforce | log | skip   (OCSP, then CRL)
 * ```
 *
 * Every error names the authority, since a typo in one authority is what an operator must find.
 */
import { z } from 'zod';
import { duration, positiveSize } from './primitives.js';

/** Authority names appear in policy scopes and deny messages. */
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
const OID = /^[0-2](\.(0|[1-9][0-9]*))+$/;

const threshold = z.number().int().min(0).max(16);

const keyAuthority = z
  .object({
    name: z.string(),
    kind: z.literal('key'),
    /** PEM public key file (SPKI `PUBLIC KEY`, or `RSA PUBLIC KEY`). */
    key: z.string().min(1),
    /** Optional trusted_root.json whose Rekor keys check transparency-log entries of key-based signatures. */
    trustedRoot: z.string().min(1).optional(),
    /** Transparency-log entries required (needs trustedRoot). Default 0: offline key signatures are accepted. */
    tlogThreshold: threshold.default(0),
  })
  .strict();

/**
 * A trusted_root.json taken from a TUF repository (src/verify/tuf.ts): `trusted_root.json` is a TUF target,
 * verified against `root` (the pinned initial root.json) and the metadata it delegates to.
 */
const tufSource = z
  .object({
    /** Base URL of the repository: metadata at `<mirror>/<n>.root.json`, `timestamp.json`…, targets under `<mirror>/targets/`. */
    mirror: z.url({ protocol: /^https?$/ }),
    /** Targets base URL when it is not `<mirror>/targets`. */
    targets: z.url({ protocol: /^https?$/ }).optional(),
    /** The pinned initial root.json (trust on first use is never made). */
    root: z.string().min(1),
    /** How often the repository is checked for new metadata. */
    refresh: duration.default(86_400_000),
    /** Where verified metadata and the last good trusted_root.json are kept (the fallback when the mirror is down). */
    cacheDir: z.string().min(1),
    /** The TUF target name. */
    target: z.string().min(1).default('trusted_root.json'),
  })
  .strict();

const keylessAuthority = z
  .object({
    name: z.string(),
    kind: z.literal('keyless'),
    /** OIDC issuer in the certificate (Fulcio's issuer extension); compared exactly. Optional with `ca`. */
    issuer: z.string().min(1).optional(),
    /** Certificate subject (SAN: email or URI); exactly. */
    subject: z.string().min(1).optional(),
    /** Or a regular expression over the subject; always anchored (`^(?:…)$` is added). */
    subjectRegExp: z.string().min(1).optional(),
    /** Fulcio certificate extensions by OID (e.g. 1.3.6.1.4.1.57264.1.12 source repository URI); exact values. */
    extensions: z.record(z.string().regex(OID, 'expected a dotted OID such as 1.3.6.1.4.1.57264.1.12'), z.string()).default({}),
    /** Sigstore trusted_root.json (a file, or `{ tuf: … }`): Fulcio CAs, Rekor and CT log keys, timestamp authorities. */
    trustedRoot: z.union([z.string().min(1), z.object({ tuf: tufSource }).strict()]).optional(),
    /**
     * Your own PKI instead of Fulcio: signing certificates must chain to one of `roots` (PEM files), through
     * `intermediates` (PEM files) or intermediates the signature carries (cosign's `--certificate-chain`).
     */
    ca: z
      .object({
        roots: z.array(z.string().min(1)).min(1, 'give at least one root certificate file'),
        intermediates: z.array(z.string().min(1)).default([]),
      })
      .strict()
      .optional(),
    /** Verified transparency-log entries required. Default 1 with Fulcio, 0 with `ca`. */
    tlogThreshold: threshold.optional(),
    /** Verified SCTs (CT log) required. Default 1 with Fulcio; always 0 with `ca`. */
    ctlogThreshold: threshold.optional(),
    /** Verified timestamps of any kind (tlog integrated times and RFC 3161) required. Default 1 with Fulcio, 0 with `ca`. */
    timestampThreshold: threshold.optional(),
    /** Of those, RFC 3161 timestamps from the trusted root's timestamp authorities required. Default 0. */
    tsaThreshold: threshold.default(0),
  })
  .strict();

const notationAuthority = z
  .object({
    name: z.string(),
    kind: z.literal('notation'),
    /** Trusted root certificates: PEM or DER files, or directories holding them (like a Notation `x509/ca/<store>`). */
    trustStore: z.array(z.string().min(1)).min(1, 'give at least one trust store file or directory'),
    /** `x509.subject: C=US, ST=WA, O=acme` (the prefix is optional), or `*` for any certificate chaining to the store. */
    trustedIdentities: z.array(z.string().min(1)).min(1, 'give at least one trusted identity (or "*")'),
    /**
     * Notation's trust-policy verification level: the default of the expiry, authentic-timestamp and revocation
     * checks below (strict: enforce all three; permissive: log them), each of which may still be set on its own, as
     * Notation's `override`. Integrity and authenticity are always enforced. `audit` (authenticity only logged) and
     * `skip` (nothing verified) would admit what no authority vouches for: a gate refuses them.
     */
    level: z
      .enum(['strict', 'permissive', 'audit', 'skip'])
      .default('strict')
      .refine(
        (l) => l === 'strict' || l === 'permissive',
        'audit and skip would admit signatures whose authenticity is not verified; use strict or permissive',
      ),
    /** A signature past its `io.cncf.notary.expiry`: denied (enforce) or only logged. Default: from `level`. */
    expiry: z.enum(['enforce', 'log']).optional(),
    /**
     * The authentic timestamp step: signing time within every certificate's validity and not in the future; the
     * certificates valid now, or at the verified timestamp's time (tsaTrustStore).
     */
    signingTime: z.enum(['enforce', 'log']).optional(),
    /** Notation's `tsa` trust store: TSA root certificates (files or directories). Then timestamps are verified. */
    tsaTrustStore: z.array(z.string().min(1)).default([]),
    /** Notation's `verifyTimestamp`: always, or only once a certificate of the chain has expired. */
    verifyTimestamp: z.enum(['always', 'afterCertExpiry']).default('always'),
    /** OCSP, then CRL: a revoked or unknown status denies (enforce), is only logged (log), or is not asked (skip). Default: from `level`. */
    revocation: z.enum(['enforce', 'log', 'skip']).optional(),
  })
  .strict();

export const authoritySchema = z.discriminatedUnion('kind', [keyAuthority, keylessAuthority, notationAuthority]);
type ParsedAuthority = z.output<typeof authoritySchema>;
type Thresholds = 'tlogThreshold' | 'ctlogThreshold' | 'timestampThreshold';
type NotationChecks = { expiry: 'enforce' | 'log'; signingTime: 'enforce' | 'log'; revocation: 'enforce' | 'log' | 'skip' };
/** An authority with its defaults resolved: keyless thresholds depend on whether it has a `ca`, Notation checks on `level`. */
export type AuthorityConfig =
  | Extract<ParsedAuthority, { kind: 'key' }>
  | (Omit<Extract<ParsedAuthority, { kind: 'keyless' }>, Thresholds> & Record<Thresholds, number>)
  | (Omit<Extract<ParsedAuthority, { kind: 'notation' }>, keyof NotationChecks> & NotationChecks);

/** Fulcio: a log entry, an SCT and a timestamp by default. Own PKI: nothing beyond the chain unless asked (and no SCTs). */
function withDefaults(a: ParsedAuthority): AuthorityConfig {
  if (a.kind === 'key') return a;
  if (a.kind === 'notation') {
    const dflt = a.level === 'strict' ? 'enforce' : 'log';
    return { ...a, expiry: a.expiry ?? dflt, signingTime: a.signingTime ?? dflt, revocation: a.revocation ?? dflt };
  }
  const dflt = a.ca ? 0 : 1;
  return { ...a, tlogThreshold: a.tlogThreshold ?? dflt, ctlogThreshold: a.ca ? 0 : (a.ctlogThreshold ?? 1), timestampThreshold: a.timestampThreshold ?? dflt };
}

function authorityLabel(v: unknown, i: number): string {
  const name = typeof v === 'object' && v !== null && typeof (v as { name?: unknown }).name === 'string' ? (v as { name: string }).name : undefined;
  return name ? `authority "${name}"` : `authority #${i + 1}`;
}

/** Parses each authority on its own so that every message can name it. */
const authorities = z
  .array(z.unknown())
  .default([])
  .superRefine((list, ctx) => {
    const seen = new Set<string>();
    list.forEach((item, i) => {
      const label = authorityLabel(item, i);
      const r = authoritySchema.safeParse(item);
      if (!r.success) {
        for (const issue of r.error.issues) {
          const field = issue.path.length ? `${issue.path.join('.')}: ` : '';
          ctx.addIssue({
            code: 'custom',
            path: [i, ...issue.path.map((p) => (typeof p === 'symbol' ? String(p) : p))],
            message: `${label}: ${field}${issue.message}`,
          });
        }
        return;
      }
      const a = r.data;
      if (!NAME.test(a.name))
        ctx.addIssue({ code: 'custom', path: [i, 'name'], message: `${label}: name must be letters, digits, '.', '_' or '-' (at most 63)` });
      if (seen.has(a.name)) ctx.addIssue({ code: 'custom', path: [i, 'name'], message: `${label}: duplicate authority name` });
      seen.add(a.name);
      if (a.kind === 'keyless') {
        if ((a.subject === undefined) === (a.subjectRegExp === undefined)) {
          ctx.addIssue({ code: 'custom', path: [i], message: `${label}: give exactly one of subject or subjectRegExp` });
        }
        if (a.ca === undefined && a.trustedRoot === undefined) {
          ctx.addIssue({ code: 'custom', path: [i, 'trustedRoot'], message: `${label}: give a trustedRoot (Fulcio) or a ca (your own PKI)` });
        }
        if (a.ca === undefined && a.issuer === undefined) {
          ctx.addIssue({ code: 'custom', path: [i, 'issuer'], message: `${label}: issuer is required with Fulcio certificates` });
        }
        if (a.ca !== undefined && a.ctlogThreshold !== undefined && a.ctlogThreshold > 0) {
          ctx.addIssue({ code: 'custom', path: [i, 'ctlogThreshold'], message: `${label}: a private CA issues no SCTs; ctlogThreshold must be 0 with ca` });
        }
        if (a.ca !== undefined && a.trustedRoot === undefined && (a.tlogThreshold ?? 0) + a.tsaThreshold > 0) {
          ctx.addIssue({ code: 'custom', path: [i], message: `${label}: tlogThreshold or tsaThreshold > 0 needs a trustedRoot with the Rekor keys or TSAs` });
        }
        if (a.subjectRegExp !== undefined) {
          try {
            new RegExp(a.subjectRegExp, 'u');
          } catch (e) {
            ctx.addIssue({ code: 'custom', path: [i, 'subjectRegExp'], message: `${label}: invalid regular expression: ${(e as Error).message}` });
          }
        }
      }
      if (a.kind === 'key' && a.tlogThreshold > 0 && !a.trustedRoot) {
        ctx.addIssue({ code: 'custom', path: [i, 'tlogThreshold'], message: `${label}: tlogThreshold > 0 needs a trustedRoot with the Rekor keys` });
      }
      if (a.kind === 'notation') {
        a.trustedIdentities.forEach((id, j) => {
          if (id.trim() === '*') return;
          if (!parseDistinguishedName(id.replace(/^x509\.subject:\s*/, ''))) {
            ctx.addIssue({ code: 'custom', path: [i, 'trustedIdentities', j], message: `${label}: "${id}" is not "*" or "x509.subject: <RDN>=<value>, …"` });
          }
        });
      }
    });
  })
  .transform((list) =>
    list.flatMap((a) => {
      const r = authoritySchema.safeParse(a);
      return r.success ? [withDefaults(r.data)] : [];
    }),
  );

export const signaturesSchema = z
  .object({
    authorities,
    cache: z
      .object({
        /** How long a result with a verified signature is reused for the same digest and trust revision. */
        verifiedTTL: duration.default(3_600_000),
        /** How long a result without one is reused (short, so that a newly pushed signature is seen soon). */
        unverifiedTTL: duration.default(30_000),
      })
      .strict()
      .default({ verifiedTTL: 3_600_000, unverifiedTTL: 30_000 }),
    /** At most this many referrers, and layers of a legacy signature manifest, are examined per digest. */
    maxSignatures: z.number().int().positive().max(256).default(32),
    /**
     * What discovery may fetch for one digest, all lookups together (src/verify/budget.ts): signature manifests,
     * blobs, and their bytes. Past any of them the signature evidence is an error.
     */
    budget: z
      .object({
        artifacts: z.number().int().positive().max(1024).default(16),
        blobs: z.number().int().positive().max(4096).default(32),
        bytes: positiveSize.default(8 * 1024 * 1024),
      })
      .strict()
      .prefault({}),
    /** Signature payloads, bundles and envelopes larger than this are not downloaded. */
    maxBlobSize: positiveSize.default(4 * 1024 * 1024),
    /** Attestation predicates larger than this (as JSON) reach the policy as null. */
    maxPredicateSize: positiveSize.default(1024 * 1024),
    /** Notation certificate revocation checks (OCSP and CRL): requests and the answer cache. */
    revocation: z
      .object({
        /** Per OCSP request or CRL download. */
        timeout: duration.default(5_000),
        /** Good and revoked answers kept (least recently used out). */
        cacheEntries: z.number().int().positive().max(1_000_000).default(10_000),
        /** The longest an answer is reused, whatever the response's nextUpdate says. */
        maxTTL: duration.default(86_400_000),
        /** An OCSP response or CRL larger than this is an unknown status. */
        maxResponseSize: positiveSize.default(8 * 1024 * 1024),
      })
      .strict()
      .prefault({}),
    /** How often key and trust files are checked for changes (a change is a new trust revision). */
    reloadInterval: duration.default(10_000),
  })
  .strict();

export type SignaturesConfig = z.output<typeof signaturesSchema>;

/**
 * A distinguished name such as `C=US, ST=WA, O=acme, CN=signer` as a map of attribute → value, or undefined when
 * it does not parse. Commas inside values may be escaped with a backslash.
 */
export function parseDistinguishedName(dn: string): Map<string, string> | undefined {
  const out = new Map<string, string>();
  const parts: string[] = [];
  let cur = '';
  for (let i = 0; i < dn.length; i++) {
    const c = dn[i]!;
    if (c === '\\' && i + 1 < dn.length) {
      cur += dn[++i];
    } else if (c === ',') {
      parts.push(cur);
      cur = '';
    } else cur += c;
  }
  parts.push(cur);
  for (const p of parts) {
    const eq = p.indexOf('=');
    if (eq <= 0) return undefined;
    let key = p.slice(0, eq).trim().toUpperCase();
    if (key === 'S') key = 'ST';
    const value = p.slice(eq + 1).trim();
    if (!key || !value || out.has(key)) return undefined;
    out.set(key, value);
  }
  return out.size ? out : undefined;
}

/**
 * The authorities that policy scopes name (`policy.settings.scopes[].signatures.authorities`). The settings are
 * free-form (the policy reads them), so anything that is not a scope with a list of names is skipped here.
 */
export function requiredAuthorities(settings: Record<string, unknown>): Array<{ scope: string; authority: string }> {
  const scopes = Array.isArray(settings.scopes) ? (settings.scopes as unknown[]) : [];
  const out: Array<{ scope: string; authority: string }> = [];
  scopes.forEach((s, i) => {
    if (typeof s !== 'object' || s === null) return;
    const scope = typeof (s as { name?: unknown }).name === 'string' ? (s as { name: string }).name : `scopes[${i}]`;
    const sig = (s as { signatures?: unknown }).signatures;
    const list = typeof sig === 'object' && sig !== null ? (sig as { authorities?: unknown }).authorities : undefined;
    if (Array.isArray(list)) for (const a of list) if (typeof a === 'string') out.push({ scope, authority: a });
  });
  return out;
}
