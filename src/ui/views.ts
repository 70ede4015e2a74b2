/**
 * The decision pages: the page frame, the list of recent decisions with its filters, and one decision in full.
 * Every value goes through `html` (html.ts), which escapes it.
 */
import { href, html, raw, shellQuote, type Html } from './html.js';
import { imageRef, type DecisionFilter, type DecisionRecord, type Rule } from './ring.js';

export type Section = 'decisions' | 'images' | 'health' | 'try';

const NAV: Array<[Section, string, string]> = [
  ['decisions', '/ui/', 'Decisions'],
  ['images', '/ui/images', 'Cached images'],
  ['health', '/ui/health', 'Health'],
  ['try', '/ui/try', 'Try an image'],
];

export function page(title: string, active: Section, body: Html): string {
  return html`<!doctype html>
    <html lang="en">
      <head>
        <meta charset="utf-8" />
        <meta name="viewport" content="width=device-width, initial-scale=1" />
        <title>${title} · Portcullis</title>
        <link rel="stylesheet" href="/ui/assets/ui.css" />
        <script src="/ui/assets/ui.js" defer></script>
      </head>
      <body>
        <header>
          <span class="brand">Portcullis</span>
          <nav>${NAV.map(([s, url, label]) => html`<a href="${url}" ${s === active ? raw(' class="active" aria-current="page"') : ''}>${label}</a>`)}</nav>
        </header>
        <main>${body}</main>
      </body>
    </html>`.text;
}

export const OUTCOMES = ['allow', 'deny', 'warn', 'dry-run-deny'] as const;

export function badge(outcome: string): Html {
  return html`<span class="badge ${outcome}">${outcome}</span>`;
}

export interface ListView {
  records: DecisionRecord[];
  matched: number;
  held: number;
  capacity: number;
  filter: DecisionFilter;
  upstreams: string[];
}

export function decisionsPage(v: ListView): string {
  const f = v.filter;
  const select = (name: string, options: readonly string[], current: string | undefined, any: string): Html =>
    html`<select name="${name}">
      <option value="">${any}</option>
      ${options.map((o) => html`<option value="${o}" ${o === current ? raw(' selected') : ''}>${o}</option>`)}
    </select>`;
  const body = html`<h1>Recent decisions <span id="live" class="muted"></span></h1>
    <form class="filters" method="get" action="/ui/">
      <label>Outcome ${select('outcome', OUTCOMES, f.outcome, 'any')}</label>
      <label>Rule <input name="rule" value="${f.rule ?? ''}" placeholder="scan.limit" size="16" /></label>
      <label>Image <input name="image" value="${f.image ?? ''}" placeholder="library/nginx" size="26" /></label>
      <label>Upstream ${select('upstream', v.upstreams, f.upstream, 'any')}</label>
      <label>Client <input name="client" value="${f.client ?? ''}" placeholder="user or address" size="16" /></label>
      <button type="submit">Filter</button> <a href="/ui/">clear</a>
    </form>
    <p class="muted" id="summary">
      ${v.matched} matching of ${v.held} held (the last ${v.capacity} decisions are kept; newest
      first${v.matched > v.records.length ? `, first ${v.records.length} shown` : ''}).
    </p>
    <table>
      <thead>
        <tr>
          <th>Time (UTC)</th>
          <th>Outcome</th>
          <th>Image</th>
          <th>Rule and reason</th>
          <th>Upstream</th>
          <th>Client</th>
          <th></th>
        </tr>
      </thead>
      <tbody id="rows">
        ${rows(v.records)}
      </tbody>
    </table>`;
  return page('Decisions', 'decisions', body);
}

/** The table body alone: the live-update script swaps it in. */
export function rows(records: DecisionRecord[]): Html {
  if (records.length === 0)
    return html`<tr>
      <td colspan="7" class="muted">No decisions match.</td>
    </tr>`;
  return html`${records.map((r) => {
    const first: Rule | undefined = r.deny[0] ?? r.warn[0];
    return html`<tr class="decision" data-id="${r.id}" data-outcome="${r.outcome}">
      <td class="mono" title="${r.at}">${timeOf(r.at)}</td>
      <td>${badge(r.outcome)}</td>
      <td class="img">${shortRef(r)}</td>
      <td class="reason">
        ${first ? html`<code>${first.rule}</code> ${first.message}${r.deny.length + r.warn.length > 1 ? html` <span class="muted">(+${r.deny.length + r.warn.length - 1})</span>` : ''}` : html`<span class="muted">—</span>`}
      </td>
      <td>${r.upstream}</td>
      <td>${clientLabel(r)}</td>
      <td><a class="details" href="${`/ui/decision/${encodeURIComponent(r.id)}`}">details</a></td>
    </tr>`;
  })}`;
}

