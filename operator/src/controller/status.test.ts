import { describe, expect, it } from 'vitest';
import { AgentReportSchema, type AgentReport } from '../../../api/src/agent.js';
import { sameSlimPod, slimPod, type SlimNamespace, type SlimPod } from '../kube/objects.js';
import { SidecarConfigSchema } from '../webhook/config.js';
import { sidecarContainer } from '../webhook/patch.js';
import { computeStatus, holdCounters, onlyCountersDiffer, Reason, sameStatus, type AgentObservation, type StatusInput } from './status.js';

const NOW = Date.parse('2026-01-01T00:00:00Z');
const pod = (name: string, extra: Partial<SlimPod> = {}): SlimPod => ({
  namespace: 'shop',
  name,
  uid: `uid-${name}`,
  labels: { app: 'checkout' },
  injected: true,
  podIP: `10.0.0.${name.length}`,
  agentPort: 15090,
  optedOut: false,
  deleting: false,
  ...extra,
});
const labelled: SlimNamespace = { name: 'shop', labels: { 'kstreams.io/inject': 'enabled' } };
const report = (p: SlimPod, entry: Partial<AgentReport['streamPaths'][number]> = {}): AgentReport => ({
  pod: { namespace: p.namespace, name: p.name },
  ready: true,
  streamPaths: [
    {
      name: 'shadow',
      generation: 3,
      attached: true,
      connections: 2,
      bytesPrimary: 1000,
      bytesMirrored: 900,
      bytesDropped: 100,
      targets: [{ name: 't1', connectionsMirrored: 2, connectionsCut: 0, connectFailures: 0, bytesMirrored: 900, bytesDropped: 100 }],
      ...entry,
    },
  ],
});

function input(pods: SlimPod[], observations: Record<string, AgentObservation> = {}, extra: Partial<StatusInput> = {}): StatusInput {
  return {
    name: 'shadow',
    namespace: 'shop',
    generation: 3,
    selector: { matchLabels: { app: 'checkout' } },
    pods,
    namespaceObject: labelled,
    observe: (p) => observations[p.name],
    previous: undefined,
    now: NOW,
    ...extra,
  };
}
const cond = (s: ReturnType<typeof computeStatus>, type: string) => s.status.conditions!.find((c) => c.type === type)!;

