import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { FakeClock, flushMicrotasks } from '../clock.js';
import { ApiError, type KubeTransport } from '../kube/rest.js';
import { LeaderElector } from './election.js';

/** One Lease object with resourceVersion checks, like the apiserver; `down` makes every request fail. */
class FakeLeases implements KubeTransport {
  lease: Record<string, any> | undefined;
  rv = 0;
  down = false;
  async request<T>(method: string, path: string, opts?: { body?: unknown }): Promise<T> {
    if (this.down) throw new Error('connect ECONNREFUSED');
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

function candidate(leases: FakeLeases, clock: FakeClock, identity: string, log: string[]) {
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
});
