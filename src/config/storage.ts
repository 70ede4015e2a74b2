/**
 * The `storage` section: where blobs live (DESIGN §6, §11). `filesystem` (the default) keeps them under dataDir;
 * `s3` puts them in any S3-compatible bucket, so that replicas of a central tier share one copy.
 *
 *   storage:
 *     blobs: s3
 *     redirect: true            # warm blob GETs answer 307 to a presigned URL
 *     redirectExpiry: 60s
 *     s3:
 *       endpoint: https://s3.internal.example:9000
 *       region: us-east-1
 *       bucket: portcullis
 *       prefix: central/
 *       forcePathStyle: true
 *       credentials: { accessKeyId: { env: S3_ACCESS_KEY }, secretAccessKey: { file: /run/secrets/s3-secret } }
 *       caFile: /etc/portcullis/s3-ca.pem
 *     meta: redis               # decisions, tag mappings and the invalidation epoch shared through Redis
 *     redis:
 *       url: rediss://redis.internal.example:6379/0     # exactly one of url, sentinels (+ name) or cluster:
 *       # sentinels: [{ host: s1, port: 26379 }, { host: s2, port: 26379 }]
 *       # name: mymaster                                 # the master group Sentinel watches
 *       # sentinelPassword: { env: SENTINEL_PASSWORD }
 *       # cluster: [{ host: r1, port: 6379 }, { host: r2, port: 6379 }]   # Redis Cluster: a few nodes, the rest found
 *       password: { env: REDIS_PASSWORD }
 *       signingKey: { file: /run/secrets/redis-signing-key }   # HMAC on shared entries (32+ bytes, same on every replica)
 *       caFile: /etc/portcullis/redis-ca.pem
 *       keyPrefix: "portcullis:"
 *       maxStaleness: 5s         # longer without confirming the epoch: cached decisions are no longer trusted
 */
import { z } from 'zod';
import { secretRef } from './primitives.js';
import { httpUrl } from './url.js';

const UNITS = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const;
const duration = z.union([z.number().nonnegative(), z.string().regex(/^\d+(ms|s|m|h|d)$/, 'expected a duration such as 500ms, 30s, 5m, 1h')]).transform((v) => {
  if (typeof v === 'number') return v * 1000;
  const m = /^(\d+)(ms|s|m|h|d)$/.exec(v)!;
  return Number(m[1]) * UNITS[m[2] as keyof typeof UNITS];
});

const MiB = 1024 * 1024;
const partSize = z
  .union([z.number().int(), z.string().regex(/^\d+MiB$/, 'expected a size in MiB such as 16MiB')])
  .transform((v) => (typeof v === 'number' ? v : Number(v.slice(0, -3)) * MiB))
  // S3's limits: every part but the last at least 5 MiB, at most 5 GiB.
  .refine((n) => n >= 5 * MiB && n <= 5 * 1024 * MiB, 'between 5MiB and 5120MiB (S3 part limits)');

const localSize = z
  .union([z.number().int().positive(), z.string().regex(/^\d+(MiB|GiB|TiB)$/, 'expected a size such as 512MiB or 20GiB')])
  .transform((v) =>
    typeof v === 'number'
      ? v
      : Number(/^\d+/.exec(v)![0]) * { MiB: MiB, GiB: 1024 * MiB, TiB: 1024 * 1024 * MiB }[v.replace(/^\d+/, '') as 'MiB' | 'GiB' | 'TiB'],
  );

