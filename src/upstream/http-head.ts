/**
 * The syntax of an HTTP/1.1 response head (RFC 9112 §4-5), strictly: what one parser reads as a line end or a field
 * another may not, and that difference is how responses are smuggled past a proxy. Used by socket-request.ts.
 */
import type { IncomingHttpHeaders } from 'node:http';

export class HttpFramingError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'HttpFramingError';
  }
}

const FIELD_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
/** Control characters other than HTAB: never valid in a field value or reason phrase (bare CR and LF included). */
// eslint-disable-next-line no-control-regex -- matching control characters is the point
const CTL = /[\0-\x08\x0a-\x1f\x7f]/;

/** One `name: value` line (RFC 9112 §5): a token, a colon with no space before it, a value without controls. */
export function parseField(line: string): [string, string] {
  const colon = line.indexOf(':');
  const name = colon > 0 ? line.slice(0, colon) : '';
  // Obsolete line folding, nameless lines and names with spaces are refused rather than guessed at.
  if (!FIELD_NAME.test(name)) throw new HttpFramingError(`bad header line ${JSON.stringify(line.slice(0, 60))}`);
  const value = line.slice(colon + 1).replace(/^[ \t]+|[ \t]+$/g, '');
  if (CTL.test(value)) throw new HttpFramingError(`control character in header ${JSON.stringify(name.slice(0, 60))}`);
  return [name.toLowerCase(), value];
}

export function parseHead(text: string): { status: number; statusText: string; headers: IncomingHttpHeaders; minor: number } {
  const lines = text.split('\r\n');
  const m = /^HTTP\/1\.([01]) ([1-5]\d\d)(?: (.*))?$/.exec(lines[0] ?? '');
  if (!m || CTL.test(m[3] ?? '')) throw new HttpFramingError(`bad status line ${JSON.stringify((lines[0] ?? '').slice(0, 60))}`);
  const status = Number(m[2]);
  // We never ask to switch protocols; what follows a 101 is not HTTP/1.1.
  if (status === 101) throw new HttpFramingError('unexpected 101 Switching Protocols');
  const headers: IncomingHttpHeaders = {};
  for (const line of lines.slice(1)) {
    const [name, value] = parseField(line);
    const prev = headers[name];
    if (name === 'set-cookie') headers[name] = [...((prev as string[] | undefined) ?? []), value];
    else headers[name] = prev === undefined ? value : `${String(prev)}, ${value}`;
  }
  return { status, statusText: m[3] ?? '', headers, minor: Number(m[1]) };
}
