/**
 * Test harness: a local Sigstore (Fulcio CA with a CT log, Rekor) on a loopback HTTP server, built from
 * `@sigstore/mock`, plus the `trusted_root.json` that verifies what it issues.
 *
 * Endpoints:
 *   POST /api/v2/signingCert      Fulcio v2 (JSON chain; @sigstore/sign, cosign 3)          — @sigstore/mock (a
 *                                 bearer token, as sigstore-go sends it, is moved into the body the mock reads)
 *   POST /api/v1/signingCert      Fulcio v1 "legacy" (PEM chain body; cosign 2)             — here, on the mock CA
 *   POST /api/v1/log/entries      Rekor v1 (SET and inclusion proof)                        — @sigstore/mock
 *   GET  /api/v1/log/publicKey    Rekor's public key (PEM)
 *   GET  /api/v1/rootCert         Fulcio's root (PEM)
 *
 * Identity tokens are real RS256 JWTs from a throw-away key (cosign 2 takes a raw token only when it parses as an
 * RS256 JWS); neither the mock nor cosign checks their signature. The subject claim becomes the certificate's
 * URI SAN, the issuer claim the Fulcio issuer extensions.
 */
import { createHash, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fulcioHandler, initializeCA, initializeCTLog, initializeTLog, rekorHandler, type HandlerFn } from '@sigstore/mock';
import { TransparencyLogEntry } from '@sigstore/protobuf-specs';
import { SignJWT } from 'jose';

export interface LocalSigstore {
  url: string;
  /** Path of a trusted_root.json for this instance (Fulcio root, Rekor key, CT log key). */
  trustedRootPath: string;
  trustedRoot: Record<string, unknown>;
  /** PEM files for cosign's environment overrides (SIGSTORE_ROOT_FILE, SIGSTORE_REKOR_PUBLIC_KEY, SIGSTORE_CT_LOG_PUBLIC_KEY_FILE). */
  files: { fulcioRoot: string; rekorKey: string; ctlogKey: string };
  /** An OIDC identity token for this subject and issuer. */
  token(subject: string, issuer: string): Promise<string>;
  requests(): string[];
  stop(): Promise<void>;
}

const ec = (): { publicKey: KeyObject; privateKey: KeyObject } => generateKeyPairSync('ec', { namedCurve: 'P-256' });
const pem = (label: string, der: Buffer): string =>
  `-----BEGIN ${label}-----\n${der
    .toString('base64')
    .replace(/(.{64})/g, '$1\n')
    .replace(/\n$/, '')}\n-----END ${label}-----\n`;