const s3 = z
  .object({
    /** The S3 API's base URL; absent: AWS's own endpoint for the region. */
    endpoint: httpUrl().optional(),
    region: z.string().min(1).default('us-east-1'),
    bucket: z.string().regex(/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/, 'expected an S3 bucket name (3-63 lowercase letters, digits, . and -)'),
    /** Key prefix for everything Portcullis writes; several deployments can share a bucket under different prefixes. */
    prefix: z
      .string()
      .default('')
      .refine((p) => p === '' || (p.endsWith('/') && !p.startsWith('/')), 'empty, or ending in / and not starting with /'),
    /** bucket in the path (http://host/bucket/key) rather than the host name: most S3-compatible servers want this. */
    forcePathStyle: z.boolean().default(false),
    /** Static keys from secret references; absent: the AWS SDK's default chain (AWS_* variables, web identity, …). */
    credentials: z.object({ accessKeyId: secretRef, secretAccessKey: secretRef, sessionToken: secretRef.optional() }).strict().optional(),
    /** PEM CA bundle that the endpoint's certificate must chain to (instead of the system's). */
    caFile: z.string().min(1).optional(),
    /** A plain-http endpoint: the blobs (and, for a presigned URL, the client's fetch) travel unencrypted. */
    allowInsecureHttp: z.boolean().default(false),
    /** Multipart part size for cold blobs (grown for blobs too large for 10,000 parts). */
    partSize: partSize.default(16 * MiB),
    /** A multipart upload older than this under the prefix is a crashed writer's: aborted at start and by the sweeper. */
    abandonedUploadAge: duration.refine((ms) => ms >= 60_000, 'at least 1m: a running upload must not be aborted').default(86_400_000),
    /**
     * A local disk tier on this replica (under dataDir/s3-hot), bounded by its own LRU: blobs this replica
     * downloaded stay on its disk and are served from there; absent: every warm read goes to S3.
     */
    localCache: z.object({ maxSize: localSize }).strict().optional(),
    /** How often incomplete uploads are swept and the bucket re-listed (objects written by other replicas). */
    sweepInterval: duration.refine((ms) => ms >= 1_000, 'at least 1s').default(3_600_000),
  })
  .strict()
  .superRefine((c, ctx) => {
    if (c.endpoint?.startsWith('http:') && !c.allowInsecureHttp) {
      ctx.addIssue({ code: 'custom', path: ['endpoint'], message: 'plain http sends blobs unencrypted; use https, or set storage.s3.allowInsecureHttp: true' });
    }
  });

const node = z
  .object({
    host: z.string().regex(/^([0-9a-fA-F:]+|[A-Za-z0-9.-]+)$/, 'expected a host name or an IP address'),
    port: z.number().int().min(1).max(65_535),
  })
  .strict();

