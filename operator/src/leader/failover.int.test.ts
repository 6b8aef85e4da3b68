// Two real operator processes against the real apiserver: one leads, the other stands by; killing the
// leader hands over within the lease duration; SIGTERM releases the Lease and exits cleanly.
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { streamPathPath } from '../controller/reconciler.js';
import { KubeRest, isStatus } from '../../../runtime/src/rest.js';
import { startOperator, type OperatorProcess } from '../testing/operator-process.js';
import { condition, createNamespace, createStreamPath, eventually, exampleSpec, freshName, getStreamPath, installCrd } from '../testing/kube.js';

const kubeconfig = inject('kubeconfig');
const LEASE_MS = 4_000;
const RETRY_MS = 500;

function startReplica(identity: string, namespace: string, leaseName: string): OperatorProcess {
  return startOperator(identity, {
    KUBECONFIG: kubeconfig,
    KSTREAMS_NAMESPACE: namespace,
    KSTREAMS_LEASE_NAME: leaseName,
    KSTREAMS_LEASE_DURATION_MS: String(LEASE_MS),
    KSTREAMS_RENEW_DEADLINE_MS: '3000',
    KSTREAMS_RETRY_PERIOD_MS: String(RETRY_MS),
    KSTREAMS_WEBHOOK_ENABLED: 'false',
    KSTREAMS_METRICS_PORT: '0',
    KSTREAMS_SHUTDOWN_TIMEOUT_MS: '5000',
  });
}

const wrote = (r: OperatorProcess, key: string) => r.lines.filter((l) => l.msg === 'status written' && l.streamPath === key);

describe('leader election between two operator processes', () => {
  let kube: KubeRest;
  const replicas: OperatorProcess[] = [];

  beforeAll(async () => {
    kube = await KubeRest.create(kubeconfig);
    await installCrd(kube);
  });

  afterAll(async () => {
    for (const r of replicas) await r.kill();
    kube?.close();
  });

  it('one leads, the other takes over within the lease duration when the leader is killed, and SIGTERM releases', async () => {
    const opNs = freshName('op-system');
    const ns = freshName('op-failover');
    await createNamespace(kube, opNs);
    await createNamespace(kube, ns);
    const leasePath = `/apis/coordination.k8s.io/v1/namespaces/${opNs}/leases/kstreams-operator`;
    const holder = async () => {
      try {
        return (await kube.request<{ spec?: { holderIdentity?: string } }>('GET', leasePath)).spec?.holderIdentity ?? '';
      } catch (err) {
        if (isStatus(err, 404)) return '';
        throw err;
      }
    };

    replicas.push(startReplica('op-a', opNs, 'kstreams-operator'), startReplica('op-b', opNs, 'kstreams-operator'));
    const first = await eventually('a leader', async () => (await holder()) || undefined, 30_000);
    const leader = replicas.find((r) => r.identity === first)!;
    const follower = replicas.find((r) => r.identity !== first)!;

    await createStreamPath(kube, ns, 'failover', exampleSpec('nothing-here'));
    const key = `${ns}/failover`;
    await eventually('status from the leader', async () => condition(await getStreamPath(kube, ns, 'failover'), 'Degraded')?.reason === 'NoPodsMatched', 20_000);
    await eventually('the leader logs its write', async () => wrote(leader, key).length > 0);
    // The follower stands by: no caches, no reconcile, no write.
    expect(follower.lines.filter((l) => l.msg === 'caches synced, reconciling')).toHaveLength(0);
    expect(wrote(follower, key)).toHaveLength(0);
    expect(leader.lines.filter((l) => l.msg === 'caches synced, reconciling')).toHaveLength(1);

    // Kill the leader without a chance to release: the follower must wait the lease out, then take over.
    const killedAt = Date.now();
    leader.child.kill('SIGKILL');
    await leader.exit;
    await eventually('the follower to hold the Lease', async () => (await holder()) === follower.identity, LEASE_MS + 10_000, 50);
    const takeoverMs = Date.now() - killedAt;
    console.log(`[failover] leader killed -> follower holds the Lease in ${takeoverMs} ms (lease ${LEASE_MS} ms, retry ${RETRY_MS} ms)`);
    expect(takeoverMs).toBeLessThanOrEqual(LEASE_MS + 2 * RETRY_MS + 1_000);

    // The new leader reconciles edits.
    await kube.request('PATCH', streamPathPath(ns, 'failover'), { body: { spec: { port: 9999 } }, patch: 'merge' });
    await eventually('observedGeneration 2 from the new leader', async () => (await getStreamPath(kube, ns, 'failover'))?.status?.observedGeneration === 2, 20_000);
    await eventually('the new leader logs its write', async () => wrote(follower, key).some((l) => l.generation === 2));

    // SIGTERM: stop reconciling, release the Lease, exit 0 well within the shutdown deadline.
    const termAt = Date.now();
    follower.child.kill('SIGTERM');
    const { code } = await follower.exit;
    const shutdownMs = Date.now() - termAt;
    console.log(`[failover] SIGTERM -> exit ${code} in ${shutdownMs} ms`);
    expect(code).toBe(0);
    expect(shutdownMs).toBeLessThan(5_000);
    expect(await holder()).toBe('');
    expect(follower.lines.some((l) => l.msg === 'leader election: Lease released')).toBe(true);
  });
});
