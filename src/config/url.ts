/**
 * URL settings. Credentials never sit inside a URL: `https://user:pass@host` would be sent as Basic auth to
 * wherever the URL leads and written into every log line and decision log that names the URL. Secrets come from a
 * secret reference (an environment variable or a file) instead.
 */
import net from 'node:net';
import { z } from 'zod';

const NO_CREDENTIALS = 'no credentials in the URL (user:password@ would reach logs and decision logs); use a secret reference';

/** An http(s) URL without userinfo. The error names the field (zod adds the path) and never repeats the value. */
export function httpUrl(): z.ZodURL {
  return z.url({ protocol: /^https?$/ }).refine((u) => {
    // zod runs this even when the URL check above failed; that failure is reported already.
    if (!URL.canParse(u)) return true;
    const p = new URL(u);
    return p.username === '' && p.password === '';
  }, NO_CREDENTIALS);
}

/** A CIDR (10.0.0.0/8, fd00::/8), an IP address, or a host name. */
export const addressOrHost = z.string().refine((s) => {
  const [base, bits, extra] = s.split('/');
  if (extra !== undefined || base === undefined) return false;
  const v = net.isIP(base);
  if (bits !== undefined) return v !== 0 && /^\d{1,3}$/.test(bits) && Number(bits) <= (v === 4 ? 32 : 128);
  return v !== 0 || /^(?=.{1,253}$)[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)*$/.test(base);
}, 'expected a CIDR (10.0.0.0/8, fd00::/8), an IP address or a host name');
