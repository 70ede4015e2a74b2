/**
 * e2e: cosign signatures from your own PKI (issue 15 item 5) and RFC 3161 timestamps from a configured TSA (item 2),
 * made by the real signers and verified by Portcullis at pull time.
 *
 * The PKI is made by `openssl` (test/harness/signing-pki.ts): root → intermediate → code-signing leaves; another
 * root and intermediate for a foreign leaf. Signing: `cosign2|cosign3 sign --key <imported leaf key> --certificate
 * <leaf> [--certificate-chain <chain>] --tlog-upload=false [--timestamp-server-url <TSA>]`. The TSA is `openssl ts`
 * behind a loopback handler; a second one (its own CA) is not in any trusted root.
 *
 * Authorities (keyless with `ca`):
 *   pki       roots + intermediate in the config; subject dev@acme.example, issuer extension https://idp.acme.example
 *   pkiroot   the root only (the intermediate must come with the signature); URI subject by anchored regexp
 *   pkitsa    as pki, plus a trusted root holding the TSA's chain, tsaThreshold 1
 *   ci-tsa    Fulcio keyless (a local Fulcio/Rekor, @sigstore/mock) with the TSA in its trusted root: tlogThreshold 0,
 *             tsaThreshold 1;  ci-tlog: the same trusted root with the default tlogThreshold 1;  ci-rekor2: the same,
 *             tsaThreshold 1, for cosign 3 signing through Rekor v2 (a signing config) with the TSA
 * A second proxy runs on a clock three days ahead, past every certificate's notAfter: a signature with a trusted
 * timestamp from while the certificates were valid still verifies; one without a timestamp has expired.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DecisionObserver } from '../../src/gate/gate.js';
import type { SignatureCode } from '../../src/policy/codes.js';
import { expectOk, runTool, type ToolResult } from '../harness/clients.js';
import { pushImage, type PushedImage } from '../harness/images.js';
import { startProxy, type RunningProxy } from '../harness/proxy.js';
import { startRegistry, type RunningRegistry } from '../harness/registry.js';
import { startLocalSigstore, type LocalSigstore } from '../harness/signature-sigstore.js';
import { concat, INTERMEDIATE_EXT, issue, leafExt, makeRoot, startTsa, type CertFiles, type LocalTsa } from '../harness/signing-pki.js';

const EMAIL = 'dev@acme.example';
const IDP = 'https://idp.acme.example';
const PIPELINE = 'https://ci.acme.example/pipelines/release';
const DAY = 86_400_000;
const ISSUER = 'https://token.actions.githubusercontent.com';
const SUBJECT = 'https://github.com/acme/app/.github/workflows/release.yml@refs/heads/main';

let reg: RunningRegistry;
let ss: LocalSigstore;
let tsa: LocalTsa;
let rogueTsa: LocalTsa;
let proxy: RunningProxy;
let later: RunningProxy;
let work: string;
let env: NodeJS.ProcessEnv;
const img: Record<string, PushedImage> = {};
const decisions: Array<Parameters<DecisionObserver['onDecision']>[0]> = [];
const laterDecisions: Array<Parameters<DecisionObserver['onDecision']>[0]> = [];

async function tool(cmd: string, args: string[], what = `${cmd} ${args[0]}`): Promise<ToolResult> {
  return expectOk(await runTool(cmd, args, { env, cwd: work, timeoutMs: 60_000 }), what);
}

const insecure = ['--allow-insecure-registry', '--allow-http-registry'];

interface SignOpts {
  leaf: CertFiles & { cosignKey: string };
  chain?: string;
  tsa?: LocalTsa;
}

async function sign(cosign: 'cosign2' | 'cosign3', name: string, o: SignOpts): Promise<void> {
  await tool(
    cosign,
    [
      'sign',
      '--key',
      o.leaf.cosignKey,
      '--certificate',
      o.leaf.cert,
      ...(o.chain ? ['--certificate-chain', o.chain] : []),
      ...(cosign === 'cosign3' ? ['--use-signing-config=false'] : []),
      '--tlog-upload=false',
      ...(o.tsa ? ['--timestamp-server-url', o.tsa.url] : []),
      ...insecure,
      '-y',
      `${reg.host}/${name.split(':')[0]}@${img[name]!.digest}`,
    ],
    `${cosign} sign ${name}`,
  );
}

/** cosign 2 keyless through the local Fulcio; with a TSA: no Rekor upload, an RFC 3161 timestamp instead. */
async function fulcioSign(name: string, t?: LocalTsa): Promise<void> {
  const token = await ss.token(SUBJECT, ISSUER);
  const args = ['sign', '--fulcio-url', ss.url, '--rekor-url', ss.url, '--identity-token', token];
  const extra = t ? ['--tlog-upload=false', '--timestamp-server-url', t.url] : [];
  const keyless = { SIGSTORE_CT_LOG_PUBLIC_KEY_FILE: ss.files.ctlogKey, SIGSTORE_ROOT_FILE: ss.files.fulcioRoot, SIGSTORE_REKOR_PUBLIC_KEY: ss.files.rekorKey };
  const r = await runTool('cosign2', [...args, ...extra, ...insecure, '-y', `${reg.host}/${name.split(':')[0]}@${img[name]!.digest}`], {
    env: { ...env, ...keyless },
    cwd: work,
    timeoutMs: 60_000,
  });
  expectOk(r, `cosign2 keyless sign ${name}`);
}

