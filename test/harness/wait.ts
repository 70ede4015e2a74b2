/**
 * Waiting on a condition instead of sleeping: for something that happens asynchronously with no event to await
 * (a log line that trails a response, a metric, a background unlink). The bound is a count of checks, and it only
 * ends a test that would otherwise hang; no test asserts on how long anything took.
 */
export async function until(cond: () => boolean | Promise<boolean>, what = 'condition', boundMs = 10_000): Promise<void> {
  for (let waited = 0; !(await cond()); waited += 5) {
    if (waited > boundMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