const redis = z
  .object({
    /** redis://host:port/db or rediss:// (TLS); no credentials in it (use username/password). */
    url: z
      .string()
      .regex(/^rediss?:\/\/[^/?#]+(\/\d{1,2})?$/, 'expected redis://host:port/db or rediss://host:port/db')
      .refine((u) => !/^rediss?:\/\/[^/]*@/.test(u), 'no credentials in the URL: use username and password (secret references)')
      .optional(),
    /** Sentinel-managed Redis: the sentinels to ask for the master of group `name` (failover follows it). */
    sentinels: z.array(node).min(1).optional(),
    /** The master group's name (`sentinel monitor <name> …`). */
    name: z.string().min(1).optional(),
    /** The sentinels' own password, when they have one (`requirepass` of the sentinels). */
    sentinelPassword: secretRef.optional(),
    /** Redis Cluster: some of its nodes; the client learns the others and the slots from them. */
    cluster: z.array(node).min(1).optional(),
    /** Database number with sentinels (with url, the path gives it; a cluster has only 0). */
    db: z.number().int().min(0).max(15).default(0),
    username: secretRef.optional(),
    password: secretRef.optional(),
    /**
     * A key every replica shares: shared decisions and tag mappings carry an HMAC-SHA256 over their Redis key and
     * content, and an entry without a valid one is a miss. Without it, whoever can write to Redis can forge an allow.
     */
    signingKey: secretRef.optional(),
    /** Share entries unsigned: whoever can write to Redis can then make every replica serve an image (trust Redis). */
    allowUnsigned: z.boolean().default(false),
    /** TLS to Redis (implied by rediss://); caFile: the PEM CA its certificate must chain to. */
    tls: z.boolean().default(false),
    caFile: z.string().min(1).optional(),
    /** A plaintext connection: decisions and the invalidation epoch travel unencrypted and unauthenticated. */
    allowInsecure: z.boolean().default(false),
    /** Prefix of every key and channel; several deployments can share one Redis under different prefixes. */
    keyPrefix: z
      .string()
      .regex(/^[A-Za-z0-9._:-]{0,64}$/, 'letters, digits, . _ : - (at most 64)')
      .default('portcullis:'),
    /** A command not answered within this fails (Redis stalled): the request goes on without it. */
    commandTimeout: duration.refine((ms) => ms >= 10 && ms <= 10_000, 'between 10ms and 10s').default(500),
    /** How often the epoch is read when pub/sub says nothing (the backstop for a lost message). */
    pollInterval: duration.refine((ms) => ms >= 100 && ms <= 60_000, 'between 100ms and 1m').default(1_000),
    /**
     * A replica that could not confirm the invalidation epoch (from Redis, or the durable copy) for longer than this
     * stops trusting its cached decisions and decides again: the bound on serving an image another replica was told
     * to stop serving.
     */
    maxStaleness: duration.refine((ms) => ms >= 1_000 && ms <= 600_000, 'between 1s and 10m').default(5_000),
  })
  .strict()
  .superRefine((r, ctx) => {
    const given = (['url', 'sentinels', 'cluster'] as const).filter((k) => r[k] !== undefined);
    if (given.length !== 1) ctx.addIssue({ code: 'custom', path: [given[1] ?? 'url'], message: 'give exactly one of url, sentinels (with name) or cluster' });
    if (r.sentinels && r.name === undefined) ctx.addIssue({ code: 'custom', path: ['name'], message: 'sentinels need the master group name' });
    if (!r.sentinels && r.name !== undefined)
      ctx.addIssue({ code: 'custom', path: ['name'], message: 'name is the Sentinel master group: it needs sentinels' });
    if (!r.sentinels && r.sentinelPassword) ctx.addIssue({ code: 'custom', path: ['sentinelPassword'], message: 'sentinelPassword needs sentinels' });
    if (r.cluster && r.db !== 0) ctx.addIssue({ code: 'custom', path: ['db'], message: 'a Redis Cluster has only database 0' });
    if (r.pollInterval >= r.maxStaleness)
      ctx.addIssue({ code: 'custom', path: ['pollInterval'], message: 'must be shorter than maxStaleness, or every poll gap would count as stale' });
    const tls = r.tls || r.url?.startsWith('rediss:') === true;
    if (!tls && !r.allowInsecure)
      ctx.addIssue({
        code: 'custom',
        path: [r.url ? 'url' : 'tls'],
        message: 'a plaintext connection carries decisions unencrypted; use rediss:// or tls: true, or set storage.redis.allowInsecure: true',
      });
    if (!r.signingKey && !r.allowUnsigned)
      ctx.addIssue({
        code: 'custom',
        path: ['signingKey'],
        message: 'required: without it, whoever can write to Redis can forge an allow for every replica (or set storage.redis.allowUnsigned: true)',
      });
    if (r.caFile && !tls) ctx.addIssue({ code: 'custom', path: ['caFile'], message: 'caFile needs TLS (rediss:// or tls: true)' });
  });

export const storageSchema = z
  .object({
    blobs: z.enum(['filesystem', 's3']).default('filesystem'),
    /** Where shared, rebuildable state lives: only this replica's SQLite (the default), or Redis as well. */
    meta: z.enum(['sqlite', 'redis']).default('sqlite'),
    redis: redis.optional(),
    s3: s3.optional(),
    /**
     * Answer GETs of cached blobs with a 307 to a presigned URL of the object, so that the bytes flow from the store
     * to the client directly. Such a URL stays valid until it expires, whatever happens to the image meanwhile.
     */
    redirect: z.boolean().default(false),
    /** Lifetime of a presigned URL: the longest a purged or newly denied blob stays fetchable through one. */
    redirectExpiry: duration.refine((ms) => ms >= 1_000 && ms <= 3_600_000, 'between 1s and 1h').default(60_000),
  })
  .strict()
  .superRefine((s, ctx) => {
    if (s.blobs === 's3' && !s.s3) ctx.addIssue({ code: 'custom', path: ['s3'], message: 'blobs: s3 needs an s3 section (bucket, region, …)' });
    if (s.blobs !== 's3' && s.s3) ctx.addIssue({ code: 'custom', path: ['s3'], message: 'an s3 section needs blobs: s3' });
    if (s.meta === 'redis' && !s.redis)
      ctx.addIssue({ code: 'custom', path: ['redis'], message: 'meta: redis needs a redis section (url, sentinels or cluster)' });
    if (s.meta !== 'redis' && s.redis) ctx.addIssue({ code: 'custom', path: ['redis'], message: 'a redis section needs meta: redis' });
    if (s.redirect && s.blobs !== 's3')
      ctx.addIssue({ code: 'custom', path: ['redirect'], message: 'redirect needs blobs: s3 (the filesystem store has no URLs to hand out)' });
  });

export type StorageConfig = z.output<typeof storageSchema>;
export type S3Config = NonNullable<StorageConfig['s3']>;
export type RedisConfig = NonNullable<StorageConfig['redis']>;