describe('computeStatus', () => {
  it('when no pod matches, it is Degraded with NoPodsMatched', () => {
    const r = computeStatus(input([pod('a', { labels: { app: 'other' } })]));
    expect(r.status.podsSelected).toBe(0);
    expect(cond(r, 'Ready')).toMatchObject({ status: 'False', reason: Reason.NoPodsMatched, observedGeneration: 3 });
    expect(cond(r, 'Degraded')).toMatchObject({ status: 'True', reason: Reason.NoPodsMatched });
  });

  it('when matching pods lack the sidecar in an unlabelled namespace, it says to label the namespace', () => {
    const r = computeStatus(input([pod('a', { injected: false })], {}, { namespaceObject: { name: 'shop', labels: {} } }));
    const d = cond(r, 'Degraded');
    expect(d).toMatchObject({ status: 'True', reason: Reason.PodsNotInjected });
    expect(d.message).toContain('kubectl label ns shop kstreams.io/inject=enabled');
    expect(d.message).toContain('(a)');
  });

  it('when all agents attached the current generation, it is Ready and sums counters per target', () => {
    const a = pod('a');
    const b = pod('bb');
    const r = computeStatus(input([a, b], { a: { report: report(a), at: NOW }, bb: { report: report(b), at: NOW } }));
    expect(r.status).toMatchObject({ podsSelected: 2, podsAttached: 2, connections: 4, bytesPrimary: 2000, bytesMirrored: 1800, bytesDropped: 200 });
    expect(r.status.targets).toEqual([{ name: 't1', connectionsMirrored: 4, connectionsCut: 0, connectFailures: 0, bytesMirrored: 1800, bytesDropped: 200 }]);
    expect(cond(r, 'Ready')).toMatchObject({ status: 'True', reason: Reason.Attached });
    expect(cond(r, 'Degraded')).toMatchObject({ status: 'False' });
  });

  it('carries connectionsReset and turnWaitsExpired from the agents\' JSON reports into the status, summed', () => {
    const a = pod('a');
    const b = pod('bb');
    // As the poller gets them: JSON over HTTP, parsed with the contract's schema (which must not strip them).
    const wire = (p: SlimPod, connectionsReset: number, turnWaitsExpired: number) =>
      AgentReportSchema.parse(
        JSON.parse(
          JSON.stringify(
            report(p, {
              connectionsReset,
              targets: [{ name: 't1', connectionsMirrored: 2, connectionsCut: 0, connectFailures: 0, bytesMirrored: 900, bytesDropped: 100, turnWaitsExpired }],
            }),
          ),
        ),
      );
    const r = computeStatus(input([a, b], { a: { report: wire(a, 3, 5), at: NOW }, bb: { report: wire(b, 1, 2), at: NOW } }));
    expect(r.status.connectionsReset).toBe(4);
    expect(r.status.targets).toEqual([
      { name: 't1', connectionsMirrored: 4, connectionsCut: 0, connectFailures: 0, bytesMirrored: 1800, bytesDropped: 200, turnWaitsExpired: 7 },
    ]);
  });

  it('leaves connectionsReset and turnWaitsExpired out while no agent reports them (older agents)', () => {
    const a = pod('a');
    const r = computeStatus(input([a], { a: { report: report(a), at: NOW } }));
    expect(r.status).not.toHaveProperty('connectionsReset');
    expect(r.status.targets![0]).not.toHaveProperty('turnWaitsExpired');
  });

  it('when an agent still runs an older generation, it is not Ready yet (Attaching)', () => {
    const a = pod('a');
    const r = computeStatus(input([a], { a: { report: report(a, { generation: 2 }), at: NOW } }));
    expect(r.status.podsAttached).toBe(0);
    expect(cond(r, 'Ready')).toMatchObject({ status: 'False', reason: Reason.Attaching });
    expect(r.attachedAnyGeneration).toEqual(['a']);
  });

  it('reports unreachable agents, rejected programs and unreachable targets', () => {
    const a = pod('a');
    const b = pod('bb');
    const c = pod('ccc');
    const r = computeStatus(
      input([a, b, c], {
        a: { error: 'connect ECONNREFUSED', at: NOW },
        bb: { report: report(b, { attached: false, problem: { reason: 'ProgramRejected', message: 'verifier: invalid access' } }), at: NOW },
        ccc: { report: report(c, { targets: [{ name: 't1', connectionsMirrored: 0, connectionsCut: 0, connectFailures: 5, bytesMirrored: 0, bytesDropped: 0 }] }), at: NOW },
      }),
    );
    const d = cond(r, 'Degraded');
    expect(d.reason).toBe(Reason.AgentUnreachable);
    expect(d.message).toContain('ECONNREFUSED');
    expect(d.message).toContain('verifier: invalid access');
    expect(d.message).toContain('target t1: 5 connect failures');
    expect(cond(r, 'Ready').status).toBe('False');
  });

  it('a rejected transform program: Degraded ProgramRejected with the agent\'s message and verifier log verbatim, old generation still counted', () => {
    const a = pod('a');
    const log = '0: R1=ctx() R10=fp0\n; return data[100];\n1: (61) r0 = *(u32 *)(r1 +400)\ninvalid bpf_context access off=400 size=4';
    const message = `update failed: spec.transform.ops[1].program: ConfigMap shop/xf-prog has no binaryData key prog.o\nverifier log:\n${log}`;
    // The edit (generation 3) was refused; the agent keeps running generation 2 and says why.
    const r = computeStatus(input([a], { a: { report: report(a, { generation: 2, attached: true, problem: { reason: 'ProgramRejected', message } }), at: NOW } }));
    const d = cond(r, 'Degraded');
    expect(d).toMatchObject({ status: 'True', reason: Reason.ProgramRejected, observedGeneration: 3 });
    expect(d.message).toBe(`the data plane of 1 pod(s) (a) rejected a program: ${message}`);
    expect(cond(r, 'Ready')).toMatchObject({ status: 'False', reason: Reason.ProgramRejected });
    expect(r.status.podsAttached).toBe(0);
    expect(r.status.bytesMirrored).toBe(900);
    expect(r.attachedAnyGeneration).toEqual(['a']);
  });

  it('a file target leaving the capture volume: Degraded CapturePathOutsideVolume with the agent\'s message', () => {
    const a = pod('a');
    const message = "attach failed: spec.mirror.targets[1].file.path: /../etc leaves the capture volume: in a cluster a file target's path is resolved under the sidecar's capture volume /var/lib/kstreams/capture";
    const r = computeStatus(input([a], { a: { report: report(a, { attached: false, problem: { reason: 'CapturePathOutsideVolume', message } }), at: NOW } }));
    const d = cond(r, 'Degraded');
    expect(d).toMatchObject({ status: 'True', reason: Reason.CapturePathOutsideVolume });
    expect(d.message).toBe(`a file target of 1 pod(s) (a) leaves the sidecar's capture volume: ${message}`);
    expect(cond(r, 'Ready')).toMatchObject({ status: 'False', reason: Reason.CapturePathOutsideVolume });
  });

  it('names TransformUnsupported and TransformFailed, ranked after ProgramRejected and before unreachable targets', () => {
    const a = pod('a');
    const b = pod('bb');
    const c = pod('ccc');
    const unsupported = { reason: 'TransformUnsupported', message: 'loading the transform program failed: EINVAL (the kernel lacks sk_msg on SOCKHASH, bpf_loop or sk_storage: 5.17 or later)' };
    const failed = { reason: 'TransformFailed', message: 'no free transform profile' };
    const unreachable = { targets: [{ name: 't1', connectionsMirrored: 0, connectionsCut: 0, connectFailures: 2, bytesMirrored: 0, bytesDropped: 0 }] };
    const r = computeStatus(
      input([a, b, c], {
        a: { report: report(a, { attached: false, problem: failed }), at: NOW },
        bb: { report: report(b, { attached: false, problem: unsupported }), at: NOW },
        ccc: { report: report(c, unreachable), at: NOW },
      }),
    );
    const d = cond(r, 'Degraded');
    expect(d.reason).toBe(Reason.TransformUnsupported);
    expect(d.message).toContain(`the kernel of 1 pod(s) (bb) cannot run spec.transform: ${unsupported.message}`);
    expect(d.message).toContain(`the data plane of 1 pod(s) (a) could not put spec.transform in place: ${failed.message}`);
    expect(d.message.indexOf('cannot run')).toBeLessThan(d.message.indexOf('could not put'));
    expect(d.message.indexOf('could not put')).toBeLessThan(d.message.indexOf('cannot reach a mirror target'));

    const withProgram = computeStatus(
      input([a, b], {
        a: { report: report(a, { attached: false, problem: { reason: 'ProgramRejected', message: 'ConfigMap shop/x does not exist' } }), at: NOW },
        bb: { report: report(b, { attached: false, problem: unsupported }), at: NOW },
      }),
    );
    expect(cond(withProgram, 'Degraded').reason).toBe(Reason.ProgramRejected);
    expect(Reason).toMatchObject({ ProgramRejected: 'ProgramRejected', TransformUnsupported: 'TransformUnsupported', TransformFailed: 'TransformFailed', InvalidSpec: 'InvalidSpec' });
  });

  it('keeps lastTransitionTime while a condition keeps its status, and is equal to itself', () => {
    const a = pod('a');
    const obs = { a: { report: report(a), at: NOW } };
    const first = computeStatus(input([a], obs));
    const second = computeStatus(input([a], obs, { previous: first.status, now: NOW + 60_000 }));
    expect(sameStatus(first.status, second.status)).toBe(true);
    const third = computeStatus(input([a], {}, { previous: first.status, now: NOW + 60_000 }));
    expect(cond(third, 'Ready').lastTransitionTime).toBe('2026-01-01T00:01:00Z');
  });

  it('onlyCountersDiffer: sums and target counters are counters; conditions, pod counts and target names are not', () => {
    const a = pod('a');
    const first = computeStatus(input([a], { a: { report: report(a), at: NOW } })).status;
    const busier = computeStatus(input([a], { a: { report: report(a, { connections: 9, bytesPrimary: 5000, targets: [{ name: 't1', connectionsMirrored: 9, connectionsCut: 1, connectFailures: 2, bytesMirrored: 4000, bytesDropped: 0 }] }), at: NOW } }, { previous: first })).status;
    expect(sameStatus(first, busier)).toBe(false);
    expect(onlyCountersDiffer(first, busier)).toBe(true);
    const renamed = computeStatus(input([a], { a: { report: report(a, { targets: [{ name: 't2', connectionsMirrored: 2, connectionsCut: 0, connectFailures: 0, bytesMirrored: 900, bytesDropped: 100 }] }), at: NOW } }, { previous: first })).status;
    expect(onlyCountersDiffer(first, renamed)).toBe(false);
    const detached = computeStatus(input([a], { a: { report: report(a, { attached: false }), at: NOW } }, { previous: first })).status;
    expect(onlyCountersDiffer(first, detached)).toBe(false);
    const two = computeStatus(input([a, pod('bb')], { a: { report: report(a), at: NOW } }, { previous: first })).status;
    expect(onlyCountersDiffer(first, two)).toBe(false);
    expect(onlyCountersDiffer(undefined, first)).toBe(false);
  });

  it('ignores pods of other namespaces and deleting pods', () => {
    const r = computeStatus(input([pod('a', { namespace: 'other' }), pod('b', { deleting: true })]));
    expect(r.status.podsSelected).toBe(0);
  });

  it('ignores Succeeded and Failed pods: a finished Job pod does not keep the StreamPath Attaching', () => {
    const a = pod('a');
    const done = pod('done', { terminated: true });
    const r = computeStatus(input([a, done], { a: { report: report(a), at: NOW } }));
    expect(r.status.podsSelected).toBe(1);
    expect(cond(r, 'Ready')).toMatchObject({ status: 'True', reason: Reason.Attached });
    // from the raw pods as the informer sees them
    const raw = (phase: string) => slimPod({ metadata: { name: 'p', namespace: 'shop', uid: 'u' }, status: { phase, podIP: '10.0.0.9' } });
    expect(raw('Succeeded').terminated).toBe(true);
    expect(raw('Failed').terminated).toBe(true);
    expect(raw('Running').terminated).toBeUndefined();
    expect(sameSlimPod(raw('Running'), raw('Failed'))).toBe(false);
  });

  it('an invalid spec says which field is wrong', () => {
    const r = computeStatus(input([pod('a')], {}, { specErrors: ['spec.port: Too big'] }));
    expect(cond(r, 'Degraded')).toMatchObject({ reason: Reason.InvalidSpec });
    expect(cond(r, 'Degraded').message).toContain('spec.port');
  });

  it('names the pods not heard yet and those without a report; holdCounters keeps the stored counters while they are unknown', () => {
    const a = pod('a');
    const b = pod('bb');
    const c = pod('ccc');
    const full = computeStatus(input([a, b], { a: { report: report(a), at: NOW }, bb: { report: report(b), at: NOW } }));
    expect(full).toMatchObject({ unheard: [], unreported: [] });
    // A new leader: a polled, bb not yet, ccc polled but it never answered.
    const partial = computeStatus(input([a, b, c], { a: { report: report(a), at: NOW }, ccc: { error: 'connect ECONNREFUSED', at: NOW } }));
    expect(partial.unheard).toEqual(['bb']);
    expect(partial.unreported).toEqual(['ccc']);
    expect(partial.status.connections).toBe(2);
    const held = holdCounters(partial.status, full.status);
    expect(held).toMatchObject({ connections: 4, bytesPrimary: 2000, bytesMirrored: 1800, bytesDropped: 200 });
    expect(held.targets).toEqual([{ name: 't1', connectionsMirrored: 4, connectionsCut: 0, connectFailures: 0, bytesMirrored: 1800, bytesDropped: 200 }]);
    expect(held.conditions).toEqual(partial.status.conditions); // only counters are held
    // Higher sums win, and nothing stored means nothing to hold.
    expect(holdCounters({ ...full.status, connections: 9 }, full.status).connections).toBe(9);
    expect(holdCounters(partial.status, undefined)).toBe(partial.status);
  });
});

