/**
 * The configuration file's shape. zod validates it and gives every error a field path, which load.ts prefixes with
 * the file name. Defaults live here, so the rest of the code reads a fully populated, typed object.
 */
import { z } from 'zod';
import { authSchema, forwardIdentitySchema, quotasSchema } from './auth.js';
import { scanSchema } from './scan.js';
import { reevaluateSchema, warmSchema } from './reevaluate.js';
import { cidrProblem } from '../util/address.js';
import { requiredAuthorities, signaturesSchema } from './signatures.js';
import { attestationSettingIssues } from './attestations.js';
import { storageSchema } from './storage.js';
import { clusterSchema } from './cluster.js';
import { addressOrHost, httpUrl } from './url.js';
import { duration, secretRef, size } from './primitives.js';

/** A registry host as it appears in image references: `docker.io`, `ghcr.io`, `127.0.0.1:5001`. */
const hostName = z
  .string()
  .regex(/^[a-zA-Z0-9.-]+(:\d{1,5})?$/, 'expected a registry host such as ghcr.io or 127.0.0.1:5001')
  .transform((h) => h.toLowerCase());

const credentials = z
  .object({
    username: z.string().min(1).optional(),
    usernameFrom: secretRef.optional(),
    password: secretRef,
  })
  .strict()
  .refine((c) => (c.username === undefined) !== (c.usernameFrom === undefined), 'give exactly one of username or usernameFrom');

const upstream = z
  .object({
    name: z.string().regex(/^[a-z0-9][a-z0-9_-]*$/, 'lowercase letters, digits, - and _'),
    /** The registry host clients name in image references; routing matches ns and path prefixes against it. */
    registry: hostName,
    url: httpUrl().transform((u) => u.replace(/\/+$/, '')),
    aliases: z.array(hostName).default([]),
    credentials: credentials.optional(),
    /**
     * Token realms (origins such as https://auth.example.com, or host names) that may receive the credentials,
     * besides those on the upstream's own host or registrable domain (src/upstream/auth.ts).
     */
    tokenRealms: z.array(z.string().min(1)).default([]),
    /**
     * Where redirects (blob downloads to a CDN) and token realms may connect to, besides public addresses, the
     * upstream's own host and its own address range: CIDRs, addresses or host names (src/upstream/egress.ts).
     */
    redirects: z
      .object({ allow: z.array(addressOrHost).default([]) })
      .strict()
      .default({ allow: [] }),
    /**
     * A kubelet credential provider plugin (exec API credentialprovider.kubelet.k8s.io/v1) that supplies short-lived
     * credentials for this upstream (ECR, Artifact Registry, ACR); instead of `credentials`.
     */
    credentialProvider: z
      .object({
        command: z.string().min(1),
        args: z.array(z.string()).default([]),
        env: z.record(z.string(), z.string()).default({}),
        /** The image named in the request; default `<registry>/portcullis`. */
        image: z.string().min(1).optional(),
        defaultCacheDuration: duration.default(300_000),
        timeout: duration.default(10_000),
      })
      .strict()
      .optional(),
    /**
     * `portcullis`: this upstream is a central Portcullis (a node chained to the central tier). Requests name the
     * registry with `?ns=<registry>`, its 403 DENIED passes through unchanged, and what the node serves from its cache
     * is re-confirmed with it by digest every `recheck` (src/proxy/chain.ts).
     */
    kind: z.enum(['registry', 'portcullis']).default('registry'),
    /** kind portcullis: how long the central tier's allow of a digest stands on the node before it is asked again. */
    recheck: duration.refine((ms) => ms >= 1_000 && ms <= 3_600_000, 'between 1s and 1h').default(30_000),
    /** This upstream is a central Portcullis: sign each request's client identity for it (src/auth/forwarded.ts). */
    forwardIdentity: forwardIdentitySchema.optional(),
    /** PEM CA bundle to trust for this upstream, for private registries. */
    ca: z.string().optional(),
    /**
     * A client certificate and key (PEM files, read at start) presented to this upstream's own origin only: the node's
     * identity on a central Portcullis that requires client certificates (`tls.clientCA`).
     */
    clientCertificate: z
      .object({ cert: z.string().min(1), key: z.string().min(1) })
      .strict()
      .optional(),
    /** Only for tests and labs: skip TLS verification. */
    insecure: z.boolean().default(false),
    /**
     * An HTTP proxy for egress to this upstream (and to the hosts it redirects blobs to), e.g.
     * http://proxy.corp:3128. Every connection is a CONNECT tunnel through it. No credentials: they would sit inline.
     */
    proxy: z
      .url({ protocol: /^http$/ })
      .refine((u) => !new URL(u).username && !new URL(u).password, 'no credentials in the proxy URL (an authenticating proxy is not supported)')
      .refine((u) => new URL(u).pathname === '/' && !new URL(u).search, 'scheme, host and port only, e.g. http://proxy.corp:3128')
      .optional(),
    timeouts: z
      .object({ connect: duration.default(10_000), headers: duration.default(30_000), body: duration.default(300_000) })
      .strict()
      .default({ connect: 10_000, headers: 30_000, body: 300_000 }),
    /** Upper bound on concurrent requests to this upstream; queued beyond it. */
    concurrency: z.number().int().positive().default(64),
    retries: z.number().int().min(0).max(10).default(3),
    /** Docker Hub's rule: single-component names live under library/. */
    libraryPrefix: z.boolean().optional(),
  })
  .strict()
  .refine((u) => !(u.credentials && u.credentialProvider), { message: 'give credentials or credentialProvider, not both', path: ['credentialProvider'] });

