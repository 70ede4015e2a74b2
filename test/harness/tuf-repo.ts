/**
 * Test harness: a TUF repository served over loopback HTTP, its metadata built and signed with `@tufjs/models`
 * (the tuf-js project's own models: canonical JSON, key ids and signatures as tuf-js verifies them), ECDSA P-256
 * keys from node:crypto. Consistent snapshots, as Sigstore's repository has them:
 *
 *   GET /<n>.root.json  /timestamp.json  /<n>.snapshot.json  /<n>.targets.json  /targets/<sha256>.<name>
 *
 * What a test can make it do: publish a new target (new targets, snapshot and timestamp versions), publish with an
 * expired timestamp or snapshot (stale metadata), serve an earlier timestamp (a rollback), rotate the root key
 * (a new root signed by the old and new keys), and go down (connections are reset).
 */
import { createHash, createSign, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { Key, Metadata, MetaFile, Root, Signature, Snapshot, TargetFile, Targets, Timestamp } from '@tufjs/models';

const ROLES = ['root', 'timestamp', 'snapshot', 'targets'] as const;
const YEAR = 365 * 86_400_000;

interface Signer {
  key: Key;
  privateKey: KeyObject;
}

function newSigner(): Signer {
  const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const meta = {
    keyType: 'ecdsa-sha2-nistp256',
    scheme: 'ecdsa-sha2-nistp256',
    keyVal: { public: publicKey.export({ format: 'pem', type: 'spki' }).toString() },
  };
  const keyID = createHash('sha256').update(JSON.stringify(meta)).digest('hex');
  return { key: new Key({ keyID, ...meta }), privateKey };
}

function signWith(s: Signer): (data: Buffer) => Signature {
  return (data) => new Signature({ keyID: s.key.keyID, sig: createSign('sha256').update(data).sign(s.privateKey).toString('hex') });
}

export interface PublishOptions {
  /** This role's metadata expires in the past (stale metadata from a mirror). */
  stale?: 'timestamp' | 'snapshot';
}

export interface TufRepo {
  /** The metadata base URL (the `mirror`). */
  url: string;
  /** The pinned initial root (1.root.json) as a file. */
  rootPath: string;
  publish(name: string, content: Buffer, opts?: PublishOptions): void;
  /** Serve the timestamp of this earlier version again (a rollback). */
  serveTimestamp(version: number): void;
  /** A new root version with a new root key, signed by the old and the new key. */
  rotateRoot(): void;
  timestampVersion(): number;
  setDown(down: boolean): void;
  requests(): string[];
  stop(): Promise<void>;
}

export async function startTufRepo(dir: string): Promise<TufRepo> {
  let rootSigner = newSigner();
  const online = newSigner();
  const files = new Map<string, Buffer>();
  const timestamps: Buffer[] = [];
  const log: string[] = [];
  let down = false;
  let rootVersion = 1;
  let version = 0;

  const json = (m: Metadata<Root | Timestamp | Snapshot | Targets>): Buffer => Buffer.from(JSON.stringify(m.toJSON()));
  const expiry = (stale: boolean): string => new Date(Date.now() + (stale ? -YEAR : YEAR)).toISOString().replace(/\.\d{3}Z$/, 'Z');

  const makeRoot = (signers: Signer[]): Buffer => {
    const root = new Root({ version: rootVersion, specVersion: '1.0.31', expires: expiry(false), consistentSnapshot: true });
    root.addKey(rootSigner.key, 'root');
    for (const r of ROLES.slice(1)) root.addKey(online.key, r);
    const m = new Metadata(root);
    for (const s of signers) m.sign(signWith(s));
    const bytes = json(m);
    files.set(`/${rootVersion}.root.json`, bytes);
    return bytes;
  };
  const initialRoot = makeRoot([rootSigner]);
  const rootPath = join(dir, 'tuf-root.json');
  await writeFile(rootPath, initialRoot);

  const server = http.createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0]!;
    log.push(path);
    if (down) {
      req.socket.destroy();
      return;
    }
    const body = path === '/timestamp.json' ? timestamps.at(-1) : files.get(path);
    if (!body) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length }).end(body);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

  return {
    url,
    rootPath,
    publish(name, content, opts = {}) {
      version++;
      const hash = createHash('sha256').update(content).digest('hex');
      files.set(`/targets/${hash}.${name}`, content);
      const targets = new Targets({ version, specVersion: '1.0.31', expires: expiry(false) });
      targets.addTarget(new TargetFile({ path: name, length: content.length, hashes: { sha256: hash } }));
      const tm = new Metadata(targets);
      tm.sign(signWith(online));
      files.set(`/${version}.targets.json`, json(tm));
      const snapshot = new Snapshot({
        version,
        specVersion: '1.0.31',
        expires: expiry(opts.stale === 'snapshot'),
        meta: { 'targets.json': new MetaFile({ version }) },
      });
      const sm = new Metadata(snapshot);
      sm.sign(signWith(online));
      const snapshotBytes = json(sm);
      files.set(`/${version}.snapshot.json`, snapshotBytes);
      const timestamp = new Timestamp({
        version,
        specVersion: '1.0.31',
        expires: expiry(opts.stale === 'timestamp'),
        snapshotMeta: new MetaFile({ version, length: snapshotBytes.length, hashes: { sha256: createHash('sha256').update(snapshotBytes).digest('hex') } }),
      });
      const ts = new Metadata(timestamp);
      ts.sign(signWith(online));
      timestamps.push(json(ts));
    },
    serveTimestamp(v) {
      const t = timestamps[v - 1];
      if (!t) throw new Error(`no timestamp version ${v}`);
      timestamps.push(t);
    },
    rotateRoot() {
      const old = rootSigner;
      rootSigner = newSigner();
      rootVersion++;
      makeRoot([old, rootSigner]);
    },
    timestampVersion: () => version,
    setDown(d) {
      down = d;
    },
    requests: () => [...log],
    async stop() {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}
