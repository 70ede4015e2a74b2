/**
 * What pino must never write: credentials in request headers (Authorization, Proxy-Authorization, cookies) and
 * anything logged under a password or token key. Every logger the proxy builds uses these paths; a test logs a
 * request with credentials through them and reads the output back.
 */
export const LOG_REDACT = {
  paths: [
    'authorization',
    'headers.authorization',
    'headers["proxy-authorization"]',
    'headers.cookie',
    'req.headers.authorization',
    'req.headers["proxy-authorization"]',
    'req.headers.cookie',
    '*.authorization',
    'password',
    '*.password',
    'token',
    '*.token',
  ],
  censor: '[redacted]',
};
