#!/usr/bin/env node
// Generates policies/capabilities.json: the builtins that a policy compiled with `opa build -t wasm` can really
// call when the proxy runs it with @open-policy-agent/opa-wasm. `opa build --capabilities` then rejects any
// other builtin at build time instead of failing a pull at evaluation time.
//
//   node scripts/gen-capabilities.mjs              # runs `opa capabilities --current`, writes policies/capabilities.json
//   node scripts/gen-capabilities.mjs --check      # exit 1 when the committed file differs from a fresh one
//   OPA=/path/to/opa node scripts/gen-capabilities.mjs
//
// Allowed = builtins compiled into the WASM module (NATIVE)
//         ∪ builtins the npm SDK implements in JS (SDK)
//         ∪ custom builtins the proxy passes to loadPolicy() (CUSTOM)
// with their declarations (types) copied from the running opa's own capabilities.
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

// open-policy-agent/opa v1.22.2 internal/compiler/wasm/wasm.go `builtinsFunctions`, mapped to builtin names
// (see reference/protocols.md §7.2; this version also has array.flatten, object.keys, object.union_n and
// internal.template_string natively). Regenerate this list when upgrading opa.
const NATIVE = [
  'plus',
  'minus',
  'mul',
  'div',
  'abs',
  'round',
  'ceil',
  'floor',
  'rem',
  'array.concat',
  'array.flatten',
  'array.reverse',
  'array.slice',
  'set_diff',
  'and',
  'or',
  'intersection',
  'union',
  'is_number',
  'is_string',
  'is_boolean',
  'is_array',
  'is_set',
  'is_object',
  'is_null',
  'type_name',
  'bits.or',
  'bits.and',
  'bits.negate',
  'bits.xor',
  'bits.lsh',
  'bits.rsh',
  'count',
  'sum',
  'product',
  'max',
  'min',
  'sort',
  'all',
  'any',
  'base64.is_valid',
  'base64.decode',
  'base64.encode',
  'base64url.encode',
  'base64url.decode',
  'net.cidr_contains',
  'net.cidr_overlap',
  'net.cidr_intersects',
  'equal',
  'gt',
  'gte',
  'lt',
  'lte',
  'neq',
  'glob.match',
  'json.marshal',
  'json.unmarshal',
  'json.is_valid',
  'json.remove',
  'json.filter',
  'object.filter',
  'object.get',
  'object.keys',
  'object.remove',
  'object.union',
  'object.union_n',
  'concat',
  'format_int',
  'indexof',
  'substring',
  'lower',
  'upper',
  'contains',
  'startswith',
  'endswith',
  'strings.reverse',
  'split',
  'replace',
  'strings.replace_n',
  'trim',
  'trim_left',
  'trim_prefix',
  'trim_right',
  'trim_suffix',
  'trim_space',
  'internal.template_string',
  'numbers.range',
  'to_number',
  'walk',
  'graph.reachable',
  'regex.is_valid',
  'regex.match',
  're_match',
  'regex.find_all_string_submatch_n',
  'internal.member_2',
  'internal.member_3',
  // Unification and assignment are compiled by the planner, not called as functions.
  'eq',
  'assign',
];
// @open-policy-agent/opa-wasm 1.10.0 src/builtins/*.js. Note: sprintf is sprintf-js, whose %v differs from Go.
const SDK = ['sprintf', 'json.is_valid', 'regex.split', 'yaml.is_valid', 'yaml.marshal', 'yaml.unmarshal'];
// Passed by the proxy as customBuiltins (src/policy): keep in sync with it.
const CUSTOM = ['time.parse_rfc3339_ns'];

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = join(root, 'policies', 'capabilities.json');
const opa = process.env.OPA || 'opa';

const current = JSON.parse(execFileSync(opa, ['capabilities', '--current'], { encoding: 'utf8' }));
const allowed = new Set([...NATIVE, ...SDK, ...CUSTOM]);
const builtins = current.builtins
  .filter((b) => allowed.has(b.name))
  .map(({ name, decl, infix, relation }) => ({ name, decl, ...(infix ? { infix } : {}), ...(relation ? { relation } : {}) }))
  .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));

const missing = [...allowed].filter((n) => !builtins.some((b) => b.name === n));
if (missing.length) {
  console.error(`gen-capabilities: opa does not know these builtins: ${missing.join(', ')}`);
  process.exit(1);
}

const caps = { ...current, builtins };
const text = JSON.stringify(caps, null, 2) + '\n';

if (process.argv.includes('--check')) {
  let old = '';
  try {
    old = readFileSync(out, 'utf8');
  } catch {
    /* missing file is stale */
  }
  if (old !== text) {
    console.error('gen-capabilities: policies/capabilities.json is stale; run node scripts/gen-capabilities.mjs');
    process.exit(1);
  }
  console.log(`policies/capabilities.json is up to date (${builtins.length} builtins)`);
} else {
  writeFileSync(out, text);
  console.log(`wrote policies/capabilities.json (${builtins.length} builtins)`);
}
