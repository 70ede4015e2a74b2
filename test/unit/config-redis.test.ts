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
      `${MIN}storage:\n  meta: redis\n  redis:\n    sentinel: { name: mymaster, sentinels: ["10.0.0.1:26379", "[fd00::2]:26379"] }\n    tls: true\n    allowUnsigned: true\n    maxStaleness: 10s\n`,
      'p.yaml',
      {},
    );
    expect(c.storage.redis?.sentinel).toEqual({ name: 'mymaster', sentinels: ['10.0.0.1:26379', '[fd00::2]:26379'] });
    expect(c.storage.redis?.maxStaleness).toBe(10_000);
  });

  it('names the field of every mistake', () => {
    const bad: Array<[string, RegExp]> = [
      [`${MIN}storage: { meta: redis }\n`, /storage\.redis: meta: redis needs a redis section/],
      [`${MIN}storage: { meta: memcached }\n`, /storage\.meta/],
      [`${MIN}storage: { redis: { url: "rediss://r:6379/0" } }\n`, /storage\.redis: a redis section needs meta: redis/],
      [`${MIN}storage:\n  meta: redis\n  redis: { tls: true }\n`, /storage\.redis\.url: give exactly one of url or sentinel/],
      [
        `${MIN}storage:\n  meta: redis\n  redis: { url: "rediss://r:6379/0", sentinel: { name: m, sentinels: ["s:26379"] } }\n`,
        /storage\.redis\.url: give exactly one of url or sentinel/,
      ],
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
        `${MIN}storage:\n  meta: redis\n  redis: { sentinel: { name: m, sentinels: ["nohostport"] }, tls: true }\n`,
        /storage\.redis\.sentinel\.sentinels\[0\]: expected host:port/,
      ],
      [`${MIN}storage:\n  meta: redis\n  redis: { url: "rediss://r:6379/0", keyPrefix: "a b" }\n`, /storage\.redis\.keyPrefix/],
      [`${MIN}storage:\n  meta: redis\n  redis: { url: "rediss://r:6379/0", colour: blue }\n`, /storage\.redis.*colour/],
      [`${MIN}storage:\n  meta: redis\n  redis: { url: "rediss://r:6379/0" }\n`, /storage\.redis\.signingKey: required: .*allowUnsigned: true/],
    ];
    for (const [doc, re] of bad) expect(() => parseConfig(doc, 'p.yaml', {}), doc).toThrow(re);
  });
});
