// A level-triggered work queue keyed by namespace/name, in the manner of client-go's workqueue:
//  - adding a key that is already waiting does nothing (dedupe: ten pod events make one reconcile);
//  - a key is never processed by two workers at once; adding it while it is processed marks it dirty,
//    and it runs once more after the current run ends (so no change is lost);
//  - failures are retried with per-key exponential backoff (rate limited), successes forget the backoff;
//  - at most `concurrency` keys are processed at a time.
import { isAbortError, type Clock } from './clock.js';
import { Backoff } from './backoff.js';

export interface ProcessResult {
  /** Reconcile this key again after this delay (e.g. waiting for agents to detach). */
  requeueAfterMs?: number;
}

export interface WorkQueueOptions {
  concurrency: number;
  clock: Clock;
  retryInitialMs: number;
  retryMaxMs: number;
  random?: () => number;
  process: (key: string, signal: AbortSignal) => Promise<ProcessResult | void>;
  onError?: (key: string, err: unknown, retryInMs: number) => void;
  onDepth?: (depth: number) => void;
}

export class WorkQueue {
  private readonly queue: string[] = [];
  private readonly queued = new Set<string>();
  private readonly processing = new Set<string>();
  /** Added while processing: run again afterwards. */
  private readonly dirty = new Set<string>();
  private readonly failures = new Map<string, Backoff>();
  /** Earliest pending delayed add per key, so repeated addAfter calls do not pile up timers. */
  private readonly delayed = new Map<string, number>();
  private readonly abort = new AbortController();
  /** The one pending sleep for the earliest delayed key, and when it ends. */
  private timer: AbortController | undefined;
  private timerDue = Infinity;
  private running = 0;
  private readonly inFlight = new Set<Promise<void>>();
  private stopped = false;
  private paused = false;
  private idleWaiters: (() => void)[] = [];

  constructor(private readonly opts: WorkQueueOptions) {}

  get depth(): number {
    return this.queue.length;
  }

  get active(): number {
    return this.running;
  }

  add(key: string): void {
    if (this.stopped) return;
    if (this.processing.has(key)) {
      this.dirty.add(key);
      return;
    }
    if (this.queued.has(key)) return;
    this.queued.add(key);
    this.queue.push(key);
    this.opts.onDepth?.(this.queue.length);
    this.pump();
  }

  addAfter(key: string, delayMs: number): void {
    if (this.stopped) return;
    if (delayMs <= 0) return this.add(key);
    const due = this.opts.clock.now() + delayMs;
    const pending = this.delayed.get(key);
    if (pending !== undefined && pending <= due) return;
    this.delayed.set(key, due);
    this.schedule();
  }

  /**
   * One timer for all delayed keys, set for the earliest: a sleep (and an abort listener) per key would put
   * as many listeners on one signal as there are StreamPaths waiting for their write interval.
   */
  private schedule(): void {
    let next = Infinity;
    for (const due of this.delayed.values()) if (due < next) next = due;
    if (next === Infinity || this.stopped) return;
    if (this.timer && this.timerDue <= next) return;
    this.timer?.abort();
    const timer = new AbortController();
    this.timer = timer;
    this.timerDue = next;
    this.opts.clock.sleep(Math.max(0, next - this.opts.clock.now()), timer.signal).then(
      () => {
        if (this.timer !== timer) return;
        this.timer = undefined;
        this.timerDue = Infinity;
        const now = this.opts.clock.now();
        for (const [key, due] of [...this.delayed]) {
          if (due > now) continue;
          this.delayed.delete(key);
          this.add(key);
        }
        this.schedule();
      },
      () => {},
    );
  }

  /** Keys are collected but not processed until resume() (e.g. until the caches are synced). */
  pause(): void {
    this.paused = true;
  }

  resume(): void {
    this.paused = false;
    this.pump();
  }

  /** Stops taking work and waits for in-flight keys; their signal is aborted so writes stop at once. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.abort.abort();
    this.timer?.abort();
    this.timer = undefined;
    this.delayed.clear();
    this.queue.length = 0;
    this.queued.clear();
    await Promise.allSettled([...this.inFlight]);
  }

  /** Resolves when nothing is queued or running (tests and benchmarks). */
  idle(): Promise<void> {
    if (this.queue.length === 0 && this.running === 0) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }

  private pump(): void {
    while (!this.stopped && !this.paused && this.running < this.opts.concurrency && this.queue.length > 0) {
      const key = this.queue.shift()!;
      this.queued.delete(key);
      this.processing.add(key);
      this.running++;
      this.opts.onDepth?.(this.queue.length);
      const p = this.runOne(key).finally(() => this.inFlight.delete(p));
      this.inFlight.add(p);
    }
    if ((this.queue.length === 0 || this.paused) && this.running === 0) {
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of waiters) w();
    }
  }

  private async runOne(key: string): Promise<void> {
    try {
      const result = await this.opts.process(key, this.abort.signal);
      this.failures.delete(key);
      if (result?.requeueAfterMs !== undefined) this.addAfter(key, result.requeueAfterMs);
    } catch (err) {
      if (!(this.stopped && isAbortError(err))) {
        let b = this.failures.get(key);
        if (!b) {
          b = new Backoff({ initialMs: this.opts.retryInitialMs, maxMs: this.opts.retryMaxMs, random: this.opts.random });
          this.failures.set(key, b);
        }
        const delay = b.next();
        this.opts.onError?.(key, err, delay);
        this.addAfter(key, delay);
      }
    } finally {
      this.processing.delete(key);
      this.running--;
      if (this.dirty.delete(key)) this.add(key);
      this.pump();
    }
  }
}
