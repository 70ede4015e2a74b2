/**
 * The PolicyManager tells its subscribers of a swap (the composition root subscribes the gate after building it,
 * instead of a closure over an App that does not exist yet).
 */
import { copyFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { pino } from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { Metrics } from '../../src/metrics/metrics.js';
import { PolicyManager } from '../../src/policy/manager.js';
import { repackWithRevision } from '../harness/bundles.js';
import { cleanupTempDirs, tempDir } from './helpers.js';

afterAll(cleanupTempDirs);

describe('PolicyManager.onSwap', () => {
  it('reports each revision put in use to every subscriber, and nothing after unsubscribing', async () => {
    const dir = tempDir('pc-pm-');
    const [v1, v2, v3] = ['r1', 'r2', 'r3'].map((r) => join(dir, `${r}.tar.gz`));
    await repackWithRevision(resolve('policies/bundle.tar.gz'), v1!, 'r1');
    await repackWithRevision(resolve('policies/bundle.tar.gz'), v2!, 'r2');
    await repackWithRevision(resolve('policies/bundle.tar.gz'), v3!, 'r3');
    const live = join(dir, 'bundle.tar.gz');
    await copyFile(v1!, live);
    const pm = new PolicyManager({
      source: { kind: 'file', path: live },
      settings: {},
      metrics: new Metrics({ defaultMetrics: false }),
      log: pino({ level: 'silent' }),
      pollIntervalMs: 3_600_000,
    });
    const a: string[] = [];
    const b: string[] = [];
    const stopA = pm.onSwap((r) => a.push(r));
    pm.onSwap((r) => b.push(r));
    try {
      await pm.start();
      expect(pm.revision).toBe('r1');
      expect(a).toEqual(['r1']);
      await copyFile(v2!, live);
      await pm.poll(true);
      expect(pm.revision).toBe('r2');
      expect(a).toEqual(['r1', 'r2']);
      expect(b).toEqual(['r1', 'r2']);
      stopA();
      await copyFile(v3!, live);
      await pm.poll(true);
      expect(a).toEqual(['r1', 'r2']);
      expect(b).toEqual(['r1', 'r2', 'r3']);
    } finally {
      pm.stop();
    }
  });
});
