/**
 * The operator pages: cached images against the current policy (the re-evaluation report of gate/scan reeval.ts),
 * health, and the "try an image" form. Every value goes through `html` (html.ts), which escapes it.
 */
import type { Admission } from '../policy/contract.js';
import type { ReevalReport } from '../gate/reeval.js';
import { html } from './html.js';
import { badge, page } from './views.js';

export function imagesPage(r: ReevalReport, onlyDenied: boolean): string {
  const images = onlyDenied ? r.images.filter((e) => e.would_deny) : r.images;
  const body = html`<h1>Cached images under the current policy</h1>
    <p id="reeval-summary">
      Policy <code>${r.policy_revision}</code>: <strong>${r.would_deny}</strong> of ${r.evaluated} cached image${r.evaluated === 1 ? '' : 's'} would now be
      denied <span class="muted">(evaluated ${r.evaluated_at} with the current signatures and scan data; nothing is cached or logged by this page)</span>.
    </p>
    <form class="filters" method="get" action="/ui/images">
      <label
        ><span><input type="checkbox" name="denied" value="1" ${onlyDenied ? html` checked` : ''} /> only those that would be denied</span></label
      ><button type="submit">Show</button>
    </form>
    <table id="images">
      <thead>
        <tr>
          <th>Image</th>
          <th>Now</th>
          <th>Deny and warn</th>
          <th>Scan</th>
        </tr>
      </thead>
      <tbody>
        ${
          images.length === 0
            ? html`<tr>
                <td colspan="4" class="muted">No cached image${onlyDenied ? ' would be denied' : 's'}.</td>
              </tr>`
            : ''
        }
        ${images.map(
          (e) =>
            html`<tr class="image" data-outcome="${e.outcome}">
              <td class="img">${e.image}</td>
              <td>${badge(e.outcome)}</td>
              <td>
                ${e.error ? html`<span class="error-box">${e.error}</span>` : ''}${[...e.deny.map((v) => ['deny', v] as const), ...e.warn.map((v) => ['warn', v] as const)].map(([k, v]) => html`<div>${k} <code>${v.rule}</code> ${v.message}</div>`)}
              </td>
              <td>
                ${
                  e.scan
                    ? html`${e.scan.status}${
                        e.scan.counts
                          ? html` <span class="muted"
                              >${Object.entries(e.scan.counts)
                                .map(([s, n]) => `${s} ${n}`)
                                .join(', ')}</span
                            >`
                          : ''
                      }`
                    : '—'
                }
              </td>
            </tr>`,
        )}
      </tbody>
    </table>`;
  return page('Cached images', 'images', body);
}

export interface HealthView {
  policy: { revision: string; last: { ok: boolean; at: string; error?: string } | undefined };
  upstreams: Array<{ name: string; registry: string; answered: number; failed: number; rateRemaining: number | undefined; rateLimit: number | undefined }>;
  cache: {
    bytes: number;
    maxBytes: number;
    entries: number;
    hits: Array<{ kind: string; hit: number; total: number }>;
    servedFromCache: number;
    servedFromUpstream: number;
  };
  decisions: { held: number; capacity: number; cacheHits: number; cacheMisses: number };
}