export function decisionPage(r: DecisionRecord): string {
  const i = r.image;
  const body = html`<p><a href="/ui/">← recent decisions</a></p>
    <h1>${badge(r.outcome)} ${imageRef(r)}</h1>
    <dl class="facts">
      <dt>Decision</dt>
      <dd class="mono" id="decision-id">${r.id}</dd>
      <dt>Time</dt>
      <dd>${r.at}</dd>
      <dt>Outcome</dt>
      <dd>${r.outcome} (mode ${r.mode}; request ${r.kind})</dd>
      <dt>Image</dt>
      <dd class="mono">${i.registry}/${i.repository}${i.tag ? `:${i.tag}` : ''}</dd>
      <dt>Digest</dt>
      <dd class="mono">${i.digest ?? '—'}</dd>
      <dt>Media type</dt>
      <dd class="mono">${i.mediaType ?? '—'}</dd>
      <dt>Platforms</dt>
      <dd>${i.platforms.length ? i.platforms.join(', ') : '—'}</dd>
      <dt>Upstream</dt>
      <dd>${r.upstream}</dd>
      <dt>Client</dt>
      <dd>
        ${clientLabel(r)} via
        ${r.client.method}${r.client.groups.length ? ` (groups ${r.client.groups.join(', ')})` : ''}${r.client.via ? ` through node ${r.client.via}` : ''}${r.client.userAgent ? html` <span class="muted">(user agent ${r.client.userAgent})</span>` : ''}
      </dd>
      <dt>Policy revision</dt>
      <dd class="mono">${r.revision}</dd>
      <dt>Source</dt>
      <dd>${r.source === 'live' ? 'this process' : 'the decision-log file (read at start)'}</dd>
    </dl>
    <h2>Deny</h2>
    ${ruleTable(r.deny, 'deny')}
    <h2>Warn</h2>
    ${ruleTable(r.warn, 'warn')} ${evidence(r)}
    <h2>Reproduce</h2>
    ${
      checkCommand(r)
        ? html`<pre id="check-command">${checkCommand(r)}</pre>
            <p class="muted">
              Runs the same pipeline with the current policy and evidence, without serving anything (also under
              <a href="${href('/ui/try', { ref: checkRef(r) ?? '' })}">Try an image</a>).
            </p>`
        : html`<p class="muted">A repository-level request (${r.kind}): <code>portcullis check</code> decides images only.</p>`
    }`;
  return page(`Decision ${r.id}`, 'decisions', body);
}

function ruleTable(list: Rule[], cls: string): Html {
  if (list.length === 0) return html`<p class="muted">none</p>`;
  return html`<table class="${cls}-entries">
    <thead>
      <tr>
        <th>Rule</th>
        <th>Message</th>
      </tr>
    </thead>
    <tbody>
      ${list.map(
        (v) =>
          html`<tr>
            <td><code>${v.rule}</code></td>
            <td>${v.message}</td>
          </tr>`,
      )}
    </tbody>
  </table>`;
}

