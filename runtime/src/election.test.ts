import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { FakeClock, flushMicrotasks, type Clock } from './clock.js';
import { ApiError, type KubeTransport } from './rest.js';
import { LeaderElector } from './election.js';

/** One Lease object with resourceVersion checks, like the apiserver; `down` makes every request fail. */
class FakeLeases implements KubeTransport {
  lease: Record<string, any> | undefined;
  rv = 0;
  down = false;
  /** Requests hang (a stalled connection) until their signal aborts them. */
  hang = false;
  aborted = 0;
  async request<T>(method: string, path: string, opts?: { body?: unknown; signal?: AbortSignal }): Promise<T> {
    if (this.down) throw new Error('connect ECONNREFUSED');
    if (this.hang) {
      return new Promise<T>((_resolve, reject) => {
        opts?.signal?.addEventListener('abort', () => {
          this.aborted++;
          const e = new Error('aborted');
          e.name = 'AbortError';
          reject(e);
        });
      });
    }
    if (method === 'GET') {
      if (!this.lease) throw new ApiError(404, method, path, '{}');
      return structuredClone(this.lease) as T;
    }
    const body = structuredClone(opts!.body) as Record<string, any>;
    if (method === 'POST' && this.lease) throw new ApiError(409, method, path, '{}');
    if (method === 'PUT' && body.metadata.resourceVersion !== this.lease?.metadata.resourceVersion) throw new ApiError(409, method, path, '{}');
    body.metadata.resourceVersion = String(++this.rv);
    this.lease = body;
    return structuredClone(body) as T;
  }
  async watch(): Promise<void> {}
}

function candidate(leases: FakeLeases, clock: Clock, identity: string, log: string[], monotonic = () => clock.now()) {
  return new LeaderElector({
    transport: leases,
    clock,
    log: pino({ level: 'silent' }),
    namespace: 'kstreams-system',
    name: 'kstreams-operator',
    identity,
    leaseDurationMs: 15_000,
    renewDeadlineMs: 10_000,
    retryPeriodMs: 2_000,
    monotonic,
    onStartedLeading: () => log.push(`${identity} started`),
    onStoppedLeading: () => log.push(`${identity} stopped`),
  });
}

describe('LeaderElector', () => {
  it('exactly one of two candidates leads; the other takes over only after the lease expires', async () => {
    const leases = new FakeLeases();
    const clock = new FakeClock();
    const log: string[] = [];
    const a = candidate(leases, clock, 'a', log);
    const b = candidate(leases, clock, 'b', log);
    const stopA = new AbortController();
    const stopB = new AbortController();
    const runA = a.run(stopA.signal);
    await flushMicrotasks();
    const runB = b.run(stopB.signal);
    await flushMicrotasks();
    expect(log).toEqual(['a started']);
    await clock.advance(10_000);
    expect([a.isLeader, b.isLeader]).toEqual([true, false]);
    // a is cut off from the apiserver (no release): b waits out the lease duration on its own clock
    const aLease = leases.lease!;
    (a as unknown as { o: { transport: KubeTransport } }).o.transport = { request: async () => { throw new Error('partitioned'); }, watch: async () => {} };
    await clock.advance(9_000);
    expect(b.isLeader).toBe(false);
    // a stopped leading before b could take over (renew deadline 10 s < lease duration 15 s)
    await clock.advance(2_000);
    expect(a.isLeader).toBe(false);
    expect(log).toContain('a stopped');
    await clock.advance(8_000);
    expect(b.isLeader).toBe(true);
    expect(leases.lease!.spec.holderIdentity).toBe('b');
    expect(leases.lease!.spec.leaseTransitions).toBe(aLease.spec.leaseTransitions + 1);
    expect(log.indexOf('a stopped')).toBeLessThan(log.indexOf('b started'));
    stopB.abort();
    await runB;
    expect(leases.lease!.spec.holderIdentity).toBe(''); // released on shutdown
    stopA.abort();
    await runA;
  });

  it('writes MicroTime renewals the apiserver accepts', async () => {
    const leases = new FakeLeases();
    const clock = new FakeClock(Date.parse('2026-01-01T00:00:00.123Z'));
    const a = candidate(leases, clock, 'a', []);
    const stop = new AbortController();
    const run = a.run(stop.signal);
    await flushMicrotasks();
    expect(leases.lease!.spec.renewTime).toBe('2026-01-01T00:00:00.123000Z');
    stop.abort();
    await run;
  });

  it('a renew that hangs is aborted at the renew deadline, and leadership ends then, not when the connection gives up', async () => {
    const leases = new FakeLeases();
    const clock = new FakeClock();
    const log: string[] = [];
    const a = candidate(leases, clock, 'a', log);
    const stop = new AbortController();
    const run = a.run(stop.signal);
    await flushMicrotasks();
    expect(a.isLeader).toBe(true);
    const renewedAt = clock.now(); // the first acquire is the last renew that succeeded
    leases.hang = true; // every request from now on stalls without an error, like a proxy that stops forwarding
    await clock.advance(2_000); // the renew goes out and hangs
    expect(a.isLeader).toBe(true);
    await clock.advance(10_000 - 2_000 - 1);
    expect(a.isLeader).toBe(true);
    await clock.advance(1);
    // Exactly renewDeadline after the last successful renew, with the request still hanging: stopped, and
    // the hung request was aborted (it would otherwise hold the loop until a 30 s transport timeout).
    expect(clock.now() - renewedAt).toBe(10_000);
    expect(a.isLeader).toBe(false);
    expect(log).toEqual(['a started', 'a stopped']);
    expect(leases.aborted).toBe(1);
    leases.hang = false;
    stop.abort();
    await run;
  });

  it('durations follow the monotonic clock: a wall-clock step back does not extend another holder\'s lease', async () => {
    const leases = new FakeLeases();
    const clock = new FakeClock();
    // Timers (sleeps) run on the fake clock as setTimeout does on a monotonic one; the wall clock that
    // writes timestamps steps back an hour (NTP) after the first round.
    let step = 0;
    const wall: Clock = { now: () => clock.now() - step, sleep: (ms, signal) => clock.sleep(ms, signal) };
    const start = clock.now();
    const mono = () => clock.now() - start;
    const log: string[] = [];
    const a = candidate(leases, wall, 'a', log, mono);
    const stopA = new AbortController();
    const runA = a.run(stopA.signal);
    await flushMicrotasks();
    (a as unknown as { o: { transport: KubeTransport } }).o.transport = { request: async () => { throw new Error('partitioned'); }, watch: async () => {} };
    const b = candidate(leases, wall, 'b', log, mono);
    const stopB = new AbortController();
    const runB = b.run(stopB.signal);
    await flushMicrotasks();
    expect(b.isLeader).toBe(false);
    await clock.advance(2_000);
    step = 3_600_000;
    await clock.advance(16_000);
    expect(b.isLeader).toBe(true);
    expect(log.indexOf('a stopped')).toBeGreaterThanOrEqual(0);
    expect(log.indexOf('a stopped')).toBeLessThan(log.indexOf('b started'));
    stopA.abort();
    stopB.abort();
    await Promise.all([runA, runB]);
  });
});
