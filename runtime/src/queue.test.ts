import { getEventListeners } from 'node:events';
import { describe, expect, it } from 'vitest';
import { FakeClock, flushMicrotasks } from './clock.js';
import { WorkQueue } from './queue.js';

function deferred() {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

describe('WorkQueue', () => {
  it('collapses repeated adds of a waiting key into one run', async () => {
    const runs: string[] = [];
    const q = new WorkQueue({ concurrency: 1, clock: new FakeClock(), retryInitialMs: 100, retryMaxMs: 1000, process: async (k) => void runs.push(k) });
    q.pause();
    for (let i = 0; i < 10; i++) q.add('ns/a');
    q.add('ns/b');
    expect(q.depth).toBe(2);
    q.resume();
    await q.idle();
    expect(runs).toEqual(['ns/a', 'ns/b']);
  });

  it('never runs one key twice at once, and runs it again when it changed during a run', async () => {
    const gate = deferred();
    let concurrent = 0;
    let maxConcurrent = 0;
    let runs = 0;
    const q = new WorkQueue({
      concurrency: 4,
      clock: new FakeClock(),
      retryInitialMs: 100,
      retryMaxMs: 1000,
      process: async () => {
        runs++;
        concurrent++;
        maxConcurrent = Math.max(maxConcurrent, concurrent);
        if (runs === 1) await gate.promise;
        concurrent--;
      },
    });
    q.add('ns/a');
    await flushMicrotasks();
    q.add('ns/a');
    q.add('ns/a');
    await flushMicrotasks();
    expect(maxConcurrent).toBe(1);
    gate.resolve();
    await q.idle();
    expect(runs).toBe(2);
    expect(maxConcurrent).toBe(1);
  });

  it('limits concurrency across keys', async () => {
    const gates = [deferred(), deferred(), deferred()];
    let active = 0;
    let peak = 0;
    let i = 0;
    const q = new WorkQueue({
      concurrency: 2,
      clock: new FakeClock(),
      retryInitialMs: 100,
      retryMaxMs: 1000,
      process: async () => {
        const g = gates[i++]!;
        active++;
        peak = Math.max(peak, active);
        await g.promise;
        active--;
      },
    });
    q.add('a');
    q.add('b');
    q.add('c');
    await flushMicrotasks();
    expect(q.active).toBe(2);
    expect(q.depth).toBe(1);
    gates.forEach((g) => g.resolve());
    await q.idle();
    expect(peak).toBe(2);
  });

  it('retries a failing key with growing backoff and forgets it after success', async () => {
    const clock = new FakeClock();
    let attempts = 0;
    const retries: number[] = [];
    const q = new WorkQueue({
      concurrency: 1,
      clock,
      retryInitialMs: 100,
      retryMaxMs: 1000,
      random: () => 0.999999,
      process: async () => {
        attempts++;
        if (attempts <= 3) throw new Error('conflict');
      },
      onError: (_k, _e, ms) => retries.push(ms),
    });
    q.add('ns/a');
    await flushMicrotasks();
    expect(attempts).toBe(1);
    await clock.advance(99);
    expect(attempts).toBe(1); // rate limited: not before the delay
    await clock.advance(1);
    expect(attempts).toBe(2);
    await clock.advance(200);
    await clock.advance(400);
    expect(attempts).toBe(4);
    expect(retries).toEqual([100, 200, 400]);
    await q.idle();
    expect(clock.pending()).toEqual([]);
  });

  it('requeues after the delay a reconcile asks for, and stop() drops pending work', async () => {
    const clock = new FakeClock();
    let runs = 0;
    const q = new WorkQueue({ concurrency: 1, clock, retryInitialMs: 100, retryMaxMs: 1000, process: async () => (++runs === 1 ? { requeueAfterMs: 5000 } : undefined) });
    q.add('ns/a');
    await flushMicrotasks();
    await clock.advance(5000);
    expect(runs).toBe(2);
    q.addAfter('ns/a', 1000);
    await q.stop();
    await clock.advance(1000);
    expect(runs).toBe(2);
  });

  it('keeps one timer for many delayed keys, and no listener per key on the signal it hands out', async () => {
    const clock = new FakeClock();
    const runs: string[] = [];
    let signal: AbortSignal | undefined;
    const q = new WorkQueue({ concurrency: 2, clock, retryInitialMs: 100, retryMaxMs: 1000, process: async (k, s) => void (runs.push(k), (signal = s)) });
    q.add('ns/first');
    await q.idle();
    for (let i = 0; i < 50; i++) q.addAfter(`ns/k${i}`, 1000 + i * 10);
    q.addAfter('ns/early', 500);
    expect(clock.pending()).toEqual([500]);
    expect(getEventListeners(signal!, 'abort')).toHaveLength(0);
    await clock.advance(500);
    expect(runs).toEqual(['ns/first', 'ns/early']);
    expect(clock.pending()).toEqual([500]);
    await clock.advance(1000);
    await q.idle();
    expect(runs).toHaveLength(52);
    expect(clock.pending()).toEqual([]);
    await q.stop();
  });
});
