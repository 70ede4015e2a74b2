/** The AWS SDK v3 S3 client for `storage.s3` (src/config/storage.ts). */
import { S3Client } from '@aws-sdk/client-s3';
import { readFileSync } from 'node:fs';
import { Agent as HttpAgent } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import type { SecretRef } from '../config/schema.js';
import type { S3Config } from '../config/storage.js';

/** How long keys read from secret files are reused before they are read again (a rotated file is picked up). */
const CREDENTIAL_REFRESH_MS = 5 * 60_000;

/** The commands whose bodies are blob bytes: over TLS their payload is not hashed for the signature (below). */
const BLOB_BODY_COMMANDS = new Set(['UploadPartCommand', 'PutObjectCommand']);

/**
 * SigV4 signs a Buffer body by hashing it (SHA-256) unless `x-amz-content-sha256: UNSIGNED-PAYLOAD` is set. For blob
 * parts that is a second SHA-256 of every cold byte on top of the digest check, the largest single CPU cost of a
 * cold pull into S3 (measured: more than the digest itself). Over TLS the transport already protects the bytes in
 * transit, so the payload goes unsigned, as S3 allows for https. Over plain http (storage.s3.allowInsecureHttp) the
 * payload stays signed: on an unencrypted link the signature is what keeps a part from being altered on the way.
 * Either way what S3 holds is verified again when a whole blob is read back (s3-blobstore.ts).
 */
function unsignedPayloadOverTls(client: S3Client): void {
  client.middlewareStack.add(
    (next, context) => (args) => {
      const req = args.request as { protocol?: string; headers?: Record<string, string> };
      if (req.protocol === 'https:' && req.headers && BLOB_BODY_COMMANDS.has(context.commandName ?? ''))
        req.headers['x-amz-content-sha256'] = 'UNSIGNED-PAYLOAD';
      return next(args);
    },
    { step: 'build', name: 'portcullisUnsignedPayloadOverTls' },
  );
}

export function s3Client(cfg: S3Config, readSecret: (ref: SecretRef) => string): S3Client {
  const creds = cfg.credentials;
  // Read once now, so that a missing variable or unreadable file stops the start with the field's name.
  if (creds) {
    for (const field of ['accessKeyId', 'secretAccessKey', 'sessionToken'] as const) {
      const ref = creds[field];
      if (!ref) continue;
      try {
        readSecret(ref);
      } catch (e) {
        const detail = (e as { detail?: string }).detail ?? (e instanceof Error ? e.message : String(e));
        throw new Error(`storage.s3.credentials.${field}: ${detail}`, { cause: e });
      }
    }
  }
  const ca = cfg.caFile ? readFileSync(cfg.caFile) : undefined;
  const client = new S3Client({
    region: cfg.region,
    ...(cfg.endpoint ? { endpoint: cfg.endpoint } : {}),
    forcePathStyle: cfg.forcePathStyle,
    // The SDK's newer defaults add CRC checksums to every upload and ask for them on every download; many
    // S3-compatible stores reject or mangle those, and presigned GETs break. Portcullis verifies digests itself.
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    requestHandler: {
      httpAgent: new HttpAgent({ keepAlive: true, maxSockets: 64 }),
      httpsAgent: new HttpsAgent({ keepAlive: true, maxSockets: 64, ...(ca ? { ca } : {}) }),
    },
    ...(creds
      ? {
          credentials: () =>
            Promise.resolve({
              accessKeyId: readSecret(creds.accessKeyId),
              secretAccessKey: readSecret(creds.secretAccessKey),
              ...(creds.sessionToken ? { sessionToken: readSecret(creds.sessionToken) } : {}),
              expiration: new Date(Date.now() + CREDENTIAL_REFRESH_MS),
            }),
        }
      : {}),
  });
  unsignedPayloadOverTls(client);
  return client;
}
