/**
 * A Notary Project PKI made with the real `openssl` CLI, and the services that go with it, all on 127.0.0.1:
 *
 *   - a signing CA run with `openssl ca` (its index.txt is what the OCSP responder and the CRL are made from);
 *     leaf certificates fit for `notation sign` (digitalSignature, codeSigning), each with an AIA OCSP URL and a CRL
 *     distribution point on loopback, or neither;
 *   - two RFC 3161 TSAs: `openssl ts -reply` behind a tiny HTTP handler, each with its own root;
 *   - an OCSP responder: `openssl ocsp -index … -reqin … -respout …` per request behind a loopback HTTP handler;
 *   - the CA's CRL (`openssl ca -gencrl`) served over HTTP.
 *
 * EC P-256 throughout. Everything lives in one temp directory the caller removes.
 */
import { X509Certificate } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { expectOk, requireTool, runTool } from './clients.js';
import { freePort } from './registry.js';

export interface Leaf {
  cert: string;
  key: string;
  /** Leaf then CA, the file `notation` signs with (signingkeys.json certPath). */
  chain: string;
}

export interface Tsa {
  url: string;
  root: string;
  /** The TSA's own certificate (for `revoke` when the signing CA issued it). */
  cert: string;
  stop(): Promise<void>;
}

export interface NotationPki {
  dir: string;
  /** The signing CA (self-signed root): the Notation trust store. */
  root: string;
  /** Where the AIA and CDP extensions of revocable leaves point. */
  ocspUrl: string;
  crlUrl: string;
  leaf(name: string, opts?: { days?: number; revocable?: boolean }): Promise<Leaf>;
  revoke(leaf: Pick<Leaf, 'cert'>, reason?: string): Promise<void>;
  /** OCSP requests answered so far (what a cache saves). */
  readonly ocspRequests: number;
  /** Starts the OCSP responder on its port: `openssl ocsp` per request (responses valid for `minutes`). */
  startOcsp(minutes?: number): Promise<void>;
  stopOcsp(): Promise<void>;
  /** Regenerates the CRL from the CA database and serves it (valid for `hours`). */
  publishCrl(hours?: number): Promise<void>;
  stopCrl(): Promise<void>;
  /** A TSA with a root of its own, or (`byCa`) one the signing CA issued, with the CA's OCSP and CRL URLs. */
  startTsa(name: string, opts?: { byCa?: boolean }): Promise<Tsa>;
  /**
   * Waits until every certificate made so far was valid for 2 s. openssl and notation use the wall clock, and a TSA's
   * genTime ± its 1 s accuracy must lie inside each certificate's validity (as Notation's tspclient checks): a
   * signature timestamped in the second its certificate was issued is rightly refused. Bounded: at most about 2 s.
   */
  settle(): Promise<void>;
  stop(): Promise<void>;
}

async function ossl(args: string[], cwd?: string): Promise<void> {
  expectOk(await runTool('openssl', args, cwd ? { cwd } : {}), `openssl ${args.slice(0, 2).join(' ')}`);
}

const CA_CONFIG = (dir: string): string => `
[ca]
default_ca = signing
[signing]
dir = ${dir}
database = ${dir}/index.txt
new_certs_dir = ${dir}/newcerts
serial = ${dir}/serial
crlnumber = ${dir}/crlnumber
certificate = ${dir}/root.crt
private_key = ${dir}/root.key
default_md = sha256
policy = anything
unique_subject = no
copy_extensions = none
[anything]
commonName = supplied
organizationName = optional
countryName = optional
[crl_ext]
authorityKeyIdentifier = keyid
`;

const TSA_CONFIG = (dir: string): string => `
[tsa]
default_tsa = tsa1
[tsa1]
dir = ${dir}
serial = ${dir}/serial
crypto_device = builtin
signer_cert = ${dir}/tsa.crt
certs = ${dir}/root.crt
signer_key = ${dir}/tsa.key
signer_digest = sha256
default_policy = 1.2.3.4.1
digests = sha256, sha384, sha512
accuracy = secs:1
ordering = no
tsa_name = no
ess_cert_id_chain = no
ess_cert_id_alg = sha256
`;

/** A root (self-signed CA) with the given subject, through a minimal req config so the extensions are exact. */
async function makeRoot(dir: string, subject: string, days: number): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFile(
    join(dir, 'req.cnf'),
    '[req]\ndistinguished_name = dn\nprompt = no\n[dn]\n[v3]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\nsubjectKeyIdentifier=hash\n',
  );
  await ossl(
    ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', join(dir, 'root.key'), '-out', join(dir, 'root.crt')].concat([
      '-days',
      String(days),
      '-subj',
      subject,
      '-config',
      join(dir, 'req.cnf'),
      '-extensions',
      'v3',
    ]),
  );
}

