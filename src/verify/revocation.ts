/**
 * Certificate revocation for Notation chains, as notation-core-go's revocation package decides it:
 *
 *   - every certificate but the self-signed root is checked against its issuer (the next one in the chain);
 *   - OCSP first (the AIA OCSP URLs, tried in order until one answers definitively), then the CRL distribution
 *     points when OCSP is not available or its status is unknown; a certificate with neither is not revocable (OK);
 *   - an OCSP response must be successful, signed by the issuer or a responder the issuer delegated (pkijs checks
 *     RFC 6960 4.2.2.2), about this certificate, and current (thisUpdate not in the future, nextUpdate not passed);
 *     a CRL must be signed by the issuer, name it, and be current (nextUpdate present and not passed);
 *   - revoked is final (notary.x509.signingAuthority: unless the authentic signing time is before the revocation
 *     time, OCSP); an unreachable responder, a bad response or a stale one is "unknown";
 *   - the chain's result: the first revoked certificate from the root down, else the first unknown one, else OK.
 *
 * The trust policy's `revocation` setting decides what a failed result does (notation.ts): enforce denies, log only
 * logs, skip does not ask. Good and revoked answers are cached until the response's nextUpdate (at most `maxTTL`,
 * at most `cacheEntries` entries, least recently used out); unknown answers are not cached, so a responder that
 * comes back is asked again. Every request has a timeout and a response size cap; no redirect is followed.
 *
 * ASN.1, OCSP and CRL structures and their signatures: pkijs.
 */
import { createHash, X509Certificate as NodeX509 } from 'node:crypto';
import * as asn1js from 'asn1js';
import * as pkijs from 'pkijs';
import { LRUCache } from 'lru-cache';
import type { SignatureCode } from '../policy/codes.js';
import { SingleFlight } from '../util/single-flight.js';
import { errorText } from '../util/error-text.js';

export type RevocationResult = { ok: true } | { ok: false; code: Extract<SignatureCode, 'REVOKED' | 'REVOCATION_UNKNOWN'>; reason: string };

export interface RevocationChecker {
  /** The chain leaf first; `signingTime` only when it is authentic (notary.x509.signingAuthority). */
  check(chain: readonly NodeX509[], signingTime?: Date): Promise<RevocationResult>;
}

export interface RevocationOptions {
  now: () => number;
  /** Per request (OCSP or CRL download). */
  timeoutMs: number;
  cacheEntries: number;
  /** The longest an answer is reused, whatever its nextUpdate says. */
  maxTTL: number;
  maxResponseBytes: number;
}

/** One certificate's answer from one source. */
type Status = { status: 'good' } | { status: 'revoked'; at?: Date; reason?: string } | { status: 'unknown'; why: string };
type Sourced = Status & { source: string };

const OID = {
  aia: '1.3.6.1.5.5.7.1.1',
  ocspMethod: '1.3.6.1.5.5.7.48.1',
  ocspBasic: '1.3.6.1.5.5.7.48.1.1',
  crlDp: '2.5.29.31',
  crlReason: '2.5.29.21',
} as const;
const SKEW_MS = 5 * 60_000;
const MAX_URLS = 3;
const REASONS = [
  'unspecified',
  'keyCompromise',
  'cACompromise',
  'affiliationChanged',
  'superseded',
  'cessationOfOperation',
  'certificateHold',
  '',
  'removeFromCRL',
  'privilegeWithdrawn',
  'aACompromise',
];

const pk = (c: NodeX509): pkijs.Certificate => pkijs.Certificate.fromBER(new Uint8Array(c.raw));
const subjectOf = (c: NodeX509): string => c.subject.replace(/\n/g, ', ');

function uris(cert: pkijs.Certificate): { ocsp: string[]; crl: string[] } {
  const out = { ocsp: [] as string[], crl: [] as string[] };
  for (const x of cert.extensions ?? []) {
    if (x.extnID === OID.aia && x.parsedValue instanceof pkijs.InfoAccess) {
      for (const d of x.parsedValue.accessDescriptions)
        if (d.accessMethod === OID.ocspMethod && d.accessLocation.type === 6) out.ocsp.push(String(d.accessLocation.value));
    }
    if (x.extnID === OID.crlDp && x.parsedValue instanceof pkijs.CRLDistributionPoints) {
      for (const p of x.parsedValue.distributionPoints) {
        const names = Array.isArray(p.distributionPoint) ? p.distributionPoint : [];
        for (const n of names) if (n.type === 6) out.crl.push(String(n.value));
      }
    }
  }
  const http = (u: string): boolean => /^https?:\/\//i.test(u);
  // A few of each: every one may cost a full timeout when its responder is down.
  return { ocsp: out.ocsp.filter(http).slice(0, MAX_URLS), crl: out.crl.filter(http).slice(0, MAX_URLS) };
}

export class Revocation implements RevocationChecker {
  private readonly cache: LRUCache<string, { value: Status; until: number }>;
  private readonly flights = new SingleFlight<string, Status>();

