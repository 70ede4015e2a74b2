/**
 * Notation beyond plain JWS, with the real `notation` CLI signing into the real Distribution registry and the proxy
 * deciding from it (test/harness/notation-pki.ts for the openssl PKI and services, all on 127.0.0.1):
 *
 *   timestamps  `notation sign --timestamp-url` against `openssl ts -reply` TSAs: with the authority's clock moved
 *               past the leaf's expiry (injected `now`), a JWS or COSE signature with a timestamp from the trusted TSA
 *               still verifies; one from another TSA, one whose token is over other bytes, and one without a
 *               timestamp are denied; an authority without a TSA store denies the expired certificate;
 *   revocation  leaves with AIA OCSP and CRL distribution points on loopback: good admitted, revoked denied naming
 *               the certificate and the source (OCSP; CRL when OCSP is down), both down under enforce / log / skip;
 *               answers are cached; a timestamp by a revoked TSA is not trusted;
 *   COSE        `notation sign --signature-format cose` admitted; a tampered payload and wrong critical headers
 *               (re-signed with the leaf key, so only the header is wrong) are denied.
 */
import { sign as cryptoSign, createPrivateKey, X509Certificate } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { decode, encode, Tag } from 'cbor2';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DecisionObserver } from '../../src/gate/gate.js';
import type { SignatureCode } from '../../src/policy/codes.js';
import { crane, expectOk, runTool, type ToolResult } from '../harness/clients.js';
import { pushBlob, pushImage, pushRaw, sha256 } from '../harness/images.js';
import { makeNotationPki, type Leaf, type NotationPki, type Tsa } from '../harness/notation-pki.js';
import { startProxy, type RunningProxy } from '../harness/proxy.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';

const DAY = 86_400_000;
const INDEX = 'application/vnd.oci.image.index.v1+json';
const MANIFEST = 'application/vnd.oci.image.manifest.v1+json';

let work: string;
let env: NodeJS.ProcessEnv;
let pki: NotationPki;
let tsa: Tsa;
let rogueTsa: Tsa;
let reg: RunningRegistry;
let proxy: RunningProxy;
/** Added to the proxy's clock: the tests move it past the short leaf's expiry. */
let offset = 0;
const leaves: Record<string, Leaf> = {};
const digests: Record<string, string> = {};
const decisions: Array<Parameters<DecisionObserver['onDecision']>[0]> = [];
/** What the proxy logs at warn and above (the `log` levels write their findings there). */
const warnings: string[] = [];
const warned = (text: string): boolean => warnings.some((l) => l.includes(text));

async function tool(cmd: string, args: string[]): Promise<ToolResult> {
  return expectOk(await runTool(cmd, args, { env, cwd: work, timeoutMs: 60_000 }), `${cmd} ${args.slice(0, 2).join(' ')}`);
}

/** Pushes a fresh image as repo:tag and signs it with `notation` as the named leaf. */
async function signed(name: string, key: string, extra: string[] = []): Promise<void> {
  const [repo, tag] = name.split(':') as [string, string];
  const img = await pushImage(reg.url, repo, tag);
  digests[name] = img.digest;
  await tool('notation', ['sign', '--insecure-registry', '--key', key, ...extra, `${reg.host}/${repo}@${img.digest}`]);
}

const withTsa = (t: Tsa): string[] => ['--timestamp-url', t.url, '--timestamp-root-cert', t.root];

async function get(url: string, accept: string): Promise<Buffer> {
  const res = await fetch(url, { headers: { accept } });
  if (res.status !== 200) throw new Error(`${url}: HTTP ${res.status}`);
  return Buffer.from(await res.arrayBuffer());
}

