/**
 * tags/list, passed through with its pagination. The upstream's Link header points at the upstream's path; it is
 * rewritten to the name the client used, so that following it comes back through the proxy.
 */
import type { Route } from '../routing/route.js';
import { errors } from '../oci/errors.js';
import { readCapped } from '../util/capped-body.js';
import { headerString, type UpstreamClient } from '../upstream/client.js';
import { centralRefusal } from './central-refusal.js';
import { statusError, toRegistryError } from './manifests.js';

/** What the handlers need of tag lists (the implementation, ProxyTagService, follows). */
export interface TagService {
  /**
   * One page of the upstream's tag list, in lexical order, with a Link header that comes back through the proxy.
   * @param clientName the `<name>` the client asked for (with any host prefix), used in the body and Link
   * @param query n and last, already validated
   * @param nsSuffix `&ns=…` to keep on Link URLs, or ''
   */
  list(route: Route, clientName: string, query: { n?: number; last?: string }, nsSuffix: string): Promise<TagList>;
}

export interface TagList {
  body: Buffer;
  link?: string;
}

const MAX_TAGS_BODY = 16 * 1024 * 1024;

export class ProxyTagService implements TagService {
  constructor(private readonly clientFor: (upstream: string) => UpstreamClient) {}

  async list(route: Route, clientName: string, query: { n?: number; last?: string }, nsSuffix: string): Promise<TagList> {
    const qs = new URLSearchParams();
    if (query.n !== undefined) qs.set('n', String(query.n));
    if (query.last !== undefined) qs.set('last', query.last);
    const q = qs.toString();
    let res;
    try {
      res = await this.clientFor(route.upstream.name).send({
        method: 'GET',
        path: `/v2/${route.repository}/tags/list${q ? `?${q}` : ''}`,
        kind: 'tags',
        repository: route.repository,
        headers: { accept: 'application/json' },
      });
    } catch (e) {
      throw toRegistryError(e, route.upstream.name);
    }
    if (res.status === 404) {
      res.body.resume();
      throw errors.nameUnknown(`repository ${route.registry}/${route.repository} not found upstream`);
    }
    if (res.status !== 200) {
      const refusal = await centralRefusal(res, route.upstream, `${route.registry}/${route.repository} (tag list)`);
      if (refusal) throw refusal;
      res.body.resume();
      throw statusError(res, route.upstream.name, `tags of ${route.repository}`);
    }
    let body: Buffer;
    try {
      body = await readCapped(res.body, MAX_TAGS_BODY, () => errors.upstream(`upstream "${route.upstream.name}" sent an oversized tag list`));
    } catch (e) {
      // A body cut short is the upstream's failure (502 naming it), not an internal error.
      throw toRegistryError(e, route.upstream.name);
    }
    let doc: { name?: unknown; tags?: unknown };
    try {
      doc = JSON.parse(body.toString('utf8')) as typeof doc;
    } catch {
      throw errors.upstream(`upstream "${route.upstream.name}" sent a tag list that is not JSON`);
    }
    let tags = Array.isArray(doc.tags) ? doc.tags.filter((t): t is string => typeof t === 'string') : [];
    // The spec wants lexical order, `last` exclusive and at most `n` results. Some upstreams ignore all three
    // (Distribution 2.8 returns every tag, unsorted, whatever the query), so apply them here as well: for an
    // upstream that did its job this changes nothing.
    tags.sort();
    if (query.last !== undefined) {
      const last = query.last;
      tags = tags.filter((t) => t > last);
    }
    let ownNext: string | undefined;
    if (query.n !== undefined && tags.length > query.n) {
      tags = tags.slice(0, query.n);
      ownNext = tags[tags.length - 1];
    }
    const out: TagList = { body: Buffer.from(JSON.stringify({ name: clientName, tags })) };
    const link = headerString(res.headers.link);
    const next = link ? /<([^>]+)>\s*;\s*rel="?next"?/.exec(link)?.[1] : undefined;
    const nq = new URLSearchParams();
    if (ownNext !== undefined) {
      nq.set('n', String(query.n));
      nq.set('last', ownNext);
    } else if (next) {
      const u = new URL(next, 'http://upstream.invalid');
      const n = u.searchParams.get('n');
      const last = u.searchParams.get('last');
      if (n) nq.set('n', n);
      if (last) nq.set('last', last);
    }
    if (ownNext !== undefined || next) out.link = `</v2/${clientName}/tags/list?${nq.toString()}${nsSuffix}>; rel="next"`;
    return out;
  }
}
