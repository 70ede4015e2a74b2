/**
 * Every way the product is started passes the same Node flags (README "Memory"): the container's ENTRYPOINT, the
 * bin's shebang, `npm start`, and the bench, which measures Portcullis as it ships. Without the flag V8's young
 * generation grows to 64 MiB under a steady request rate, which took the bench's hostile phase over its 300 MiB.
 * No Kubernetes manifest replaces the ENTRYPOINT (a `command:` would drop the flag).
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';

const FLAG = '--max-semi-space-size=8';
const read = (path: string): string => readFileSync(path, 'utf8');

describe('Node flags of the launchers', () => {
  it('the Dockerfile ENTRYPOINT runs node with them', () => {
    const entry = /^ENTRYPOINT\s+(\[.*\])\s*$/m.exec(read('Dockerfile'))?.[1];
    expect(entry).toBeDefined();
    expect(JSON.parse(entry as string)).toEqual(['node', FLAG, 'dist/cli.js']);
  });

  it('the bin (dist/cli.js, compiled from src/cli.ts) carries them on its shebang', () => {
    expect(read('src/cli.ts').split('\n')[0]).toBe(`#!/usr/bin/env -S node ${FLAG}`);
  });

  it('npm start passes them', () => {
    const start = (JSON.parse(read('package.json')) as { scripts: Record<string, string> }).scripts.start;
    expect(start).toContain(`node ${FLAG} dist/cli.js serve`);
  });

  it('the bench starts Portcullis with them', () => {
    expect(read('bench/lib/portcullis.mjs')).toContain(`export const PRODUCT_NODE_FLAGS = ['${FLAG}'];`);
  });

  it.each(['deploy/kubernetes/deployment.yaml', 'deploy/kubernetes/daemonset.yaml', 'deploy/helm/portcullis/templates/_pod.tpl'])(
    '%s keeps the image ENTRYPOINT (no command:)',
    (file) => {
      expect(read(file)).not.toMatch(/^\s*command:/m);
    },
  );
});
