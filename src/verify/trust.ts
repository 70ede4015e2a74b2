/**
 * Trust material per authority, loaded from the files the config names: cosign public keys, Sigstore
 * trusted_root.json files, Notation trust stores. The trust revision is a hash over the authority config and the
 * bytes of every file it reads, so cached verification results and decisions lapse exactly when trust changes.
 *
 * Loading is synchronous (startup and the occasional reload) and every error names the authority.
 */
import { createHash, createPublicKey, X509Certificate as NodeX509, type KeyObject } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { X509Certificate } from '@sigstore/core';
import { TrustedRoot } from '@sigstore/protobuf-specs';
import { toTrustMaterial, type TrustMaterial } from '@sigstore/verify';
import { parseDistinguishedName, type AuthorityConfig, type SignaturesConfig } from '../config/signatures.js';
import { lastGoodPath } from './tuf.js';

export interface KeyAuthority {
  name: string;
  kind: 'key';
  key: KeyObject;
  /** sha256 of the DER SubjectPublicKeyInfo, hex: what key hints are compared with. */
  keyId: string;
  /** Trust material (Rekor keys) when a trustedRoot is configured; the key itself is resolved by hint. */
  trust: TrustMaterial | undefined;
  tlogThreshold: number;
}

export interface KeylessAuthority {
  name: string;
  kind: 'keyless';
  /** Compared with the certificate's issuer extension; undefined (own PKI only): not checked. */
  issuer: string | undefined;
  subject: { exact: string } | { regex: RegExp; source: string };
  extensions: Array<{ oid: string; value: string }>;
  /** From the trusted root: Fulcio CAs, Rekor and CT logs, TSAs. Empty (no trusted root) for a `ca` without one. */
  trust: TrustMaterial;
  /** Own PKI (cosign-pki.ts): signing certificates chain to these roots, not to the trusted root's Fulcio CAs. */
  ca: { roots: X509Certificate[]; intermediates: X509Certificate[] } | undefined;
  tlogThreshold: number;
  ctlogThreshold: number;
  timestampThreshold: number;
  /** RFC 3161 timestamps from the trusted root's TSAs (counted apart from tlog times). */
  tsaThreshold: number;
}

export interface NotationAuthority {
  name: string;
  kind: 'notation';
  roots: NodeX509[];
  /** Each a set of RDNs that must all be present in the leaf subject; `'*'` accepts any subject. */
  identities: Array<Map<string, string>> | '*';
  expiry: 'enforce' | 'log';
  signingTime: 'enforce' | 'log';
  /** Notation's `tsa` trust store; empty: timestamps are not used. */
  tsaRoots: NodeX509[];
  verifyTimestamp: 'always' | 'afterCertExpiry';
  revocation: 'enforce' | 'log' | 'skip';
}

export type Authority = KeyAuthority | KeylessAuthority | NotationAuthority;

export interface Trust {
  authorities: Authority[];
  revision: string;
  /** Every file read, with the stat signature seen when it was read (for change detection). */
  files: Map<string, string>;
}

export class TrustLoadError extends Error {
  constructor(authority: string, message: string) {
    super(`signatures.authorities: authority "${authority}": ${message}`);
    this.name = 'TrustLoadError';
  }
}

const CERT_EXT = /\.(pem|crt|cer|der)$/i;

/**
 * Loads every authority; throws a TrustLoadError naming the authority on the first problem. `offline` (config
 * check): a TUF-fed trusted root not fetched yet is not an error (serving fetches it first, src/verify/index.ts).
 */
