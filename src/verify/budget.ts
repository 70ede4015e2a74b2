/**
 * One budget per signature evidence computation (one digest, one decision): how many signature artifacts
 * (manifests, the `.sig` and `.att` tag lookups included), how many blobs and how many bytes discovery may fetch,
 * all lookups together.
 *
 * Why one budget: the caps used to apply per list (referrers examined, layers per signature manifest), so they
 * multiplied: with `maxSignatures: 8` a hostile upstream listing eight referrers of eight layers each, plus `.sig`
 * and `.att` tags, got 72 blob downloads out of one decision. Here the first request past any of the three limits
 * is not made, and the evidence becomes `status: "error"` with a reason naming the limit, which a policy that
 * requires signatures denies.
 */
export interface BudgetLimits {
  artifacts: number;
  blobs: number;
  bytes: number;
}

export class BudgetExceededError extends Error {
  constructor(
    readonly limit: keyof BudgetLimits,
    readonly max: number,
  ) {
    super(
      `signature discovery budget exceeded: more than ${max} ${limit === 'bytes' ? 'bytes' : limit === 'blobs' ? 'signature blobs' : 'signature artifacts'} for one digest (signatures.budget.${limit})`,
    );
    this.name = 'BudgetExceededError';
  }
}

export class DiscoveryBudget {
  private used: BudgetLimits = { artifacts: 0, blobs: 0, bytes: 0 };
  /** The first limit that was hit; once set, every further take fails without a request. */
  exceeded: BudgetExceededError | undefined;

  constructor(private readonly limits: BudgetLimits) {}

  /** Accounts for one artifact manifest about to be fetched; throws past the limit. */
  artifact(): void {
    this.take('artifacts', 1);
  }

  /** Accounts for one blob of `size` declared bytes about to be fetched; throws past a limit. */
  blob(size: number): void {
    this.take('blobs', 1);
    this.take('bytes', size);
  }

  /** Bytes received beyond what was declared and accounted (manifest bodies). */
  bytes(n: number): void {
    this.take('bytes', n);
  }

  get usage(): Readonly<BudgetLimits> {
    return this.used;
  }

  private take(limit: keyof BudgetLimits, n: number): void {
    if (this.exceeded) throw this.exceeded;
    if (this.used[limit] + n > this.limits[limit]) {
      this.exceeded = new BudgetExceededError(limit, this.limits[limit]);
      throw this.exceeded;
    }
    this.used[limit] += n;
  }
}