/**
 * cosign 3 keyless with a signing config: the local Fulcio, Rekor v2 (a checkpoint-signed inclusion proof, no
 * inclusion promise, so no signing time) and the TSA (the time).
 */
async function rekorV2Sign(name: string, trustedRoot: string): Promise<void> {
  const start = new Date(Date.now() - DAY).toISOString().replace(/\.\d+Z$/, 'Z');
  const service = (url: string, version: number): string => `url=${url},api-version=${version},start-time=${start},operator=local`;
  await tool('cosign3', [
    'signing-config',
    'create',
    `--fulcio=${service(ss.url, 1)}`,
    `--rekor=${service(ss.url, 2)}`,
    '--rekor-config=ANY',
    `--tsa=${service(tsa.url, 1)}`,
    '--tsa-config=ANY',
    '--out',
    'signing-config.json',
  ]);
  const token = await ss.token(SUBJECT, ISSUER);
  await tool(
    'cosign3',
    [
      'sign',
      '--signing-config',
      'signing-config.json',
      '--trusted-root',
      trustedRoot,
      '--identity-token',
      token,
      ...insecure,
      '-y',
      `${reg.host}/${name.split(':')[0]}@${img[name]!.digest}`,
    ],
    `cosign3 sign ${name} (Rekor v2)`,
  );
}

/** A leaf whose key is imported into cosign's key format (cosign signs only with its own key files). */
async function leaf(ca: CertFiles, name: string, ext: string, days?: string): Promise<CertFiles & { cosignKey: string }> {
  const c = await issue(work, ca, name, ext, days);
  await tool('cosign2', ['import-key-pair', '--key', c.key, '--output-key-prefix', `${name}-cosign`]);
  return { ...c, cosignKey: path.join(work, `${name}-cosign.key`) };
}

