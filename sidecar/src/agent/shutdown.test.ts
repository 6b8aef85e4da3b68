import { describe, expect, it } from 'vitest';
import { planShutdown } from './shutdown.js';

const NOW = Date.parse('2026-01-01T00:00:00Z');

describe('planShutdown', () => {
  it("drains until 2 s before the pod's grace period ends, and exits 1 s later at the latest", () => {
    expect(planShutdown({ now: NOW, pod: { terminationGracePeriodSeconds: 30 } })).toMatchObject({ drainBudgetMs: 28_000, exitAfterMs: 29_000 });
    // Kubernetes' default grace period when the pod spec does not say.
    expect(planShutdown({ now: NOW, pod: {} })).toMatchObject({ drainBudgetMs: 28_000 });
  });

  it('a deletion with its own grace period (kubectl delete --grace-period) wins over the spec', () => {
    const plan = planShutdown({ now: NOW, pod: { deletionGracePeriodSeconds: 10, terminationGracePeriodSeconds: 30 } });
    expect(plan.drainBudgetMs).toBe(8_000);
    expect(plan.source).toMatch(/grace period \(10 s\)/);
  });

  it('deletionTimestamp bounds it when the SIGTERM came late (native sidecars stop after the app)', () => {
    const deletionTimestamp = new Date(NOW + 12_000).toISOString();
    const plan = planShutdown({ now: NOW, pod: { deletionTimestamp, deletionGracePeriodSeconds: 30 } });
    expect(plan).toMatchObject({ drainBudgetMs: 10_000, exitAfterMs: 11_000 });
    expect(plan.source).toMatch(/deletionTimestamp/);
    expect(planShutdown({ now: NOW, pod: { deletionTimestamp: new Date(NOW + 12_000), deletionGracePeriodSeconds: 30 } }).drainBudgetMs).toBe(10_000);
  });

  it('KSTREAMS_SHUTDOWN_TIMEOUT_SECONDS caps it; without a pod it decides, else 20 s', () => {
    expect(planShutdown({ now: NOW, pod: { terminationGracePeriodSeconds: 600 }, shutdownTimeoutSeconds: 60 })).toMatchObject({ drainBudgetMs: 59_000, exitAfterMs: 60_000 });
    expect(planShutdown({ now: NOW, shutdownTimeoutSeconds: 5 })).toMatchObject({ drainBudgetMs: 4_000 });
    expect(planShutdown({ now: NOW })).toMatchObject({ drainBudgetMs: 19_000, exitAfterMs: 20_000 });
  });

  it('with no time left it resets at once, and still leaves the reset a second before exiting', () => {
    expect(planShutdown({ now: NOW, pod: { terminationGracePeriodSeconds: 1 } })).toMatchObject({ drainBudgetMs: 0, exitAfterMs: 1_000 });
    expect(planShutdown({ now: NOW, pod: { deletionTimestamp: new Date(NOW - 5_000).toISOString() } })).toMatchObject({ drainBudgetMs: 0 });
  });
});