  constructor(private readonly o: RevocationOptions) {
    this.cache = new LRUCache({ max: o.cacheEntries });
  }

  async check(chain: readonly NodeX509[], signingTime?: Date): Promise<RevocationResult> {
    const results: Array<{ cert: NodeX509; r: Sourced }> = [];
    for (let i = 0; i + 1 < chain.length; i++) results.push({ cert: chain[i]!, r: await this.one(chain[i]!, chain[i + 1]!, signingTime) });
    // From the root down: a revoked certificate anywhere decides; otherwise the first unknown one.
    const revoked = results.reverse().find((x) => x.r.status === 'revoked');
    if (revoked && revoked.r.status === 'revoked') {
      const when = revoked.r.at ? ` at ${revoked.r.at.toISOString()}` : '';
      const why = revoked.r.reason ? ` (${revoked.r.reason})` : '';
      return { ok: false, code: 'REVOKED', reason: `revoked (certificate "${subjectOf(revoked.cert)}" revoked${when}${why}, per ${revoked.r.source})` };
    }
    const unknown = results.find((x) => x.r.status === 'unknown');
    if (unknown && unknown.r.status === 'unknown') {
      return {
        ok: false,
        code: 'REVOCATION_UNKNOWN',
        reason: `revocation status unknown (certificate "${subjectOf(unknown.cert)}": ${unknown.r.why})`,
      };
    }
    return { ok: true };
  }

  private async one(cert: NodeX509, issuer: NodeX509, signingTime: Date | undefined): Promise<Sourced> {
    let c: pkijs.Certificate;
    let i: pkijs.Certificate;
    try {
      [c, i] = [pk(cert), pk(issuer)];
    } catch (e) {
      return { status: 'unknown', why: `certificate does not parse (${errorText(e)})`, source: 'certificate' };
    }
    const { ocsp, crl } = uris(c);
    if (ocsp.length === 0 && crl.length === 0) return { status: 'good', source: 'not revocable (no OCSP or CRL URL)' };
    const tried: string[] = [];
    for (const url of ocsp) {
      const r = await this.cached(`ocsp\n${url}\n${fingerprint(cert)}`, () => this.ocsp(url, c, i));
      if (r.status === 'revoked' && signingTime && r.at && signingTime < r.at) return { status: 'good', source: `OCSP ${url}` };
      if (r.status !== 'unknown') return { ...r, source: `OCSP ${url}` };
      tried.push(`OCSP ${url}: ${r.why}`);
    }
    for (const url of crl) {
      const r = await this.cached(`crl\n${url}\n${fingerprint(cert)}`, () => this.crl(url, c, i));
      if (r.status !== 'unknown') return { ...r, source: `CRL ${url}` };
      tried.push(`CRL ${url}: ${r.why}`);
    }
    return { status: 'unknown', why: tried.join('; '), source: 'none' };
  }

  /** Good and revoked answers are kept until their `until`; unknown ones never. */
  private async cached(key: string, load: () => Promise<{ value: Status; until: number }>): Promise<Status> {
    const hit = this.cache.get(key);
    const now = this.o.now();
    if (hit && hit.until > now) return hit.value;
    return this.flights.run(key, async () => {
      let got: { value: Status; until: number };
      try {
        got = await load();
      } catch (e) {
        return { status: 'unknown', why: errorText(e) };
      }
      const until = Math.min(got.until, now + this.o.maxTTL);
      if (got.value.status !== 'unknown' && until > now) this.cache.set(key, { value: got.value, until });
      return got.value;
    });
  }

  private async download(url: string, init: RequestInit): Promise<ArrayBuffer> {
    const res = await fetch(url, { ...init, redirect: 'error', signal: AbortSignal.timeout(this.o.timeoutMs) });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const declared = Number(res.headers.get('content-length') ?? 0);
    if (declared > this.o.maxResponseBytes) throw new Error(`response of ${declared} bytes is over the ${this.o.maxResponseBytes}-byte cap`);
    const chunks: Uint8Array[] = [];
    let size = 0;
    for await (const chunk of res.body ?? []) {
      size += (chunk as Uint8Array).length;
      if (size > this.o.maxResponseBytes) throw new Error(`response over the ${this.o.maxResponseBytes}-byte cap`);
      chunks.push(chunk as Uint8Array);
    }
    return new Uint8Array(Buffer.concat(chunks)).buffer;
  }