export function healthPage(h: HealthView): string {
  const last = h.policy.last;
  const body = html`<h1>Health</h1>
    <div class="cards">
      <section class="card" id="health-policy">
        <h2>Policy</h2>
        <dl class="facts">
          <dt>Revision</dt>
          <dd class="mono">${h.policy.revision}</dd>
          <dt>Last reload</dt>
          <dd>
            ${last ? html`${last.at} ${last.ok ? html`<span class="badge allow">ok</span>` : html`<span class="badge deny">failed</span> ${last.error ?? ''}`}` : 'not yet'}
          </dd>
        </dl>
      </section>
      <section class="card" id="health-cache">
        <h2>Cache</h2>
        <dl class="facts">
          <dt>Size</dt>
          <dd>${bytes(h.cache.bytes)} of ${bytes(h.cache.maxBytes)} (${pct(h.cache.bytes, h.cache.maxBytes)}), ${h.cache.entries} blobs</dd>
          ${h.cache.hits.map(
            (k) =>
              html`<dt>${k.kind} hit ratio</dt>
                <dd>${pct(k.hit, k.total)} <span class="muted">(${k.hit} of ${k.total} lookups)</span></dd>`,
          )}
          <dt>Bytes served</dt>
          <dd>
            ${bytes(h.cache.servedFromCache)} from cache, ${bytes(h.cache.servedFromUpstream)} streamed from upstreams
            (${pct(h.cache.servedFromCache, h.cache.servedFromCache + h.cache.servedFromUpstream)} from cache)
          </dd>
        </dl>
      </section>
      <section class="card" id="health-decisions">
        <h2>Decisions</h2>
        <dl class="facts">
          <dt>Held here</dt>
          <dd>${h.decisions.held} of ${h.decisions.capacity}</dd>
          <dt>Decision cache</dt>
          <dd>
            ${pct(h.decisions.cacheHits, h.decisions.cacheHits + h.decisions.cacheMisses)} hits
            <span class="muted">(${h.decisions.cacheHits} hits, ${h.decisions.cacheMisses} policy runs)</span>
          </dd>
        </dl>
      </section>
    </div>
    <h2>Upstreams</h2>
    <table id="health-upstreams">
      <thead>
        <tr>
          <th>Upstream</th>
          <th>Registry</th>
          <th>Reachability</th>
          <th>Rate-limit headroom</th>
        </tr>
      </thead>
      <tbody>
        ${h.upstreams.map(
          (u) =>
            html`<tr>
              <td>${u.name}</td>
              <td class="mono">${u.registry}</td>
              <td>
                ${u.answered + u.failed === 0 ? html`<span class="muted">no requests yet</span>` : html`${u.failed === 0 ? html`<span class="badge allow">reachable</span>` : u.answered === 0 ? html`<span class="badge deny">unreachable</span>` : html`<span class="badge warn">errors</span>`} <span class="muted">${u.answered} answered, ${u.failed} failed (network errors and 5xx) since start</span>`}
              </td>
              <td>
                ${u.rateLimit ? html`${u.rateRemaining ?? '?'} of ${u.rateLimit} left (${pct(u.rateRemaining ?? 0, u.rateLimit)})` : html`<span class="muted">no rate-limit headers seen</span>`}
              </td>
            </tr>`,
        )}
      </tbody>
    </table>`;
  return page('Health', 'health', body);
}

export interface TryForm {
  ref: string;
  as: string;
  groups: string;
  method: string;
  csrf: string;
}

export interface TryResult {
  image: string;
  upstream: string;
  digest: string;
  admission: Admission;
  revision: string;
  signatures: string;
  scan: string;
  /** Whether the explorer holds the decision (a new one, not answered from the decision cache). */
  recorded: boolean;
}

export function tryPage(form: TryForm, result?: TryResult, error?: string): string {
  const a = result?.admission;
  const body = html`<h1>Try an image</h1>
    <p class="muted">
      Runs what <code>portcullis check</code> runs (route, resolve, verify, evidence, policy) and shows the verdict a pull would get now. Nothing is served; the
      upstream is asked for the manifest, and the decision is recorded like any other.
    </p>
    <form class="filters" method="post" action="/ui/try">
      <input type="hidden" name="csrf" value="${form.csrf}" />
      <label>Image <input name="ref" value="${form.ref}" placeholder="docker.io/library/nginx:1.27" size="48" required /></label>
      <label>As user (optional) <input name="as" value="${form.as}" size="14" /></label>
      <label>Groups <input name="groups" value="${form.groups}" placeholder="g1,g2" size="12" /></label>
      <label>Method <input name="method" value="${form.method}" placeholder="basic" size="8" /></label>
      <button type="submit">Check</button>
    </form>
    ${error ? html`<p class="error-box" id="try-error">${error}</p>` : ''}
    ${
      result && a
        ? html`<section id="try-result">
            <h2>${badge(a.outcome)} <span class="mono">${result.image}</span></h2>
            <pre id="try-output">
${[
                `image:     ${result.image}`,
                `upstream:  ${result.upstream}`,
                `decision:  ${a.outcome.toUpperCase()} (mode ${a.mode}, policy ${result.revision}, decision ${a.decisionId}${a.cached ? ', from the decision cache' : ''})`,
                `signature: ${result.signatures}`,
                `scan:      ${result.scan}`,
                ...a.violations.map((v) => `  deny  ${v.rule}: ${v.message}`),
                ...a.warnings.map((v) => `  warn  ${v.rule}: ${v.message}`),
              ].join('\n')}</pre>
            <p>
              ${a.serve ? 'A pull would be served.' : 'A pull would be refused (403).'}
              ${result.recorded ? html`<a href="${`/ui/decision/${encodeURIComponent(a.decisionId)}`}">The decision in full</a>.` : ''}
            </p>
          </section>`
        : ''
    }`;
  return page('Try an image', 'try', body);
}

function bytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

function pct(part: number, whole: number): string {
  return whole > 0 ? `${((100 * part) / whole).toFixed(1)}%` : '—';
}
