/**
 * Test harness: make policy bundle variants from the committed one, without needing opa at test time.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { gunzipSync, gzipSync } from 'node:zlib';
import { extract, pack } from 'tar-stream';

async function entries(gz: Buffer): Promise<Map<string, Buffer>> {
  const files = new Map<string, Buffer>();
  const ex = extract();
  const done = new Promise<void>((resolve, reject) => {
    ex.on('entry', (h, stream, next) => {
      const chunks: Buffer[] = [];
      stream.on('data', (c: unknown) => chunks.push(c as Buffer));
      stream.on('end', () => {
        if (h.type === 'file') files.set(h.name, Buffer.concat(chunks));
        next();
      });
    });
    ex.on('finish', resolve);
    ex.on('error', reject);
  });
  Readable.from([gunzipSync(gz)]).pipe(ex);
  await done;
  return files;
}

/** Copies a bundle with its .manifest revision replaced, optionally replacing data.json too. */
export async function repackWithRevision(src: string, dest: string, revision: string, data?: unknown): Promise<void> {
  const files = await entries(await readFile(src));
  const manifestKey = [...files.keys()].find((k) => k.replace(/^\/+/, '') === '.manifest');
  if (!manifestKey) throw new Error('bundle has no .manifest');
  const manifest = JSON.parse(files.get(manifestKey)!.toString('utf8')) as Record<string, unknown>;
  manifest.revision = revision;
  files.set(manifestKey, Buffer.from(JSON.stringify(manifest)));
  if (data !== undefined) {
    const dataKey = [...files.keys()].find((k) => k.replace(/^\/+/, '') === 'data.json') ?? '/data.json';
    files.set(dataKey, Buffer.from(JSON.stringify(data)));
  }
  const p = pack();
  const chunks: Buffer[] = [];
  p.on('data', (c: unknown) => chunks.push(c as Buffer));
  const ended = new Promise<void>((r) => p.on('end', () => r()));
  for (const [name, body] of files) p.entry({ name, size: body.length }, body);
  p.finalize();
  await ended;
  await writeFile(dest, gzipSync(Buffer.concat(chunks)));
}
