/**
 * OCI error responses. Every failure a client can see is one of these, so that containerd, Docker and skopeo print
 * a code and a message instead of an HTML page or a bare status.
 */
export type OciErrorCode =
  | 'BLOB_UNKNOWN'
  | 'DIGEST_INVALID'
  | 'MANIFEST_UNKNOWN'
  | 'MANIFEST_INVALID'
  | 'NAME_INVALID'
  | 'NAME_UNKNOWN'
  | 'SIZE_INVALID'
  | 'UNAUTHORIZED'
  | 'DENIED'
  | 'UNSUPPORTED'
  | 'TOOMANYREQUESTS'
  | 'RANGE_INVALID'
  | 'UNAVAILABLE'
  | 'UPSTREAM_ERROR'
  | 'NOT_FOUND'
  // Codes of Portcullis's own API (scan reports, admin), which uses the same error shape.
  | 'REPORT_INVALID'
  | 'REPORT_UNKNOWN'
  | 'PARAM_INVALID'
  | 'INTERNAL_ERROR';

export class RegistryError extends Error {
  constructor(
    readonly status: number,
    readonly code: OciErrorCode,
    message: string,
    readonly detail: unknown = undefined,
    readonly headers: Record<string, string> = {},
    /** The reason phrase of the status line, when not the standard one (see {@link denialStatusText}). */
    readonly statusText?: string,
  ) {
    super(message);
    this.name = 'RegistryError';
  }

  body(): string {
    return JSON.stringify({ errors: [{ code: this.code, message: this.message, detail: this.detail ?? null }] });
  }
}

/** An authentication failure as the client sees it: 429 when it was throttled, else 401 with the challenge. */
export function authError(outcome: { code: string; message: string; retryAfterSeconds?: number }, challenge: string): RegistryError {
  if (outcome.code === 'RATE_LIMITED' || outcome.code === 'BUSY') return errors.tooManyRequests(outcome.message, String(outcome.retryAfterSeconds ?? 1));
  return errors.unauthorized(outcome.message, challenge);
}

export const errors = {
  nameInvalid: (msg: string) => new RegistryError(400, 'NAME_INVALID', msg),
  nameUnknown: (msg: string) => new RegistryError(404, 'NAME_UNKNOWN', msg),
  manifestUnknown: (msg: string) => new RegistryError(404, 'MANIFEST_UNKNOWN', msg),
  manifestInvalid: (msg: string, detail?: unknown) => new RegistryError(400, 'MANIFEST_INVALID', msg, detail),
  blobUnknown: (msg: string) => new RegistryError(404, 'BLOB_UNKNOWN', msg),
  digestInvalid: (msg: string) => new RegistryError(400, 'DIGEST_INVALID', msg),
  unsupported: (msg: string, status = 405) => new RegistryError(status, 'UNSUPPORTED', msg),
  notFound: (msg: string) => new RegistryError(404, 'NOT_FOUND', msg),
  tooManyRequests: (msg: string, retryAfter?: string) =>
    new RegistryError(429, 'TOOMANYREQUESTS', msg, undefined, retryAfter ? { 'retry-after': retryAfter } : {}),
  rangeInvalid: (msg: string, size: number) =>
    new RegistryError(416, 'RANGE_INVALID', msg, undefined, { 'content-range': `bytes */${size}` }),
  /** The upstream failed or could not be reached and no usable cached copy exists. */
  upstream: (msg: string, status = 502) => new RegistryError(status, status === 503 ? 'UNAVAILABLE' : 'UPSTREAM_ERROR', msg),
  /** A failed or missing login: 401 with the challenge that tells the client how to authenticate. */
  unauthorized: (msg: string, challenge: string) => new RegistryError(401, 'UNAUTHORIZED', msg, undefined, { 'www-authenticate': challenge }),
  /** `why` becomes the status line's reason phrase too: see {@link denialStatusText}. */
  denied: (msg: string, why: { rule: string; reason: string; decisionId?: string }, detail?: unknown, headers?: Record<string, string>) =>
    new RegistryError(403, 'DENIED', msg, detail, headers, denialStatusText(why.rule, why.reason, why.decisionId)),
};

/** Longest reason phrase we send: one log line in containerd's error, the kubelet's event and `ctr`'s output. */
export const MAX_STATUS_TEXT = 200;

/**
 * The reason phrase of a 403: `denied: <rule>: <short reason> [decision <id>]`. containerd resolves a tag with a
 * HEAD, which has no body, and before 2.4 it prints only Go's `resp.Status` ("403 " + this phrase): the phrase is the
 * one place a reason reaches `ctr`, the CRI error and the Pod's events. RFC 9112 allows any visible text there; Node
 * throws on anything outside Latin-1 and on CR/LF (a policy message must never split the response), and proxies
 * differ on the rest, so it is printable ASCII only, one line, and capped. The decision id is never cut off.
 */
export function denialStatusText(rule: string, reason: string, decisionId?: string): string {
  const head = `denied: ${printableAscii(rule).slice(0, 60)}: `;
  const tail = decisionId ? ` [decision ${printableAscii(decisionId).slice(0, 64)}]` : '';
  const room = MAX_STATUS_TEXT - head.length - tail.length;
  let why = printableAscii(reason);
  if (why.length > room) why = `${why.slice(0, room - 3).trimEnd()}...`;
  return `${head}${why}${tail}`;
}

/**
 * Typographic characters policies write, spelt in ASCII (NFKD already turns `…` into `...` and a no-break space into
 * a space); anything else outside printable ASCII becomes `?`.
 */
const ASCII_SPELLING: Record<string, string> = {
  '\u2018': "'",
  '\u2019': "'",
  '\u201c': '"',
  '\u201d': '"',
  '\u2013': '-',
  '\u2014': '-',
  '\u2192': '->',
};

/** One line of printable ASCII (0x20-0x7e): whitespace runs become one space, accents are dropped. */
export function printableAscii(s: string): string {
  return s
    .normalize('NFKD')
    .replace(/[\u0300-\u036f]/g, '')
    .replace(/[\u2018\u2019\u201c\u201d\u2013\u2014\u2192]/g, (c) => ASCII_SPELLING[c] ?? '?')
    .replace(/\s+/g, ' ')
    .replace(/[^\x20-\x7e]/gu, '?')
    .trim();
}
