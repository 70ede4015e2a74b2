/**
 * Upstream credentials from a kubelet credential provider plugin (the exec API, credentialprovider.kubelet.k8s.io/v1):
 * the ECR, GCR/Artifact Registry and ACR plugins hand out short-lived tokens, and Portcullis runs them as the kubelet
 * does. A CredentialProviderRequest `{"image": …}` goes to the plugin's stdin; its CredentialProviderResponse names
 * `auth` entries per registry pattern and a `cacheDuration`. The credentials are cached until that expiry and
 * refreshed in the background before it (at 80% of their life), so a pull never waits for the plugin once the first
 * answer is in; a failed refresh keeps the old credentials until they expire, then retries.
 */
import { spawn } from 'node:child_process';
import type { Credentials } from './auth.js';
import { errorText } from '../util/error-text.js';

export const PROVIDER_API = 'credentialprovider.kubelet.k8s.io/v1';

export interface CredentialProviderOptions {
  command: string;
  args: string[];
  env: Record<string, string>;
  /** The image named in the request (plugins derive the registry from it). */
  image: string;
  /** The registry host whose `auth` entry is used. */
  registry: string;
  /** When the response has no cacheDuration. */
  defaultCacheDuration: number;
  timeout: number;
  now?: () => number;
  /** Called on a failed exec (logging); must not throw. */
  onError?: (message: string) => void;
}

export interface ProviderCredentials extends Credentials {
  expiresAt: number;
}

export class CredentialProvider {
  private creds: ProviderCredentials | undefined;
  private refreshAt = 0;
  private flight: Promise<void> | undefined;
  private readonly now: () => number;
  /** How many times the plugin ran (metrics and tests). */
  execs = 0;

  constructor(private readonly o: CredentialProviderOptions) {
    this.now = o.now ?? Date.now;
  }

  /** The credentials now, starting a refresh when they are due; undefined before the first answer or after expiry. */
  current(): Credentials | undefined {
    const t = this.now();
    if (t >= this.refreshAt) void this.refresh();
    const c = this.creds;
    return c && c.expiresAt > t ? { username: c.username, password: c.password } : undefined;
  }

  /** Resolves once there are unexpired credentials or a run has failed: the first request waits for the plugin. */
  async ready(): Promise<void> {
    const c = this.creds;
    if (c && c.expiresAt > this.now()) return;
    await this.refresh();
  }

  /** Runs the plugin (one run at a time); resolves when it has answered or failed. */
  refresh(): Promise<void> {
    this.flight ??= this.run().finally(() => {
      this.flight = undefined;
    });
    return this.flight;
  }

  private async run(): Promise<void> {
    const started = this.now();
    try {
      const out = await this.exec(JSON.stringify({ apiVersion: PROVIDER_API, kind: 'CredentialProviderRequest', image: this.o.image }));
      const r = parseResponse(out, this.o.registry);
      const life = r.cacheDuration ?? this.o.defaultCacheDuration;
      this.creds = { username: r.username, password: r.password, expiresAt: started + life };
      this.refreshAt = started + Math.floor(life * 0.8);
    } catch (e) {
      this.o.onError?.(errorText(e));
      // Try again soon, but not on every request.
      this.refreshAt = this.now() + Math.min(10_000, this.o.defaultCacheDuration);
    }
  }

  private exec(input: string): Promise<string> {
    this.execs++;
    return new Promise((resolve, reject) => {
      const child = spawn(this.o.command, this.o.args, { env: { PATH: process.env.PATH ?? '', ...this.o.env }, stdio: ['pipe', 'pipe', 'pipe'] });
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      let size = 0;
      const timer = setTimeout(() => child.kill('SIGKILL'), this.o.timeout);
      child.stdout.on('data', (b: Buffer) => {
        size += b.length;
        // A plugin answer is a few KiB; anything near this is not one.
        if (size > 1024 * 1024) child.kill('SIGKILL');
        else out.push(b);
      });
      child.stderr.on('data', (b: Buffer) => {
        if (err.length < 16) err.push(b);
      });
      child.on('error', (e) => {
        clearTimeout(timer);
        reject(new Error(`credential provider ${this.o.command}: ${e.message}`));
      });
      child.on('close', (code, signal) => {
        clearTimeout(timer);
        if (code === 0) resolve(Buffer.concat(out).toString('utf8'));
        else
          reject(
            new Error(
              `credential provider ${this.o.command} failed (${signal ?? `exit ${code}`}): ${Buffer.concat(err).toString('utf8').slice(0, 300).trim()}`,
            ),
          );
      });
      child.stdin.on('error', () => {});
      child.stdin.end(input);
    });
  }
}

/** The `auth` entry for `registry` in a CredentialProviderResponse, and its cache duration in ms. */
export function parseResponse(text: string, registry: string): { username: string; password: string; cacheDuration?: number } {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    throw new Error('credential provider answered with something that is not JSON');
  }
  if (typeof doc !== 'object' || doc === null) throw new Error('credential provider answer is not an object');
  const r = doc as { apiVersion?: unknown; kind?: unknown; auth?: unknown; cacheDuration?: unknown };
  if (r.kind !== 'CredentialProviderResponse' || r.apiVersion !== PROVIDER_API) {
    throw new Error(`credential provider answer is not a ${PROVIDER_API} CredentialProviderResponse`);
  }
  const auth = typeof r.auth === 'object' && r.auth !== null ? (r.auth as Record<string, unknown>) : {};
  const key = Object.keys(auth).find((k) => matchesRegistry(k, registry));
  const entry = key === undefined ? undefined : auth[key];
  if (typeof entry !== 'object' || entry === null) throw new Error(`credential provider gave no credentials for ${registry}`);
  const { username, password } = entry as { username?: unknown; password?: unknown };
  if (typeof username !== 'string' || typeof password !== 'string') throw new Error(`credential provider entry for ${registry} has no username and password`);
  const cacheDuration = typeof r.cacheDuration === 'string' ? parseGoDuration(r.cacheDuration) : undefined;
  return { username, password, ...(cacheDuration !== undefined ? { cacheDuration } : {}) };
}

/**
 * kubelet's matching of an `auth` key against a registry host: the key's host part (before any path), with `*`
 * standing for one DNS label (`*.dkr.ecr.*.amazonaws.com`), and its port when it has one.
 */
export function matchesRegistry(key: string, registry: string): boolean {
  const host = key
    .replace(/^https?:\/\//, '')
    .split('/', 1)[0]!
    .toLowerCase();
  const re = new RegExp(
    `^${host
      .split('.')
      .map((l) => (l === '*' ? '[^.]+' : l.replace(/[.+?^${}()|[\]\\*]/g, '\\$&')))
      .join('\\.')}$`,
  );
  return re.test(registry.toLowerCase());
}

/** A Go duration string (`6h`, `1h30m`, `300s`, `1.5s`, `0s`) in ms; undefined when it does not parse. */
export function parseGoDuration(s: string): number | undefined {
  if (!/^(\d+(\.\d+)?(h|m|s|ms|us|µs|ns))+$/.test(s)) return s === '0' ? 0 : undefined;
  const unit: Record<string, number> = { h: 3_600_000, m: 60_000, s: 1000, ms: 1, us: 0.001, µs: 0.001, ns: 0.000001 };
  let ms = 0;
  for (const m of s.matchAll(/(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns)/g)) ms += Number(m[1]) * unit[m[2]!]!;
  return Math.round(ms);
}
