/**
 * The one mapping from domain errors (`oci/errors.ts`) to what HTTP says: the status, the headers (challenge,
 * Retry-After, Content-Range, the decision id) and the reason phrase of a denial. Every error a client sees passes
 * through {@link httpAnswer}, so a code answers with the same status wherever it was thrown.
 */
import { errors, RegistryError, type OciErrorCode } from '../oci/errors.js';

export { errors, RegistryError };

const STATUS: Record<OciErrorCode, number> = {
  BLOB_UNKNOWN: 404,
  DIGEST_INVALID: 400,
  MANIFEST_UNKNOWN: 404,
  MANIFEST_INVALID: 400,
  NAME_INVALID: 400,
  NAME_UNKNOWN: 404,
  SIZE_INVALID: 400,
  UNAUTHORIZED: 401,
  DENIED: 403,
  UNSUPPORTED: 405,
  TOOMANYREQUESTS: 429,
  RANGE_INVALID: 416,
  UNAVAILABLE: 503,
  UPSTREAM_ERROR: 502,
  NOT_FOUND: 404,
  REPORT_INVALID: 400,
  REPORT_UNKNOWN: 404,
  PARAM_INVALID: 400,
  BUNDLE_INVALID: 400,
  INTERNAL_ERROR: 500,
};

export interface HttpAnswer {
  status: number;
  /** The reason phrase of the status line, when not the standard one (see {@link denialStatusText}). */
  statusText?: string;
  headers: Record<string, string>;
  body: string;
}

export function httpStatus(err: RegistryError): number {
  return err.hints.status ?? STATUS[err.code];
}

export function httpAnswer(err: RegistryError): HttpAnswer {
  const h = err.hints;
  const headers: Record<string, string> = { ...h.headers };
  if (h.challenge !== undefined) headers['www-authenticate'] = h.challenge;
  if (h.retryAfter !== undefined) headers['retry-after'] = h.retryAfter;
  if (h.size !== undefined) headers['content-range'] = `bytes */${h.size}`;
  const body = JSON.stringify({ errors: [{ code: err.code, message: err.message, detail: err.detail ?? null }] });
  const answer: HttpAnswer = { status: httpStatus(err), headers, body };
  if (h.denial) answer.statusText = denialStatusText(h.denial.rule, h.denial.reason, h.denial.decisionId);
  // A chained node passes its central tier's phrase on unchanged; made safe for a status line all the same.
  else if (h.statusText) answer.statusText = printableAscii(h.statusText).slice(0, MAX_STATUS_TEXT);
  return answer;
}

/** An authentication failure as the client sees it: 429 when it was throttled, else 401 with the challenge. */
export function authError(outcome: { code: string; message: string; retryAfterSeconds?: number }, challenge: string): RegistryError {
  if (outcome.code === 'RATE_LIMITED' || outcome.code === 'BUSY') return errors.tooManyRequests(outcome.message, String(outcome.retryAfterSeconds ?? 1));
  return errors.unauthorized(outcome.message, challenge);
}

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