/** A trusted_root.json with the TSA as a timestamp authority (its certificate first, then its CA), added to `base`'s. */
async function tsaTrustedRoot(t: LocalTsa, base?: LocalSigstore): Promise<string> {
  const der = async (pemFile: string): Promise<string> => {
    const { readFile } = await import('node:fs/promises');
    const pem = await readFile(pemFile, 'utf8');
    return pem.replace(/-----(BEGIN|END) CERTIFICATE-----/g, '').replace(/\s/g, '');
  };
  const file = path.join(work, base ? 'fulcio-tsa-trusted-root.json' : 'tsa-trusted-root.json');
  await writeFile(
    file,
    JSON.stringify({
      mediaType: 'application/vnd.dev.sigstore.trustedroot+json;version=0.1',
      tlogs: [],
      certificateAuthorities: [],
      ctlogs: [],
      ...(base?.trustedRoot ?? {}),
      timestampAuthorities: [
        {
          subject: { organization: 'Portcullis Test', commonName: 'tsa' },
          uri: t.url,
          certChain: { certificates: [{ rawBytes: await der(t.cert) }, { rawBytes: await der(t.ca) }] },
          validFor: { start: new Date(Date.now() - DAY).toISOString() },
        },
      ],
    }),
  );
  return file;
}

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'pc-pki-e2e-'));
  env = { ...process.env, HOME: work, TUF_ROOT: path.join(work, 'tuf'), COSIGN_PASSWORD: '', DOCKER_CONFIG: path.join(work, 'docker') };
  [reg, ss] = await Promise.all([startRegistry(), startLocalSigstore()]);
  [tsa, rogueTsa] = await Promise.all([startTsa(work, 'tsa'), startTsa(work, 'rogue-tsa')]);

  const root = await makeRoot(work, 'root');
  const inter = await issue(work, root, 'inter', INTERMEDIATE_EXT);
  const otherRoot = await makeRoot(work, 'other-root');
  const otherInter = await issue(work, otherRoot, 'other-inter', INTERMEDIATE_EXT);
  const dev = await leaf(inter, 'dev', leafExt(`email:${EMAIL}`, IDP));
  const ci = await leaf(inter, 'ci', leafExt(`URI:${PIPELINE}`));
  const evil = await leaf(inter, 'evil', leafExt('email:evil@acme.example', IDP));
  // notAfter already in the past (openssl -days -1): expired on the real clock, no injection needed.
  const old = await leaf(inter, 'old', leafExt(`email:${EMAIL}`, IDP), '-1');
  const foreign = await leaf(otherInter, 'foreign', leafExt(`email:${EMAIL}`, IDP));
  const chain = await concat(path.join(work, 'chain.pem'), [inter.cert, root.cert]);
  const otherChain = await concat(path.join(work, 'other-chain.pem'), [otherInter.cert, otherRoot.cert]);

  const names = [
    'pki/app:cosign2',
    'pki/app:cosign3',
    'pki/app:nochain',
    'pki/app:foreign',
    'pki/app:wrongid',
    'pki/app:expiredleaf',
    'pkiroot/app:withchain',
    'pkiroot/app:nochain',
    'pkitsa/app:cosign2',
    'pkitsa/app:cosign3',
    'pkitsa/app:notsa',
    'pkitsa/app:roguetsa',
    'fulcio/app:tsa',
    'fulcio/app:tlog',
    'fulciotlog/app:tsa',
    'rekor2/app:signed',
  ];
  for (const n of names) img[n] = await pushImage(reg.url, n.split(':')[0]!, n.split(':')[1]);

  await sign('cosign2', 'pki/app:cosign2', { leaf: dev, chain });
  await sign('cosign3', 'pki/app:cosign3', { leaf: dev, chain });
  await sign('cosign2', 'pki/app:nochain', { leaf: dev });
  await sign('cosign2', 'pki/app:foreign', { leaf: foreign, chain: otherChain });
  await sign('cosign2', 'pki/app:wrongid', { leaf: evil, chain });
  // cosign checks a chain it is given against the clock; without one it signs (the proxy has the intermediate).
  await sign('cosign2', 'pki/app:expiredleaf', { leaf: old });
  await sign('cosign2', 'pkiroot/app:withchain', { leaf: ci, chain });
  await sign('cosign2', 'pkiroot/app:nochain', { leaf: ci });
  await sign('cosign2', 'pkitsa/app:cosign2', { leaf: dev, chain, tsa });
  await sign('cosign3', 'pkitsa/app:cosign3', { leaf: dev, chain, tsa });
  await sign('cosign2', 'pkitsa/app:notsa', { leaf: dev, chain });
  await sign('cosign2', 'pkitsa/app:roguetsa', { leaf: dev, chain, tsa: rogueTsa });

  // Fulcio keyless: with a TSA timestamp and no Rekor entry, and with a Rekor entry and no timestamp.
  await fulcioSign('fulcio/app:tsa', tsa);
  await fulcioSign('fulciotlog/app:tsa', tsa);
  await fulcioSign('fulcio/app:tlog');
  const fulcioTsaRoot = await tsaTrustedRoot(tsa, ss);
  await rekorV2Sign('rekor2/app:signed', fulcioTsaRoot);

  const authorities = [
    { name: 'pki', kind: 'keyless', issuer: IDP, subject: EMAIL, ca: { roots: [root.cert], intermediates: [inter.cert] } },
    { name: 'pkiroot', kind: 'keyless', subjectRegExp: 'https://ci\\.acme\\.example/pipelines/[a-z]+', ca: { roots: [root.cert] } },
    {
      name: 'pkitsa',
      kind: 'keyless',
      issuer: IDP,
      subject: EMAIL,
      ca: { roots: [root.cert], intermediates: [inter.cert] },
      trustedRoot: await tsaTrustedRoot(tsa),
      tsaThreshold: 1,
    },
    { name: 'ci-tsa', kind: 'keyless', issuer: ISSUER, subject: SUBJECT, trustedRoot: fulcioTsaRoot, tlogThreshold: 0, tsaThreshold: 1 },
    { name: 'ci-tlog', kind: 'keyless', issuer: ISSUER, subject: SUBJECT, trustedRoot: fulcioTsaRoot },
    { name: 'ci-rekor2', kind: 'keyless', issuer: ISSUER, subject: SUBJECT, trustedRoot: fulcioTsaRoot, tsaThreshold: 1 },
  ];
  const scope = (name: string, authority: string) => ({ name, images: [`*/${name}/**`], signatures: { authorities: [authority] } });
  const settings = {
    no_match: 'deny',
    scopes: [
      scope('pki', 'pki'),
      scope('pkiroot', 'pkiroot'),
      scope('pkitsa', 'pkitsa'),
      scope('fulcio', 'ci-tsa'),
      scope('fulciotlog', 'ci-tlog'),
      scope('rekor2', 'ci-rekor2'),
    ],
  };
  const upstreams = [{ name: 'dist', registry: reg.host, url: reg.url, aliases: ['dist.e2e'] }];
  proxy = await startProxy({ upstreams, settings, extra: { signatures: { authorities } }, observers: [{ onDecision: (e) => decisions.push(e) }] });
  later = await startProxy({
    upstreams,
    settings,
    extra: { signatures: { authorities } },
    observers: [{ onDecision: (e) => laterDecisions.push(e) }],
    now: () => Date.now() + 3 * DAY,
  });
}, 240_000);

