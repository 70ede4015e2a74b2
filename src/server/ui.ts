/**
 * The decision explorer's view of the running proxy (src/ui/handler.ts UiTarget): the check and re-evaluation
 * pipelines the CLI uses, the policy's reload state and the cache's size. Kept here so that src/ui never imports
 * the server.
 */
import { checkImage, type CheckTarget } from './check.js';
import type { PolicyManager } from '../policy/manager.js';
import { reevaluate } from '../gate/reeval.js';
import type { UiTarget } from '../ui/handler.js';
import type { ReevalTarget } from '../gate/reeval.js';
import type { BlobStore } from '../cache/blobstore.js';
import type { Metrics } from '../metrics/metrics.js';

/** The services the explorer reads, built by the composition root before the App. */
export type UiServices = ReevalTarget & CheckTarget & { metrics: Metrics; blobStore: BlobStore };

export function uiTarget(app: UiServices, policy: PolicyManager): UiTarget {
  return {
    metrics: app.metrics,
    policy: () => ({ revision: policy.revision, last: policy.last }),
    cache: () => ({ bytes: app.blobStore.totalBytes, entries: app.blobStore.entries }),
    // What GET /api/v1/admin/reevaluate?all=1 and `portcullis report --all` answer.
    reevaluate: () => reevaluate(app, { all: true }),
    // What `portcullis check` runs; the explorer reads the decision's evidence from its ring.
    check: (ref, as) => checkImage(app, ref, {}, as),
  };
}
