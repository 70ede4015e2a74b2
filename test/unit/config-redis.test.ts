/** `storage.meta: redis` and `storage.redis` (src/config/storage.ts): defaults, and errors that name the field. */
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';

const MIN = `
upstreams:
  - name: dockerhub
    registry: docker.io
    url: https://registry-1.docker.io
`;

const REDIS = `${MIN}storage:
  meta: redis
  redis:
    url: rediss://redis.internal.example:6380/2
    password: { env: REDIS_PASSWORD }
    signingKey: { file: /run/secrets/redis-signing-key }
    caFile: /etc/portcullis/redis-ca.pem
`;

describe('storage.meta: redis config', () => {
  it('parses a redis section with its defaults (durations in ms)', () => {
    const c = parseConfig(REDIS, 'p.yaml', {});
    expect(c.storage.meta).toBe('redis');
    expect(c.storage.redis).toEqual({
      url: 'rediss://redis.internal.example:6380/2',
      password: { env: 'REDIS_PASSWORD' },
      signingKey: { file: '/run/secrets/redis-signing-key' },
      allowUnsigned: false,
      caFile: '/etc/portcullis/redis-ca.pem',
      db: 0,
      tls: false,
      allowInsecure: false,
      keyPrefix: 'portcullis:',
      commandTimeout: 500,
      pollInterval: 1_000,
      maxStaleness: 5_000,
    });
  });

  it('parses a sentinel set-up', () => {
    const c = parseConfig(
      `${MIN}storage:\n  meta: redis\n  redis:\n    sentinels: [{ host: 10.0.0.1, port: 26379 }, { host: "fd00::2", port: 26379 }]\n    name: mymaster\n    sentinelPassword: { env: SP }\n    tls: true\n    allowUnsigned: true\n    maxStaleness: 10s\n`,
      'p.yaml',
      {},
    );
    expect(c.storage.redis?.sentinels).toEqual([
      { host: '10.0.0.1', port: 26379 },
      { host: 'fd00::2', port: 26379 },
    ]);
    expect([c.storage.redis?.name, c.storage.redis?.sentinelPassword]).toEqual(['mymaster', { env: 'SP' }]);
    expect(c.storage.redis?.maxStaleness).toBe(10_000);
  });

  it('parses a cluster set-up', () => {
    const c = parseConfig(
      `${MIN}storage:\n  meta: redis\n  redis:\n    cluster: [{ host: r1, port: 6379 }, { host: r2, port: 6380 }]\n    tls: true\n    allowUnsigned: true\n`,
      'p.yaml',
      {},
    );
    expect(c.storage.redis?.cluster).toEqual([
      { host: 'r1', port: 6379 },
      { host: 'r2', port: 6380 },
    ]);
  });

  it('names the field of every mistake', () => {
    const bad: Array<[string, RegExp]> = [
      [`${MIN}storage: { meta: redis }\n`, /storage\.redis: meta: redis needs a redis section/],
      [`${MIN}storage: { meta: memcached }\n`, /storage\.meta/],
      [`${MIN}storage: { redis: { url: "rediss://r:6379/0" } }\n`, /storage\.redis: a redis section needs meta: redis/],
      [`${MIN}storage:\n  meta: redis\n  redis: { tls: true }\n`, /storage\.redis\.url: give exactly one of url, sentinels \(with name\) or cluster/],
      [
        `${MIN}storage:\n  meta: redis\n  redis: { url: "rediss://r:6379/0", sentinels: [{ host: s, port: 26379 }], name: m }\n`,
        /storage\.redis\.sentinels: give exactly one of url, sentinels/,
      ],
      [
        `${MIN}storage:\n  meta: redis\n  redis: { sentinels: [{ host: s, port: 26379 }], cluster: [{ host: c, port: 6379 }], name: m, tls: true }\n`,
        /storage\.redis\.cluster: give exactly one of url, sentinels/,
      ],
      [
        `${MIN}storage:\n  meta: redis\n  redis: { sentinels: [{ host: s, port: 26379 }], tls: true }\n`,
        /storage\.redis\.name: sentinels need the master group name/,
      ],
      [`${MIN}storage:\n  meta: redis\n  redis: { url: "rediss://r:6379/0", name: m }\n`, /storage\.redis\.name: name is the Sentinel master group/],
      [
        `${MIN}storage:\n  meta: redis\n  redis: { url: "rediss://r:6379/0", sentinelPassword: { env: X } }\n`,
        /storage\.redis\.sentinelPassword: sentinelPassword needs sentinels/,
      ],
      [
        `${MIN}storage:\n  meta: redis\n  redis: { cluster: [{ host: c, port: 6379 }], db: 2, tls: true }\n`,
        /storage\.redis\.db: a Redis Cluster has only database 0/,
      ],
      [`${MIN}storage:\n  meta: redis\n  redis: { cluster: [{ host: c, port: 0 }], tls: true }\n`, /storage\.redis\.cluster\[0\]\.port/],
      [
        `${MIN}storage:\n  meta: redis\n  redis: { url: "redis://r:6379/0" }\n`,
        /storage\.redis\.url: a plaintext connection.*storage\.redis\.allowInsecure: true/,
      ],
      [`${MIN}storage:\n  meta: redis\n  redis: { url: "rediss://user:hunter2@r:6379/0" }\n`, /storage\.redis\.url: no credentials in the URL/],
      [`${MIN}storage:\n  meta: redis\n  redis: { url: "http://r:6379" }\n`, /storage\.redis\.url: expected redis:\/\/host:port\/db/],
      [`${MIN}storage:\n  meta: redis\n  redis: { url: "rediss://r:6379/0", password: "hunter2" }\n`, /storage\.redis\.password/],
      [`${MIN}storage:\n  meta: redis\n  redis: { url: "rediss://r:6379/0", maxStaleness: 500ms }\n`, /storage\.redis\.maxStaleness: between 1s and 10m/],
      [
        `${MIN}storage:\n  meta: redis\n  redis: { url: "rediss://r:6379/0", pollInterval: 5s, maxStaleness: 5s }\n`,
        /storage\.redis\.pollInterval: must be shorter than maxStaleness/,
      ],
      [
        `${MIN}storage:\n  meta: redis\n  redis: { url: "redis://r:6379/0", allowInsecure: true, caFile: /ca.pem }\n`,
        /storage\.redis\.caFile: caFile needs TLS/,
      ],
      [
        `${MIN}storage:\n  meta: redis\n  redis: { sentinels: [{ host: "s:26379" }], name: m, tls: true }\n`,
        /storage\.redis\.sentinels\[0\]\.(host: expected a host name|port)/,
      ],
      [`${MIN}storage:\n  meta: redis\n  redis: { url: "rediss://r:6379/0", keyPrefix: "a b" }\n`, /storage\.redis\.keyPrefix/],
      [`${MIN}storage:\n  meta: redis\n  redis: { url: "rediss://r:6379/0", colour: blue }\n`, /storage\.redis.*colour/],
      [`${MIN}storage:\n  meta: redis\n  redis: { url: "rediss://r:6379/0" }\n`, /storage\.redis\.signingKey: required: .*allowUnsigned: true/],
    ];
    for (const [doc, re] of bad) expect(() => parseConfig(doc, 'p.yaml', {}), doc).toThrow(re);
  });
});
