/**
 * An external OPA server as the decider, through its REST Data API (`POST /v1/data/portcullis/decision`). The
 * operator loads the policy and its data.portcullis.config there; any transport error, non-200 or undefined
 * result is an error, which the gate turns into a deny.
 */
import { request, Agent } from 'undici';
import type { Decider, PolicyInput, PolicyResult } from './contract.js';
import { readCapped } from '../util/capped-body.js';
import { ENTRYPOINT, parseResult } from './wasm.js';

/** A decision is an allow flag and a few reasons: kilobytes. A larger answer is not one, and is not buffered. */
export const MAX_OPA_RESPONSE_BYTES = 1024 * 1024;

interface ProvenanceDoc {
  provenance?: { bundles?: Record<string, { revision?: unknown }> };
}

export class OpaRestDecider implements Decider {
  private readonly base: string;
  /** The bundle revisions OPA reported with its last answer (`?provenance`), `name=revision,…`; '' before any. */
  private bundles = '';
  private readonly agent = new Agent({ keepAliveTimeout: 30_000 });

  constructor(
    private readonly baseUrl: string,
    private readonly timeoutMs: number,
  ) {
    this.base = `opa-rest:${new URL(baseUrl).host}`;
  }

  /** The server, plus its bundles' revisions once known: a bundle OPA activates is a new policy revision. */
  get revision(): string {
    return this.bundles ? `${this.base}#${this.bundles}` : this.base;
  }

  async evaluate(input: PolicyInput): Promise<PolicyResult> {
    const url = new URL(`/v1/data/${ENTRYPOINT}?provenance`, this.baseUrl);
    const res = await request(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ input }),
      dispatcher: this.agent,
      headersTimeout: this.timeoutMs,
      bodyTimeout: this.timeoutMs,
    });
    const text = (
      await readCapped(res.body, MAX_OPA_RESPONSE_BYTES, () => new Error(`OPA at ${url.host} sent more than ${MAX_OPA_RESPONSE_BYTES} bytes`))
    ).toString('utf8');
    if (res.statusCode !== 200) throw new Error(`OPA at ${url.host} answered HTTP ${res.statusCode}: ${text.slice(0, 200)}`);
    let doc: { result?: unknown } & ProvenanceDoc;
    try {
      doc = JSON.parse(text) as typeof doc;
    } catch {
      throw new Error(`OPA at ${url.host} sent invalid JSON`);
    }
    const result = parseResult(doc);
    this.noteProvenance(doc.provenance);
    // The revision that answered, so the admission is bound to it even if another answer changes it meanwhile.
    return { ...result, revision: this.revision };
  }

  /**
   * Asks OPA which bundle revisions it serves (a GET of an empty document with `?provenance`: no decision, nothing
   * evaluated), so that a bundle OPA activates is noticed before the next decision and admissions are re-decided.
   */
  async refresh(): Promise<void> {
    const url = new URL(`/v1/data/portcullis/__revision?provenance`, this.baseUrl);
    const res = await request(url, { method: 'GET', dispatcher: this.agent, headersTimeout: this.timeoutMs, bodyTimeout: this.timeoutMs });
    const text = (
      await readCapped(res.body, MAX_OPA_RESPONSE_BYTES, () => new Error(`OPA at ${url.host} sent more than ${MAX_OPA_RESPONSE_BYTES} bytes`))
    ).toString('utf8');
    if (res.statusCode !== 200) throw new Error(`OPA at ${url.host} answered HTTP ${res.statusCode}`);
    this.noteProvenance((JSON.parse(text) as ProvenanceDoc).provenance);
  }

  private noteProvenance(p: ProvenanceDoc['provenance']): void {
    const b = p?.bundles;
    if (!b || typeof b !== 'object') return;
    this.bundles = Object.keys(b)
      .sort()
      .map((name) => {
        const rev = b[name]?.revision;
        return `${name}=${typeof rev === 'string' || typeof rev === 'number' ? rev : ''}`;
      })
      .join(',');
  }

  async close(): Promise<void> {
    await this.agent.close();
  }
}