const tls = z
  .object({
    cert: z.string(),
    key: z.string(),
    /** PEM CA bundle for client certificates: a verified certificate names the client (src/auth/mtls.ts). */
    clientCA: z.string().optional(),
    /** require: no trusted certificate, no connection; optional: clients without one may use other methods. */
    clientAuth: z.enum(['require', 'optional']).default('require'),
  })
  .strict();

const cache = z
  .object({
    maxSize: size.default(20 * 1024 ** 3),
    /** How long a tag→digest mapping is trusted before it is revalidated with a HEAD upstream. */
    tagTTL: duration.default(60_000),
    /** How long past its TTL a tag mapping may still be served while the upstream is unreachable. */
    staleIfError: duration.default(86_400_000),
  })
  .strict();

const limits = z
  .object({
    maxManifestSize: size.default(4 * 1024 * 1024),
    maxHeaderSize: size.default(16 * 1024),
    requestTimeout: duration.default(600_000),
    /** An idle keep-alive connection (between requests) is closed after this long. */
    idleTimeout: duration.default(65_000),
    /** A response whose client has taken none of the queued bytes for this long is closed (0: never). */
    writeStallTimeout: duration.default(60_000),
    /** Open client connections in all; more are closed at once (0: no cap). */
    maxConnections: z.number().int().nonnegative().default(8192),
    /** Open connections per client address (IPv6: per /64); behind a trusted proxy, requests in flight (0: no cap). */
    maxConnectionsPerClient: z.number().int().nonnegative().default(512),
  })
  .strict();

/** Where clients come from when the proxy sits behind a load balancer (src/server/limits.ts). */
const listener = z
  .object({
    /** Every connection starts with a PROXY protocol v2 header naming the client (required when on). */
    proxyProtocol: z.boolean().default(false),
    /** How long a connection may take to send that header. */
    proxyProtocolTimeout: duration.default(5_000),
    /**
     * Load balancers and proxies (CIDR ranges) whose X-Forwarded-For is believed; with proxyProtocol, the only
     * peers whose PROXY headers are accepted. Empty: X-Forwarded-For is ignored.
     */
    trustedProxies: z
      .array(z.string())
      .default([])
      .superRefine((list, ctx) => {
        const problem = cidrProblem(list);
        if (problem) ctx.addIssue({ code: 'custom', message: problem });
      }),
  })
  .strict();

