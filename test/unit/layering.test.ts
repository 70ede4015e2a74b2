/**
 * The folders of src/ form layers: each imports only folders on lower layers (README, "Code map"). A newcomer reads
 * the request path top-down, and a change low down cannot be broken by a module above it. This test reads every
 * relative import in src/ and fails on an upward or sideways import, naming the file and the line.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const SRC = path.resolve(__dirname, '../../src');

/** Top to bottom. Folders on one line are peers and must not import each other. */
const LAYERS: string[][] = [
  ['cli.ts'],
  ['cli-storage.ts'],
  ['server'],
  ['ui'],
  ['gate'],
  ['verify', 'scan'],
  ['policy'],
  ['proxy'],
  ['cluster'],
  ['cache', 'upstream'],
  ['auth', 'clients'],
  ['oci'],
  ['routing'],
  ['config', 'metrics'],
  ['util'],
];
const rank = new Map(LAYERS.flatMap((line, i) => line.map((f) => [f, i] as const)));

function* sources(dir: string): Generator<string> {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) yield* sources(p);
    else if (e.name.endsWith('.ts')) yield p;
  }
}

/** The top-level entry of src/ a file belongs to: its folder, or the file itself at the root. */
function folderOf(file: string): string {
  return path.relative(SRC, file).split(path.sep)[0]!;
}

function imports(): Array<{ from: string; to: string; where: string }> {
  const out: Array<{ from: string; to: string; where: string }> = [];
  for (const file of sources(SRC)) {
    const lines = readFileSync(file, 'utf8').split('\n');
    lines.forEach((line, i) => {
      for (const m of line.matchAll(/(?:from\s+|import\(\s*|^import\s+)'(\.{1,2}\/[^']+)'/g)) {
        const target = path.resolve(path.dirname(file), m[1]!);
        const from = folderOf(file);
        const to = folderOf(target);
        if (from !== to) out.push({ from, to, where: `${path.relative(SRC, file)}:${i + 1}` });
      }
    });
  }
  return out;
}

describe('layering of src/', () => {
  const all = imports();

  it('every folder of src/ has a layer', () => {
    const folders = new Set(readdirSync(SRC).filter((f) => !f.endsWith('.md')));
    expect([...folders].filter((f) => !rank.has(f))).toEqual([]);
  });

  it('no folder imports a folder on its own or a higher layer', () => {
    const bad = all.filter((e) => rank.get(e.to)! <= rank.get(e.from)!).map((e) => `${e.where}: ${e.from} -> ${e.to}`);
    expect(bad).toEqual([]);
  });

  it('the check itself sees imports (a guard against a parser that finds nothing)', () => {
    expect(all.some((e) => e.from === 'server' && e.to === 'gate')).toBe(true);
    expect(all.length).toBeGreaterThan(50);
  });
});