/** The Notation envelope of an image (Distribution: the referrers tag schema), and a way to replace it. */
async function envelope(name: string): Promise<{ bytes: Buffer; replace(bytes: Buffer): Promise<void> }> {
  const repo = name.split(':')[0]!;
  const tag = `sha256-${digests[name]!.slice(7)}`;
  const index = JSON.parse((await get(`${reg.url}/v2/${repo}/manifests/${tag}`, INDEX)).toString()) as { manifests: Array<Record<string, unknown>> };
  expect(index.manifests).toHaveLength(1);
  const entry = index.manifests[0]!;
  const manifest = JSON.parse((await get(`${reg.url}/v2/${repo}/manifests/${String(entry.digest)}`, MANIFEST)).toString()) as {
    layers: Array<{ digest: string; size: number }>;
  };
  const bytes = await get(`${reg.url}/v2/${repo}/blobs/${manifest.layers[0]!.digest}`, '*/*');
  return {
    bytes,
    async replace(next) {
      Object.assign(manifest.layers[0]!, await pushBlob(reg.url, repo, next));
      const m = Buffer.from(JSON.stringify(manifest));
      await pushRaw(reg.url, repo, sha256(m), m, MANIFEST);
      const i = Buffer.from(JSON.stringify({ ...index, manifests: [{ ...entry, digest: sha256(m), size: m.length }] }));
      await pushRaw(reg.url, repo, tag, i, INDEX);
    },
  };
}

/** A COSE_Sign1 rebuilt from parts, as plain Uint8Arrays (cbor2 would encode a Buffer as an object). */
function sign1(protectedBytes: Uint8Array, chain: Uint8Array[], payload: Uint8Array, signature: Uint8Array): Buffer {
  const u = (b: Uint8Array): Uint8Array => new Uint8Array(b);
  return Buffer.from(encode(new Tag(18, [u(protectedBytes), new Map<unknown, unknown>([[33, chain.map(u)]]), u(payload), u(signature)])));
}

function decodeCose(bytes: Buffer): {
  protectedBytes: Uint8Array;
  header: Map<unknown, unknown>;
  chain: Uint8Array[];
  payload: Uint8Array;
  signature: Uint8Array;
} {
  const top = decode<Tag>(bytes, { preferMap: true });
  const [p, u, payload, signature] = top.contents as [Uint8Array, Map<unknown, unknown>, Uint8Array, Uint8Array];
  return { protectedBytes: p, header: decode<Map<unknown, unknown>>(p, { preferMap: true }), chain: u.get(33) as Uint8Array[], payload, signature };
}

/** The authority each repository's scope requires. */
const REQUIRED: Record<string, string> = {
  ts: 'stamped',
  plain: 'unstamped',
  after: 'stamped-after-expiry',
  tsarev: 'stamped-by-ca',
  rev: 'revocation-enforce',
  revlog: 'revocation-log',
  revskip: 'revocation-skip',
};
const authorityOf = (name: string): string => REQUIRED[name.split('/')[0]!]!;
const viaProxy = (name: string): string => `${proxy.host}/dist.e2e/${name}`;
const decisionFor = (name: string): Parameters<DecisionObserver['onDecision']>[0] | undefined =>
  decisions.filter((d) => d.input.image.digest === digests[name] && d.input.request.kind === 'manifest').at(-1);

async function expectAllowed(name: string, format = 'notation-jws'): Promise<void> {
  const r = await crane(['manifest', '--insecure', viaProxy(name)]);
  expect(r.code, r.stderr).toBe(0);
  expect(decisionFor(name)?.admission.outcome).toBe('allow');
  expect(decisionFor(name)?.input.signatures.verified).toContainEqual(expect.objectContaining({ authority: authorityOf(name), kind: 'notation', format }));
}

