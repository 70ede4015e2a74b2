/** Quota buckets (src/auth/quota.ts) with an injected clock. */
import { describe, expect, test } from 'vitest';
import { ANONYMOUS } from '../../src/auth/authenticator.js';
import { Quotas } from '../../src/auth/quota.js';
import { Metrics } from '../../src/metrics/metrics.js';

describe('Quotas', () => {
  const alice = { user: 'alice', groups: [], method: 'basic' as const };

  test('anonymous clients get an identity bucket per address; a refusal by address gives the identity token back', async () => {
    let t = 0;
    const metrics = new Metrics({ defaultMetrics: false });
    const q = new Quotas(
      { perIdentity: { decisions: { burst: 2, perMinute: 60 } }, perAddress: { decisions: { burst: 3, perMinute: 60 } } },
      { metrics, now: () => t },
    );
    expect(q.limits('decisions')).toBe(true);
    expect(q.limits('coldBlobs')).toBe(false);
    expect((await q.take('decisions', ANONYMOUS, '10.0.0.1')).ok).toBe(true);
    expect((await q.take('decisions', ANONYMOUS, '10.0.0.1')).ok).toBe(true);
    expect(await q.take('decisions', ANONYMOUS, '10.0.0.1')).toEqual({ ok: false, retryAfterSeconds: 1, scope: 'identity' });
    // Another anonymous address has its own identity bucket.
    expect((await q.take('decisions', ANONYMOUS, '10.0.0.2')).ok).toBe(true);
    // alice from 10.0.0.1: the address bucket has one token left, then none.
    expect((await q.take('decisions', alice, '10.0.0.1')).ok).toBe(true);
    expect(await q.take('decisions', alice, '10.0.0.1')).toEqual({ ok: false, retryAfterSeconds: 1, scope: 'address' });
    // After a refill of the address bucket, alice is through again.
    t += 1_000;
    expect((await q.take('decisions', alice, '10.0.0.1')).ok).toBe(true);
    expect(await metrics.registry.getSingleMetricAsString('portcullis_quota_rejections_total')).toContain(
      'class="anonymous",kind="decisions",key="identity"} 1',
    );
  });
});
