/**
 * Rendezvous (highest-random-weight) hashing: every replica scores each (node, key) pair with the same hash and the
 * key belongs to the highest score. Replicas that agree on the live set agree on the owner without talking to each
 * other, and when a node leaves only the keys it owned move (each to its runner-up); the others stay put.
 */
import { createHash } from 'node:crypto';

/** The node's weight for key: the first 48 bits of sha256(node NUL key), as an exact integer. */
function score(node: string, key: string): number {
  return createHash('sha256').update(node).update('\0').update(key).digest().readUIntBE(0, 6);
}

/** Nodes from most to least preferred for key (ties, practically impossible, broken by name: still deterministic). */
export function rank(key: string, nodes: readonly string[]): string[] {
  return nodes
    .map((n) => ({ n, s: score(n, key) }))
    .sort((a, b) => b.s - a.s || (a.n < b.n ? -1 : a.n > b.n ? 1 : 0))
    .map((x) => x.n);
}

/** The owner of key among nodes; undefined for no nodes. */
export function ownerOf(key: string, nodes: readonly string[]): string | undefined {
  return rank(key, nodes)[0];
}
