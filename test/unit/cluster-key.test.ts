import { describe, expect, it } from 'vitest';
import { ClusterKey } from '../../src/cluster/cluster-key.js';

const K1 = 'k'.repeat(32);
const K2 = 'n'.repeat(40);

function setup(first: string) {
  const s = { secret: first, reads: 0, t: 1_000, refused: [] as string[] };
  const key = new ClusterKey({
    read: () => {
      s.reads++;
      if (s.secret === 'EIO') throw new Error('EIO: the file is gone');
      return s.secret;
    },
    refresh: 30_000,
    now: () => s.t,
    onRefused: (r) => s.refused.push(r),
  });
  return { s, key };
}

describe('cluster key', () => {
  it('reads the secret once per refresh period, not on every request', () => {
    const { s, key } = setup(K1);
    for (let i = 0; i < 1000; i++) expect(key.get().toString()).toBe(K1);
    expect(s.reads).toBe(1);
  });

  it('picks up a rotated key after the refresh period', () => {
    const { s, key } = setup(K1);
    s.secret = K2;
    s.t += 29_999;
    expect(key.get().toString()).toBe(K1);
    s.t += 1;
    expect(key.get().toString()).toBe(K2);
    expect(s.reads).toBe(2);
  });

  it('keeps the last good key when a re-read fails or yields a short key, and reports each refusal once', () => {
    const { s, key } = setup(K1);
    s.secret = 'short';
    for (let i = 1; i <= 3; i++) {
      s.t += 30_000;
      expect(key.get().toString()).toBe(K1);
    }
    s.secret = 'EIO';
    s.t += 30_000;
    expect(key.get().toString()).toBe(K1);
    expect(s.refused).toEqual(['at least 32 bytes are needed for the HMAC key', 'EIO: the file is gone']);
    s.secret = K2;
    s.t += 30_000;
    expect(key.get().toString()).toBe(K2);
  });

  it('refuses to start without a usable key', () => {
    expect(() => setup('short')).toThrow(/at least 32 bytes/);
    expect(() => setup('EIO')).toThrow(/EIO/);
  });
});
