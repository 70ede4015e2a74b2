/**
 * bcrypt off the main thread. A bcrypt comparison at cost 10 takes tens of milliseconds of pure CPU; on the event
 * loop it would stall every pull for that long, and a flood of logins would stall them all. One worker thread runs
 * the comparisons (bcryptjs, pure JavaScript: no native build to break), fed through a bounded queue: beyond
 * `maxQueue` waiting comparisons a verification is refused rather than queued, so hashing cannot become a CPU or
 * memory lever.
 */
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';

export interface PasswordHasher {
  /** true when `password` matches the bcrypt `hash`; rejects with BusyError when the queue is full. */
  compare(password: string, hash: string): Promise<boolean>;
  close(): Promise<void>;
}

export class BusyError extends Error {
  constructor() {
    super('too many password verifications queued');
    this.name = 'BusyError';
  }
}

// The worker is a few lines of CommonJS evaluated in place: no second compiled file to locate from dist/ or from
// the TypeScript sources under test. It requires bcryptjs by the absolute path resolved here.
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const bcrypt = require(workerData.bcryptjs);
parentPort.on('message', (m) => {
  let ok = false;
  try { ok = bcrypt.compareSync(m.password, m.hash); } catch { ok = false; }
  parentPort.postMessage({ id: m.id, ok });
});
`;

interface Pending {
  resolve: (ok: boolean) => void;
  reject: (e: Error) => void;
}

export class BcryptWorker implements PasswordHasher {
  private worker: Worker | undefined;
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();

  constructor(private readonly maxQueue = 64) {}

  private start(): Worker {
    if (this.worker) return this.worker;
    const bcryptjs = createRequire(import.meta.url).resolve('bcryptjs');
    const w = new Worker(WORKER_SOURCE, { eval: true, workerData: { bcryptjs } });
    // The worker must not keep a finished process (a CLI check, a test) alive.
    w.unref();
    w.on('message', (m: { id: number; ok: boolean }) => {
      const p = this.pending.get(m.id);
      this.pending.delete(m.id);
      p?.resolve(m.ok === true);
    });
    const failAll = (e: Error): void => {
      for (const p of this.pending.values()) p.reject(e);
      this.pending.clear();
      this.worker = undefined;
    };
    w.on('error', failAll);
    w.on('exit', (code) => failAll(new Error(`bcrypt worker exited with code ${code}`)));
    this.worker = w;
    return w;
  }

  compare(password: string, hash: string): Promise<boolean> {
    if (this.pending.size >= this.maxQueue) return Promise.reject(new BusyError());
    const w = this.start();
    const id = this.nextId++;
    return new Promise<boolean>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      w.postMessage({ id, password, hash });
    });
  }

  async close(): Promise<void> {
    const w = this.worker;
    this.worker = undefined;
    if (w) await w.terminate();
  }
}
