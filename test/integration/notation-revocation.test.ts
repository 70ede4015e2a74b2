/**
 * The revocation checker's cache (src/verify/revocation.ts) against the real `openssl ocsp` responder of the test
 * PKI, with an injected clock: answers are reused until the response's nextUpdate and no longer, the cache holds at
 * most `cacheEntries` answers, and an unknown answer (responder down) is never cached.
 */
import { X509Certificate } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Revocation } from '../../src/verify/revocation.js';
import { makeNotationPki, type NotationPki } from '../harness/notation-pki.js';

let dir: string;
let pki: NotationPki;
let root: X509Certificate;
const chainOf = async (name: string): Promise<X509Certificate[]> => [new X509Certificate(await readFile((await pki.leaf(name)).cert)), root];

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'pc-revocation-'));
  pki = await makeNotationPki(dir);
  root = new X509Certificate(await readFile(pki.root));
  // OCSP answers valid for 60 minutes; no CRL is published, so nothing falls back to one.
  await pki.startOcsp(60);
}, 60_000);

afterAll(async () => {
  await pki?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('revocation answer cache', () => {
  it('reuses an OCSP answer until its nextUpdate, then asks again (and a stale answer is unknown)', async () => {
    let clock = Date.now();
    const r = new Revocation({ now: () => clock, timeoutMs: 5_000, cacheEntries: 10, maxTTL: 86_400_000, maxResponseBytes: 1 << 20 });
    const chain = await chainOf('ttl');
    const before = pki.ocspRequests;
    expect(await r.check(chain)).toEqual({ ok: true });
    expect(pki.ocspRequests).toBe(before + 1);
    clock += 30 * 60_000;
    expect(await r.check(chain)).toEqual({ ok: true });
    expect(pki.ocspRequests).toBe(before + 1);
    // Past nextUpdate: asked again; openssl's new answer is dated by the real clock, so at this clock it is stale.
    clock += 31 * 60_000;
    const late = await r.check(chain);
    expect(pki.ocspRequests).toBe(before + 2);
    expect(late).toMatchObject({ ok: false, code: 'REVOCATION_UNKNOWN', reason: expect.stringMatching(/stale OCSP response/) as unknown });
  });

  it('holds at most cacheEntries answers', async () => {
    const r = new Revocation({ now: Date.now, timeoutMs: 5_000, cacheEntries: 1, maxTTL: 86_400_000, maxResponseBytes: 1 << 20 });
    const [a, b] = [await chainOf('one'), await chainOf('two')];
    const before = pki.ocspRequests;
    for (const chain of [a, b, a]) expect(await r.check(chain)).toEqual({ ok: true });
    // a was evicted by b, so it was asked twice.
    expect(pki.ocspRequests).toBe(before + 3);
  });

  it('does not cache an unknown answer: a responder back up is asked again', async () => {
    const r = new Revocation({ now: Date.now, timeoutMs: 5_000, cacheEntries: 10, maxTTL: 86_400_000, maxResponseBytes: 1 << 20 });
    const chain = await chainOf('flaky');
    await pki.stopOcsp();
    expect(await r.check(chain)).toMatchObject({ ok: false, code: 'REVOCATION_UNKNOWN' });
    await pki.startOcsp(60);
    expect(await r.check(chain)).toEqual({ ok: true });
  });

  it('caps the response size', async () => {
    const r = new Revocation({ now: Date.now, timeoutMs: 5_000, cacheEntries: 10, maxTTL: 86_400_000, maxResponseBytes: 16 });
    expect(await r.check(await chainOf('capped'))).toMatchObject({ ok: false, code: 'REVOCATION_UNKNOWN', reason: expect.stringMatching(/cap/) as unknown });
  });
});
