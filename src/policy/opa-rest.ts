/**
 * An external OPA server as the decider, through its REST Data API (`POST /v1/data/portcullis/decision`). The
 * operator loads the policy and its data.portcullis.config there; any transport error, non-200 or undefined
 * result is an error, which the gate turns into a deny.
 */
import { request, Agent } from 'undici';
import type { Decider, PolicyInput, PolicyResult } from '../gate/types.js';
import { readCapped } from '../upstream/body.js';
import { ENTRYPOINT, parseResult } from './wasm.js';

/** A decision is an allow flag and a few reasons: kilobytes. A larger answer is not one, and is not buffered. */
export const MAX_OPA_RESPONSE_BYTES = 1024 * 1024;

export class OpaRestDecider implements Decider {
  readonly revision: string;
  private readonly agent = new Agent({ keepAliveTimeout: 30_000 });

  constructor(
    private readonly baseUrl: string,
    private readonly timeoutMs: number,
  ) {
    this.revision = `opa-rest:${new URL(baseUrl).host}`;
  }

  async evaluate(input: PolicyInput): Promise<PolicyResult> {
    const url = new URL(`/v1/data/${ENTRYPOINT}`, this.baseUrl);
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
    let doc: { result?: unknown };
    try {
      doc = JSON.parse(text) as { result?: unknown };
    } catch {
      throw new Error(`OPA at ${url.host} sent invalid JSON`);
    }
    return parseResult(doc);
  }

  async close(): Promise<void> {
    await this.agent.close();
  }
}
