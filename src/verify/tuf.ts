/**
 * A Sigstore trusted_root.json that stays fresh: a TUF target fetched with tuf-js (the Sigstore project's client),
 * verified from a pinned initial root.json through the repository's root rotations and its timestamp, snapshot and
 * targets metadata (signatures, thresholds, expiry, versions: tuf-js refuses expired metadata and rollbacks).
 *
 * - The verified target is kept as `<cacheDir>/trusted_root.json`, the last good copy: trust.ts reads only that
 *   file, so a new trusted root is a changed file, which is a new trust revision (decisions are made again).
 * - A failed refresh (mirror down, stale or rolled-back metadata, a target that is not a trusted root) changes
 *   nothing: the last good copy stays in use, the failure is logged and counted
 *   (`portcullis_signature_trust_refresh_total{result="failed"}`), and the refresh is tried again after
 *   RETRY_MS (or `refresh`, if shorter).
 * - Refreshes are due on the injected clock and started by the provider when it reads the trust revision; one
 *   runs at a time per authority.
 * - The pinned root seeds `<cacheDir>/metadata/root.json`; a different pinned root (by hash) starts the metadata
 *   afresh, so a cache dir never carries trust from another repository.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { TrustedRoot } from '@sigstore/protobuf-specs';
import { toTrustMaterial } from '@sigstore/verify';
import { Updater } from 'tuf-js';
import type { AuthorityConfig } from '../config/signatures.js';
import { errorText } from '../util/error-text.js';

type KeylessConfig = Extract<AuthorityConfig, { kind: 'keyless' }>;
export type TufConfig = Extract<NonNullable<KeylessConfig['trustedRoot']>, { tuf: unknown }>['tuf'];

export type RefreshResult = 'updated' | 'unchanged' | 'failed';

export interface TufSourceOptions {
  authority: string;
  config: TufConfig;
  now: () => number;
  /** After every refresh: its result, and the error for a failed one. */
  onResult: (result: RefreshResult, error?: string) => void;
}

/** After a failed refresh, the next try (unless `refresh` is shorter). */
const RETRY_MS = 60_000;
/** Bounds on what the mirror may send (tuf-js enforces them per file). */
const LIMITS = { fetchTimeout: 30_000, fetchRetry: 0, timestampMaxLength: 16_384, snapshotMaxLength: 1_000_000, targetsMaxLength: 1_000_000 };

/** Where the last good trusted_root.json of a TUF source is kept. */
export function lastGoodPath(cfg: TufConfig): string {
  return join(cfg.cacheDir, 'trusted_root.json');
}

export class TufTrustedRoot {
  private nextAt = 0;
  private running: Promise<RefreshResult> | undefined;

  constructor(private readonly o: TufSourceOptions) {}

  get authority(): string {
    return this.o.authority;
  }

  /** The refresh running, or a new one when one is due on the clock; undefined when none is due. */
  refreshIfDue(): Promise<RefreshResult> | undefined {
    if (this.running) return this.running;
    if (this.o.now() < this.nextAt) return undefined;
    return this.refresh();
  }

  /** Refreshes now (joining one that runs). Never rejects. */
  refresh(): Promise<RefreshResult> {
    this.running ??= this.run().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  private async run(): Promise<RefreshResult> {
    const cfg = this.o.config;
    try {
      const bytes = await this.fetchTarget();
      checkTrustedRoot(bytes);
      const path = lastGoodPath(cfg);
      const previous = existsSync(path) ? await readFile(path) : undefined;
      this.nextAt = this.o.now() + cfg.refresh;
      if (previous?.equals(bytes)) {
        this.o.onResult('unchanged');
        return 'unchanged';
      }
      // Whole or not at all: a reader never sees half a trusted root.
      await writeFile(`${path}.tmp`, bytes);
      await rename(`${path}.tmp`, path);
      this.o.onResult('updated');
      return 'updated';
    } catch (e) {
      this.nextAt = this.o.now() + Math.min(cfg.refresh, RETRY_MS);
      this.o.onResult('failed', errorText(e));
      return 'failed';
    }
  }

  private async fetchTarget(): Promise<Buffer> {
    const cfg = this.o.config;
    const metadataDir = join(cfg.cacheDir, 'metadata');
    const targetDir = join(cfg.cacheDir, 'targets');
    const pinned = await readFile(cfg.root);
    const pin = createHash('sha256').update(pinned).digest('hex');
    const pinFile = join(metadataDir, '.pinned-root');
    const seeded = existsSync(pinFile) ? (await readFile(pinFile, 'utf8')).trim() : undefined;
    if (seeded !== pin) {
      await rm(metadataDir, { recursive: true, force: true });
      await mkdir(metadataDir, { recursive: true });
      await writeFile(join(metadataDir, 'root.json'), pinned);
      await writeFile(pinFile, `${pin}\n`);
    }
    await mkdir(targetDir, { recursive: true });
    const mirror = cfg.mirror.replace(/\/+$/, '');
    const updater = new Updater({
      metadataDir,
      metadataBaseUrl: mirror,
      targetDir,
      targetBaseUrl: (cfg.targets ?? `${mirror}/targets`).replace(/\/+$/, ''),
      config: LIMITS,
    });
    await updater.refresh();
    const info = await updater.getTargetInfo(cfg.target);
    if (!info) throw new Error(`the repository has no target ${cfg.target}`);
    if (info.length > 4 * 1024 * 1024) throw new Error(`target ${cfg.target} of ${info.length} bytes is too large`);
    const file = (await updater.findCachedTarget(info)) ?? (await updater.downloadTarget(info));
    return readFile(file);
  }
}

/** The target must be a usable trusted root before it replaces the last good copy. */
function checkTrustedRoot(bytes: Buffer): void {
  try {
    const doc = JSON.parse(bytes.toString('utf8')) as { mediaType?: unknown };
    // fromJSON is lenient (unknown or mistyped fields are dropped): the media type says what the document is.
    if (typeof doc.mediaType !== 'string' || !/^application\/vnd\.dev\.sigstore\.trustedroot(\.v[0-9.]+)?\+json/.test(doc.mediaType)) {
      throw new Error(`media type ${JSON.stringify(doc.mediaType ?? null)} is not a Sigstore trusted root's`);
    }
    toTrustMaterial(TrustedRoot.fromJSON(doc));
  } catch (e) {
    throw new Error(`the target is not a usable trusted_root.json: ${errorText(e)}`, { cause: e });
  }
}
