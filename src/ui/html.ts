/**
 * HTML built from tagged templates that escape every interpolated value unless it is already Html. Decisions carry
 * attacker-controlled strings (image names, tags, reasons, user agents, annotations), so nothing reaches a page
 * without passing through `esc`. Values only ever land in element text or in double-quoted attributes: never in
 * <script>, <style>, event handlers or unquoted attributes, where HTML escaping would not be enough.
 */

/** Markup that is already safe: produced by `html` (whose values were escaped) or by `raw` on a constant. */
export class Html {
  constructor(readonly text: string) {}
  toString(): string {
    return this.text;
  }
}

export type Value = Html | string | number | boolean | null | undefined | readonly Value[];

const ENTITIES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;', '`': '&#96;' };

export function esc(s: string): string {
  return s.replace(/[&<>"'`]/g, (c) => ENTITIES[c]!);
}

function render(v: Value): string {
  if (v instanceof Html) return v.text;
  if (v === null || v === undefined || v === false) return '';
  if (Array.isArray(v)) return v.map(render).join('');
  return esc(String(v));
}

export function html(strings: TemplateStringsArray, ...values: Value[]): Html {
  let out = strings[0]!;
  for (let i = 0; i < values.length; i++) out += render(values[i]) + strings[i + 1]!;
  return new Html(out);
}

/** For constant markup only (never a value that came from a request, a decision or a config file). */
export function raw(constant: string): Html {
  return new Html(constant);
}

/** A /ui URL with query parameters, percent-encoded; empty values are left out. */
export function href(path: string, params: Record<string, string | undefined> = {}): string {
  const q = Object.entries(params)
    .filter((e): e is [string, string] => e[1] !== undefined && e[1] !== '')
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`)
    .join('&');
  return q ? `${path}?${q}` : path;
}

/** Single-quoted for a POSIX shell, so a copied command cannot run anything a name smuggled in. */
export function shellQuote(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}
