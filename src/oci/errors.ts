/**
 * Domain errors of a registry, named by their OCI error code (distribution-spec "Error Codes") and what the answer
 * needs besides it (a challenge, a retry delay, a blob size). They say what went wrong, not how HTTP spells it: the
 * one mapping to a status, headers and a reason phrase is `server/errors.ts`. Every folder below `server/` throws
 * these, so that containerd, Docker and skopeo print a code and a message instead of an HTML page or a bare status.
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
  | 'BUNDLE_INVALID'
  | 'INTERNAL_ERROR';

/** What the answer to an error needs besides its code and message. */
export interface ErrorHints {
  /** When the client may retry (TOOMANYREQUESTS): seconds, or an HTTP date as an upstream may send it. */
  retryAfter?: string;
  /** The blob's size, which an unsatisfiable range answer reports (RANGE_INVALID). */
  size?: number;
  /** The challenge that tells the client how to authenticate (UNAUTHORIZED). */
  challenge?: string;
  /** Why the policy refused (DENIED): the rule, a short reason and the decision, for the status line. */
  denial?: { rule: string; reason: string; decisionId?: string };
  /** The reason phrase a central Portcullis sent with its denial, passed on as it came (a chained node: proxy/chain.ts). */
  statusText?: string;
  /** Extra response headers (the decision id of a denial). */
  headers?: Record<string, string>;
  /** Only where the code alone does not say it: UNSUPPORTED answers 405 unless told otherwise. */
  status?: number;
}

export class RegistryError extends Error {
  constructor(
    readonly code: OciErrorCode,
    message: string,
    readonly detail: unknown = undefined,
    readonly hints: ErrorHints = {},
  ) {
    super(message);
    this.name = 'RegistryError';
  }
}

/** The things a pull can ask for that do not exist (upstream or here). */
export function isNotFound(e: unknown): boolean {
  return e instanceof RegistryError && (e.code === 'MANIFEST_UNKNOWN' || e.code === 'BLOB_UNKNOWN' || e.code === 'NAME_UNKNOWN' || e.code === 'NOT_FOUND');
}

export const errors = {
  nameInvalid: (msg: string) => new RegistryError('NAME_INVALID', msg),
  nameUnknown: (msg: string) => new RegistryError('NAME_UNKNOWN', msg),
  manifestUnknown: (msg: string) => new RegistryError('MANIFEST_UNKNOWN', msg),
  manifestInvalid: (msg: string, detail?: unknown) => new RegistryError('MANIFEST_INVALID', msg, detail),
  blobUnknown: (msg: string) => new RegistryError('BLOB_UNKNOWN', msg),
  digestInvalid: (msg: string) => new RegistryError('DIGEST_INVALID', msg),
  /** `status`: 405 (a method this proxy does not serve) unless the request is malformed (400) or the path absent (404). */
  unsupported: (msg: string, status?: 400 | 404 | 405) => new RegistryError('UNSUPPORTED', msg, undefined, status ? { status } : {}),
  notFound: (msg: string) => new RegistryError('NOT_FOUND', msg),
  paramInvalid: (msg: string) => new RegistryError('PARAM_INVALID', msg),
  tooManyRequests: (msg: string, retryAfter?: string) => new RegistryError('TOOMANYREQUESTS', msg, undefined, retryAfter ? { retryAfter } : {}),
  rangeInvalid: (msg: string, size: number) => new RegistryError('RANGE_INVALID', msg, undefined, { size }),
  /** The upstream failed (UPSTREAM_ERROR) or could not be reached (UNAVAILABLE), and no usable cached copy exists. */
  upstream: (msg: string, unavailable = false) => new RegistryError(unavailable ? 'UNAVAILABLE' : 'UPSTREAM_ERROR', msg),
  internal: (msg: string) => new RegistryError('INTERNAL_ERROR', msg),
  /** A failed or missing login: the challenge tells the client how to authenticate. */
  unauthorized: (msg: string, challenge: string) => new RegistryError('UNAUTHORIZED', msg, undefined, { challenge }),
  /** `why` becomes the status line's reason phrase too (server/errors.ts, denialStatusText). */
  denied: (msg: string, why: { rule: string; reason: string; decisionId?: string }, detail?: unknown, headers?: Record<string, string>) =>
    new RegistryError('DENIED', msg, detail, { denial: why, ...(headers ? { headers } : {}) }),
  /** The central tier's denial, as it answered: its message, detail, reason phrase and decision headers, unchanged. */
  deniedUpstream: (msg: string, detail: unknown, statusText: string, headers: Record<string, string>) =>
    new RegistryError('DENIED', msg, detail, { statusText, headers }),
};
