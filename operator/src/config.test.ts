import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from './config.js';

describe('loadConfig', () => {
  it('applies defaults, then the file, then the environment', () => {
    const files: Record<string, string> = { '/etc/kstreams/operator.yaml': 'namespace: from-file\nresyncPeriodMs: 1000\nfeed: {warmupMs: 5000}\n' };
    const c = loadConfig({ KSTREAMS_OPERATOR_CONFIG: '/etc/kstreams/operator.yaml', POD_NAMESPACE: 'from-env', POD_NAME: 'op-0', KSTREAMS_LEASE_DURATION_MS: '6000', KSTREAMS_RENEW_DEADLINE_MS: '4000', KSTREAMS_RETRY_PERIOD_MS: '1000' }, (p) => files[p]!);
    expect(c.namespace).toBe('from-env');
    expect(c.identity).toBe('op-0');
    expect(c.resyncPeriodMs).toBe(1000);
    expect(c.feed).toMatchObject({ port: 9444, warmupMs: 5000, disconnectGraceMs: 10_000 });
    expect(c.statusWriteIntervalMs).toBe(10_000);
    expect(c.statusWritesPerSecond).toBe(20);
    expect(c.leaderElection).toMatchObject({ enabled: true, leaseName: 'kstreams-operator', leaseDurationMs: 6000 });
    expect(c.webhook.namespace).toBe('from-env');
    expect(c.webhook.enabled).toBe(true);
  });

  it('sets the feed port and the status write bound from the environment', () => {
    const c = loadConfig({ KSTREAMS_IDENTITY: 'x', KSTREAMS_FEED_PORT: '19444', KSTREAMS_STATUS_WRITE_INTERVAL_MS: '2500', KSTREAMS_STATUS_WRITES_PER_SECOND: '0' });
    expect(c.feed.port).toBe(19444);
    expect(c.statusWriteIntervalMs).toBe(2500);
    expect(c.statusWritesPerSecond).toBe(0);
    // The settings of the RoleBinding the operator no longer makes are refused, not silently ignored.
    expect(() => loadConfig({ KSTREAMS_OPERATOR_CONFIG: '/c.yaml', KSTREAMS_IDENTITY: 'x' }, () => 'sidecarRbac: {manageBindings: true}\n')).toThrow(/sidecarRbac/);
  });

  it('names every bad field', () => {
    let err: unknown;
    try {
      loadConfig({ KSTREAMS_RESYNC_PERIOD_MS: 'soon', KSTREAMS_IDENTITY: 'x' });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).problems).toEqual(['KSTREAMS_RESYNC_PERIOD_MS=soon: must be an integer']);
    expect(() => loadConfig({ KSTREAMS_IDENTITY: 'x', KSTREAMS_RENEW_DEADLINE_MS: '20000' })).toThrow(/renewDeadlineMs must be less than leaseDurationMs/);
  });
});