export async function startLocalSigstore(): Promise<LocalSigstore> {
  const dir = await mkdtemp(join(tmpdir(), 'pc-sigstore-'));
  const server = http.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

  const ctKeys = ec();
  const ctLog = await initializeCTLog(ctKeys);
  const ca = await initializeCA(ec(), ctLog);
  const tlogKeys = ec();
  const tlog = await initializeTLog(url, tlogKeys);
  // cosign 2 accepts a raw token only when it parses as an RS256 JWS.
  const jwtKeys = generateKeyPairSync('rsa', { modulusLength: 2048 });

  const handlers = new Map<string, HandlerFn>();
  for (const h of [fulcioHandler(ca), rekorHandler(tlog)]) handlers.set(h.path, h.fn);
  const log: string[] = [];

  const rootPem = pem('CERTIFICATE', Buffer.from(ca.rootCertificate.buffer, ca.rootCertificate.byteOffset, ca.rootCertificate.byteLength));
  const rekorDer = tlog.publicKey;
  const ctDer = ctLog.publicKey;

  /** Fulcio v1: `{publicKey: {content: base64(PEM)}, signedEmailAddress}` → PEM leaf then chain, SCT embedded. */
  const legacyFulcio = async (body: string, authorization: string | undefined): Promise<{ status: number; body: string; headers?: Record<string, string> }> => {
    const req = JSON.parse(body) as { publicKey?: { content?: string } };
    const token = /^Bearer (.+)$/.exec(authorization ?? '')?.[1];
    if (!token || !req.publicKey?.content) return { status: 400, body: 'missing token or public key' };
    const claims = JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString('utf8')) as { sub?: string; iss?: string; email?: string };
    const keyPem = Buffer.from(req.publicKey.content, 'base64').toString('utf8');
    const der = Buffer.from(keyPem.replace(/-----(BEGIN|END) [A-Z ]+-----/g, '').replace(/\s/g, ''), 'base64');
    const issuer = claims.iss ?? 'https://fake.oidcissuer.com';
    const cert = await ca.issueCertificate({
      publicKey: der,
      subjectAltName: claims.email ?? claims.sub ?? 'NO-SUBJECT',
      extensions: [
        { oid: '1.3.6.1.4.1.57264.1.1', value: issuer, legacy: true },
        { oid: '1.3.6.1.4.1.57264.1.8', value: issuer },
      ],
    });
    const leaf = pem('CERTIFICATE', Buffer.from(cert.buffer, cert.byteOffset, cert.byteLength));
    return { status: 201, body: leaf + rootPem, headers: { 'content-type': 'application/pem-certificate-chain', sct: '' } };
  };

  server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const path = (req.url ?? '/').split('?')[0]!;
      log.push(`${req.method} ${path}`);
      const body = Buffer.concat(chunks).toString('utf8');
      const send = (status: number, text: string | Buffer, headers: Record<string, string> = {}): void => {
        res.writeHead(status, headers);
        res.end(text);
      };
      void (async () => {
        try {
          if (req.method === 'POST' && path === '/api/v1/signingCert') {
            const r = await legacyFulcio(body, req.headers.authorization);
            return send(r.status, r.body, r.headers);
          }
          if (req.method === 'POST' && path === '/api/v2/log/entries') {
            const entry = rekorV2Entry(body);
            const logged = await tlog.logV2(entry as never);
            logged.kindVersion = { kind: entry.kind, version: entry.apiVersion };
            // The mock proves inclusion in a one-entry tree: the entry is index 0 of it.
            logged.logIndex = '0';
            // …and its root hash is that leaf's hash (the mock encodes it as hex, then decodes it as base64).
            if (logged.inclusionProof) {
              logged.inclusionProof.logIndex = '0';
              logged.inclusionProof.rootHash = createHash('sha256')
                .update(Buffer.from([0]))
                .update(logged.canonicalizedBody)
                .digest();
            }
            return send(201, JSON.stringify(TransparencyLogEntry.toJSON(logged)), { 'content-type': 'application/json' });
          }
          if (req.method === 'GET' && path === '/api/v1/log/publicKey')
            return send(200, pem('PUBLIC KEY', rekorDer), { 'content-type': 'application/x-pem-file' });
          if (req.method === 'GET' && path === '/api/v1/rootCert') return send(200, rootPem, { 'content-type': 'application/pem-certificate-chain' });
          const h = handlers.get(path);
          if (req.method === 'POST' && h) {
            const input =
              path === '/api/v1/log/entries'
                ? normalizeRekorEntry(body)
                : path === '/api/v2/signingCert'
                  ? withTokenInBody(body, req.headers.authorization)
                  : body;
            const r = await h(input);
            const payload = typeof r.response === 'string' ? r.response : Buffer.from(r.response.buffer, r.response.byteOffset, r.response.byteLength);
            // Fulcio's v2 API answers 200 (sigstore-go insists); the mock says 201.
            const status = path === '/api/v2/signingCert' && r.statusCode === 201 ? 200 : r.statusCode;
            const headers: Record<string, string> = { 'content-type': r.contentType ?? 'text/plain' };
            // Rekor names the new entry's UUID in ETag and Location; the Go client looks the entry up by ETag.
            if (path === '/api/v1/log/entries' && r.statusCode === 201) {
              const uuid = Object.keys(JSON.parse(payload.toString()) as object)[0] ?? '';
              Object.assign(headers, { etag: uuid, location: `/api/v1/log/entries/${uuid}` });
            }
            return send(status, payload, headers);
          }
          send(404, `no handler for ${req.method} ${path}`);
        } catch (e) {
          send(500, (e as Error).message);
        }
      })();
    });
  });

  const start = new Date(Date.now() - 3_600_000).toISOString();
  const trustedRoot = {
    mediaType: 'application/vnd.dev.sigstore.trustedroot+json;version=0.1',
    tlogs: [
      {
        baseUrl: url,
        hashAlgorithm: 'SHA2_256',
        publicKey: { rawBytes: rekorDer.toString('base64'), keyDetails: 'PKIX_ECDSA_P256_SHA_256', validFor: { start } },
        logId: { keyId: createHash('sha256').update(rekorDer).digest('base64') },
      },
    ],
    certificateAuthorities: [
      {
        subject: { organization: 'sigstore.mock', commonName: 'sigstore' },
        uri: url,
        certChain: {
          certificates: [{ rawBytes: Buffer.from(ca.rootCertificate.buffer, ca.rootCertificate.byteOffset, ca.rootCertificate.byteLength).toString('base64') }],
        },
        validFor: { start },
      },
    ],
    ctlogs: [
      {
        baseUrl: url,
        hashAlgorithm: 'SHA2_256',
        publicKey: { rawBytes: ctDer.toString('base64'), keyDetails: 'PKIX_ECDSA_P256_SHA_256', validFor: { start } },
        logId: { keyId: Buffer.from(ctLog.logID.buffer, ctLog.logID.byteOffset, ctLog.logID.byteLength).toString('base64') },
      },
    ],
    timestampAuthorities: [],
  };
  const trustedRootPath = join(dir, 'trusted_root.json');
  await writeFile(trustedRootPath, JSON.stringify(trustedRoot, null, 2));
  const files = { fulcioRoot: join(dir, 'fulcio-root.pem'), rekorKey: join(dir, 'rekor.pub'), ctlogKey: join(dir, 'ctlog.pub') };
  await writeFile(files.fulcioRoot, rootPem);
  await writeFile(files.rekorKey, pem('PUBLIC KEY', rekorDer));
  await writeFile(files.ctlogKey, pem('PUBLIC KEY', ctDer));

  return {
    url,
    trustedRootPath,
    trustedRoot,
    files,
    token: (subject, issuer) =>
      new SignJWT({ sub: subject, iss: issuer, aud: 'sigstore' })
        .setProtectedHeader({ alg: 'RS256' })
        .setIssuedAt()
        .setExpirationTime('1h')
        .sign(jwtKeys.privateKey),
    requests: () => [...log],
    async stop() {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/**
 * Real Rekor stores a `dsse` entry in a canonical form (hashes and signatures, not the proposed envelope); the mock
 * logs whatever it is sent. Convert, so that verifiers see what the real log would have signed.
 */
function normalizeRekorEntry(body: string): string {
  let e: { kind?: string; apiVersion?: string; spec?: { proposedContent?: { envelope?: string; verifiers?: string[] } } };
  try {
    e = JSON.parse(body) as typeof e;
  } catch {
    return body;
  }
  const pc = e.spec?.proposedContent;
  if (e.kind !== 'dsse' || !pc?.envelope) return body;
  const env = JSON.parse(pc.envelope) as { payload: string; signatures: Array<{ sig: string }> };
  const sha = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');
  return JSON.stringify({
    apiVersion: '0.0.1',
    kind: 'dsse',
    spec: {
      envelopeHash: { algorithm: 'sha256', value: sha(pc.envelope) },
      payloadHash: { algorithm: 'sha256', value: sha(Buffer.from(env.payload, 'base64')) },
      signatures: env.signatures.map((s, i) => ({ signature: s.sig, verifier: pc.verifiers?.[i] ?? pc.verifiers?.[0] ?? '' })),
    },
  });
}

/** sigstore-go (cosign 3) sends the identity token as a bearer token; the mock reads it from the body. */
function withTokenInBody(body: string, authorization: string | undefined): string {
  const token = /^Bearer (.+)$/.exec(authorization ?? '')?.[1];
  if (!token) return body;
  try {
    const req = JSON.parse(body) as { credentials?: { oidcIdentityToken?: string } };
    if (req.credentials?.oidcIdentityToken) return body;
    return JSON.stringify({ ...req, credentials: { oidcIdentityToken: token } });
  } catch {
    return body;
  }
}

/**
 * Rekor v2: the entry the real log stores for a create request (its canonical `Entry`, what verifiers compare),
 * which the mock's v2 handler does not build (it logs the request as it came).
 */
function rekorV2Entry(body: string): { apiVersion: string; kind: string; spec: Record<string, unknown> } {
  const req = JSON.parse(body) as {
    dsseRequestV002?: { envelope: { payload: string; signatures: Array<{ sig: string }> }; verifiers: unknown[] };
    hashedRekordRequestV002?: { digest: string; signature: unknown };
  };
  if (req.dsseRequestV002) {
    const d = req.dsseRequestV002;
    const digest = createHash('sha256').update(Buffer.from(d.envelope.payload, 'base64')).digest('base64');
    return {
      apiVersion: '0.0.2',
      kind: 'dsse',
      spec: {
        dsseV002: {
          payloadHash: { algorithm: 'SHA2_256', digest },
          signatures: d.envelope.signatures.map((sg, i) => ({ content: sg.sig, verifier: d.verifiers[i] ?? d.verifiers[0] })),
        },
      },
    };
  }
  const h = req.hashedRekordRequestV002!;
  return {
    apiVersion: '0.0.2',
    kind: 'hashedrekord',
    spec: { hashedRekordV002: { data: { algorithm: 'SHA2_256', digest: h.digest }, signature: h.signature } },
  };
}