export const configSchema = z
  .object({
    listen: z
      .string()
      .regex(/^(\[[0-9a-fA-F:]+\]|[a-zA-Z0-9.-]+):\d{1,5}$/, 'expected host:port')
      .default('127.0.0.1:5000'),
    tls: tls.optional(),
    /** Client authentication of the registry listener (config/auth.ts); absent: anonymous. */
    auth: authSchema.optional(),
    /** Token buckets on upstream-costly work per identity and per address (config/auth.ts). */
    quotas: quotasSchema.optional(),
    /**
     * A separate plain-HTTP listener for /metrics, /healthz, /readyz and the /api/ endpoints; the registry listener
     * then serves none of /metrics and /api/. For probes and scrapes when the registry listener requires mTLS.
     */
    operatorListen: z
      .string()
      .regex(/^(\[[0-9a-fA-F:]+\]|[a-zA-Z0-9.-]+):\d{1,5}$/, 'expected host:port')
      .optional(),
    /** Bearer token that /metrics requires (Prometheus `authorization.credentials_file`), wherever it is served. */
    metricsToken: secretRef.optional(),
    dataDir: z.string().default('./data'),
    cache: cache.default({ maxSize: 20 * 1024 ** 3, tagTTL: 60_000, staleIfError: 86_400_000 }),
    /** Where blobs live: filesystem (under dataDir) or an S3-compatible bucket (src/config/storage.ts). */
    storage: storageSchema.prefault({}),
    /** Replicas of a central tier that fetch each cold blob once between them (src/config/cluster.ts); absent: one replica. */
    cluster: clusterSchema.optional(),
    limits: limits.prefault({}),
    listener: listener.prefault({}),
    upstreams: z.array(upstream).min(1, 'configure at least one upstream'),
    /** Upstream name used when a request names no registry (Docker's registry-mirrors sends plain paths). */
    defaultUpstream: z.string().optional(),
    gate: z
      .object({
        /** How long an allow is reused before the policy runs again for the same digest. */
        allowTTL: duration.default(600_000),
        /** Denies expire sooner, so that a fix (a new signature, a scan) takes effect quickly. */
        denyTTL: duration.default(30_000),
        /** How long an admitted image's children and blobs stay fetchable without a new root decision. */
        closureTTL: duration.default(3_600_000),
      })
      .strict()
      .default({ allowTTL: 600_000, denyTTL: 30_000, closureTTL: 3_600_000 }),
    /** Scheduled re-evaluation of cached images, and warming (config/reevaluate.ts). */
    reevaluate: reevaluateSchema.prefault({}),
    warm: warmSchema.prefault({}),
    policy: z
      .object({
        /** An OPA bundle file (tar.gz from `opa build -t wasm`); watched and hot-reloaded. */
        bundleFile: z.string().optional(),
        /** An HTTP(S) bundle server, polled with ETag. */
        bundleUrl: httpUrl().optional(),
        /** An external OPA server's REST API (base URL); the decision is POSTed to /v1/data/portcullis/decision. */
        opaUrl: httpUrl().optional(),
        /** Plain-http bundleUrl or opaUrl: anyone on the path could replace the policy or forge its decisions. */
        allowInsecureHttp: z.boolean().default(false),
        /** Largest bundle accepted (compressed), from a file or a bundle server. */
        maxBundleSize: size.default(64 * 1024 * 1024),
        /**
         * Verify `.signatures.json` in every bundle (`opa build --signing-key …`) with this public key; a bundle
         * without a valid signature over all its files is rejected and the last good one stays in use.
         */
        signing: z
          .object({
            /** PEM file with the public key (or certificate) to verify with. */
            publicKey: z.string().min(1),
            /** The key id the bundle's signature must name (the JWT `kid`, or OPA's `keyid` claim). */
            keyId: z.string().min(1).default('default'),
            algorithm: z.enum(['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA']).default('RS256'),
            /** The `scope` claim the signature must carry (`opa build --scope`); none by default. */
            scope: z.string().optional(),
          })
          .strict()
          .optional(),
        /** How often the bundle file or URL is checked for a new revision. */
        pollInterval: duration.default(2_000),
        /** Timeout for one call to an external OPA. */
        opaTimeout: duration.default(2_000),
        /** Rule settings for the policy: injected as data.portcullis.config (see policies/README.md). */
        settings: z.record(z.string(), z.unknown()).default({}),
      })
      .strict()
      .default({ pollInterval: 2_000, opaTimeout: 2_000, settings: {}, allowInsecureHttp: false, maxBundleSize: 64 * 1024 * 1024 })
      .superRefine((p, ctx) => {
        const n = [p.bundleFile, p.bundleUrl, p.opaUrl].filter((x) => x !== undefined).length;
        if (n > 1) ctx.addIssue({ code: 'custom', path: [], message: 'give only one of bundleFile, bundleUrl or opaUrl' });
        for (const field of ['bundleUrl', 'opaUrl'] as const) {
          if (p[field]?.startsWith('http:') && !p.allowInsecureHttp) {
            ctx.addIssue({
              code: 'custom',
              path: [field],
              message: 'plain http lets anyone on the path replace the policy; use https, or set policy.allowInsecureHttp: true',
            });
          }
        }
        if (p.signing && p.opaUrl)
          ctx.addIssue({ code: 'custom', path: ['signing'], message: 'signing applies to bundles; configure bundle verification in the external OPA itself' });
      }),
    /** Signature authorities (config/signatures.ts). */
    signatures: signaturesSchema.optional(),
    /** Vulnerability scan sources (config/scan.ts). */
    scan: scanSchema.optional(),
    decisionLog: z
      .object({
        sink: z.enum(['none', 'stdout', 'file', 'http']).default('stdout'),
        file: z.string().optional(),
        url: httpUrl().optional(),
        batchSize: z.number().int().positive().default(100),
        flushInterval: duration.default(5_000),
        maxQueue: z.number().int().positive().default(10_000),
        /** JSON pointers under /input to replace with "**masked**" (client identity, for example). */
        mask: z.array(z.string().regex(/^\/input(\/[^/]+)+$/, 'expected a JSON pointer under /input')).default([]),
        /** HTTP sink, queue full: drop the event (counted), or make the decision wait (src/gate/decision-log.ts). */
        onFull: z.enum(['drop', 'block']).default('drop'),
        /** With onFull: block, how long a decision waits for room before it is denied ("decision log unavailable"). */
        blockTimeout: duration.refine((ms) => ms > 0 && ms <= 60_000, 'between 1ms and 60s: clients time out').default(5_000),
        /** HTTP sink: queue events on disk (<dataDir>/decision-log.sqlite) up to maxSize instead of maxQueue in memory. */
        spool: z
          .object({ maxSize: size.refine((n) => n >= 64 * 1024, 'at least 64KiB') })
          .strict()
          .optional(),
      })
      .strict()
      .default({ sink: 'stdout', batchSize: 100, flushInterval: 5_000, maxQueue: 10_000, mask: [], onFull: 'drop', blockTimeout: 5_000 })
      .superRefine((d, ctx) => {
        if (d.sink === 'file' && !d.file) ctx.addIssue({ code: 'custom', path: ['file'], message: 'sink "file" needs a file path' });
        if (d.sink === 'http' && !d.url) ctx.addIssue({ code: 'custom', path: ['url'], message: 'sink "http" needs a url' });
        if (d.spool && d.sink !== 'http') ctx.addIssue({ code: 'custom', path: ['spool'], message: 'the spool is for sink "http" only' });
      }),
    /** The decision explorer under /ui (src/ui), behind the admin token; on the operator listener when one is set. */
    ui: z
      .object({
        enabled: z.boolean().default(true),
        /** How many recent decisions the explorer keeps in memory (and reads back from decisionLog.file at start). */
        recentDecisions: z.number().int().min(1).max(100_000).default(1000),
      })
      .strict()
      .default({ enabled: true, recentDecisions: 1000 }),
    log: z
      .object({ level: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info') })
      .strict()
      .default({ level: 'info' }),
    /** Graceful shutdown: how long in-flight downloads may run after SIGTERM before they are discarded. */
    shutdownGrace: duration.default(30_000),
    /**
     * Listen with SO_REUSEPORT, so that a new process can start on the same address before the old one drains on
     * SIGTERM (a replacement without a moment of refused connections). Linux lets only the same user share the port.
     */
    reusePort: z.boolean().default(false),
  })
  .strict()
  .superRefine((cfg, ctx) => {
    const seen = new Map<string, string>();
    cfg.upstreams.forEach((u, i) => {
      for (const host of [u.registry, ...u.aliases]) {
        const other = seen.get(host);
        if (other) ctx.addIssue({ code: 'custom', path: ['upstreams', i, 'registry'], message: `host ${host} is already served by upstream "${other}"` });
        seen.set(host, u.name);
      }
    });
    const names = new Set<string>();
    cfg.upstreams.forEach((u, i) => {
      if (names.has(u.name)) ctx.addIssue({ code: 'custom', path: ['upstreams', i, 'name'], message: `duplicate upstream name "${u.name}"` });
      names.add(u.name);
    });
    const a = cfg.auth;
    if (a && !a.anonymous && !a.htpasswd && a.oidc.length === 0 && !cfg.tls?.clientCA) {
      ctx.addIssue({ code: 'custom', path: ['auth', 'anonymous'], message: 'anonymous: false needs htpasswd, oidc or client certificates (tls.clientCA)' });
    }
    if (cfg.auth?.mtls && !cfg.tls?.clientCA) ctx.addIssue({ code: 'custom', path: ['auth', 'mtls'], message: 'client certificates need tls.clientCA' });
    if (cfg.tls?.clientAuth === 'optional' && !cfg.tls.clientCA)
      ctx.addIssue({ code: 'custom', path: ['tls', 'clientAuth'], message: 'clientAuth needs tls.clientCA' });
    if (cfg.defaultUpstream !== undefined && !names.has(cfg.defaultUpstream)) {
      ctx.addIssue({ code: 'custom', path: ['defaultUpstream'], message: `no upstream named "${cfg.defaultUpstream}"` });
    }
    // Authority names that other sections use must be defined (the evidence would otherwise never match them).
    const authorities = new Set((cfg.signatures?.authorities ?? []).map((x) => x.name));
    if (authorities.size > 0) {
      // Without any authority, a scope that requires signatures denies at run time (status not_configured).
      const missing = requiredAuthorities(cfg.policy.settings).find((r) => !authorities.has(r.authority));
      if (missing) {
        ctx.addIssue({
          code: 'custom',
          path: ['policy', 'settings', 'scopes'],
          message: `scope "${missing.scope}" requires signature authority "${missing.authority}", which signatures.authorities does not define (defined: ${[...authorities].map((n) => `"${n}"`).join(', ')})`,
        });
      }
    }
    for (const issue of attestationSettingIssues(cfg.policy.settings, authorities)) {
      ctx.addIssue({ code: 'custom', path: ['policy', 'settings', ...issue.path], message: issue.message });
    }
    cfg.scan?.attestations?.authorities.forEach((name, i) => {
      if (name !== '*' && !authorities.has(name)) {
        ctx.addIssue({ code: 'custom', path: ['scan', 'attestations', 'authorities', i], message: `no authority named "${name}" in signatures.authorities` });
      }
    });
  });

export type Config = z.output<typeof configSchema>;
export type UpstreamConfig = Config['upstreams'][number];
export type { SecretRef } from './primitives.js';
