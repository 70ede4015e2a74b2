/**
 * Identities from verified client certificates (listener `tls.clientCA`). The TLS layer has already checked the
 * chain and validity (`rejectUnauthorized`); what is left is naming: the user is the first URI SAN (a SPIFFE ID
 * such as `spiffe://example.org/ns/ci/sa/runner`), else the first DNS SAN, else the subject CN, unless `user` says
 * otherwise; `map` rules (globs on the URI and DNS SANs and the CN) give groups and may rename the user.
 */
import { TLSSocket } from 'node:tls';
import { fail, type AuthOutcome, type AuthRequest, type Authenticator, type Identity } from './authenticator.js';

export interface MtlsMapping {
  uri?: string;
  dns?: string;
  cn?: string;
  /** Overrides the user name derived from the certificate. */
  user?: string;
  groups: string[];
}

export interface MtlsOptions {
  user: 'uri' | 'dns' | 'cn';
  map: MtlsMapping[];
}

export interface CertNames {
  cn: string | undefined;
  uris: string[];
  dns: string[];
}

export class MtlsAuthenticator implements Authenticator {
  readonly method = 'mtls' as const;

  constructor(private readonly o: MtlsOptions) {}

  authenticate(req: AuthRequest): Promise<AuthOutcome | undefined> {
    const socket = req.socket;
    if (!(socket instanceof TLSSocket)) return Promise.resolve(undefined);
    const cert = socket.getPeerCertificate();
    if (!cert || Object.keys(cert).length === 0) return Promise.resolve(undefined);
    // With `clientAuth: optional` an untrusted certificate still completes the handshake: it names nobody.
    if (!socket.authorized) return Promise.resolve(fail('CERT_INVALID', 'client certificate is not trusted'));
    const names = certNames(typeof cert.subject?.CN === 'string' ? cert.subject.CN : undefined, cert.subjectaltname);
    const identity = this.identityOf(names);
    return Promise.resolve(identity ? { ok: true, identity } : fail('CERT_INVALID', 'client certificate names no identity'));
  }

  identityOf(n: CertNames): Identity | undefined {
    const byPref = { uri: n.uris[0], dns: n.dns[0], cn: n.cn };
    let user = byPref[this.o.user] ?? n.uris[0] ?? n.dns[0] ?? n.cn;
    const groups = new Set<string>();
    for (const m of this.o.map) {
      const hit =
        (m.uri !== undefined && n.uris.some((u) => globMatch(m.uri!, u))) ||
        (m.dns !== undefined && n.dns.some((d) => globMatch(m.dns!, d))) ||
        (m.cn !== undefined && n.cn !== undefined && globMatch(m.cn, n.cn));
      if (!hit) continue;
      if (m.user !== undefined) user = m.user;
      for (const g of m.groups) groups.add(g);
      break;
    }
    if (user === undefined || user === '') return undefined;
    return { user, groups: [...groups].sort(), method: 'mtls' };
  }
}

/** Node's `subjectaltname` string: `DNS:a.example, URI:spiffe://x/y, IP Address:127.0.0.1`. */
export function certNames(cn: string | undefined, san: string | undefined): CertNames {
  const uris: string[] = [];
  const dns: string[] = [];
  for (const part of (san ?? '').split(', ')) {
    const i = part.indexOf(':');
    if (i <= 0) continue;
    const kind = part.slice(0, i);
    // Node quotes values that contain separators: "URI:\"spiffe://a/b, c\"".
    const value = part.slice(i + 1).replace(/^"(.*)"$/, '$1');
    if (kind === 'URI') uris.push(value);
    else if (kind === 'DNS') dns.push(value);
  }
  return { cn, uris, dns };
}

/**
 * Globs as in the policy: `*` and `?` stay within one `/`-separated component, `**` crosses them. Used for SPIFFE
 * IDs (`spiffe://example.org/ns/team-a/**`), DNS names and CNs.
 */
export function globMatch(pattern: string, s: string): boolean {
  let re = '';
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]!;
    if (c === '*' && pattern[i + 1] === '*') {
      re += '.*';
      i++;
    } else if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else re += c.replace(/[.+^${}()|[\]\\]/g, '\\$&');
  }
  return new RegExp(`^${re}$`).test(s);
}