describe('computeStatus with the namespace\'s Pod Security labels', () => {
  const sidecar = sidecarContainer(SidecarConfigSchema.parse({}), false);
  const ns = (labels: Record<string, string>): SlimNamespace => ({ name: 'shop', labels: { 'kstreams.io/inject': 'enabled', ...labels } });
  const attached = (names: string[]) => Object.fromEntries(names.map((n) => [n, { report: report(pod(n)), at: NOW }]));

  it('enforce baseline and no pod: PodSecurityForbidsSidecar (not just NoPodsMatched), with the kubectl fix', () => {
    const r = computeStatus(input([], {}, { sidecar, namespaceObject: ns({ 'pod-security.kubernetes.io/enforce': 'baseline' }) }));
    expect(cond(r, 'Ready')).toMatchObject({ status: 'False', reason: Reason.PodSecurityForbidsSidecar });
    expect(cond(r, 'Degraded')).toMatchObject({ status: 'True', reason: Reason.PodSecurityForbidsSidecar });
    const m = cond(r, 'Degraded').message;
    expect(m).toContain('enforces Pod Security "baseline:latest"');
    expect(m).toContain('capabilities NET_ADMIN, BPF');
    expect(m).toContain('kubectl label --overwrite ns shop pod-security.kubernetes.io/enforce=privileged');
    expect(m).toContain('no running pod in namespace shop matches spec.selector');
  });

  it('without the sidecar shape (no check) or with enforce privileged, it stays NoPodsMatched', () => {
    const labels = ns({ 'pod-security.kubernetes.io/enforce': 'restricted' });
    expect(cond(computeStatus(input([], {}, { namespaceObject: labels })), 'Ready').reason).toBe(Reason.NoPodsMatched);
    const privileged = ns({ 'pod-security.kubernetes.io/enforce': 'privileged' });
    expect(cond(computeStatus(input([], {}, { sidecar, namespaceObject: privileged })), 'Ready').reason).toBe(Reason.NoPodsMatched);
  });

  it('enforce restricted over pods that lack the sidecar: Ready=False PodSecurityForbidsSidecar before PodsNotInjected', () => {
    const r = computeStatus(input([pod('a', { injected: false })], {}, { sidecar, namespaceObject: ns({ 'pod-security.kubernetes.io/enforce': 'restricted' }) }));
    expect(cond(r, 'Ready')).toMatchObject({ status: 'False', reason: Reason.PodSecurityForbidsSidecar });
    expect(cond(r, 'Ready').message).toContain('runAsUser 0');
    expect(cond(r, 'Ready').message).toContain('without the kstreams sidecar');
  });

  it('enforce baseline while injected pods run attached (admitted before the label, or exempt): Ready stays True, Degraded says new pods will be rejected', () => {
    const r = computeStatus(input([pod('a'), pod('bb')], attached(['a', 'bb']), { sidecar, namespaceObject: ns({ 'pod-security.kubernetes.io/enforce': 'baseline' }) }));
    expect(cond(r, 'Ready')).toMatchObject({ status: 'True', reason: Reason.Attached });
    expect(cond(r, 'Degraded')).toMatchObject({ status: 'True', reason: Reason.PodSecurityForbidsSidecar });
    expect(cond(r, 'Degraded').message).toContain('the 2 running injected pod(s) were admitted before the label was set or the namespace is exempt, but new ones will be rejected');
  });

  it('warn and audit levels are notes in the Ready message, not problems', () => {
    const labels = ns({ 'pod-security.kubernetes.io/warn': 'baseline', 'pod-security.kubernetes.io/audit': 'restricted' });
    const r = computeStatus(input([pod('a')], attached(['a']), { sidecar, namespaceObject: labels }));
    expect(cond(r, 'Ready')).toMatchObject({ status: 'True', reason: Reason.Attached });
    expect(cond(r, 'Degraded')).toMatchObject({ status: 'False', reason: Reason.AsExpected });
    expect(cond(r, 'Ready').message).toMatch(/^1 of 1 selected pod\(s\) attached; namespace shop's Pod Security warn level "baseline:latest" warns/);
    expect(cond(r, 'Ready').message).toContain('pod-security.kubernetes.io/audit=privileged');
  });

  describe('after a restart, pods not heard yet (presumeUnheardAttached)', () => {
    const pods = [pod('a'), pod('bb'), pod('ccc')];
    const before = computeStatus(input(pods, Object.fromEntries(pods.map((p) => [p.name, { report: report(p), at: NOW - 60_000 }]))));

    it('keep the part they had in the stored status: Ready and its transition time do not move', () => {
      const heardOne = { a: { report: report(pods[0]!), at: NOW } };
      const r = computeStatus(input(pods, heardOne, { previous: before.status, now: NOW + 5_000, presumeUnheardAttached: true }));
      expect(r.unheard).toEqual(['bb', 'ccc']);
      expect(r.presumed).toBe(2);
      expect(r.status.podsAttached).toBe(3);
      expect(cond(r, 'Ready')).toEqual(cond(before, 'Ready'));
      expect(holdCounters(r.status, before.status).bytesPrimary).toBe(before.status.bytesPrimary);
    });

    it('without it, or at a new generation, they are waited for', () => {
      const r = computeStatus(input(pods, {}, { previous: before.status, now: NOW + 5_000 }));
      expect(cond(r, 'Ready')).toMatchObject({ status: 'False', reason: Reason.Attaching });
      const edited = computeStatus(input(pods, {}, { previous: before.status, now: NOW + 5_000, generation: 4, presumeUnheardAttached: true }));
      expect(edited.presumed).toBe(0);
      expect(cond(edited, 'Ready')).toMatchObject({ status: 'False', reason: Reason.Attaching });
    });

    it('never beyond what the stored status had attached (a pod added meanwhile is waited for)', () => {
      const more = [...pods, pod('dddd')];
      const r = computeStatus(input(more, {}, { previous: before.status, now: NOW + 5_000, presumeUnheardAttached: true }));
      expect(r.presumed).toBe(3);
      expect(cond(r, 'Ready')).toMatchObject({ status: 'False', reason: Reason.Attaching });
    });
  });
});

