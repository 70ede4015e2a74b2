/**
 * Test harness: a private code-signing PKI made with the real `openssl` CLI, for cosign's own-PKI signing
 * (`cosign sign --key <key> --certificate <leaf> --certificate-chain <chain>`), and an RFC 3161 timestamp authority
 * (`openssl ts -reply`) behind a loopback HTTP handler, for `cosign sign --timestamp-server-url`.
 *
 * EC P-256 throughout; files in the given directory. Leaves carry the code-signing EKU (cosign and Fulcio want it)
 * and may carry Fulcio's issuer extension (1.3.6.1.4.1.57264.1.8, a UTF8String), as an in-house CA can.
 */
import { readFile, writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { expectOk, runTool } from './clients.js';

export interface CertFiles {
  cert: string;
  key: string;
}

async function ossl(args: string[], cwd?: string): Promise<void> {
  expectOk(await runTool('openssl', args, cwd ? { cwd } : {}), `openssl ${args[0]}`);
}

/** A self-signed root CA. */
export async function makeRoot(dir: string, name: string): Promise<CertFiles> {
  const c = { cert: join(dir, `${name}.crt`), key: join(dir, `${name}.key`) };
  const ext = join(dir, `${name}.ext`);
  await writeFile(ext, '[v3]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n');
  await ossl([
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:P-256',
    '-nodes',
    '-keyout',
    c.key,
    '-out',
    c.cert,
    '-days',
    '3',
    '-subj',
    `/O=Portcullis Test/CN=${name}`,
    '-extensions',
    'v3',
    '-config',
    ext,
  ]);
  return c;
}

/**
 * A certificate issued by `ca`. `ext` is the x509v3 extension text; `days` may be negative (notAfter in the past:
 * an expired certificate without faking the clock).
 */
export async function issue(dir: string, ca: CertFiles, name: string, ext: string, days = '2'): Promise<CertFiles> {
  const c = { cert: join(dir, `${name}.crt`), key: join(dir, `${name}.key`) };
  const csr = join(dir, `${name}.csr`);
  const extFile = join(dir, `${name}.ext`);
  await writeFile(extFile, `${ext}\nauthorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n`);
  await ossl([
    'req',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:P-256',
    '-nodes',
    '-keyout',
    c.key,
    '-out',
    csr,
    '-subj',
    `/O=Portcullis Test/CN=${name}`,
  ]);
  await ossl(['x509', '-req', '-in', csr, '-CA', ca.cert, '-CAkey', ca.key, '-CAcreateserial', '-out', c.cert, '-days', days, '-extfile', extFile]);
  return c;
}

export const INTERMEDIATE_EXT = 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign';

/** A code-signing leaf: SAN (`email:…` or `URI:…`), optionally Fulcio's v2 issuer extension. */
export function leafExt(san: string, issuer?: string): string {
  return [
    'basicConstraints=critical,CA:FALSE',
    'keyUsage=critical,digitalSignature',
    'extendedKeyUsage=codeSigning',
    `subjectAltName=${san}`,
    ...(issuer ? [`1.3.6.1.4.1.57264.1.8=ASN1:UTF8String:${issuer}`] : []),
  ].join('\n');
}

/** Concatenated PEM files (a chain file: parent first, root last). */
export async function concat(out: string, files: string[]): Promise<string> {
  const parts = await Promise.all(files.map((f) => readFile(f, 'utf8')));
  await writeFile(out, parts.map((p) => (p.endsWith('\n') ? p : `${p}\n`)).join(''));
  return out;
}

export interface LocalTsa {
  url: string;
  /** PEM: the TSA's signing certificate, its issuing CA (the chain a trusted root lists, leaf first). */
  cert: string;
  ca: string;
  requests(): number;
  stop(): Promise<void>;
}

/**
 * An RFC 3161 TSA: POST application/timestamp-query → `openssl ts -reply` with a TSA certificate (critical
 * timeStamping EKU) issued by its own CA → application/timestamp-reply.
 */
export async function startTsa(dir: string, name = 'tsa'): Promise<LocalTsa> {
  const ca = await makeRoot(dir, `${name}-ca`);
  const tsa = await issue(dir, ca, name, 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=critical,timeStamping');
  const conf = join(dir, `${name}.cnf`);
  await writeFile(join(dir, `${name}.serial`), '01\n');
  await writeFile(
    conf,
    [
      '[tsa]',
      'default_tsa = tsa_config',
      '[tsa_config]',
      `dir = ${dir}`,
      `serial = ${join(dir, `${name}.serial`)}`,
      'crypto_device = builtin',
      `signer_cert = ${tsa.cert}`,
      `certs = ${ca.cert}`,
      `signer_key = ${tsa.key}`,
      'signer_digest = sha256',
      'default_policy = 1.3.6.1.4.1.57264.2',
      'digests = sha256, sha384, sha512',
      'accuracy = secs:1',
      'ordering = no',
      'tsa_name = no',
      'ess_cert_id_chain = no',
      'ess_cert_id_alg = sha256',
      '',
    ].join('\n'),
  );
  let count = 0;
  let seq = 0;
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      void (async () => {
        if (req.method !== 'POST') {
          res.writeHead(405).end();
          return;
        }
        count++;
        const n = ++seq;
        const query = join(dir, `${name}-${n}.tsq`);
        const reply = join(dir, `${name}-${n}.tsr`);
        try {
          await writeFile(query, Buffer.concat(chunks));
          await ossl(['ts', '-reply', '-config', conf, '-queryfile', query, '-out', reply, '-chain', ca.cert]);
          res.writeHead(200, { 'content-type': 'application/timestamp-reply' }).end(await readFile(reply));
        } catch (e) {
          res.writeHead(500).end((e as Error).message);
        }
      })();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/api/v1/timestamp`,
    cert: tsa.cert,
    ca: ca.cert,
    requests: () => count,
    async stop() {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}