async function expectDenied(name: string, code: SignatureCode, message: RegExp): Promise<void> {
  const r = await crane(['manifest', '--insecure', viaProxy(name)]);
  expect(r.code, r.stdout).not.toBe(0);
  expect(r.stderr).toMatch(/DENIED/);
  expect(r.stderr).toMatch(message);
  expect(decisionFor(name)?.input.signatures.rejected).toContainEqual(expect.objectContaining({ authority: authorityOf(name), code }));
}

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'pc-notation-e2e-'));
  env = { ...process.env, HOME: work, XDG_CONFIG_HOME: path.join(work, 'config') };
  pki = await makeNotationPki(path.join(work, 'pki'));
  [tsa, rogueTsa, reg] = await Promise.all([pki.startTsa('trusted'), pki.startTsa('rogue'), startRegistry()]);
  // short: valid one day, no OCSP/CRL URL (not revocable), for the timestamp tests that move the clock past it.
  leaves.short = await pki.leaf('short', { days: 1, revocable: false });
  for (const n of ['good', 'revoked', 'revokedcrl', 'unreachable']) leaves[n] = await pki.leaf(n);
  await pki.revoke(leaves.revoked!, 'keyCompromise');
  await pki.revoke(leaves.revokedcrl!, 'superseded');
  await mkdir(path.join(work, 'config/notation'), { recursive: true });
  const keys = Object.entries(leaves).map(([name, l]) => ({ name, keyPath: l.key, certPath: l.chain }));
  await writeFile(path.join(work, 'config/notation/signingkeys.json'), JSON.stringify({ default: 'good', keys }));

  // The responders run while notation signs: it checks a TSA's revocation when it timestamps.
  await pki.startOcsp(60);
  await pki.publishCrl(24);
  await pki.settle();
  // Timestamps. (notation signs with the revoked certificates too: it does not check their revocation when signing.)
  await signed('ts/app:jws', 'short', withTsa(tsa));
  await signed('ts/app:cose', 'short', ['--signature-format', 'cose', ...withTsa(tsa)]);
  await signed('ts/app:rogue', 'short', withTsa(rogueTsa));
  await signed('ts/app:none', 'short');
  await signed('ts/app:swapped', 'short', withTsa(tsa));
  await signed('plain/app:jws', 'short', withTsa(tsa));
  await signed('after/app:none', 'short');
  await signed('after/app:jws', 'short', withTsa(tsa));
  // Revocation: one repository per `revocation` setting.
  await signed('rev/app:good', 'good');
  await signed('rev/app:good-cose', 'good', ['--signature-format', 'cose']);
  await signed('rev/app:revoked', 'revoked');
  await signed('rev/app:revokedcrl', 'revokedcrl');
  await signed('rev/app:unreachable', 'unreachable');
  await signed('revlog/app:revoked', 'revoked');
  await signed('revlog/app:unreachable', 'unreachable');
  await signed('revskip/app:revoked', 'revoked');
  // COSE negatives.
  await signed('ts/app:cose-tampered', 'short', ['--signature-format', 'cose']);
  await signed('ts/app:cose-unknown-crit', 'short', ['--signature-format', 'cose']);
  await signed('ts/app:cose-uncritical', 'short', ['--signature-format', 'cose']);

  // The timestamp token of ts/app:jws, put into ts/app:swapped's envelope: a real token, over other bytes.
  const donor = JSON.parse((await envelope('ts/app:jws')).bytes.toString()) as { header: Record<string, unknown> };
  const swapped = await envelope('ts/app:swapped');
  const jws = JSON.parse(swapped.bytes.toString()) as { header: Record<string, unknown> };
  expect(jws.header['io.cncf.notary.timestampSignature']).not.toEqual(donor.header['io.cncf.notary.timestampSignature']);
  jws.header['io.cncf.notary.timestampSignature'] = donor.header['io.cncf.notary.timestampSignature'];
  await swapped.replace(Buffer.from(JSON.stringify(jws)));

  // COSE: the payload changed after signing (same signature).
  const tampered = await envelope('ts/app:cose-tampered');
  const t = decodeCose(tampered.bytes);
  const payload = Buffer.from(`${Buffer.from(t.payload).toString()} `);
  await tampered.replace(sign1(t.protectedBytes, t.chain, payload, t.signature));
  // COSE: critical headers changed and re-signed with the leaf key, so that only the header is wrong.
  const leafKey = createPrivateKey(await readFile(leaves.short.key));
  const resign = async (name: string, change: (h: Map<unknown, unknown>) => void): Promise<void> => {
    const e = await envelope(name);
    const c = decodeCose(e.bytes);
    change(c.header);
    const p = new Uint8Array(encode(c.header));
    const tbs = encode(['Signature1', p, new Uint8Array(0), new Uint8Array(c.payload)]);
    await e.replace(sign1(p, c.chain, c.payload, cryptoSign('sha256', tbs, { key: leafKey, dsaEncoding: 'ieee-p1363' })));
  };
  await resign('ts/app:cose-unknown-crit', (h) => {
    h.set(2, [...(h.get(2) as string[]), 'io.example.unknown']);
    h.set('io.example.unknown', 1);
  });
  await resign('ts/app:cose-uncritical', (h) => h.set(2, ['io.cncf.notary.expiry']).set('io.cncf.notary.expiry', new Date(Date.now() + DAY)));

  // TSAs issued by the signing CA, with its OCSP URL: one of them revoked once it has timestamped.
  const [caTsa, revokedTsa] = [await pki.startTsa('ca-issued', { byCa: true }), await pki.startTsa('revoking', { byCa: true })];
  await pki.settle();
  await signed('tsarev/app:good', 'good', withTsa(caTsa));
  await signed('tsarev/app:revoked', 'good', withTsa(revokedTsa));
  await pki.revoke({ cert: revokedTsa.cert }, 'keyCompromise');

  const notation = (name: string, extra: Record<string, unknown>): Record<string, unknown> => ({
    name,
    kind: 'notation',
    trustStore: [pki.root],
    trustedIdentities: ['x509.subject: C=US, O=acme'],
    ...extra,
  });
  proxy = await startProxy({
    upstreams: [{ name: 'dist', registry: reg.host, url: reg.url, aliases: ['dist.e2e'] }],
    now: () => Date.now() + offset,
    settings: {
      no_match: 'deny',
      scopes: [
        { name: 'ts', images: ['*/ts/**'], signatures: { authorities: ['stamped'] } },
        { name: 'plain', images: ['*/plain/**'], signatures: { authorities: ['unstamped'] } },
        { name: 'after', images: ['*/after/**'], signatures: { authorities: ['stamped-after-expiry'] } },
        { name: 'tsarev', images: ['*/tsarev/**'], signatures: { authorities: ['stamped-by-ca'] } },
        { name: 'rev', images: ['*/rev/**'], signatures: { authorities: ['revocation-enforce'] } },
        { name: 'revlog', images: ['*/revlog/**'], signatures: { authorities: ['revocation-log'] } },
        { name: 'revskip', images: ['*/revskip/**'], signatures: { authorities: ['revocation-skip'] } },
      ],
    },
    extra: {
      signatures: {
        authorities: [
          notation('stamped', { tsaTrustStore: [tsa.root] }),
          notation('unstamped', {}),
          notation('stamped-by-ca', { tsaTrustStore: [pki.root] }),
          notation('stamped-after-expiry', { tsaTrustStore: [tsa.root], verifyTimestamp: 'afterCertExpiry' }),
          notation('revocation-enforce', { revocation: 'enforce' }),
          notation('revocation-log', { revocation: 'log' }),
          notation('revocation-skip', { revocation: 'skip' }),
        ],
        revocation: { timeout: '2s' },
        // Longer than the short leaf lives: a cached verification must still lapse when its certificate expires.
        cache: { verifiedTTL: '30d' },
      },
    },
    observers: [{ onDecision: (e) => decisions.push(e) }],
    logger: pino(
      { level: 'warn' },
      new Writable({
        write(chunk: Buffer, _e, cb) {
          warnings.push(chunk.toString());
          cb();
        },
      }),
    ),
  });
}, 300_000);

