/** Small statistics helpers: median/min/max summaries and formatting. */
export function median(xs) {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return undefined;
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** { median, min, max, n, values } of finite values. */
export function summary(xs) {
  const v = xs.filter((x) => Number.isFinite(x));
  if (v.length === 0) return { median: undefined, min: undefined, max: undefined, n: 0, values: [] };
  return { median: median(v), min: Math.min(...v), max: Math.max(...v), n: v.length, values: v.map((x) => round(x, 4)) };
}

export function round(x, digits = 3) {
  if (x === undefined || x === null || !Number.isFinite(x)) return x ?? null;
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

export const fmt = (x, digits = 2) => (x === undefined || x === null || !Number.isFinite(x) ? '—' : x.toFixed(digits));
