/**
 * Parser for `WWW-Authenticate` (RFC 7235 / RFC 6750): several challenges, each a scheme plus auth-params with
 * quoted or token values. Registries send `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`.
 */
export interface Challenge {
  scheme: string; // lower-cased
  params: Record<string, string>; // keys lower-cased
}

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z/]+/;

export function parseChallenges(header: string): Challenge[] {
  const out: Challenge[] = [];
  let current: Challenge | undefined;
  let s = header;
  for (;;) {
    s = s.replace(/^[\s,]+/, '');
    const tok = TOKEN.exec(s);
    if (!tok) break; // end, or garbage: stop rather than guess
    const word = tok[0];
    s = s.slice(word.length).replace(/^\s+/, '');
    if (current && s.startsWith('=')) {
      s = s.slice(1).replace(/^\s+/, '');
      let value = '';
      if (s.startsWith('"')) {
        let i = 1;
        for (; i < s.length && s[i] !== '"'; i++) {
          if (s[i] === '\\' && i + 1 < s.length) i++;
          value += s[i];
        }
        s = s.slice(i + 1);
      } else {
        value = /^[^,\s]*/.exec(s)?.[0] ?? '';
        s = s.slice(value.length);
      }
      current.params[word.toLowerCase()] = value;
    } else {
      current = { scheme: word.toLowerCase(), params: {} };
      out.push(current);
    }
  }
  return out;
}

/** Resource scopes are space separated; a scope's name may contain one ':' (host:port), so split on the ends only. */
export function parseScope(scope: string): Array<{ type: string; name: string; actions: string[] }> {
  return scope
    .split(' ')
    .filter(Boolean)
    .flatMap((s) => {
      const first = s.indexOf(':');
      const last = s.lastIndexOf(':');
      if (first === -1 || first === last) return [];
      return [
        {
          type: s.slice(0, first),
          name: s.slice(first + 1, last),
          actions: s
            .slice(last + 1)
            .split(',')
            .filter(Boolean),
        },
      ];
    });
}
