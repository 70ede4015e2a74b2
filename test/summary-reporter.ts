/**
 * Prints one plain closing line, `N passed, N failed, N skipped`, after vitest's own summary, so that CI logs (and
 * tools that read them) get a runner-independent count. With --coverage, the coverage figure comes just before it.
 */
import type { Reporter, TestModule } from 'vitest/node';

/** The part of istanbul's CoverageMap summary this prints (vitest hands the map over untyped). */
interface Totals {
  total: number;
  covered: number;
  pct: number;
}
interface CoverageSummary {
  lines: Totals;
  branches: Totals;
  functions: Totals;
  statements: Totals;
}

export default class SummaryReporter implements Reporter {
  private coverage: CoverageSummary | undefined;

  onCoverage(map: unknown): void {
    const m = map as { getCoverageSummary?: () => CoverageSummary };
    this.coverage = typeof m?.getCoverageSummary === 'function' ? m.getCoverageSummary() : undefined;
  }

  onTestRunEnd(modules: ReadonlyArray<TestModule>): void {
    if (this.coverage) {
      const c = this.coverage;
      const f = (t: Totals): string => `${t.pct.toFixed(1)}% (${t.covered}/${t.total})`;
      process.stdout.write(`\ncoverage of src/: lines ${f(c.lines)}, branches ${f(c.branches)}, functions ${f(c.functions)}, statements ${f(c.statements)}\n`);
    }
    let passed = 0;
    let failed = 0;
    let skipped = 0;
    for (const m of modules) {
      for (const t of m.children.allTests()) {
        const state = t.result().state;
        if (state === 'passed') passed++;
        else if (state === 'failed') failed++;
        else skipped++;
      }
      if (m.state() === 'failed' && [...m.children.allTests()].length === 0) failed++;
    }
    process.stdout.write(`\n${passed} passed, ${failed} failed, ${skipped} skipped\n`);
  }
}
