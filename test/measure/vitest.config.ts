import { defineConfig } from 'vitest/config';

/**
 * Measurements, not tests: run from the repository root with `npx vitest run -c test/measure/vitest.config.ts`.
 * Kept out of `npm test` because they read V8's precise coverage counters, which would disturb a coverage run.
 */
export default defineConfig({
  test: {
    include: ['test/measure/**/*.measure.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
  },
});
