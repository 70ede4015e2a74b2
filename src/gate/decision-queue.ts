/**
 * The queue between decisions and the HTTP decision log sink. Events are taken from its head only once the
 * collector has acknowledged them (peek, send, ack), so a failed delivery loses nothing and keeps the order.
 *
 * - `MemoryQueue`: up to `maxQueue` events in memory (the default; lost on restart).
 * - `SpoolQueue`: every event is written to `<dataDir>/decision-log.sqlite` (WAL) before it is sent and deleted
 *   once delivered, up to `maxBytes` of event JSON. A restart resumes it. Several processes on one data directory
 *   (a replacement starting before the old one exits) share it: each appends, and one at a time delivers, under a
 *   lease, so the order is the order of the appends and no event is sent twice by two processes.
 *
 * Delivery is at least once: a crash between the collector's 2xx and the delete re-sends that batch after the
 * restart (events carry `decision_id` for de-duplication).
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { DatabaseSync, type StatementSync } from 'node:sqlite';

export interface EventQueue {
  /** Appends one event (its JSON); false when there is no room. */
  offer(json: string): boolean;
  /** The oldest events, up to `n`, left in place; `token` acknowledges exactly these. */
  peek(n: number): { events: string[]; token: number };
  /** Removes the events of a `peek` once they are delivered. */
  ack(token: number): void;
  /** Whether this process may deliver now (always, except for a spool another process is delivering). */
  lease(): boolean;
  readonly length: number;
  close(): void;
}

export class MemoryQueue implements EventQueue {
  private readonly q: string[] = [];

  constructor(private readonly max: number) {}

  offer(json: string): boolean {
    if (this.q.length >= this.max) return false;
    this.q.push(json);
    return true;
  }

  peek(n: number): { events: string[]; token: number } {
    const events = this.q.slice(0, n);
    return { events, token: events.length };
  }

  ack(token: number): void {
    // Only the deliverer removes from the head and offers only append, so the first `token` are the ones sent.
    this.q.splice(0, token);
  }

  lease(): boolean {
    return true;
  }

  get length(): number {
    return this.q.length;
  }

  close(): void {}
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS spool_size (id INTEGER PRIMARY KEY CHECK (id = 1), bytes INTEGER NOT NULL);
INSERT OR IGNORE INTO spool_size (id, bytes) VALUES (1, 0);
CREATE TRIGGER IF NOT EXISTS events_in AFTER INSERT ON events BEGIN UPDATE spool_size SET bytes = bytes + length(NEW.body) WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS events_out AFTER DELETE ON events BEGIN UPDATE spool_size SET bytes = bytes - length(OLD.body) WHERE id = 1; END;
CREATE TABLE IF NOT EXISTS lease (id INTEGER PRIMARY KEY CHECK (id = 1), owner TEXT NOT NULL, until INTEGER NOT NULL);
INSERT OR IGNORE INTO lease (id, owner, until) VALUES (1, '', 0);
`;

/** How long a delivery lease lasts without renewal: a process that died mid-delivery blocks others this long. */
const LEASE_MS = 30_000;

export class SpoolQueue implements EventQueue {
  private readonly db: DatabaseSync;
  private readonly st: Record<'offer' | 'peek' | 'ack' | 'count' | 'bytes' | 'lease' | 'release', StatementSync>;
  private readonly owner = randomUUID();

  constructor(
    dataDir: string,
    private readonly maxBytes: number,
    private readonly now: () => number = Date.now,
  ) {
    mkdirSync(dataDir, { recursive: true });
    this.db = new DatabaseSync(join(dataDir, 'decision-log.sqlite'));
    // journal_size_limit: the WAL is truncated after checkpoints, so the files stay near the spool's own size.
    this.db.exec('PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000; PRAGMA journal_size_limit = 4194304;');
    this.db.exec(SCHEMA);
    const p = (sql: string): StatementSync => this.db.prepare(sql);
    this.st = {
      // One statement checks the room and appends, so two processes cannot both take the last of it.
      offer: p('INSERT INTO events (body) SELECT ? WHERE (SELECT bytes FROM spool_size WHERE id = 1) + ? <= ?'),
      peek: p('SELECT seq, body FROM events ORDER BY seq LIMIT ?'),
      ack: p('DELETE FROM events WHERE seq <= ?'),
      // Sequence numbers are contiguous (appends only, deletes from the head), so this is the count without a scan.
      count: p('SELECT coalesce(max(seq) - min(seq) + 1, 0) AS n FROM events'),
      bytes: p('SELECT bytes FROM spool_size WHERE id = 1'),
      lease: p('UPDATE lease SET owner = ?, until = ? WHERE id = 1 AND (owner = ? OR until < ?)'),
      release: p("UPDATE lease SET owner = '', until = 0 WHERE id = 1 AND owner = ?"),
    };
  }

  offer(json: string): boolean {
    const body = Buffer.from(json, 'utf8');
    return Number(this.st.offer.run(body, body.length, this.maxBytes).changes) === 1;
  }

  peek(n: number): { events: string[]; token: number } {
    const rows = this.st.peek.all(n) as Array<{ seq: number; body: Uint8Array }>;
    return { events: rows.map((r) => Buffer.from(r.body).toString('utf8')), token: rows.length ? rows[rows.length - 1]!.seq : 0 };
  }

  ack(token: number): void {
    if (token > 0) this.st.ack.run(token);
  }

  lease(): boolean {
    const now = this.now();
    return Number(this.st.lease.run(this.owner, now + LEASE_MS, this.owner, now).changes) === 1;
  }

  get length(): number {
    return (this.st.count.get() as { n: number }).n;
  }

  /** Bytes of event JSON held (what `maxBytes` caps). */
  get bytes(): number {
    return (this.st.bytes.get() as { bytes: number }).bytes;
  }

  close(): void {
    if (!this.db.isOpen) return;
    this.st.release.run(this.owner);
    this.db.close();
  }
}