function evidence(r: DecisionRecord): Html {
  const s = r.signatures;
  const sc = r.scan;
  const broke = limitSeverities(r.deny.concat(r.warn));
  const findings = sc.vulnerabilities.filter((v) => broke.has(v.severity.toUpperCase()));
  return html`<h2>Signatures <span class="muted">(${s.status})</span></h2>
    ${
      s.verified.length
        ? html`<table class="verified">
            <thead>
              <tr>
                <th>Verified by</th>
                <th>Kind</th>
                <th>Identity</th>
                <th>Signed digest</th>
              </tr>
            </thead>
            <tbody>
              ${s.verified.map(
                (v) =>
                  html`<tr>
                    <td>${v.authority}</td>
                    <td>${v.kind} (${v.format})</td>
                    <td>${v.subject ?? ''}${v.issuer ? html` <span class="muted">${v.issuer}</span>` : ''}</td>
                    <td class="mono">${v.signedDigest ?? ''}</td>
                  </tr>`,
              )}
            </tbody>
          </table>`
        : html`<p class="muted">No signature verified.</p>`
    }
    ${
      s.rejected.length
        ? html`<table class="rejected">
            <thead>
              <tr>
                <th>Rejected (authority)</th>
                <th>Reason</th>
              </tr>
            </thead>
            <tbody>
              ${s.rejected.map(
                (v) =>
                  html`<tr>
                    <td>${v.authority ?? '—'}</td>
                    <td>${v.reason}</td>
                  </tr>`,
              )}
            </tbody>
          </table>`
        : ''
    }
    <h2>Attestations</h2>
    ${
      r.attestations.length
        ? html`<ul>
            ${r.attestations.map((a) => html`<li><code>${a.predicateType}</code> by ${a.authority}</li>`)}
          </ul>`
        : html`<p class="muted">none</p>`
    }
    <h2>Vulnerability scan <span class="muted">(${sc.status}${sc.source ? `, from ${sc.source}` : ''})</span></h2>
    <p>
      ${sc.scanner ? `${sc.scanner}; ` : ''}${sc.scannedAt ? `scanned ${sc.scannedAt}` : ''}${sc.error ? html` <span class="error-box">${sc.error}</span>` : ''}
    </p>
    ${
      Object.keys(sc.counts).length
        ? html`<table class="counts">
            <thead>
              <tr>
                ${Object.keys(sc.counts).map((k) => html`<th>${k}</th>`)}
              </tr>
            </thead>
            <tbody>
              <tr>
                ${Object.values(sc.counts).map((n) => html`<td>${n}</td>`)}
              </tr>
            </tbody>
          </table>`
        : ''
    }
    ${
      findings.length
        ? html`<h2>Findings over a limit</h2>
            ${vulnTable(findings, 'findings')}`
        : ''
    }
    ${
      sc.vulnerabilities.length
        ? html`<details>
            <summary>
              All listed vulnerabilities
              (${sc.vulnerabilities.length}${sc.vulnerabilitiesTotal > sc.vulnerabilities.length ? ` of ${sc.vulnerabilitiesTotal}` : ''})
            </summary>
            ${vulnTable(sc.vulnerabilities, 'all-vulns')}
          </details>`
        : ''
    }`;
}

function vulnTable(list: DecisionRecord['scan']['vulnerabilities'], cls: string): Html {
  return html`<table class="${cls}">
    <thead>
      <tr>
        <th>Id</th>
        <th>Severity</th>
        <th>Package</th>
        <th>Installed</th>
        <th>Fixed in</th>
      </tr>
    </thead>
    <tbody>
      ${list.map(
        (v) =>
          html`<tr>
            <td>${v.id}</td>
            <td>${v.severity}</td>
            <td>${v.package ?? ''}</td>
            <td>${v.installed ?? ''}</td>
            <td>${v.fixed ?? ''}</td>
          </tr>`,
      )}
    </tbody>
  </table>`;
}

/** The severities a `scan.limit` entry names ("2 CRITICAL vulnerabilities (…) exceed limit 0"). */
export function limitSeverities(entries: Rule[]): Set<string> {
  const out = new Set<string>();
  for (const v of entries) {
    if (v.rule !== 'scan.limit' && v.rule !== 'scan.ignored') continue;
    const m = /^\d+ (?:fixable )?([A-Z]+) vulnerabilit/.exec(v.message);
    if (m) out.add(m[1]!);
  }
  return out;
}

/** What `portcullis check` is given: by tag when the decision was by tag (tag rules apply), else by digest. */
export function checkRef(r: DecisionRecord): string | undefined {
  const i = r.image;
  if (r.kind === 'tags' || r.kind === 'referrers' || (!i.tag && !i.digest)) return undefined;
  return i.tag ? `${i.registry}/${i.repository}:${i.tag}` : `${i.registry}/${i.repository}@${i.digest}`;
}

/** The command that reproduces a decision, shell-quoted (names and users come from clients). */
export function checkCommand(r: DecisionRecord): string | undefined {
  const ref = checkRef(r);
  if (!ref) return undefined;
  const c = r.client;
  const as = c.user ? ['--as', c.user, ...(c.groups.length ? ['--groups', c.groups.join(',')] : []), '--method', c.method] : [];
  return ['portcullis', 'check', ...as, ref].map(shellQuote).join(' ');
}

function clientLabel(r: DecisionRecord): string {
  return `${r.client.user ?? 'anonymous'}${r.client.ip ? ` @ ${r.client.ip}` : ''}`;
}

function shortRef(r: DecisionRecord): Html {
  const i = r.image;
  const digest = i.digest ? html`<span class="muted digest" title="${i.digest}">@${i.digest.slice(0, 19)}…</span>` : '';
  return html`${i.registry}/${i.repository}${i.tag ? `:${i.tag}` : ''}${digest}`;
}

function timeOf(iso: string): string {
  const m = /T(\d\d:\d\d:\d\d)/.exec(iso);
  return m ? m[1]! : iso;
}
