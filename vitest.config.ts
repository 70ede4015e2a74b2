import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // Integration tests start real registries, containerd and proxies on loopback; on 2 cores, running files
    // in parallel makes timings noisy without making the suite faster.
    fileParallelism: false,
    include: ['test/**/*.test.ts'],
    reporters: ['default', './test/summary-reporter.ts'],
    // `npm test` runs with --coverage: V8's own counters over src/ (tests and harness excluded). The summary reporter
    // prints the figure just before its closing line; json-summary leaves the numbers in coverage/ for tools.
    coverage: {
      provider: 'v8',
      include: ['src/**/*.ts'],
      reporter: ['json-summary'],
    },
  },
});
