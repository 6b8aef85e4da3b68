import { describe, expect, it } from 'vitest';
import { AgentConfigError, loadAgentConfig } from './config.js';

describe('loadAgentConfig', () => {
  const base = { POD_NAME: 'checkout-1', POD_NAMESPACE: 'shop', KSTREAMS_OPERATOR_ADDRESSES: '10.244.0.3:9444, kstreams-webhook.kstreams-system.svc:9444' };

  it('fills defaults: port 15090 on all addresses, own netns, info logs, 60 s resync; shutdown from the pod', () => {
    expect(loadAgentConfig(base)).toEqual({
      podName: 'checkout-1',
      podNamespace: 'shop',
      port: 15090,
      bindAddress: '0.0.0.0',
      logLevel: 'info',
      resyncSeconds: 60,
      statsIntervalSeconds: 5,
      operatorAddresses: ['10.244.0.3:9444', 'kstreams-webhook.kstreams-system.svc:9444'],
      feedTokenFile: '/var/run/secrets/kstreams.io/feed/token',
    });
  });

  it('needs the operator feed address and refuses one without a port', () => {
    expect(() => loadAgentConfig({ POD_NAME: 'p', POD_NAMESPACE: 'n' })).toThrow(/KSTREAMS_OPERATOR_ADDRESSES: is required/);
    expect(() => loadAgentConfig({ ...base, KSTREAMS_OPERATOR_ADDRESSES: 'operator' })).toThrow(/KSTREAMS_OPERATOR_ADDRESSES: each entry must be host:port/);
    expect(loadAgentConfig({ ...base, KSTREAMS_OPERATOR_ADDRESSES: '[fd00::5]:9444' }).operatorAddresses).toEqual(['[fd00::5]:9444']);
  });

  it('reads every variable', () => {
    const c = loadAgentConfig({
      ...base,
      POD_UID: 'u-1',
      KSTREAMS_AGENT_PORT: '0',
      KSTREAMS_AGENT_BIND: '127.0.0.1',
      KSTREAMS_NETNS: '/run/netns/app',
      KSTREAMS_LOG_LEVEL: 'debug',
      KSTREAMS_RESYNC_SECONDS: '5',
      KSTREAMS_SHUTDOWN_TIMEOUT_SECONDS: '45',
      KSTREAMS_MIRROR_BUFFER_BUDGET_BYTES: '268435456',
      KSTREAMS_CAPTURE_DIR: '/var/lib/kstreams/capture',
    });
    expect(c).toMatchObject({
      podUid: 'u-1',
      port: 0,
      bindAddress: '127.0.0.1',
      netnsPath: '/run/netns/app',
      logLevel: 'debug',
      resyncSeconds: 5,
      shutdownTimeoutSeconds: 45,
      mirrorBufferBudgetBytes: 268435456,
      captureDir: '/var/lib/kstreams/capture',
    });
  });

  it('treats empty variables as unset (what a pod spec gives for a missing field)', () => {
    expect(loadAgentConfig({ ...base, KSTREAMS_AGENT_PORT: '', KSTREAMS_NETNS: '' })).toMatchObject({ port: 15090 });
    expect(loadAgentConfig({ ...base, KSTREAMS_NETNS: '' }).netnsPath).toBeUndefined();
  });

  it('names each bad variable in one error', () => {
    let error: unknown;
    try {
      loadAgentConfig({ POD_NAMESPACE: 'shop', KSTREAMS_AGENT_PORT: '70000', KSTREAMS_NETNS: 'relative', KSTREAMS_LOG_LEVEL: 'loud' });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(AgentConfigError);
    const problems = (error as AgentConfigError).problems.join('\n');
    expect(problems).toMatch(/^POD_NAME: /m);
    expect(problems).toMatch(/^KSTREAMS_AGENT_PORT: /m);
    expect(problems).toMatch(/^KSTREAMS_NETNS: must be an absolute path/m);
    expect(problems).toMatch(/^KSTREAMS_LOG_LEVEL: /m);
  });

  it('refuses a port that is not a whole number', () => {
    expect(() => loadAgentConfig({ ...base, KSTREAMS_AGENT_PORT: '80a' })).toThrow(/KSTREAMS_AGENT_PORT: must be a whole number/);
  });
});
