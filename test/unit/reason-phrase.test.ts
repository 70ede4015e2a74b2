/**
 * The reason phrase of a 403 (`HTTP/1.1 403 denied: <rule>: <reason> [decision <id>]`): the only text a HEAD
 * carries to containerd, so it must survive whatever a policy writes. Node refuses (throws on) a status message with
 * CR/LF or characters outside Latin-1; a policy message with `…` used to be one.
 */
import { createServer, request } from 'node:http';
import type { AddressInfo } from 'node:net';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { denialStatusText, errors, MAX_STATUS_TEXT, printableAscii, type RegistryError } from '../../src/server/errors.js';
import { sendError } from '../../src/server/respond.js';

const ID = '0b8f6c1e-3f0c-4d1c-9f5e-2a7b1c9d4e11';
const PRINTABLE_LINE = /^[\x20-\x7e]*$/;
/** Any UTF-16 unit (lone surrogates included), what policies write, and plain ASCII. (fast-check's 'binary' unit is slow to generate.) */
const CHAR = fc.oneof(
  fc.integer({ min: 0, max: 0xffff }).map((n) => String.fromCharCode(n)),
  fc.constantFrom('\u2026', '\r\n', '\u{1f512}', '\u00e9', '\u201c'),
  fc.integer({ min: 0x20, max: 0x7e }).map((n) => String.fromCharCode(n)),
);

describe('denialStatusText', () => {
  it('is `denied: <rule>: <reason> [decision <id>]`', () => {
    expect(denialStatusText('tag.denied', 'tag "latest" is not allowed', ID)).toBe(`denied: tag.denied: tag "latest" is not allowed [decision ${ID}]`);
    expect(denialStatusText('not_in_admitted_closure', 'not part of an admitted image')).toBe('denied: not_in_admitted_closure: not part of an admitted image');
  });

  it('spells what policies write in ASCII: the ellipsis, quotes, dashes, accents; one line', () => {
    const msg = '4 CRITICAL vulnerabilities (CVE-1, CVE-2, CVE-3, …) exceed limit 0 — “café”\r\nnext line\tend';
    expect(denialStatusText('scan.critical', msg, ID)).toBe(
      `denied: scan.critical: 4 CRITICAL vulnerabilities (CVE-1, CVE-2, CVE-3, ...) exceed limit 0 - "cafe" next line end [decision ${ID}]`,
    );
    expect(printableAscii('emoji 🔒 and 漢字 and \u0000nul')).toBe('emoji ? and ?? and ?nul');
  });

  it('caps the phrase at one log line and never cuts the decision id', () => {
    const t = denialStatusText('signature.required', 'x'.repeat(5000), ID);
    expect(t.length).toBeLessThanOrEqual(MAX_STATUS_TEXT);
    expect(t).toMatch(new RegExp(`^denied: signature\\.required: x+\\.\\.\\. \\[decision ${ID}\\]$`));
  });

  it('whatever the rule, reason and id: printable ASCII, at most the cap, the id whole at the end', () => {
    fc.assert(
      fc.property(fc.string({ unit: CHAR, maxLength: 400 }), fc.string({ unit: CHAR, maxLength: 400 }), fc.uuid(), (rule, reason, id) => {
        const t = denialStatusText(rule, reason, id);
        return PRINTABLE_LINE.test(t) && t.length <= MAX_STATUS_TEXT && t.startsWith('denied: ') && t.endsWith(` [decision ${id}]`);
      }),
      { numRuns: 300 },
    );
  });
});

describe('sendError on a real Node server', () => {
  let err: RegistryError;
  let url: string;
  const server = createServer((req, res) => sendError(res, err, req.method === 'HEAD'));
  beforeAll(async () => {
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
  });
  afterAll(() => new Promise<void>((r) => server.close(() => r())));

  /** Status code and reason phrase as Node's HTTP/1.1 client parses them off the status line. */
  function status(method: 'GET' | 'HEAD'): Promise<{ code: number; phrase: string; body: string; headers: Record<string, unknown> }> {
    return new Promise((resolve, reject) => {
      const req = request(url, { method }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () =>
          resolve({ code: res.statusCode ?? 0, phrase: res.statusMessage ?? '', body: Buffer.concat(chunks).toString('utf8'), headers: res.headers }),
        );
      });
      req.on('error', reject);
      req.end();
    });
  }

  it('a hostile policy message (CR LF, header-like text, non-Latin-1) gives a clean 403 line on HEAD and GET', async () => {
    const reason = 'bad…\r\nX-Injected: yes\r\n\r\n漢字 🔒';
    err = errors.denied(`portcullis: denied: ${reason}`, { rule: 'policy.error', reason, decisionId: ID }, { id: ID });
    for (const method of ['HEAD', 'GET'] as const) {
      const r = await status(method);
      expect(r.code).toBe(403);
      expect(r.phrase).toBe(`denied: policy.error: bad... X-Injected: yes ?? ? [decision ${ID}]`);
      expect(r.headers['x-injected']).toBeUndefined();
      if (method === 'GET')
        expect((JSON.parse(r.body) as { errors: Array<{ code: string; message: string }> }).errors[0]!.message).toBe(`portcullis: denied: ${reason}`);
    }
  });

  it('other errors keep the standard phrase', async () => {
    err = errors.manifestUnknown('no such manifest');
    expect((await status('HEAD')).phrase).toBe('Not Found');
  });
});