  private async ocsp(url: string, cert: pkijs.Certificate, issuer: pkijs.Certificate): Promise<{ value: Status; until: number }> {
    const unknown = (why: string): { value: Status; until: number } => ({ value: { status: 'unknown', why }, until: 0 });
    const req = new pkijs.OCSPRequest();
    await req.createForCertificate(cert, { hashAlgorithm: 'SHA-1', issuerCertificate: issuer });
    const body = await this.download(url, {
      method: 'POST',
      headers: { 'content-type': 'application/ocsp-request', accept: 'application/ocsp-response' },
      body: Buffer.from(req.toSchema(true).toBER(false)),
    });
    const res = pkijs.OCSPResponse.fromBER(body);
    const status = res.responseStatus.valueBlock.valueDec;
    if (status !== 0) return unknown(`OCSP response status ${status}`);
    if (res.responseBytes?.responseType !== OID.ocspBasic) return unknown('not a basic OCSP response');
    const basic = pkijs.BasicOCSPResponse.fromBER(res.responseBytes.response.valueBlock.valueHexView);
    let trusted: boolean;
    try {
      trusted = await basic.verify({ trustedCerts: [issuer] });
    } catch (e) {
      return unknown(`OCSP response signature not trusted (${errorText(e)})`);
    }
    if (!trusted) return unknown('OCSP response signature does not verify');
    const id = new pkijs.CertID();
    await id.createForCertificate(cert, { hashAlgorithm: 'SHA-1', issuerCertificate: issuer });
    const single = basic.tbsResponseData.responses.find((r) => r.certID.isEqual(id));
    if (!single) return unknown('the OCSP response is about another certificate');
    const now = this.o.now();
    if (single.thisUpdate.getTime() > now + SKEW_MS) return unknown('OCSP response thisUpdate is in the future');
    const next = single.nextUpdate?.getTime();
    if (next !== undefined && next <= now) return unknown(`stale OCSP response (nextUpdate ${new Date(next).toISOString()})`);
    // Without nextUpdate newer information is always available (RFC 6960 4.2.2.1): not cached.
    const until = next ?? 0;
    const tag = (single.certStatus as asn1js.BaseBlock).idBlock;
    if (tag.tagClass === 3 && tag.tagNumber === 0) return { value: { status: 'good' }, until };
    if (tag.tagClass === 3 && tag.tagNumber === 1) return { value: revokedInfo(single.certStatus as asn1js.Constructed), until };
    return unknown('the responder does not know the certificate');
  }

  private async crl(url: string, cert: pkijs.Certificate, issuer: pkijs.Certificate): Promise<{ value: Status; until: number }> {
    const unknown = (why: string): { value: Status; until: number } => ({ value: { status: 'unknown', why }, until: 0 });
    const crl = pkijs.CertificateRevocationList.fromBER(await this.download(url, { method: 'GET' }));
    if (!crl.issuer.isEqual(issuer.subject)) return unknown('the CRL is from another issuer');
    if (!(await crl.verify({ issuerCertificate: issuer }))) return unknown('CRL signature does not verify');
    const critical = (crl.crlExtensions?.extensions ?? []).filter((x) => x.critical);
    if (critical.length) return unknown(`CRL with critical extension ${critical[0]!.extnID} (delta and partial CRLs are not supported)`);
    const now = this.o.now();
    if (crl.thisUpdate.value.getTime() > now + SKEW_MS) return unknown('CRL thisUpdate is in the future');
    const next = crl.nextUpdate?.value.getTime();
    if (next === undefined) return unknown('CRL without nextUpdate');
    if (next <= now) return unknown(`stale CRL (nextUpdate ${new Date(next).toISOString()})`);
    const serial = Buffer.from(cert.serialNumber.valueBlock.valueHexView);
    const entry = (crl.revokedCertificates ?? []).find((r) => Buffer.from(r.userCertificate.valueBlock.valueHexView).equals(serial));
    if (!entry) return { value: { status: 'good' }, until: next };
    const reasonExt = entry.crlEntryExtensions?.extensions.find((x) => x.extnID === OID.crlReason);
    const code = reasonExt?.parsedValue instanceof asn1js.Enumerated ? reasonExt.parsedValue.valueBlock.valueDec : undefined;
    // removeFromCRL: the hold was lifted.
    if (code === 8) return { value: { status: 'good' }, until: next };
    const reason = code === undefined ? undefined : REASONS[code] || `reason ${code}`;
    return { value: { status: 'revoked', at: entry.revocationDate.value, ...(reason ? { reason } : {}) }, until: next };
  }
}

/** RevokedInfo ::= SEQUENCE { revocationTime GeneralizedTime, revocationReason [0] EXPLICIT CRLReason OPTIONAL } */
function revokedInfo(info: asn1js.Constructed): Status {
  const [time, reasonTagged] = info.valueBlock.value;
  const at = time instanceof asn1js.GeneralizedTime ? time.toDate() : undefined;
  const inner = reasonTagged instanceof asn1js.Constructed ? reasonTagged.valueBlock.value[0] : undefined;
  const code = inner instanceof asn1js.Enumerated ? inner.valueBlock.valueDec : undefined;
  const reason = code === undefined ? undefined : REASONS[code] || `reason ${code}`;
  return { status: 'revoked', ...(at ? { at } : {}), ...(reason ? { reason } : {}) };
}

function fingerprint(c: NodeX509): string {
  return createHash('sha256').update(c.raw).digest('hex');
}
