/**
 * The in-process decider: a Rego policy compiled to WASM, evaluated with @open-policy-agent/opa-wasm.
 *
 * Builtins that the WASM module does not carry are supplied here (only `time.parse_rfc3339_ns`; the bundle is
 * built against policies/capabilities.json, so the policy cannot call anything else). The time comes from the
 * input, never from a clock builtin, so decisions are reproducible.
 */
import { loadPolicy, type LoadedPolicy } from '@open-policy-agent/opa-wasm';
import type { Decider, PolicyInput, PolicyResult, Violation } from './contract.js';
import type { PolicyBundle } from './bundle.js';

export const ENTRYPOINT = 'portcullis/decision';

// RFC 3339 date-time: the offset is mandatory (without it Date.parse would use the server's local time zone).
const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})[Tt]([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)(\.\d+)?([Zz]|[+-]([01]\d|2[0-3]):[0-5]\d)$/;

const customBuiltins = {
  // Undefined for a bad time: the rule that needed it (an exception's expiry) then does not apply (fail closed).
  'time.parse_rfc3339_ns': (s: unknown): number | undefined => {
    const m = typeof s === 'string' ? RFC3339.exec(s) : null;
    if (!m) return undefined;
    const [y, mo, d] = [Number(m[1]), Number(m[2]), Number(m[3])];
    // Date.parse rolls 2026-02-30 over into March; Go's time.Parse (OPA's builtin) rejects it.
    if (mo < 1 || mo > 12 || d < 1 || d > new Date(Date.UTC(y, mo, 0)).getUTCDate()) return undefined;
    const ms = Date.parse(s as string);
    return Number.isFinite(ms) ? ms * 1e6 : undefined;
  },
};

export class WasmDecider implements Decider {
  private constructor(
    private readonly policy: LoadedPolicy,
    readonly revision: string,
  ) {}

  /**
   * @param config operator settings, injected as data.portcullis.config (overriding any the bundle carries)
   */
  static async create(bundle: PolicyBundle, config: Record<string, unknown>): Promise<WasmDecider> {
    const policy = await loadPolicy(bundle.wasm, undefined, customBuiltins);
    if (!(ENTRYPOINT in (policy.entrypoints as Record<string, number>))) {
      throw new Error(`bundle has no entrypoint ${ENTRYPOINT} (has: ${Object.keys(policy.entrypoints as object).join(', ') || 'none'})`);
    }
    const data = structuredClone(bundle.data);
    const portcullis = (typeof data.portcullis === 'object' && data.portcullis !== null ? data.portcullis : {}) as Record<string, unknown>;
    portcullis.config = config;
    data.portcullis = portcullis;
    policy.setData(data);
    const d = new WasmDecider(policy, bundle.revision);
    return d;
  }

  evaluate(input: PolicyInput): Promise<PolicyResult> {
    // The SDK throws strings for aborts and objects for missing builtins; normalise to Error for the gate.
    let rs: unknown;
    try {
      rs = this.policy.evaluate(input, ENTRYPOINT);
    } catch (e) {
      return Promise.reject(new Error(typeof e === 'string' ? e : e instanceof Error ? e.message : JSON.stringify(e)));
    }
    try {
      return Promise.resolve(parseResult(rs));
    } catch (e) {
      return Promise.reject(e instanceof Error ? e : new Error(String(e)));
    }
  }
}

/** Validates the policy's output shape; anything unexpected is an error, which the gate turns into a deny. */
export function parseResult(rs: unknown): PolicyResult {
  const value = Array.isArray(rs) ? (rs[0] as { result?: unknown } | undefined)?.result : (rs as { result?: unknown } | undefined)?.result;
  if (value === undefined) throw new Error(`${ENTRYPOINT} is undefined for this input`);
  if (typeof value !== 'object' || value === null) throw new Error(`${ENTRYPOINT} is not an object`);
  const v = value as Record<string, unknown>;
  if (typeof v.allow !== 'boolean') throw new Error(`${ENTRYPOINT}.allow is not a boolean`);
  const list = (x: unknown, field: string): Violation[] => {
    if (x === undefined) return [];
    if (!Array.isArray(x)) throw new Error(`${ENTRYPOINT}.${field} is not an array`);
    return x.map((e) => {
      const o = e as Record<string, unknown>;
      return { rule: typeof o?.rule === 'string' ? o.rule : 'unknown', message: typeof o?.message === 'string' ? o.message : JSON.stringify(e) };
    });
  };
  const mode = v.mode === 'warn' || v.mode === 'dry-run' ? v.mode : 'enforce';
  const out: PolicyResult = {
    allow: v.allow,
    deny: list(v.deny, 'deny'),
    warn: list(v.warn, 'warn'),
    scope: typeof v.scope === 'string' ? v.scope : null,
    mode,
  };
  if (typeof v.wait_seconds === 'number' && Number.isFinite(v.wait_seconds) && v.wait_seconds > 0) out.wait_seconds = v.wait_seconds;
  return out;
}