afterAll(async () => {
  await proxy?.stop();
  await Promise.all([pki?.stop(), reg?.stop()]);
  if (work) await rm(work, { recursive: true, force: true });
});

describe('Notation revocation (OCSP and CRL from openssl on loopback)', () => {
  it('admits a good certificate, and reuses the OCSP answer for the next signature by it', async () => {
    await expectAllowed('rev/app:good');
    const asked = pki.ocspRequests;
    expect(asked).toBeGreaterThan(0);
    await expectAllowed('rev/app:good-cose', 'notation-cose');
    expect(pki.ocspRequests).toBe(asked);
  });

  it('denies a revoked certificate, naming it and the OCSP responder', async () => {
    await expectDenied(
      'rev/app:revoked',
      'REVOKED',
      new RegExp(`revoked \\(certificate "CN=revoked, O=acme, C=US" revoked at [^ ]+ \\(keyCompromise\\), per OCSP ${pki.ocspUrl}\\)`),
    );
  });

  it('with OCSP down, the CRL decides; with both down the status is unknown: denied under enforce, logged under log', async () => {
    await pki.stopOcsp();
    await expectDenied('rev/app:revokedcrl', 'REVOKED', /revoked \(certificate "CN=revokedcrl, O=acme, C=US" revoked at [^ ]+ \(superseded\), per CRL http/);
    await pki.stopCrl();
    await expectDenied('rev/app:unreachable', 'REVOCATION_UNKNOWN', /revocation status unknown \(certificate "CN=unreachable, O=acme, C=US": OCSP http/);
    await expectAllowed('revlog/app:unreachable');
    expect(warned('revocation-log: revocation status unknown (certificate \\"CN=unreachable, O=acme, C=US\\"')).toBe(true);
    await pki.startOcsp(60);
    await pki.publishCrl(24);
  });

  it("checks the TSA certificate's revocation too: a timestamp by a revoked TSA is not trusted", async () => {
    await expectAllowed('tsarev/app:good');
    await expectDenied(
      'tsarev/app:revoked',
      'TIMESTAMP_UNVERIFIED',
      /no trusted timestamp \(TSA revoked \(certificate "CN=revoking TSA, O=Portcullis Test, C=US" revoked at [^ ]+ \(keyCompromise\), per OCSP http/,
    );
  });

  it('revocation: log admits a revoked certificate (logged), skip does not ask', async () => {
    await expectAllowed('revlog/app:revoked');
    expect(warned('revocation-log: revoked (certificate \\"CN=revoked, O=acme, C=US\\" revoked at')).toBe(true);
    expect(warned('allowed by revocation: log')).toBe(true);
    const asked = pki.ocspRequests;
    await expectAllowed('revskip/app:revoked');
    expect(pki.ocspRequests).toBe(asked);
  });
});

describe('Notation COSE envelopes (notation sign --signature-format cose)', () => {
  it('denies a tampered payload and wrong critical headers', async () => {
    await expectDenied('ts/app:cose-tampered', 'INVALID_SIGNATURE', /invalid signature \(tampered payload or signature\)/);
    await expectDenied('ts/app:cose-unknown-crit', 'UNSUPPORTED', /unsupported critical header "io\.example\.unknown"/);
    await expectDenied('ts/app:cose-uncritical', 'UNUSABLE_SIGNATURE', /io\.cncf\.notary\.signingScheme must be critical/);
  });
});

describe('Notation timestamp countersignatures (openssl ts TSAs), the clock moved past the certificate', () => {
  it('before expiry, the timestamped JWS and COSE signatures verify, and so does one judged without its timestamp', async () => {
    await expectAllowed('ts/app:jws');
    await expectAllowed('ts/app:cose', 'notation-cose');
    await expectAllowed('plain/app:jws');
    // verifyTimestamp: afterCertExpiry asks for no timestamp while the chain is valid.
    await expectAllowed('after/app:none');
  });

  it('after the certificate expired, a signature timestamped by the trusted TSA still verifies, JWS and COSE', async () => {
    const notAfter = new Date(new X509Certificate(await readFile(leaves.short!.cert)).validTo).getTime();
    offset = notAfter + DAY - Date.now();
    // The same digests again: their cached verifications were kept (30d), and hold since the timestamp does.
    await expectAllowed('ts/app:jws');
    await expectAllowed('ts/app:cose', 'notation-cose');
    await expectAllowed('after/app:jws');
  });

  it('denies a timestamp from an untrusted TSA, a token over other bytes, no timestamp, and (its cached verification lapsed with the certificate) an authority without a TSA store', async () => {
    await expectDenied('ts/app:rogue', 'TIMESTAMP_UNVERIFIED', /no trusted timestamp \(the timestamp is not from a trusted TSA\)/);
    await expectDenied('ts/app:swapped', 'TIMESTAMP_UNVERIFIED', /no trusted timestamp \(the timestamp is over other bytes than this signature\)/);
    await expectDenied('ts/app:none', 'TIMESTAMP_UNVERIFIED', /no trusted timestamp \(the signature has no timestamp countersignature\)/);
    await expectDenied('plain/app:jws', 'EXPIRED', /expired \(certificate 0 is valid .* and no timestamp is trusted\)/);
    // afterCertExpiry: once the certificate has expired, the timestamp is required.
    await expectDenied('after/app:none', 'TIMESTAMP_UNVERIFIED', /no trusted timestamp \(the signature has no timestamp countersignature\)/);
  });
});
