/**
 * Which replicas are alive, from this replica's point of view: a static peer list (the `cluster` config) and a
 * health probe per peer. A peer that fails `failuresToDown` probes in a row owns nothing until it answers a probe
 * again; a failed blob transfer from a peer takes it out at once (markDown), so a dead owner costs at most one
 * failed connection per replica, not a probe period. This replica always counts itself live.
 *
 * Probes are bounded: at most one in flight per peer, each cut off by the probe function's own timeout. The probe
 * schedule is a timer in production; tests call probeAll() by hand, and the injected clock stamps lastSeen.
 */
import { rank } from './rendezvous.js';

export interface MembershipOptions {
  self: string;
  /** Every replica, self included. */
  peers: readonly string[];
  /** Resolves true when the peer answered healthy (the function bounds its own time). */
  probe: (peer: string) => Promise<boolean>;
  failuresToDown: number;
  now?: () => number;
  /** Told when a peer goes down or comes back (logs, metrics). */
  onChange?: (peer: string, live: boolean) => void;
}

interface PeerState {
  failures: number;
  live: boolean;
  probing: boolean;
  lastSeen: number | undefined;
}

export class Membership {
  readonly self: string;
  private readonly state = new Map<string, PeerState>();
  private readonly now: () => number;
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly o: MembershipOptions) {
    this.self = o.self;
    this.now = o.now ?? Date.now;
    // Optimistic at start: a peer that is not up yet fails its first transfer and is marked down then.
    for (const p of new Set([...o.peers, o.self])) this.state.set(p, { failures: 0, live: true, probing: false, lastSeen: undefined });
  }

  /** The live replicas, self included. */
  live(): string[] {
    return [...this.state].filter(([p, s]) => p === this.self || s.live).map(([p]) => p);
  }

  /** Live replicas from the most to the least preferred owner of key (the first is the owner). */
  owners(key: string): string[] {
    return rank(key, this.live());
  }

  isLive(peer: string): boolean {
    return peer === this.self || (this.state.get(peer)?.live ?? false);
  }

  lastSeen(peer: string): number | undefined {
    return this.state.get(peer)?.lastSeen;
  }

  /** A transfer from this peer failed outright (refused, reset, timed out): out until it answers a probe. */
  markDown(peer: string): void {
    const s = this.state.get(peer);
    if (!s || peer === this.self) return;
    s.failures = Math.max(s.failures, this.o.failuresToDown);
    this.setLive(peer, s, false);
  }

  /** One probe of every other peer (those with a probe still running are skipped); resolves when all answered. */
  async probeAll(): Promise<void> {
    await Promise.all([...this.state.keys()].filter((p) => p !== this.self).map((p) => this.probeOne(p)));
  }

  private async probeOne(peer: string): Promise<void> {
    const s = this.state.get(peer)!;
    if (s.probing) return;
    s.probing = true;
    const ok = await this.o.probe(peer).then(
      (r) => r,
      () => false,
    );
    s.probing = false;
    if (ok) {
      s.failures = 0;
      s.lastSeen = this.now();
      this.setLive(peer, s, true);
    } else {
      s.failures++;
      if (s.failures >= this.o.failuresToDown) this.setLive(peer, s, false);
    }
  }

  private setLive(peer: string, s: PeerState, live: boolean): void {
    if (s.live === live) return;
    s.live = live;
    this.o.onChange?.(peer, live);
  }

  /** Probes every intervalMs until stop(). */
  start(intervalMs: number): void {
    if (this.timer) return;
    void this.probeAll();
    this.timer = setInterval(() => void this.probeAll(), intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }
}
