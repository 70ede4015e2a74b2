/** Response helpers shared by the handlers: OCI errors, JSON bodies, and Range parsing. */
import type { ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { httpAnswer, type RegistryError } from './errors.js';

export function sendError(res: ServerResponse, err: RegistryError, head: boolean): void {
  if (res.headersSent) {
    res.destroy(err);
    return;
  }
  const { status, statusText, headers, body } = httpAnswer(err);
  res.statusCode = status;
  // The reason phrase is the only text a HEAD can carry to containerd (errors.ts, denialStatusText).
  if (statusText !== undefined) res.statusMessage = statusText;
  for (const [k, v] of Object.entries(headers)) res.setHeader(k, v);
  res.setHeader('content-type', 'application/json');
  res.setHeader('content-length', Buffer.byteLength(body));
  res.end(head ? undefined : body);
}

export function sendJson(res: ServerResponse, status: number, body: unknown, head = false, contentType = 'application/json'): void {
  const text = typeof body === 'string' ? body : Buffer.isBuffer(body) ? body : JSON.stringify(body);
  res.statusCode = status;
  res.setHeader('content-type', contentType);
  res.setHeader('content-length', Buffer.byteLength(text));
  res.end(head ? undefined : text);
}

export type RangeResult = { kind: 'none' } | { kind: 'range'; start: number; end: number } | { kind: 'unsatisfiable' };

/**
 * A single `bytes=` range (RFC 9110 §14.1.2). Multi-range requests are answered with the whole body, which the RFC
 * allows and which no registry client needs otherwise.
 */
export function parseRange(header: string | undefined, size: number): RangeResult {
  if (!header) return { kind: 'none' };
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m) return { kind: 'none' };
  const [, a, b] = m;
  if (a === '' && b === '') return { kind: 'none' };
  let start: number;
  let end: number;
  if (a === '') {
    const suffix = Number(b);
    if (suffix === 0) return { kind: 'unsatisfiable' };
    start = Math.max(0, size - suffix);
    end = size - 1;
  } else {
    start = Number(a);
    end = b === '' ? size - 1 : Math.min(Number(b), size - 1);
    if (b !== '' && Number(b) < start) return { kind: 'none' };
  }
  if (!Number.isSafeInteger(start) || start >= size) return { kind: 'unsatisfiable' };
  return { kind: 'range', start, end };
}

/**
 * Requests Node's parser refuses (oversized headers, malformed HTTP). Node's default answers and then destroys
 * the socket at once; with the client's unread header bytes still queued that close becomes a TCP reset, and
 * the client sees ECONNRESET instead of the 431. So answer with an OCI error, half-close, and drain what the
 * client is still sending until it closes (bounded by a timer).
 */
export function answerClientError(err: NodeJS.ErrnoException, socket: Duplex): void {
  if (!socket.writable || err.code === 'ECONNRESET') {
    socket.destroy();
    return;
  }
  const tooLarge = err.code === 'HPE_HEADER_OVERFLOW';
  const status = tooLarge ? '431 Request Header Fields Too Large' : '400 Bad Request';
  const body = JSON.stringify({
    errors: [{ code: 'UNSUPPORTED', message: tooLarge ? 'request headers are too large' : 'malformed HTTP request', detail: null }],
  });
  socket.end(`HTTP/1.1 ${status}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
  socket.resume();
  setTimeout(() => socket.destroy(), 2_000).unref();
}