export function loadTrust(config: SignaturesConfig, opts: { offline?: boolean } = {}): Trust {
  const hash = createHash('sha256');
  const files = new Map<string, string>();
  const read = (authority: string, what: string, path: string): Buffer => {
    let bytes: Buffer;
    try {
      bytes = readFileSync(path);
      files.set(path, statSignature(path));
    } catch (e) {
      throw new TrustLoadError(authority, `cannot read ${what} ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    hash.update(`file\0${path}\0${bytes.length}\0`).update(bytes);
    return bytes;
  };
  hash.update(JSON.stringify(config.authorities));
  const authorities = config.authorities.map((a): Authority => {
    switch (a.kind) {
      case 'key':
        return loadKeyAuthority(a, read);
      case 'keyless':
        return loadKeylessAuthority(a, read, opts.offline ?? false);
      case 'notation':
        return loadNotationAuthority(a, read, files);
    }
  });
  return { authorities, revision: hash.digest('hex').slice(0, 16), files };
}

type Reader = (authority: string, what: string, path: string) => Buffer;

function loadKeyAuthority(a: Extract<AuthorityConfig, { kind: 'key' }>, read: Reader): KeyAuthority {
  const pem = read(a.name, 'key file', a.key);
  let key: KeyObject;
  try {
    key = createPublicKey(pem);
  } catch (e) {
    throw new TrustLoadError(a.name, `${a.key} is not a PEM public key: ${(e as Error).message}`);
  }
  checkKeyType(a.name, key);
  const der = key.export({ format: 'der', type: 'spki' });
  const trust = a.trustedRoot ? trustMaterial(a.name, read(a.name, 'trusted root', a.trustedRoot), key) : undefined;
  return { name: a.name, kind: 'key', key, keyId: createHash('sha256').update(der).digest('hex'), trust, tlogThreshold: a.tlogThreshold };
}

function checkKeyType(authority: string, key: KeyObject): void {
  const t = key.asymmetricKeyType;
  const d = key.asymmetricKeyDetails ?? {};
  if (t === 'ec') {
    if (!['prime256v1', 'secp384r1', 'secp521r1'].includes(d.namedCurve ?? ''))
      throw new TrustLoadError(authority, `unsupported EC curve ${d.namedCurve} (use P-256, P-384 or P-521)`);
  } else if (t === 'rsa' || t === 'rsa-pss') {
    if ((d.modulusLength ?? 0) < 2048) throw new TrustLoadError(authority, `RSA key of ${d.modulusLength} bits is too short (at least 2048)`);
  } else if (t !== 'ed25519') {
    throw new TrustLoadError(authority, `unsupported key type ${t} (use ECDSA, RSA or Ed25519)`);
  }
}

function trustMaterial(authority: string, bytes: Buffer, key?: KeyObject): TrustMaterial {
  let root: TrustedRoot;
  try {
    root = TrustedRoot.fromJSON(JSON.parse(bytes.toString('utf8')));
  } catch (e) {
    throw new TrustLoadError(authority, `trusted root is not a valid trusted_root.json: ${(e as Error).message}`);
  }
  try {
    return toTrustMaterial(root, key ? () => ({ publicKey: key, validFor: () => true }) : undefined);
  } catch (e) {
    throw new TrustLoadError(authority, `unusable trusted root: ${(e as Error).message}`);
  }
}

/** Trust material with nothing in it: an own-PKI authority without a trusted root (no logs, no TSAs). */
const NO_TRUST: TrustMaterial = {
  certificateAuthorities: [],
  timestampAuthorities: [],
  tlogs: [],
  ctlogs: [],
  publicKey: () => {
    throw new Error('no keys');
  },
};

function keylessTrustedRoot(a: Extract<AuthorityConfig, { kind: 'keyless' }>, read: Reader, offline: boolean): Buffer | undefined {
  const src = a.trustedRoot;
  if (src === undefined) return undefined;
  if (typeof src === 'string') return read(a.name, 'trusted root', src);
  // TUF: the pinned root is part of the revision; the trusted root is the last good copy the updater verified.
  read(a.name, 'TUF root', src.tuf.root);
  const copy = lastGoodPath(src.tuf);
  if (!existsSync(copy)) {
    if (offline) return undefined;
    throw new TrustLoadError(
      a.name,
      `no trusted root from the TUF repository ${src.tuf.mirror} yet (none fetched, and no last good copy in ${src.tuf.cacheDir})`,
    );
  }
  return read(a.name, 'trusted root (last good copy from TUF)', copy);
}

function loadCertificates(authority: string, read: Reader, what: string, paths: string[]): X509Certificate[] {
  return paths.flatMap((p) => {
    const certs = parseCertificates(read(authority, what, p));
    if (certs.length === 0) throw new TrustLoadError(authority, `${p} holds no X.509 certificate`);
    return certs.map((c) => X509Certificate.parse(c.raw));
  });
}

function loadKeylessAuthority(a: Extract<AuthorityConfig, { kind: 'keyless' }>, read: Reader, offline: boolean): KeylessAuthority {
  const rootBytes = keylessTrustedRoot(a, read, offline);
  const trust = rootBytes ? trustMaterial(a.name, rootBytes) : NO_TRUST;
  const ca = a.ca
    ? { roots: loadCertificates(a.name, read, 'CA root', a.ca.roots), intermediates: loadCertificates(a.name, read, 'CA intermediate', a.ca.intermediates) }
    : undefined;
  if (ca) {
    for (const r of ca.roots) if (!r.isCA) throw new TrustLoadError(a.name, `root ${r.subject.toString('hex').slice(0, 16)}… is not a CA certificate`);
  }
  const { tlogThreshold, ctlogThreshold, timestampThreshold } = a;
  if (!ca && rootBytes && trust.certificateAuthorities.length === 0)
    throw new TrustLoadError(a.name, 'the trusted root has no certificate authorities (Fulcio)');
  if (rootBytes || !offline) {
    if (tlogThreshold > 0 && trust.tlogs.length === 0)
      throw new TrustLoadError(a.name, `tlogThreshold ${tlogThreshold} but the trusted root has no transparency logs`);
    if (ctlogThreshold > 0 && trust.ctlogs.length === 0)
      throw new TrustLoadError(a.name, `ctlogThreshold ${ctlogThreshold} but the trusted root has no CT logs`);
    if (a.tsaThreshold > 0 && trust.timestampAuthorities.length === 0)
      throw new TrustLoadError(a.name, `tsaThreshold ${a.tsaThreshold} but the trusted root has no timestamp authorities`);
  }
  const subject = a.subject !== undefined ? { exact: a.subject } : { regex: new RegExp(`^(?:${a.subjectRegExp!})$`, 'u'), source: a.subjectRegExp! };
  return {
    name: a.name,
    kind: 'keyless',
    issuer: a.issuer,
    subject,
    extensions: Object.entries(a.extensions).map(([oid, value]) => ({ oid, value })),
    trust,
    ca,
    tlogThreshold,
    ctlogThreshold,
    timestampThreshold,
    tsaThreshold: a.tsaThreshold,
  };
}

function loadNotationAuthority(a: Extract<AuthorityConfig, { kind: 'notation' }>, read: Reader, files: Map<string, string>): NotationAuthority {
  const roots = loadStore(a.name, a.trustStore, 'trust store', read, files);
  if (roots.length === 0) throw new TrustLoadError(a.name, 'the trust store holds no certificates');
  const tsaRoots = loadStore(a.name, a.tsaTrustStore, 'TSA trust store', read, files);
  if (a.tsaTrustStore.length > 0 && tsaRoots.length === 0) throw new TrustLoadError(a.name, 'the TSA trust store holds no certificates');
  const ids = a.trustedIdentities.map((s) => s.trim());
  const identities = ids.includes('*') ? '*' : ids.map((s) => parseDistinguishedName(s.replace(/^x509\.subject:\s*/, ''))!);
  return {
    name: a.name,
    kind: 'notation',
    roots,
    identities,
    expiry: a.expiry,
    signingTime: a.signingTime,
    tsaRoots,
    verifyTimestamp: a.verifyTimestamp,
    revocation: a.revocation,
  };
}

/** Certificates from files, or directories of them (like a Notation `x509/<type>/<store>` directory). */
function loadStore(authority: string, entries: string[], what: string, read: Reader, files: Map<string, string>): NodeX509[] {
  const out: NodeX509[] = [];
  for (const entry of entries) {
    let paths: string[];
    try {
      paths = statSync(entry).isDirectory()
        ? readdirSync(entry)
            .filter((f) => CERT_EXT.test(f))
            .sort()
            .map((f) => join(entry, f))
            .filter((p) => statSync(p).isFile())
        : [entry];
      if (statSync(entry).isDirectory()) files.set(entry, statSignature(entry));
    } catch (e) {
      throw new TrustLoadError(authority, `cannot read ${what} ${entry}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    for (const p of paths) {
      const certs = parseCertificates(read(authority, `${what} certificate`, p));
      if (certs.length === 0) throw new TrustLoadError(authority, `${p} holds no X.509 certificate`);
      out.push(...certs);
    }
  }
  return out;
}

/** PEM (one or more CERTIFICATE blocks) or a single DER certificate. */
export function parseCertificates(bytes: Buffer): NodeX509[] {
  const text = bytes.toString('latin1');
  if (text.includes('-----BEGIN CERTIFICATE-----')) {
    const blocks = text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
    return blocks.map((b) => new NodeX509(b));
  }
  try {
    return [new NodeX509(bytes)];
  } catch {
    return [];
  }
}

function statSignature(path: string): string {
  try {
    const s = statSync(path);
    return `${s.size}:${s.mtimeMs}:${s.ino}`;
  } catch {
    return 'missing';
  }
}

/** True when any file read for this trust has changed since (size, mtime or inode; a directory's listing). */
export function trustFilesChanged(trust: Trust): boolean {
  for (const [path, sig] of trust.files) if (statSignature(path) !== sig) return true;
  return false;
}