afterAll(async () => {
  await Promise.all([proxy?.stop(), later?.stop()]);
  await Promise.all([reg?.stop(), ss?.stop(), tsa?.stop(), rogueTsa?.stop()]);
  if (work) await rm(work, { recursive: true, force: true });
});

const ref = (p: RunningProxy, name: string): string => `${p.host}/dist.e2e/${name}`;

function decisionFor(list: typeof decisions, name: string): (typeof decisions)[number] | undefined {
  return list.filter((d) => d.input.image.digest === img[name]!.digest && d.input.request.kind === 'manifest').at(-1);
}

async function expectAllowed(name: string, p = proxy, list = decisions): Promise<(typeof decisions)[number]> {
  const r = await runTool('crane', ['manifest', '--insecure', ref(p, name)]);
  expect(r.code, r.stderr).toBe(0);
  const d = decisionFor(list, name)!;
  expect(d.admission.outcome).toBe('allow');
  return d;
}

async function expectDenied(name: string, message: RegExp, code: { authority: string; code: SignatureCode }, p = proxy, list = decisions): Promise<void> {
  const r = await runTool('crane', ['manifest', '--insecure', ref(p, name)]);
  expect(r.code, r.stdout).not.toBe(0);
  expect(r.stderr).toMatch(/DENIED/);
  expect(r.stderr).toMatch(message);
  expect(decisionFor(list, name)?.input.signatures.rejected).toContainEqual(expect.objectContaining(code));
}

