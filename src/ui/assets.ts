/**
 * The explorer's only static files, kept as constants so that `tsc` is the whole build: a stylesheet and a small
 * script. Both are served from /ui/assets/ under a CSP that allows scripts and styles from this origin only (no
 * inline code, no CDN). The script is progressive enhancement: every read-only page works without it.
 */

export const CSS = `
:root { --fg: #1d2330; --muted: #5b6475; --line: #d9dee7; --bg: #f6f7f9; --deny: #b42318; --warn: #a15c07; --allow: #067647; --dry: #6941c6; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: var(--bg); }
header { background: #1d2330; color: #fff; padding: 0 24px; display: flex; align-items: center; gap: 28px; height: 48px; }
header .brand { font-weight: 600; letter-spacing: .02em; }
header nav a { color: #c9d1e0; text-decoration: none; margin-right: 18px; padding: 14px 0; }
header nav a.active, header nav a:hover { color: #fff; border-bottom: 2px solid #fff; }
main { max-width: 1280px; margin: 0 auto; padding: 20px 24px 48px; }
h1 { font-size: 20px; margin: 4px 0 16px; word-break: break-all; }
h2 { font-size: 16px; margin: 24px 0 8px; }
table { width: 100%; border-collapse: collapse; background: #fff; border: 1px solid var(--line); }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: #eef1f5; font-weight: 600; font-size: 13px; }
td.img, code, pre, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; }
td.img { word-break: break-all; max-width: 420px; }
pre { background: #fff; border: 1px solid var(--line); padding: 10px 12px; overflow-x: auto; white-space: pre-wrap; word-break: break-all; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600; color: #fff; background: var(--muted); }
.badge.deny, .badge.error { background: var(--deny); } .badge.warn { background: var(--warn); } .badge.allow { background: var(--allow); } .badge.dry-run-deny { background: var(--dry); }
form.filters { display: flex; flex-wrap: wrap; gap: 10px; align-items: end; margin-bottom: 14px; background: #fff; border: 1px solid var(--line); padding: 10px 12px; }
form label { display: flex; flex-direction: column; font-size: 12px; color: var(--muted); gap: 2px; }
input, select, button { font: inherit; padding: 4px 8px; border: 1px solid #b8c0cc; border-radius: 4px; background: #fff; }
button { background: #1d2330; color: #fff; border-color: #1d2330; cursor: pointer; }
.muted { color: var(--muted); }
dl.facts { display: grid; grid-template-columns: 180px 1fr; gap: 4px 16px; background: #fff; border: 1px solid var(--line); padding: 12px; margin: 0; }
dl.facts dt { color: var(--muted); } dl.facts dd { margin: 0; overflow-wrap: anywhere; }
.card dl.facts { grid-template-columns: max-content 1fr; border: 0; padding: 0; }
.digest { white-space: nowrap; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(280px, 1fr)); gap: 14px; }
.card { background: #fff; border: 1px solid var(--line); padding: 12px 14px; }
.card h2 { margin-top: 0; }
.error-box { border-left: 4px solid var(--deny); background: #fff; padding: 10px 12px; }
#live { font-size: 12px; margin-left: 8px; }
`;

/**
 * Live updates: on each `decision` event from /ui/events, fetch this page again (same filters) and swap in its
 * table rows and match count; at most one fetch in flight, so a burst of decisions costs one refresh. The fetched
 * page is parsed with DOMParser, which runs no script. Without EventSource, or with JavaScript off, the page is what
 * the server rendered.
 */
export const JS = `
(function () {
  'use strict';
  var live = document.getElementById('live');
  if (!document.getElementById('rows') || !window.EventSource || !window.fetch || !window.DOMParser) return;
  var busy = false, again = false;
  function swap(doc, id) {
    var fresh = doc.getElementById(id), old = document.getElementById(id);
    if (fresh && old) old.replaceWith(document.importNode(fresh, true));
  }
  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetch(window.location.pathname + window.location.search, { credentials: 'same-origin', headers: { accept: 'text/html' } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (t) {
        if (t === null) return;
        var doc = new DOMParser().parseFromString(t, 'text/html');
        swap(doc, 'rows');
        swap(doc, 'summary');
      })
      .catch(function () {})
      .then(function () { busy = false; if (again) { again = false; refresh(); } });
  }
  var es = new EventSource('/ui/events');
  es.addEventListener('open', function () { if (live) live.textContent = '\u25cf live'; });
  es.addEventListener('error', function () { if (live) live.textContent = '\u25cb reconnecting'; });
  es.addEventListener('decision', refresh);
})();
`;
