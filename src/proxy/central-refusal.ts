/**
 * A central Portcullis's refusal (`upstreams[].kind: portcullis`), passed on as it answered: its decisions stand on
 * the node (proxy/chain.ts says what else chaining does).
 */
import type { UpstreamConfig } from '../config/schema.js';
import { errors, type RegistryError } from '../oci/errors.js';
import { headerString, type UpstreamResponse } from '../upstream/client.js';
import { readCapped } from '../util/capped-body.js';

/** The most of a denial's body that is read: the central tier's errors are small. */
const MAX_DENIAL_BODY = 64 * 1024;
const MAX_MESSAGE = 4096;

/**
 * The central tier's 403, as it answered, when `upstream` is a Portcullis; undefined otherwise (the caller maps the
 * status as for any registry). Reads the body (capped) of a GET: call it before anything else consumes the body.
 */
export async function centralRefusal(res: UpstreamResponse, upstream: UpstreamConfig, what: string): Promise<RegistryError | undefined> {
  if (upstream.kind !== 'portcullis' || res.status !== 403) return undefined;
  const body = await readCapped(res.body, MAX_DENIAL_BODY, () => new Error('oversized')).catch(() => Buffer.alloc(0));
  const first = firstError(body);
  const phrase = res.statusText && res.statusText !== 'Forbidden' ? res.statusText : '';
  const message =
    first?.code === 'DENIED' && typeof first.message === 'string'
      ? first.message.slice(0, MAX_MESSAGE)
      : `portcullis: denied ${what} by the central tier "${upstream.name}"${phrase ? `: ${phrase}` : ''}`;
  const headers: Record<string, string> = {};
  for (const name of ['portcullis-decision-id', 'portcullis-reason']) {
    const v = headerString(res.headers[name]);
    if (v !== undefined) headers[name] = printable(v).slice(0, 512);
  }
  return errors.deniedUpstream(message, first?.code === 'DENIED' ? (first.detail ?? null) : null, phrase || 'Forbidden', headers);
}

function firstError(body: Buffer): { code?: unknown; message?: unknown; detail?: unknown } | undefined {
  try {
    const doc = JSON.parse(body.toString('utf8')) as { errors?: unknown };
    const first: unknown = Array.isArray(doc.errors) ? doc.errors[0] : undefined;
    return typeof first === 'object' && first !== null ? first : undefined;
  } catch {
    return undefined;
  }
}

/** A header value safe to send on: printable ASCII only. */
function printable(s: string): string {
  return s.replace(/[^\x20-\x7e]/g, '?');
}
