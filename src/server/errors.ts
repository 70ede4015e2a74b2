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
  denied: (msg: string, detail?: unknown, headers?: Record<string, string>) => new RegistryError(403, 'DENIED', msg, detail, headers),
};
