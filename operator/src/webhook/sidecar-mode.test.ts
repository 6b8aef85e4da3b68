// Native or classic sidecar, on /version answers and Node objects in the form the apiservers and kubelets of
// 1.20, 1.25, 1.29 and 1.31 return them (trimmed to the fields that matter). The integration cluster is 1.20,
// which has no native sidecars, so the native path is decided here and the patch it yields is checked on
// its own (patch.test.ts), and the server choosing per pod from its node cache in server.test.ts; docs/e2e.md.
import { describe, expect, it } from 'vitest';
import { chooseSidecarMode, parseKubeletVersion, sameSlimNode, slimNode } from './sidecar-mode.js';
import { NODES, node, server, slim } from './testing/versions.js';

describe('parsing', () => {
  it('reads /version answers and kubelet versions of every vendor suffix', () => {
    expect(server('1.29')).toEqual({ major: 1, minor: 29 });
    expect(parseKubeletVersion('v1.28.5-eks-5e0fdde')).toEqual({ major: 1, minor: 28 });
    expect(parseKubeletVersion('v1.31.4+k3s1')).toEqual({ major: 1, minor: 31 });
    expect(parseKubeletVersion('1.30.0')).toEqual({ major: 1, minor: 30 });
    for (const bad of ['', 'latest', 'v1', 'v1.x.0', 42, undefined]) expect(parseKubeletVersion(bad)).toBeUndefined();
    expect(slimNode(NODES['1.29'])).toEqual({ name: 'n129', kubelet: { major: 1, minor: 29 }, kubeletVersion: 'v1.29.10-eks-7f9249a' });
    expect(slimNode(node('c', 'v1.29.1', { unschedulable: true })).unschedulable).toBe(true);
    // A heartbeat that changes nothing the decision reads is no update.
    expect(sameSlimNode(slimNode(NODES['1.29']), slimNode({ ...NODES['1.29'], status: { ...NODES['1.29'].status, conditions: [] } }))).toBe(true);
  });
});

describe('chooseSidecarMode', () => {
  it('1.20 and 1.25 apiservers: classic, whatever the nodes say', () => {
    expect(chooseSidecarMode('auto', server('1.20'), slim('1.20'))).toMatchObject({ native: false, why: 'apiserver 1.20 < 1.29' });
    expect(chooseSidecarMode('auto', server('1.25'), slim('1.25'))).toMatchObject({ native: false });
  });

  it('1.29 and 1.31 with every node up to date: native', () => {
    expect(chooseSidecarMode('auto', server('1.29'), slim('1.29'))).toMatchObject({ native: true });
    expect(chooseSidecarMode('auto', server('1.31'), slim('1.29', '1.31'))).toMatchObject({ native: true, why: 'apiserver and every schedulable node (2) >= 1.29' });
  });

  it('mid-upgrade (control plane 1.31, one node still 1.28): classic for unbound pods, per node for bound ones', () => {
    const nodes = slim('1.31', '1.28', '1.29');
    expect(chooseSidecarMode('auto', server('1.31'), nodes)).toEqual({ native: false, why: 'node n128 runs kubelet v1.28.5-eks-5e0fdde < 1.29' });
    expect(chooseSidecarMode('auto', server('1.31'), nodes, 'n131')).toMatchObject({ native: true });
    expect(chooseSidecarMode('auto', server('1.31'), nodes, 'n128')).toMatchObject({ native: false });
    // A bound pod on a node not in the cache is judged like an unbound one.
    expect(chooseSidecarMode('auto', server('1.31'), nodes, 'gone')).toMatchObject({ native: false });
  });

  it('a cordoned old node (being drained for its upgrade) gets no new pods: it does not hold the others back', () => {
    const nodes = [slimNode(node('old', 'v1.28.5', { unschedulable: true })), ...slim('1.29')];
    expect(chooseSidecarMode('auto', server('1.29'), nodes)).toMatchObject({ native: true });
  });

  it('a node whose kubelet version cannot be read counts as old; unknown nodes leave it to the apiserver', () => {
    expect(chooseSidecarMode('auto', server('1.31'), [{ name: 'odd', kubeletVersion: 'v-next' }, ...slim('1.31')])).toMatchObject({ native: false });
    expect(chooseSidecarMode('auto', server('1.31'), undefined)).toMatchObject({ native: true, why: 'apiserver 1.31 >= 1.29, node versions unknown' });
    expect(chooseSidecarMode('auto', undefined, slim('1.31'))).toMatchObject({ native: false });
  });

  it('always and never win over every version', () => {
    expect(chooseSidecarMode('always', server('1.20'), slim('1.20'))).toMatchObject({ native: true });
    expect(chooseSidecarMode('never', server('1.31'), slim('1.31'))).toMatchObject({ native: false });
  });
});
