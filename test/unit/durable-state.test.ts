/**
 * The durable state in the bucket (src/cache/durable-state.ts) over an in-memory DurableDocuments: what a writer to
 * the bucket without the signing key can and cannot make a replica believe. A manifest must hash to its digest; a
 * closure hint's tag counts only when signed; a tag mapping or evidence entry that is unsigned, wrongly signed or
 * moved to another key is never read; everything is bounded per member.
 */
import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { DurableState } from '../../src/cache/durable-state.js';
import type { DurableDocuments } from '../../src/cache/shared.js';
import type { Digest } from '../../src/routing/reference.js';

const KEY = Buffer.from('durable-state-unit-signing-key-0123456789');

class MemoryDocs implements DurableDocuments {
  readonly m = new Map<string, Buffer>();
  put(key: string, body: Buffer): Promise<void> {
    this.m.set(key, body);
    return Promise.resolve();
  }
  get(key: string): Promise<Buffer | undefined> {
    return Promise.resolve(this.m.get(key));
  }
  list(prefix: string, limit: number): Promise<string[]> {
    return Promise.resolve(
      [...this.m.keys()]
        .filter((k) => k.startsWith(prefix))
        .sort()
        .slice(0, limit),
    );
  }
  delete(key: string): Promise<void> {
    this.m.delete(key);
    return Promise.resolve();
  }
}

const digestOf = (b: Buffer): Digest => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const d = (c: string): Digest => `sha256:${c.repeat(64)}`;
const settle = (): Promise<void> => new Promise((r) => setImmediate(r));

describe('durable state in the bucket', () => {
  it('a manifest is read back only if its bytes hash to its digest, and only in its repository', async () => {
    const docs = new MemoryDocs();
    const s = new DurableState({ docs, signingKey: KEY });
    const bytes = Buffer.from('{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}');
    const digest = digestOf(bytes);
    s.putManifest('up', 'team/app', { digest, mediaType: 'application/vnd.oci.image.manifest.v1+json', bytes });
    await settle();
    expect((await s.getManifest('up', 'team/app', digest, 1024))?.bytes.equals(bytes)).toBe(true);
    expect(await s.getManifest('up', 'team/other', digest, 1024)).toBeUndefined();
    expect(await s.getManifest('up', 'team/app', digest, 10)).toBeUndefined();
    // Someone with write access to the bucket swaps the bytes: refused, not served.
    const [key] = [...docs.m.keys()].filter((k) => k.startsWith('manifests/'));
    docs.m.set(key!, Buffer.from(JSON.stringify({ v: 1, mediaType: 'x', bytes: Buffer.from('{"evil":1}').toString('base64') })));
    expect(await s.getManifest('up', 'team/app', digest, 1024)).toBeUndefined();
  });

  it("a closure hint's tag counts only when signed with the key; a wrongly signed hint is dropped", async () => {
    const docs = new MemoryDocs();
    const signed = new DurableState({ docs, signingKey: KEY });
    await signed.putHints('up', 'team/app', { root: d('a'), voucher: d('a'), tag: 'v1' }, [{ digest: d('b'), role: 'layer' }], 1_000);
    await settle();
    expect(await signed.getHints('up', 'team/app', d('b'), 8)).toEqual([{ role: 'layer', root: d('a'), voucher: d('a'), tag: 'v1', expiresAt: 1_000 }]);
    // The same document read by a replica with another key: dropped. Read without any key: its tag is not trusted.
    expect(await new DurableState({ docs, signingKey: Buffer.from('another-key-of-at-least-32-bytes-xxxxxx') }).getHints('up', 'team/app', d('b'), 8)).toEqual(
      [],
    );
    expect((await new DurableState({ docs }).getHints('up', 'team/app', d('b'), 8))[0]?.tag).toBeNull();
    // A forged document without a mac, next to the signed one: only the signed one is read.
    docs.m.set(
      `${[...docs.m.keys()][0]!.replace(/[^/]+$/, '')}forged.json`,
      Buffer.from(JSON.stringify({ v: 1, role: 'layer', root: d('c'), voucher: d('c'), tag: 'v1', expiresAt: 9e12 })),
    );
    expect((await signed.getHints('up', 'team/app', d('b'), 8)).map((h) => h.root)).toEqual([d('a')]);
  });

  it('hints are bounded per member and ordered by expiry', async () => {
    const docs = new MemoryDocs();
    const s = new DurableState({ docs, signingKey: KEY });
    for (let i = 0; i < 40; i++) await s.putHints('up', 'r', { root: d('a'), voucher: d('a'), tag: `t${i}` }, [{ digest: d('b'), role: 'layer' }], 1_000 + i);
    await settle();
    const hints = await s.getHints('up', 'r', d('b'), 8);
    expect(hints).toHaveLength(8);
    expect(hints.map((h) => h.expiresAt)).toEqual([...hints.map((h) => h.expiresAt)].sort((a, b) => b - a));
  });

  it('tag mappings and evidence are kept only when signed, and read back only for their own key', async () => {
    const docs = new MemoryDocs();
    const s = new DurableState({ docs, signingKey: KEY });
    s.putTag('up', 'r', 'v1', { digest: d('a'), mediaType: 'm', size: 1, checkedAt: 5 });
    s.putEvidence('id-1', { signatures: { status: 'verified', verified: [] }, attestations: [] }, 2_000);
    await settle();
    expect((await s.getTag('up', 'r', 'v1'))?.digest).toBe(d('a'));
    expect((await s.getEvidence('id-1', 1_000))?.expiresAt).toBe(2_000);
    expect(await s.getEvidence('id-1', 2_000)).toBeUndefined();
    // Moved to another tag's key: its mac no longer verifies.
    const tagKey = [...docs.m.keys()].find((k) => k.startsWith('tags/'))!;
    s.putTag('up', 'r', 'v2', { digest: d('b'), mediaType: 'm', size: 1, checkedAt: 5 });
    await settle();
    const other = [...docs.m.keys()].find((k) => k.startsWith('tags/') && k !== tagKey)!;
    docs.m.set(other, docs.m.get(tagKey)!);
    expect(await s.getTag('up', 'r', 'v2')).toBeUndefined();
    // Without a key nothing is written or read.
    const bare = new DurableState({ docs: new MemoryDocs() });
    bare.putTag('up', 'r', 'v1', { digest: d('a'), mediaType: 'm', size: 1, checkedAt: 5 });
    expect(await bare.getTag('up', 'r', 'v1')).toBeUndefined();
    expect(await new DurableState({ docs }).getTag('up', 'r', 'v1')).toBeUndefined();
  });
});
