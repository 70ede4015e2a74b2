/**
 * Reads the YAML config file, applies environment overrides and validates the result. Every error names the file
 * and the field path, because an operator fixing a broken DaemonSet has only the log line to go on.
 */
import { readFileSync } from 'node:fs';
import { parse as parseYaml, YAMLParseError } from 'yaml';
import type { ZodError } from 'zod';
import { configSchema, type Config, type SecretRef } from './schema.js';

export class ConfigError extends Error {
  constructor(
    readonly file: string,
    readonly problems: string[],
  ) {
    super(`invalid config ${file}:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
    this.name = 'ConfigError';
  }
}

/**
 * Environment overrides: `PORTCULLIS__<path>` where the path segments are separated by `__` and array indices are
 * numbers, e.g. `PORTCULLIS__listen=0.0.0.0:5000` or `PORTCULLIS__upstreams__0__url=https://…`. Values are parsed
 * as YAML scalars, so `true`, `5` and `"5"` mean what they look like.
 */
export function applyEnvOverrides(doc: Record<string, unknown>, env: NodeJS.ProcessEnv): Record<string, unknown> {
  for (const [key, raw] of Object.entries(env)) {
    if (!key.startsWith('PORTCULLIS__') || raw === undefined) continue;
    const path = key.slice('PORTCULLIS__'.length).split('__').filter(Boolean);
    if (path.length === 0) continue;
    let node: Record<string, unknown> = doc;
    for (const seg of path.slice(0, -1)) {
      const next = node[seg];
      if (typeof next !== 'object' || next === null) node[seg] = {};
      node = node[seg] as Record<string, unknown>;
    }
    let value: unknown;
    try {
      value = parseYaml(raw);
    } catch {
      value = raw; // not YAML (e.g. "[::1]:5000"): take it verbatim, and let the schema judge it
    }
    node[path[path.length - 1] as string] = value;
  }
  return doc;
}

function formatZod(err: ZodError): string[] {
  return err.issues.map((i) => {
    const path = i.path.map((p, idx) => (typeof p === 'number' ? `[${p}]` : `${idx === 0 ? '' : '.'}${String(p)}`)).join('');
    return `${path || '(root)'}: ${i.message}`;
  });
}

export function parseConfig(text: string, file: string, env: NodeJS.ProcessEnv = process.env): Config {
  let doc: unknown;
  try {
    doc = parseYaml(text) ?? {};
  } catch (e) {
    const msg = e instanceof YAMLParseError ? `${e.message}` : String(e);
    throw new ConfigError(file, [`YAML: ${msg}`]);
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw new ConfigError(file, ['(root): expected a mapping']);
  const withEnv = applyEnvOverrides(doc as Record<string, unknown>, env);
  const result = configSchema.safeParse(withEnv);
  if (!result.success) throw new ConfigError(file, formatZod(result.error));
  return result.data;
}

export function loadConfig(file: string, env: NodeJS.ProcessEnv = process.env): Config {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new ConfigError(file, [`cannot read: ${(e as Error).message}`]);
  }
  return parseConfig(text, file, env);
}

/**
 * A secret that cannot be read. Its `message` is deliberately bare, because error messages travel: into deny
 * reasons, 5xx bodies and scan evidence that any client can read. What the operator needs (the file path and errno,
 * or the variable name) is in `detail`, for the server log only.
 */
export class SecretError extends Error {
  override name = 'SecretError';
  constructor(readonly detail: string) {
    super('a configured secret cannot be read (the server log has the details)');
  }
}

type SecretListener = (detail: string) => void;
const secretListeners = new Set<SecretListener>();
/** When each problem was last reported: secrets are read per use, and one missing file must not flood the log. */
const lastReported = new Map<string, number>();
const REPORT_EVERY_MS = 60_000;

/**
 * Subscribes the server log to unreadable secrets (path and errno, at most once a minute per problem), because the
 * errors themselves carry no detail. Returns the unsubscribe function.
 */
export function onSecretError(fn: SecretListener): () => void {
  secretListeners.add(fn);
  return () => secretListeners.delete(fn);
}

function secretError(detail: string): SecretError {
  const now = Date.now();
  // The keys come from the config (a path or a variable name, and an errno), so the map stays small.
  if (now - (lastReported.get(detail) ?? -Infinity) >= REPORT_EVERY_MS) {
    lastReported.set(detail, now);
    for (const fn of secretListeners) {
      try {
        fn(detail);
      } catch {
        // A logging problem must not turn into a different error.
      }
    }
  }
  return new SecretError(detail);
}

/** Resolves a secret reference at use time, so a rotated file is picked up without a restart. */
export function readSecret(ref: SecretRef, env: NodeJS.ProcessEnv = process.env): string {
  if (ref.env !== undefined) {
    const v = env[ref.env];
    if (v === undefined) throw secretError(`environment variable ${ref.env} is not set`);
    return v;
  }
  try {
    return readFileSync(ref.file as string, 'utf8').trim();
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw secretError(`secret file ${ref.file as string} cannot be read${code ? ` (${code})` : ''}`);
  }
}
