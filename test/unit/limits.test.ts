/**
 * The write-stall watchdog of src/server/limits.ts with an injected clock: an inactivity timeout, not a total one.
 * A response whose queued bytes move, however slowly, is never cut off; one whose queue stands still for
 * writeStallTimeout is; one with nothing queued (waiting on its upstream, or idle between requests) is not its
 * business.
 */
import { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import { ConnectionGuard, type ClosedReason } from '../../src/server/limits.js';
import { addressSet } from '../../src/util/address.js';

/** The parts of a socket the watchdog reads: what is queued, what completed, and libuv's write queue. */
class FakeSocket extends EventEmitter {
  destroyed = false;
  writableLength = 0;
  bytesWritten = 0;
  remoteAddress = '192.0.2.1';
  remotePort = 1234;
  _handle = { writeQueueSize: 0 };

  destroy(): this {
    this.destroyed = true;
    this.emit('close');
    return this;
  }
}

function guard(now: () => number, ended: ClosedReason[]): ConnectionGuard {
  return new ConnectionGuard(
    {
      maxConnections: 0,
      maxConnectionsPerClient: 0,
      writeStallTimeout: 60_000,
      proxyProtocol: false,
      proxyProtocolTimeout: 1_000,
      trustedProxies: addressSet([]),
    },
    { ended: (r) => ended.push(r) },
    now,
  );
}

describe('write-stall watchdog', () => {
  it('never cuts off a client that keeps taking bytes, however slowly, and cuts off one that stops', () => {
    let t = 0;
    const ended: ClosedReason[] = [];
    const g = guard(() => t, ended);
    try {
      const s = new FakeSocket();
      g.watch(s as unknown as Socket);
      // A 1 MiB write in flight for ten minutes, the kernel taking 1 KiB every 50 s: slow, but moving.
      s.bytesWritten = 1024 * 1024;
      s.writableLength = 1024 * 1024;
      s._handle.writeQueueSize = 1024 * 1024;
      for (let i = 0; i < 12; i++) {
        g.sweep();
        t += 50_000;
        s._handle.writeQueueSize -= 1024;
      }
      g.sweep();
      expect(s.destroyed).toBe(false);
      // Then nothing moves: cut off once writeStallTimeout has passed since the last movement, not before.
      t += 59_999;
      g.sweep();
      expect(s.destroyed).toBe(false);
      t += 1;
      g.sweep();
      expect(s.destroyed).toBe(true);
      expect(ended).toEqual(['write_stall']);
    } finally {
      g.close();
    }
  });

  it('leaves alone a connection with nothing queued, however long it waits', () => {
    let t = 0;
    const ended: ClosedReason[] = [];
    const g = guard(() => t, ended);
    try {
      const s = new FakeSocket();
      g.watch(s as unknown as Socket);
      s.bytesWritten = 5000;
      for (let i = 0; i < 10; i++) {
        g.sweep();
        t += 3_600_000;
      }
      expect(s.destroyed).toBe(false);
      // Completed writes are progress too (a TLS socket shows nothing finer).
      const tlsLike = new FakeSocket();
      (tlsLike as { _handle: unknown })._handle = null;
      g.watch(tlsLike as unknown as Socket);
      tlsLike.writableLength = 256 * 1024;
      tlsLike.bytesWritten = 256 * 1024;
      g.sweep();
      for (let i = 0; i < 5; i++) {
        t += 59_000;
        tlsLike.bytesWritten += 256 * 1024;
        g.sweep();
      }
      expect(tlsLike.destroyed).toBe(false);
      t += 60_000;
      g.sweep();
      expect(tlsLike.destroyed).toBe(true);
      expect(ended).toEqual(['write_stall']);
    } finally {
      g.close();
    }
  });
});