function serve(handler: (body: Buffer, url: string, method: string) => Promise<{ status: number; type: string; body: Buffer }>, port = 0): Promise<Server> {
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > 1 << 20) req.destroy();
      else chunks.push(c);
    });
    req.on('end', () => {
      handler(Buffer.concat(chunks), req.url ?? '/', req.method ?? 'GET').then(
        (r) => res.writeHead(r.status, { 'content-type': r.type, 'content-length': r.body.length }).end(r.body),
        (e: unknown) => res.writeHead(500).end(String(e)),
      );
    });
  });
  return new Promise((resolve) => server.listen(port, '127.0.0.1', () => resolve(server)));
}

const close = (s: Server | undefined): Promise<void> => new Promise((r) => (s ? s.close(() => r()) : r()));

export async function makeNotationPki(dir: string): Promise<NotationPki> {
  requireTool('openssl');
  const ca = join(dir, 'ca');
  await makeRoot(ca, '/C=US/ST=WA/O=Portcullis Test/CN=Portcullis Notation Root', 30);
  await mkdir(join(ca, 'newcerts'));
  await writeFile(join(ca, 'index.txt'), '');
  await writeFile(join(ca, 'serial'), '1000\n');
  await writeFile(join(ca, 'crlnumber'), '01\n');
  const caConf = join(ca, 'ca.cnf');
  await writeFile(caConf, CA_CONFIG(ca));
  const [ocspPort, crlPort] = [await freePort(), await freePort()];
  const ocspUrl = `http://127.0.0.1:${ocspPort}`;
  const crlUrl = `http://127.0.0.1:${crlPort}/root.crl`;
  let ocspServer: Server | undefined;
  let ocspRequests = 0;
  let crlServer: Server | undefined;
  const tsas: Tsa[] = [];
  /** Every certificate file made (their notBefore decides settle()). */
  const made: string[] = [join(ca, 'root.crt')];

  const pki: NotationPki = {
    dir,
    root: join(ca, 'root.crt'),
    ocspUrl,
    crlUrl,
    get ocspRequests() {
      return ocspRequests;
    },
    async settle() {
      let latest = 0;
      for (const f of made) latest = Math.max(latest, new Date(new X509Certificate(await readFile(f)).validFrom).getTime());
      const wait = Math.min(3_000, latest + 2_000 - Date.now());
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    },
    async leaf(name, opts = {}) {
      const key = join(dir, `${name}.key`);
      const csr = join(dir, `${name}.csr`);
      const cert = join(dir, `${name}.crt`);
      const ext = join(dir, `${name}.ext`);
      const revocable = opts.revocable ?? true;
      await writeFile(
        ext,
        [
          '[v3]',
          'basicConstraints=critical,CA:FALSE',
          'keyUsage=critical,digitalSignature',
          'extendedKeyUsage=codeSigning',
          'subjectKeyIdentifier=hash',
          'authorityKeyIdentifier=keyid',
          ...(revocable ? [`authorityInfoAccess=OCSP;URI:${ocspUrl}`, `crlDistributionPoints=URI:${crlUrl}`] : []),
          '',
        ].join('\n'),
      );
      await ossl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', csr, '-subj', `/C=US/O=acme/CN=${name}`]);
      await ossl([
        'ca',
        '-batch',
        '-config',
        caConf,
        '-in',
        csr,
        '-out',
        cert,
        '-days',
        String(opts.days ?? 10),
        '-extfile',
        ext,
        '-extensions',
        'v3',
        '-notext',
      ]);
      made.push(cert);
      const chain = join(dir, `${name}.chain.pem`);
      await writeFile(chain, (await readFile(cert, 'utf8')) + (await readFile(pki.root, 'utf8')));
      return { cert, key, chain };
    },
    async revoke(leaf, reason = 'keyCompromise') {
      await ossl(['ca', '-config', caConf, '-revoke', leaf.cert, '-crl_reason', reason]);
    },
    async startOcsp(minutes = 60) {
      let n = 0;
      // openssl answers one request per run (-reqin/-respout), with the CA's current index.txt: a real responder
      // behind a loopback listener (OpenSSL 3.0's own -port listens on every interface). GET carries the request
      // base64 in the path (RFC 6960 A.1), POST in the body.
      ocspServer = await serve(async (body, url, method) => {
        const der = method === 'GET' ? Buffer.from(decodeURIComponent(url.slice(url.lastIndexOf('/') + 1)), 'base64') : body;
        const q = join(ca, `ocsp${++n}.req`);
        const r = join(ca, `ocsp${n}.resp`);
        await writeFile(q, der);
        ocspRequests++;
        await ossl(
          ['ocsp', '-index', join(ca, 'index.txt'), '-rsigner', pki.root, '-rkey', join(ca, 'root.key'), '-CA', pki.root].concat([
            '-nmin',
            String(minutes),
            '-reqin',
            q,
            '-respout',
            r,
          ]),
        );
        return { status: 200, type: 'application/ocsp-response', body: await readFile(r) };
      }, ocspPort);
    },
    async stopOcsp() {
      await close(ocspServer);
      ocspServer = undefined;
    },
    async publishCrl(hours = 24) {
      const crlPem = join(ca, 'root.crl.pem');
      const crlDer = join(ca, 'root.crl');
      await ossl(['ca', '-config', caConf, '-gencrl', '-crlhours', String(hours), '-crlexts', 'crl_ext', '-out', crlPem]);
      await ossl(['crl', '-in', crlPem, '-outform', 'DER', '-out', crlDer]);
      if (!crlServer) {
        crlServer = await serve(async (_b, url) => {
          if (url !== '/root.crl') return { status: 404, type: 'text/plain', body: Buffer.from('not found') };
          return { status: 200, type: 'application/pkix-crl', body: await readFile(crlDer) };
        }, crlPort);
      }
    },
    async stopCrl() {
      await close(crlServer);
      crlServer = undefined;
    },
    async startTsa(name, opts = {}) {
      const d = join(dir, `tsa-${name}`);
      const ext = ['[v3]', 'basicConstraints=critical,CA:FALSE', 'keyUsage=critical,digitalSignature', 'extendedKeyUsage=critical,timeStamping'];
      const csr = join(d, 'tsa.csr');
      const subj = `/C=US/O=Portcullis Test/CN=${name} TSA`;
      if (opts.byCa) {
        await mkdir(d, { recursive: true });
        await writeFile(join(d, 'root.crt'), await readFile(pki.root));
        ext.push(`authorityInfoAccess=OCSP;URI:${ocspUrl}`, `crlDistributionPoints=URI:${crlUrl}`);
      } else {
        await makeRoot(d, `/C=US/O=Portcullis Test/CN=${name} TSA Root`, 60);
      }
      await writeFile(join(d, 'tsa.ext'), `${ext.join('\n')}\n`);
      await ossl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', join(d, 'tsa.key'), '-out', csr, '-subj', subj]);
      const out = ['-out', join(d, 'tsa.crt'), '-extfile', join(d, 'tsa.ext'), '-extensions', 'v3'];
      if (opts.byCa) await ossl(['ca', '-batch', '-config', caConf, '-in', csr, '-days', '20', '-notext', ...out]);
      else await ossl(['x509', '-req', '-in', csr, '-CA', join(d, 'root.crt'), '-CAkey', join(d, 'root.key'), '-CAcreateserial', '-days', '60', ...out]);
      made.push(join(d, 'tsa.crt'), join(d, 'root.crt'));
      await writeFile(join(d, 'serial'), '01\n');
      await writeFile(join(d, 'tsa.cnf'), TSA_CONFIG(d));
      let n = 0;
      // One request at a time: openssl ts keeps its serial number in a file.
      let queue: Promise<unknown> = Promise.resolve();
      const server = await serve((body) => {
        const run = queue.then(async () => {
          const q = join(d, `q${++n}.tsq`);
          const r = join(d, `r${n}.tsr`);
          await writeFile(q, body);
          await ossl(['ts', '-reply', '-config', join(d, 'tsa.cnf'), '-queryfile', q, '-out', r]);
          return { status: 200, type: 'application/timestamp-reply', body: await readFile(r) };
        });
        queue = run.catch(() => undefined);
        return run;
      });
      const tsa: Tsa = {
        url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
        root: join(d, 'root.crt'),
        cert: join(d, 'tsa.crt'),
        stop: () => close(server),
      };
      tsas.push(tsa);
      return tsa;
    },
    async stop() {
      await pki.stopOcsp();
      await pki.stopCrl();
      await Promise.all(tsas.map((t) => t.stop()));
    },
  };
  return pki;
}
