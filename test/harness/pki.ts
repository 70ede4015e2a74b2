/**
 * Test PKI made with the real `openssl` CLI: a CA, a server certificate for 127.0.0.1, client certificates (one
 * with a SPIFFE URI SAN, one expired, one from another CA). EC P-256 throughout; files in a temp directory.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { expectOk, runTool } from './clients.js';

export interface CertFiles {
  cert: string;
  key: string;
}

export interface Pki {
  dir: string;
  ca: string;
  otherCa: string;
  server: CertFiles;
  /** CN node-a, URI SAN spiffe://example.org/ns/team-a/sa/node. */
  nodeA: CertFiles;
  /** Same CA, URI SAN spiffe://example.org/ns/team-a/sa/old, notAfter in the past. */
  expired: CertFiles;
  /** CN intruder, signed by another CA, URI SAN spiffe://example.org/ns/team-a/sa/node. */
  foreign: CertFiles;
}

async function ossl(args: string[]): Promise<void> {
  expectOk(await runTool('openssl', args), `openssl ${args[0]}`);
}

async function makeCa(dir: string, name: string, extra: string[] = []): Promise<CertFiles> {
  const c = { cert: join(dir, `${name}.crt`), key: join(dir, `${name}.key`) };
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
    '2',
    '-subj',
    `/CN=${name}`,
    ...extra,
  ]);
  return c;
}

/** A self-signed certificate for 127.0.0.1 (its own trust anchor): for a test server that needs TLS and nothing more. */
export function selfSignedServer(dir: string, name = 'server'): Promise<CertFiles> {
  return makeCa(dir, name, ['-addext', 'subjectAltName=IP:127.0.0.1']);
}

async function issue(dir: string, ca: CertFiles, name: string, cn: string, ext: string, days: string): Promise<CertFiles> {
  const c = { cert: join(dir, `${name}.crt`), key: join(dir, `${name}.key`) };
  const csr = join(dir, `${name}.csr`);
  const extFile = join(dir, `${name}.ext`);
  await writeFile(extFile, `${ext}\n`);
  await ossl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', c.key, '-out', csr, '-subj', `/CN=${cn}`]);
  // A negative -days puts notAfter before now: an expired certificate without faking the clock.
  await ossl(['x509', '-req', '-in', csr, '-CA', ca.cert, '-CAkey', ca.key, '-CAcreateserial', '-out', c.cert, '-days', days, '-extfile', extFile]);
  return c;
}

export async function makePki(dir: string): Promise<Pki> {
  const ca = await makeCa(dir, 'ca');
  const other = await makeCa(dir, 'other-ca');
  const client = 'extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE';
  return {
    dir,
    ca: ca.cert,
    otherCa: other.cert,
    server: await issue(
      dir,
      ca,
      'server',
      'portcullis',
      'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE',
      '2',
    ),
    nodeA: await issue(dir, ca, 'node-a', 'node-a', `subjectAltName=URI:spiffe://example.org/ns/team-a/sa/node\n${client}`, '2'),
    expired: await issue(dir, ca, 'expired', 'old', `subjectAltName=URI:spiffe://example.org/ns/team-a/sa/old\n${client}`, '-1'),
    foreign: await issue(dir, other, 'foreign', 'intruder', `subjectAltName=URI:spiffe://example.org/ns/team-a/sa/node\n${client}`, '2'),
  };
}
