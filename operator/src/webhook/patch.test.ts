import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { AGENT_PORT_ANNOTATION, INJECTED_ANNOTATION, INJECTED_POD_LABEL, SIDECAR_CONTAINER_NAME } from '../../../api/src/agent.js';
import { WebhookConfigSchema, type WebhookConfig } from './config.js';
import { computePodPatch, parseServerVersion, sidecarContainer, useNativeSidecar, INJECTOR_VERSION, type ServerVersion } from './patch.js';
import { applyJsonPatch } from './testing/json-patch.js';

const config: WebhookConfig = WebhookConfigSchema.parse({ namespace: 'kstreams-system', excludedNamespaces: ['legacy'] });
const V120: ServerVersion = { major: 1, minor: 20 };
const V130: ServerVersion = { major: 1, minor: 30 };
const shop = { name: 'shop' };

type Pod = {
  metadata?: { name?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  spec: { containers?: Array<Record<string, unknown>>; initContainers?: Array<Record<string, unknown>>; hostNetwork?: boolean };
};

const appPod = (): Pod => ({
  metadata: { name: 'checkout-1', labels: { app: 'checkout' } },
  spec: { containers: [{ name: 'app', image: 'busybox' }] },
});

function injectAndReinject(pod: unknown, version?: ServerVersion, cfg: WebhookConfig = config) {
  const first = computePodPatch(pod, shop, cfg, version);
  const patched = applyJsonPatch(pod, first.patch);
  const second = computePodPatch(patched, shop, cfg, version);
  return { first, patched: patched as Pod, second };
}

describe('computePodPatch', () => {
  describe('on a cluster without native sidecars (1.20)', () => {
    it('puts the sidecar first in containers, with a postStart hook that waits for the agent', () => {
      const { first, patched } = injectAndReinject(appPod(), V120);
      expect(first.reason).toBe('injected');
      const names = patched.spec.containers?.map((c) => c.name);
      expect(names).toEqual([SIDECAR_CONTAINER_NAME, 'app']);
      const sidecar = patched.spec.containers?.[0] as Record<string, any>;
      expect(sidecar.lifecycle.postStart.exec.command).toEqual(
        expect.arrayContaining(['kstreams', 'agent', 'wait', '--port', '15090']),
      );
      expect(sidecar.restartPolicy).toBeUndefined();
      expect(patched.spec.initContainers).toBeUndefined();
      // kubectl logs/exec keep defaulting to the app, not the sidecar now first.
      expect(patched.metadata?.annotations?.['kubectl.kubernetes.io/default-container']).toBe('app');
    });

    it('appends the sidecar without a hook when the app need not wait', () => {
      const cfg = WebhookConfigSchema.parse({ sidecar: { holdApplicationUntilAttached: false } });
      const { patched } = injectAndReinject(appPod(), V120, cfg);
      expect(patched.spec.containers?.map((c) => c.name)).toEqual(['app', SIDECAR_CONTAINER_NAME]);
      expect((patched.spec.containers?.[1] as any).lifecycle).toBeUndefined();
    });
  });

  describe('on a cluster with native sidecars (>= 1.29)', () => {
    it('adds a restartPolicy Always init container with a startupProbe on /readyz, before other init containers', () => {
      const pod = appPod();
      pod.spec.initContainers = [{ name: 'migrate', image: 'busybox' }];
      const { first, patched } = injectAndReinject(pod, V130);
      expect(first.reason).toBe('injected');
      expect(patched.spec.initContainers?.map((c) => c.name)).toEqual([SIDECAR_CONTAINER_NAME, 'migrate']);
      const sidecar = patched.spec.initContainers?.[0] as Record<string, any>;
      expect(sidecar.restartPolicy).toBe('Always');
      expect(sidecar.startupProbe.httpGet).toEqual({ path: '/readyz', port: 15090, scheme: 'HTTP' });
      expect(sidecar.lifecycle).toBeUndefined();
      expect(patched.spec.containers?.map((c) => c.name)).toEqual(['app']);
      expect(patched.metadata?.annotations?.['kubectl.kubernetes.io/default-container']).toBeUndefined();
    });

    it('creates initContainers when the pod has none', () => {
      const { patched } = injectAndReinject(appPod(), V130);
      expect(patched.spec.initContainers?.map((c) => c.name)).toEqual([SIDECAR_CONTAINER_NAME]);
    });
  });

  it('gives the sidecar minimal privileges, downward-API env, probes and resources', () => {
    const { patched } = injectAndReinject(appPod(), V120);
    const s = patched.spec.containers?.[0] as Record<string, any>;
    expect(s.command).toEqual(['kstreams', 'agent']);
    expect(s.securityContext).toEqual({
      privileged: false,
      allowPrivilegeEscalation: false,
      runAsUser: 0,
      runAsNonRoot: false,
      readOnlyRootFilesystem: true,
      capabilities: { add: ['NET_ADMIN', 'BPF'], drop: ['ALL'] },
    });
    const env = Object.fromEntries((s.env as any[]).map((e) => [e.name, e.value ?? e.valueFrom.fieldRef.fieldPath]));
    expect(env).toEqual({
      POD_NAME: 'metadata.name',
      POD_NAMESPACE: 'metadata.namespace',
      POD_UID: 'metadata.uid',
      POD_IP: 'status.podIP',
      KSTREAMS_AGENT_PORT: '15090',
      KSTREAMS_CAPTURE_DIR: '/var/lib/kstreams/capture',
    });
    expect(s.readinessProbe.httpGet.path).toBe('/readyz');
    expect(s.livenessProbe.httpGet.path).toBe('/healthz');
    expect(s.resources).toEqual(config.sidecar.resources);
    expect(patched.metadata?.annotations).toEqual({
      [INJECTED_ANNOTATION]: INJECTOR_VERSION,
      [AGENT_PORT_ANNOTATION]: '15090',
      'kubectl.kubernetes.io/default-container': 'app',
    });
  });

  it('gives the sidecar CAP_NET_ADMIN and CAP_BPF only: the transform program verifies without CAP_PERFMON', () => {
    const s = sidecarContainer(WebhookConfigSchema.parse({}).sidecar, false) as { securityContext: { capabilities: unknown } };
    expect(s.securityContext.capabilities).toEqual({ add: ['NET_ADMIN', 'BPF'], drop: ['ALL'] });
  });

  it('is privileged only when the config asks, and then without contradicting allowPrivilegeEscalation', () => {
    const cfg = WebhookConfigSchema.parse({ sidecar: { privileged: true, agentPort: 16000 } });
    const { patched } = injectAndReinject(appPod(), V120, cfg);
    const s = patched.spec.containers?.[0] as Record<string, any>;
    expect(s.securityContext.privileged).toBe(true);
    expect(s.securityContext.allowPrivilegeEscalation).toBeUndefined();
    expect(patched.metadata?.annotations?.[AGENT_PORT_ANNOTATION]).toBe('16000');
  });

  it('keeps existing annotations and escapes the / in ours', () => {
    const pod = appPod();
    pod.metadata!.annotations = { 'example.com/owner': 'team-a' };
    const { first, patched } = injectAndReinject(pod, V120);
    expect(first.patch.map((p) => p.path)).toContain('/metadata/annotations/kstreams.io~1injected');
    expect(patched.metadata?.annotations).toMatchObject({ 'example.com/owner': 'team-a', [INJECTED_ANNOTATION]: INJECTOR_VERSION });
  });

  it('labels the pods it injects (kstreams.io/injected: "true", what the chart PodMonitor selects), keeping their labels', () => {
    const labelled = appPod();
    labelled.metadata!.labels = { app: 'checkout' };
    const { first, patched } = injectAndReinject(labelled, V120);
    expect(first.patch.map((p) => p.path)).toContain('/metadata/labels/kstreams.io~1injected');
    expect(patched.metadata?.labels).toEqual({ app: 'checkout', [INJECTED_POD_LABEL]: 'true' });
    const bare = injectAndReinject({ spec: { containers: [{ name: 'app', image: 'app:1' }] } }, V120).patched as Pod;
    expect(bare.metadata?.labels).toEqual({ [INJECTED_POD_LABEL]: 'true' });
    expect(bare.metadata?.annotations?.[INJECTED_ANNOTATION]).toBe(INJECTOR_VERSION);
  });

  it('refuses a pod whose labels are not an object', () => {
    const pod = appPod() as unknown as { metadata: { labels: unknown } };
    pod.metadata.labels = ['a'];
    expect(computePodPatch(pod, shop, config, V120).reason).toBe('invalid-pod');
  });

  it('is idempotent: its own output yields no patch', () => {
    for (const v of [V120, V130, undefined]) {
      const { second } = injectAndReinject(appPod(), v);
      expect(second).toEqual({ patch: [], reason: 'already-injected' });
    }
  });

  it.each([
    ['kube-system', 'excluded-namespace'],
    ['kube-public', 'excluded-namespace'],
    ['kube-node-lease', 'excluded-namespace'],
    ['legacy', 'excluded-namespace'],
    ['kstreams-system', 'own-namespace'],
  ])('never touches namespace %s, whatever its labels', (name, reason) => {
    expect(computePodPatch(appPod(), { name, labels: { 'kstreams.io/inject': 'enabled' } }, config, V120)).toEqual({ patch: [], reason });
  });

  it('needs the namespace opt-in label when the namespace labels are known', () => {
    expect(computePodPatch(appPod(), { name: 'shop', labels: {} }, config, V120).reason).toBe('namespace-not-enabled');
    expect(computePodPatch(appPod(), { name: 'shop', labels: { 'kstreams.io/inject': 'yes' } }, config, V120).reason).toBe(
      'namespace-not-enabled',
    );
    expect(computePodPatch(appPod(), { name: 'shop', labels: { 'kstreams.io/inject': 'enabled' } }, config, V120).reason).toBe('injected');
  });

  it('respects the pod opt-out label kstreams.io/inject: "false"', () => {
    const pod = appPod();
    pod.metadata!.labels = { 'kstreams.io/inject': 'false' };
    expect(computePodPatch(pod, shop, config, V120)).toEqual({ patch: [], reason: 'pod-opted-out' });
  });

  it('never injects hostNetwork pods (the agent would attach to the node network namespace)', () => {
    const pod = appPod();
    pod.spec.hostNetwork = true;
    expect(computePodPatch(pod, shop, config, V120).reason).toBe('host-network');
  });

  it('copes with pods lacking metadata, containers or annotations', () => {
    const bare = { spec: {} };
    const { first, patched, second } = injectAndReinject(bare, V120);
    expect(first.reason).toBe('injected');
    expect((patched as Pod).spec.containers?.map((c) => c.name)).toEqual([SIDECAR_CONTAINER_NAME]);
    expect(second.patch).toEqual([]);
  });

  it('adds only the missing annotations to a pod that already carries a sidecar', () => {
    const pod = appPod();
    pod.spec.containers!.push({ name: SIDECAR_CONTAINER_NAME, image: 'custom' });
    const r = computePodPatch(pod, shop, config, V120);
    expect(r.reason).toBe('already-injected');
    expect(r.patch.every((p) => p.path.startsWith('/metadata'))).toBe(true);
  });

  it.each([null, 42, 'pod', [], { spec: 'x' }, { spec: { containers: {} } }, { metadata: [], spec: {} }, { spec: { initContainers: 1 } }])(
    'refuses malformed pod %j without throwing',
    (pod) => {
      expect(computePodPatch(pod, shop, config, V120)).toEqual({ patch: [], reason: 'invalid-pod' });
    },
  );

  describe('property: on random pods', () => {
    const str = fc.string({ maxLength: 12 });
    const labelKey = fc.oneof(str, fc.constant('kstreams.io/inject'), fc.constant('app'));
    const labelValue = fc.oneof(str, fc.constant('false'), fc.constant('enabled'));
    const container = fc.record({ name: fc.oneof(str, fc.constant(SIDECAR_CONTAINER_NAME)), image: str });
    const pod = fc.record(
      {
        metadata: fc.record(
          {
            name: str,
            labels: fc.dictionary(labelKey, labelValue, { maxKeys: 3 }),
            annotations: fc.dictionary(
              fc.oneof(str, fc.constant(INJECTED_ANNOTATION), fc.constant(AGENT_PORT_ANNOTATION), fc.constant('a/b~c')),
              str,
              { maxKeys: 3 },
            ),
          },
          { requiredKeys: [] },
        ),
        spec: fc.record(
          {
            containers: fc.array(container, { maxLength: 3 }),
            initContainers: fc.array(container, { maxLength: 2 }),
            hostNetwork: fc.boolean(),
          },
          { requiredKeys: [] },
        ),
      },
      { requiredKeys: ['spec'] },
    );
    const version = fc.option(fc.record({ major: fc.constant(1), minor: fc.integer({ min: 16, max: 34 }) }), { nil: undefined });
    const hold = fc.boolean();

    it('the patch applies, keeps the app containers in order, adds one sidecar, and re-running yields no patch', () => {
      fc.assert(
        fc.property(pod, version, hold, (p, v, holdApp) => {
          const cfg = WebhookConfigSchema.parse({ sidecar: { holdApplicationUntilAttached: holdApp } });
          const first = computePodPatch(p, shop, cfg, v);
          const patched = applyJsonPatch(p, first.patch) as Pod;
          expect(computePodPatch(patched, shop, cfg, v).patch).toEqual([]);
          if (first.reason !== 'injected') return;
          const all = [...(patched.spec.containers ?? []), ...(patched.spec.initContainers ?? [])];
          expect(all.filter((c) => c.name === SIDECAR_CONTAINER_NAME)).toHaveLength(1);
          const apps = (list?: Array<Record<string, unknown>>) => (list ?? []).filter((c) => c.image !== config.sidecar.image);
          expect(apps(patched.spec.containers)).toEqual(p.spec.containers ?? []);
          expect(apps(patched.spec.initContainers)).toEqual(p.spec.initContainers ?? []);
          for (const [k, val] of Object.entries(p.metadata?.annotations ?? {})) expect(patched.metadata?.annotations?.[k]).toBe(val);
        }),
        { numRuns: 500 },
      );
    });

    it('never throws on anything at all', () => {
      fc.assert(
        fc.property(fc.anything(), fc.string(), (anything, ns) => {
          const r = computePodPatch(anything, { name: ns }, config, V130);
          expect(Array.isArray(r.patch)).toBe(true);
        }),
        { numRuns: 500 },
      );
    });
  });
});

describe('server version', () => {
  it('parses /version answers such as minor "20+"', () => {
    expect(parseServerVersion({ major: '1', minor: '20+' })).toEqual({ major: 1, minor: 20 });
    expect(parseServerVersion({ major: '', minor: '' })).toBeUndefined();
  });
  it('uses native sidecars from 1.29 in auto mode (1.28 has them behind an alpha gate)', () => {
    expect(useNativeSidecar('auto', { major: 1, minor: 28 })).toBe(false);
    expect(useNativeSidecar('auto', { major: 1, minor: 29 })).toBe(true);
    expect(useNativeSidecar('auto', undefined)).toBe(false);
    expect(useNativeSidecar('always', undefined)).toBe(true);
    expect(useNativeSidecar('never', V130)).toBe(false);
  });
});

describe('computePodPatch with the agent feed', () => {
  const feed = { addresses: ['10.244.0.3:9444', 'kstreams-webhook.kstreams-system.svc:9444'], serverName: 'kstreams-webhook.kstreams-system.svc', caPem: '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n' };

  it('tells the sidecar where the operator is and what to trust, and mounts a pod-bound token for the feed audience', () => {
    const pod = { ...appPod(), spec: { ...appPod().spec, volumes: [{ name: 'data', emptyDir: {} }] } };
    const first = computePodPatch(pod, shop, config, V120, feed);
    const patched = applyJsonPatch(pod, first.patch) as Pod & { spec: { volumes: Array<Record<string, any>> } };
    const sidecar = patched.spec.containers!.find((c) => c.name === SIDECAR_CONTAINER_NAME) as Record<string, any>;
    const env = Object.fromEntries((sidecar.env as Array<{ name: string; value?: string }>).map((e) => [e.name, e.value]));
    expect(env).toMatchObject({
      KSTREAMS_OPERATOR_ADDRESSES: '10.244.0.3:9444,kstreams-webhook.kstreams-system.svc:9444',
      KSTREAMS_OPERATOR_SERVER_NAME: 'kstreams-webhook.kstreams-system.svc',
      KSTREAMS_OPERATOR_CA: feed.caPem,
      KSTREAMS_FEED_TOKEN_FILE: '/var/run/secrets/kstreams.io/feed/token',
    });
    expect(sidecar.volumeMounts).toEqual([
      { name: 'kstreams-feed-token', mountPath: '/var/run/secrets/kstreams.io/feed', readOnly: true },
      { name: 'kstreams-capture', mountPath: '/var/lib/kstreams/capture' },
    ]);
    expect(patched.spec.volumes).toEqual([
      { name: 'data', emptyDir: {} },
      { name: 'kstreams-feed-token', projected: { sources: [{ serviceAccountToken: { audience: 'kstreams.io/agent-feed', expirationSeconds: 3600, path: 'token' } }] } },
      { name: 'kstreams-capture', emptyDir: { sizeLimit: '2Gi' } },
    ]);
    // Level-triggered: the injected pod gets nothing more, not a second volume.
    expect(computePodPatch(patched, shop, config, V120, feed)).toEqual({ patch: [], reason: 'already-injected' });
  });

  it('creates the volumes list when the pod has none; leaves feed settings out when the feed is not serving yet', () => {
    const withFeed = applyJsonPatch(appPod(), computePodPatch(appPod(), shop, config, V120, feed).patch) as { spec: { volumes?: unknown[] } };
    expect(withFeed.spec.volumes).toHaveLength(2);
    const noCapture = WebhookConfigSchema.parse({ sidecar: { capture: { enabled: false } } });
    const without = applyJsonPatch(appPod(), computePodPatch(appPod(), shop, noCapture, V120).patch) as { spec: { volumes?: unknown[]; containers: Array<Record<string, any>> } };
    expect(without.spec.volumes).toBeUndefined();
    expect(without.spec.containers[0]!.volumeMounts).toBeUndefined();
    expect((without.spec.containers[0]!.env as Array<{ name: string }>).map((e) => e.name)).not.toContain('KSTREAMS_CAPTURE_DIR');
  });
});

describe('computePodPatch: the capture volume', () => {
  type Patched = Pod & { spec: { volumes?: Array<Record<string, any>>; containers: Array<Record<string, any>>; initContainers?: Array<Record<string, any>> } };
  const sidecarOf = (p: Patched) => [...(p.spec.initContainers ?? []), ...p.spec.containers].find((c) => c.name === SIDECAR_CONTAINER_NAME)!;

  it('by default: an emptyDir of 2Gi mounted at /var/lib/kstreams/capture, which the agent is told; the app containers get nothing', () => {
    for (const version of [V120, V130]) {
      const { first, patched, second } = injectAndReinject(appPod(), version);
      const p = patched as Patched;
      expect(first.reason).toBe('injected');
      expect(p.spec.volumes).toEqual([{ name: 'kstreams-capture', emptyDir: { sizeLimit: '2Gi' } }]);
      const s = sidecarOf(p);
      expect(s.volumeMounts).toEqual([{ name: 'kstreams-capture', mountPath: '/var/lib/kstreams/capture' }]);
      expect(s.env).toContainEqual({ name: 'KSTREAMS_CAPTURE_DIR', value: '/var/lib/kstreams/capture' });
      // The root filesystem stays read-only: the volume is where a file target can write.
      expect(s.securityContext.readOnlyRootFilesystem).toBe(true);
      expect(p.spec.containers.find((c) => c.name === 'app')!.volumeMounts).toBeUndefined();
      expect(second).toEqual({ patch: [], reason: 'already-injected' });
    }
  });

  it('sizeLimit as configured, or an existing PersistentVolumeClaim by claimName', () => {
    const sized = WebhookConfigSchema.parse({ sidecar: { capture: { sizeLimit: '20Gi' } } });
    expect((injectAndReinject(appPod(), V120, sized).patched as Patched).spec.volumes).toEqual([{ name: 'kstreams-capture', emptyDir: { sizeLimit: '20Gi' } }]);
    const claim = WebhookConfigSchema.parse({ sidecar: { capture: { claimName: 'captures' } } });
    const p = injectAndReinject(appPod(), V130, claim).patched as Patched;
    expect(p.spec.volumes).toEqual([{ name: 'kstreams-capture', persistentVolumeClaim: { claimName: 'captures' } }]);
    expect(sidecarOf(p).volumeMounts).toEqual([{ name: 'kstreams-capture', mountPath: '/var/lib/kstreams/capture' }]);
  });

  it('a pod that brings its own kstreams-capture volume keeps it (mounted in the sidecar, not added twice)', () => {
    const pod = { ...appPod(), spec: { ...appPod().spec, volumes: [{ name: 'kstreams-capture', persistentVolumeClaim: { claimName: 'mine' } }] } };
    const { patched, second } = injectAndReinject(pod, V120);
    const p = patched as Patched;
    expect(p.spec.volumes).toEqual([{ name: 'kstreams-capture', persistentVolumeClaim: { claimName: 'mine' } }]);
    expect(sidecarOf(p).volumeMounts).toEqual([{ name: 'kstreams-capture', mountPath: '/var/lib/kstreams/capture' }]);
    expect(second.patch).toEqual([]);
  });

  it('refuses unknown keys and an empty claimName in the config', () => {
    expect(WebhookConfigSchema.safeParse({ sidecar: { capture: { claim: 'x' } } }).success).toBe(false);
    expect(WebhookConfigSchema.safeParse({ sidecar: { capture: { claimName: '' } } }).success).toBe(false);
  });
});