describe('own PKI (cosign --certificate-chain)', () => {
  it('admits cosign 2 and cosign 3 signatures whose certificate chains to the configured CA, with the identity', async () => {
    for (const name of ['pki/app:cosign2', 'pki/app:cosign3']) {
      const d = await expectAllowed(name);
      expect(d.input.signatures.verified).toEqual([
        expect.objectContaining({ authority: 'pki', kind: 'cosign-keyless', tlog: false, identity: { issuer: IDP, subject: EMAIL } }),
      ]);
    }
  });

  it('builds the path through the configured intermediate, or through the one the signature carries', async () => {
    await expectAllowed('pki/app:nochain');
    const d = await expectAllowed('pkiroot/app:withchain');
    expect(d.input.signatures.verified).toEqual([expect.objectContaining({ authority: 'pkiroot', identity: { subject: PIPELINE } })]);
  });

  it('denies a leaf from another CA, another identity, and a chain without the intermediate the config lacks', async () => {
    await expectDenied('pki/app:foreign', /authority "pki" \(no signature verified: untrusted chain/, { authority: 'pki', code: 'UNTRUSTED_CHAIN' });
    await expectDenied('pki/app:wrongid', /authority "pki" \(no signature verified: identity mismatch \(subject "evil@acme\.example"/, {
      authority: 'pki',
      code: 'IDENTITY_MISMATCH',
    });
    await expectDenied('pkiroot/app:nochain', /authority "pkiroot" \(no signature verified: untrusted chain/, {
      authority: 'pkiroot',
      code: 'UNTRUSTED_CHAIN',
    });
  });

  it('denies a leaf that has expired', async () => {
    await expectDenied('pki/app:expiredleaf', /authority "pki" \(no signature verified: expired \(certificate not valid at .* no trusted timestamp/, {
      authority: 'pki',
      code: 'EXPIRED',
    });
  });

  it('without a trusted timestamp the certificates must be valid now: three days on, they have expired', async () => {
    await expectDenied(
      'pki/app:cosign2',
      /authority "pki" \(no signature verified: expired \(certificate not valid at .* no trusted timestamp/,
      { authority: 'pki', code: 'EXPIRED' },
      later,
      laterDecisions,
    );
  });
});

describe('RFC 3161 timestamps from a configured TSA', () => {
  it('admits cosign 2 and cosign 3 signatures timestamped by the trusted TSA (tlog upload off)', async () => {
    for (const name of ['pkitsa/app:cosign2', 'pkitsa/app:cosign3']) {
      const d = await expectAllowed(name);
      expect(d.input.signatures.verified).toEqual([expect.objectContaining({ authority: 'pkitsa', tlog: false, signed_at: expect.any(String) as unknown })]);
    }
    expect(tsa.requests()).toBe(5);
  });

  it('a signature timestamped while its certificates were valid still verifies after they expire', async () => {
    await expectAllowed('pkitsa/app:cosign2', later, laterDecisions);
    await expectAllowed('pkitsa/app:cosign3', later, laterDecisions);
  });

  it('Fulcio keyless: a TSA timestamp stands in for the Rekor entry where tlogThreshold is 0', async () => {
    const d = await expectAllowed('fulcio/app:tsa');
    expect(d.input.signatures.verified).toEqual([
      expect.objectContaining({
        authority: 'ci-tsa',
        kind: 'cosign-keyless',
        tlog: false,
        identity: { issuer: ISSUER, subject: SUBJECT },
        signed_at: expect.stringMatching(/^\d{4}-\d\d-\d\dT/) as unknown,
      }),
    ]);
  });

  it('Fulcio keyless: each threshold is honoured per authority', async () => {
    await expectDenied('fulcio/app:tlog', /authority "ci-tsa" \(no signature verified: no trusted timestamp \(expected 1 from a TSA, got 0\)/, {
      authority: 'ci-tsa',
      code: 'TIMESTAMP_UNVERIFIED',
    });
    await expectDenied(
      'fulciotlog/app:tsa',
      /authority "ci-tlog" \(no signature verified: transparency log verification failed \(expected 1 tlog entries, got 0\)/,
      {
        authority: 'ci-tlog',
        code: 'TLOG_UNVERIFIED',
      },
    );
  });

  it('cosign 3 with Rekor v2: the entry verifies by its inclusion proof and checkpoint, the TSA gives the time', async () => {
    const d = await expectAllowed('rekor2/app:signed');
    expect(d.input.signatures.verified).toContainEqual(
      expect.objectContaining({
        authority: 'ci-rekor2',
        kind: 'cosign-keyless',
        format: 'sigstore-bundle',
        tlog: true,
        identity: { issuer: ISSUER, subject: SUBJECT },
      }),
    );
    // The Rekor v2 entry counts toward tlogThreshold (ci-tlog: 1) though it attests no time.
    expect(d.input.signatures.verified).toContainEqual(expect.objectContaining({ authority: 'ci-tlog', tlog: true }));
  });

  it('denies a timestamp from an untrusted TSA, and a missing one when tsaThreshold asks for it', async () => {
    await expectDenied('pkitsa/app:roguetsa', /authority "pkitsa" \(no signature verified: no trusted timestamp/, {
      authority: 'pkitsa',
      code: 'TIMESTAMP_UNVERIFIED',
    });
    await expectDenied('pkitsa/app:notsa', /authority "pkitsa" \(no signature verified: no trusted timestamp \(expected 1 from a TSA, got 0\)/, {
      authority: 'pkitsa',
      code: 'TIMESTAMP_UNVERIFIED',
    });
  });
});
