/**
 * A URL as it may be written to a log: without userinfo (`https://user:secret@host/` → `https://host/`). Config
 * validation refuses credentials in URLs; this is the second line, for every URL that leaves the process in a log
 * or a decision event.
 */
export function redactUrl(u: string): string {
  let parsed: URL;
  try {
    parsed = new URL(u);
  } catch {
    // Not a URL we can read: drop anything that looks like an authority's userinfo all the same.
    return u.replace(/^([a-z][a-z0-9+.-]*:[/\\]{2})[^/\\?#]*@/i, '$1');
  }
  if (!parsed.username && !parsed.password) return u;
  // Keep the text as configured (no trailing slash added), minus everything up to the authority's last '@'.
  const stripped = u.replace(/^([a-z][a-z0-9+.-]*:[/\\]{2})[^/\\?#]*@/i, '$1');
  try {
    const again = new URL(stripped);
    if (!again.username && !again.password) return stripped;
  } catch {
    // fall through to the serialised form
  }
  parsed.username = '';
  parsed.password = '';
  return parsed.toString();
}
