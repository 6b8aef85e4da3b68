// The heart of the reconcile, as a pure function: from a StreamPath, the pods of its namespace, the
// namespace's labels and the agents' last reports, compute the status the StreamPath should have.
// Nothing here does I/O, so every condition rule is unit-tested with plain objects.
import type { AgentReport, AgentStreamPathReport } from '../../../api/src/agent.js';
import { INJECT_NAMESPACE_LABEL, INJECT_NAMESPACE_VALUE, INJECT_POD_LABEL } from '../../../api/src/agent.js';
import type { Condition, LabelSelector, StreamPathStatus, TargetCounters } from '../../../api/src/streampath.js';
import { formatTime } from '../../../runtime/src/clock.js';
import { namespaceInjectionEnabled, selectorMatches, type SlimNamespace, type SlimPod } from '../kube/objects.js';
import { describeVerdict, sidecarPodSecurity } from '../webhook/pod-security.js';

export const CONDITION_READY = 'Ready';
export const CONDITION_DEGRADED = 'Degraded';

/** Reasons of the Degraded condition, most important first (the first one found names the condition). */
export const Reason = {
  InvalidSpec: 'InvalidSpec',
  /**
   * The namespace's Pod Security enforce level forbids the sidecar. Ready=False while no selected pod carries
   * the sidecar (the apiserver rejects them); with injected pods running (admitted before the label, or an
   * exempt namespace) only Degraded=True: new pods would be rejected.
   */
  PodSecurityForbidsSidecar: 'PodSecurityForbidsSidecar',
  NoPodsMatched: 'NoPodsMatched',
  PodsNotInjected: 'PodsNotInjected',
  AgentUnreachable: 'AgentUnreachable',
  /** spec.transform ops[].program was refused (missing ConfigMap or key, not an sk_msg ELF, the verifier). */
  ProgramRejected: 'ProgramRejected',
  /** The pod's kernel cannot run spec.transform (sk_msg on SOCKHASH, bpf_loop, sk_storage). */
  TransformUnsupported: 'TransformUnsupported',
  /** A valid transform could not be put in place (kernel memory, too many live versions). */
  TransformFailed: 'TransformFailed',
  TargetUnreachable: 'TargetUnreachable',
  /** A file target's path leaves the sidecar's capture volume ('..' above its root): that pod records nothing. */
  CapturePathOutsideVolume: 'CapturePathOutsideVolume',
  AgentNotReady: 'AgentNotReady',
  /** Ready=False without a problem: agents have not attached the current generation yet. */
  Attaching: 'Attaching',
  Attached: 'Attached',
  AsExpected: 'AsExpected',
} as const;

const REASON_ORDER: string[] = [
  Reason.InvalidSpec,
  Reason.PodSecurityForbidsSidecar,
  Reason.NoPodsMatched,
  Reason.PodsNotInjected,
  Reason.AgentUnreachable,
  Reason.ProgramRejected,
  Reason.TransformUnsupported,
  Reason.TransformFailed,
  Reason.TargetUnreachable,
  Reason.CapturePathOutsideVolume,
  Reason.AgentNotReady,
];

/** What the operator last learned from one pod's agent. */
export interface AgentObservation {
  report?: AgentReport;
  /** Why the last poll failed (the last good report, if any, is kept in `report`). */
  error?: string;
  /** Clock time of the last poll. */
  at: number;
  /**
   * A canonical string of `report` and `error`, when whoever made the observation has one (the feed: the
   * report's JSON as received); the reconciler's input fingerprint uses it instead of stringifying anew.
   */
  key?: string;
}

export interface StatusInput {
  name: string;
  namespace: string;
  generation: number;
  selector: LabelSelector | undefined;
  /** Set when the spec does not parse: the status says so and nothing else is computed. */
  specErrors?: string[];
  pods: Iterable<SlimPod>;
  namespaceObject: SlimNamespace | undefined;
  observe: (pod: SlimPod) => AgentObservation | undefined;
  previous: StreamPathStatus | undefined;
  now: number;
  /**
   * The container the webhook injects (sidecarContainer()): its securityContext is checked against the
   * namespace's Pod Security labels. Without it, no Pod Security check.
   */
  sidecar?: Record<string, unknown>;
  /**
   * Just after a leader change or restart, while agents reconnect: selected pods not heard from yet are
   * counted as attached, up to the number the stored status (`previous`, at this generation) had attached
   * beyond those heard, instead of being waited for. So the reconnect storm moves no condition.
   */
  presumeUnheardAttached?: boolean;
}

export interface StatusResult {
  status: StreamPathStatus;
  /** Pods whose agent reports this StreamPath attached (any generation): what delete waits for. */
  attachedAnyGeneration: string[];
  /** Selected pods with a running agent that this operator has not polled yet (e.g. just after it became leader). */
  unheard: string[];
  /** Selected pods whose agent was polled but never answered with a report: their counters are unknown. */
  unreported: string[];
  /** How many of `unheard` were counted as attached (presumeUnheardAttached). */
  presumed: number;
}

interface Problem {
  reason: string;
  pods: string[];
  detail: string[];
  /** Degraded=True but Ready as it would be without it: the StreamPath works, something else is wrong. */
  soft?: boolean;
}


function listNames(names: string[], max = 3): string {
  const shown = names.slice(0, max).join(', ');
  return names.length > max ? `${shown} and ${names.length - max} more` : shown;
}

function mergeTargets(into: Map<string, TargetCounters>, targets: TargetCounters[]): void {
  for (const t of targets) {
    const cur = into.get(t.name);
    if (!cur) into.set(t.name, { ...t });
    else {
      cur.connectionsMirrored += t.connectionsMirrored;
      cur.connectionsCut += t.connectionsCut;
      cur.connectFailures += t.connectFailures;
      if (t.connectionsSkipped !== undefined) cur.connectionsSkipped = (cur.connectionsSkipped ?? 0) + t.connectionsSkipped;
      if (t.turnWaitsExpired !== undefined) cur.turnWaitsExpired = (cur.turnWaitsExpired ?? 0) + t.turnWaitsExpired;
      if (t.responsesCompared !== undefined) cur.responsesCompared = (cur.responsesCompared ?? 0) + t.responsesCompared;
      if (t.responsesDiverged !== undefined) cur.responsesDiverged = (cur.responsesDiverged ?? 0) + t.responsesDiverged;
      cur.bytesMirrored += t.bytesMirrored;
      cur.bytesDropped += t.bytesDropped;
    }
  }
}

function condition(type: string, status: Condition['status'], reason: string, message: string, generation: number, previous: StreamPathStatus | undefined, now: number): Condition {
  const prev = previous?.conditions?.find((c) => c.type === type);
  return {
    type,
    status,
    reason,
    message,
    observedGeneration: generation,
    // The transition time moves only when the status flips, as kubectl and alerting expect.
    lastTransitionTime: prev && prev.status === status ? prev.lastTransitionTime : formatTime(now),
  };
}

export function computeStatus(input: StatusInput): StatusResult {
  const { name, namespace, generation, previous, now } = input;
  const problems = new Map<string, Problem>();
  const addProblem = (reason: string, pod: string | undefined, detail: string, soft = false) => {
    let p = problems.get(reason);
    if (!p) problems.set(reason, (p = { reason, pods: [], detail: [], ...(soft ? { soft } : {}) }));
    if (pod && !p.pods.includes(pod)) p.pods.push(pod);
    if (detail && !p.detail.includes(detail)) p.detail.push(detail);
  };

  let selected = 0;
  let attached = 0;
  let waiting = 0;
  const attachedAnyGeneration: string[] = [];
  const unheard: string[] = [];
  const unreported: string[] = [];
  const notInjected: SlimPod[] = [];
  const totals = { connections: 0, bytesPrimary: 0, bytesMirrored: 0, bytesDropped: 0 };
  // Only in the status once an agent reports it (agents before it do not).
  let connectionsReset: number | undefined;
  const targets = new Map<string, TargetCounters>();
  /** Said in the Ready condition's message, whatever its status: Pod Security warn/audit levels. */
  const notes: string[] = [];
  let injectedSelected = 0;

  if (input.specErrors?.length) {
    addProblem(Reason.InvalidSpec, undefined, input.specErrors.join('; '));
  } else {
    for (const pod of input.pods) {
      if (pod.namespace !== namespace || pod.deleting || pod.terminated || !selectorMatches(input.selector, pod.labels)) continue;
      selected++;
      if (!pod.injected) {
        notInjected.push(pod);
        continue;
      }
      injectedSelected++;
      if (!pod.podIP) {
        waiting++;
        continue;
      }
      const obs = input.observe(pod);
      if (!obs) unheard.push(pod.name);
      else if (!obs.report) unreported.push(pod.name);
      const entry: AgentStreamPathReport | undefined = obs?.report?.streamPaths.find((s) => s.name === name);
      if (entry) {
        totals.connections += entry.connections;
        totals.bytesPrimary += entry.bytesPrimary;
        totals.bytesMirrored += entry.bytesMirrored;
        totals.bytesDropped += entry.bytesDropped;
        if (entry.connectionsReset !== undefined) connectionsReset = (connectionsReset ?? 0) + entry.connectionsReset;
        mergeTargets(targets, entry.targets);
        if (entry.attached) attachedAnyGeneration.push(pod.name);
      }
      if (!obs) {
        waiting++;
        continue;
      }
      if (obs.error) {
        addProblem(Reason.AgentUnreachable, pod.name, obs.error);
        continue;
      }
      if (entry?.problem) addProblem(entry.problem.reason, pod.name, entry.problem.message);
      for (const t of entry?.targets ?? []) {
        if (t.connectFailures > 0 && t.connectionsMirrored === 0) {
          addProblem(Reason.TargetUnreachable, pod.name, `target ${t.name}: ${t.connectFailures} connect failures, no connection mirrored`);
        }
      }
      if (entry?.attached && entry.generation === generation) attached++;
      else if (!entry?.problem) {
        if (obs.report && !obs.report.ready) addProblem(Reason.AgentNotReady, pod.name, 'the agent reports its data plane not ready');
        else waiting++;
      }
    }
    if (input.sidecar) {
      for (const v of sidecarPodSecurity(input.namespaceObject?.labels, input.sidecar)) {
        if (v.mode !== 'enforce') notes.push(describeVerdict(namespace, v));
        else if (injectedSelected === 0) addProblem(Reason.PodSecurityForbidsSidecar, undefined, describeVerdict(namespace, v));
        else
          addProblem(
            Reason.PodSecurityForbidsSidecar,
            undefined,
            `${describeVerdict(namespace, v)}; the ${injectedSelected} running injected pod(s) were admitted before the label was set or the namespace is exempt, but new ones will be rejected`,
            true,
          );
      }
    }
    if (selected === 0) {
      addProblem(Reason.NoPodsMatched, undefined, `no running pod in namespace ${namespace} matches spec.selector`);
    }
    if (notInjected.length > 0) {
      const names = notInjected.map((p) => p.name);
      const optedOut = notInjected.filter((p) => p.optedOut).map((p) => p.name);
      const detail: string[] = [];
      if (!namespaceInjectionEnabled(input.namespaceObject)) {
        detail.push(
          `namespace ${namespace} is not labelled ${INJECT_NAMESPACE_LABEL}=${INJECT_NAMESPACE_VALUE}: ` +
            `run kubectl label ns ${namespace} ${INJECT_NAMESPACE_LABEL}=${INJECT_NAMESPACE_VALUE}, then recreate the pods`,
        );
      } else if (optedOut.length === names.length) {
        detail.push(`the pods opt out with the label ${INJECT_POD_LABEL}=false`);
      } else {
        detail.push('they were created before injection was enabled or while the webhook was unavailable: recreate them (kubectl rollout restart)');
      }
      for (const d of detail) addProblem(Reason.PodsNotInjected, undefined, d);
      const p = problems.get(Reason.PodsNotInjected)!;
      p.pods = names;
    }
  }

  let presumed = 0;
  if (input.presumeUnheardAttached && previous?.observedGeneration === generation && unheard.length > 0) {
    presumed = Math.min(unheard.length, Math.max(0, (previous.podsAttached ?? 0) - attached));
    attached += presumed;
    waiting -= presumed;
  }

  const ordered = [...problems.values()].sort((a, b) => {
    const ia = REASON_ORDER.indexOf(a.reason);
    const ib = REASON_ORDER.indexOf(b.reason);
    return (ia < 0 ? REASON_ORDER.length : ia) - (ib < 0 ? REASON_ORDER.length : ib) || a.reason.localeCompare(b.reason);
  });
  const describe = (p: Problem): string => {
    const who = p.pods.length ? `${p.pods.length} pod(s) (${listNames(p.pods)})` : '';
    const what: Record<string, string> = {
      [Reason.PodsNotInjected]: `${who} selected but without the kstreams sidecar`,
      [Reason.AgentUnreachable]: `the agent of ${who} does not answer`,
      [Reason.TargetUnreachable]: `${who} cannot reach a mirror target`,
      [Reason.ProgramRejected]: `the data plane of ${who} rejected a program`,
      [Reason.TransformUnsupported]: `the kernel of ${who} cannot run spec.transform`,
      [Reason.TransformFailed]: `the data plane of ${who} could not put spec.transform in place`,
      [Reason.CapturePathOutsideVolume]: `a file target of ${who} leaves the sidecar's capture volume`,
    };
    const head = what[p.reason] ?? (who ? `${who}: ${p.reason}` : '');
    return [head, listNames(p.detail, 2)].filter(Boolean).join(': ');
  };

  const conditions: Condition[] = [];
  const first = ordered.find((p) => !p.soft);
  const firstSoft = ordered[0];
  const withNotes = (message: string) => [message, ...notes].join('; ');
  if (first) {
    const message = ordered.map(describe).join('; ');
    conditions.push(condition(CONDITION_READY, 'False', first.reason, withNotes(message), generation, previous, now));
    conditions.push(condition(CONDITION_DEGRADED, 'True', first.reason, message, generation, previous, now));
  } else {
    if (attached > 0 && waiting === 0) {
      conditions.push(condition(CONDITION_READY, 'True', Reason.Attached, withNotes(`${attached} of ${selected} selected pod(s) attached`), generation, previous, now));
    } else {
      conditions.push(
        condition(CONDITION_READY, 'False', Reason.Attaching, withNotes(`${attached} of ${selected} selected pod(s) attached; waiting for ${waiting} agent(s) to attach generation ${generation}`), generation, previous, now),
      );
    }
    if (firstSoft) conditions.push(condition(CONDITION_DEGRADED, 'True', firstSoft.reason, ordered.map(describe).join('; '), generation, previous, now));
    else conditions.push(condition(CONDITION_DEGRADED, 'False', Reason.AsExpected, 'no problem reported', generation, previous, now));
  }

  return {
    status: {
      observedGeneration: generation,
      podsSelected: selected,
      podsAttached: attached,
      connections: totals.connections,
      bytesPrimary: totals.bytesPrimary,
      bytesMirrored: totals.bytesMirrored,
      bytesDropped: totals.bytesDropped,
      ...(connectionsReset !== undefined ? { connectionsReset } : {}),
      targets: [...targets.values()].sort((a, b) => a.name.localeCompare(b.name)),
      conditions,
    },
    attachedAnyGeneration,
    unheard,
    unreported,
    presumed,
  };
}

const COUNTERS = ['connections', 'bytesPrimary', 'bytesMirrored', 'bytesDropped', 'connectionsReset'] as const;
const TARGET_COUNTERS = ['connectionsMirrored', 'connectionsCut', 'connectFailures', 'connectionsSkipped', 'turnWaitsExpired', 'responsesCompared', 'responsesDiverged', 'bytesMirrored', 'bytesDropped'] as const;

/**
 * While some selected pods' counters are unknown (their agent not heard yet, or never answered this
 * operator), the sums would lack them: counters are then kept at least at what is stored, so that a leader
 * change or a restart never makes them go backwards. Once every pod reported, the plain sums stand.
 */
export function holdCounters(next: StreamPathStatus, stored: StreamPathStatus | undefined): StreamPathStatus {
  if (!stored) return next;
  const out: StreamPathStatus = { ...next };
  for (const k of COUNTERS) {
    const a = stored[k];
    const b = next[k];
    if (a !== undefined && (b === undefined || a > b)) out[k] = a;
  }
  const targets = new Map<string, TargetCounters>();
  for (const t of next.targets ?? []) targets.set(t.name, { ...t });
  for (const t of stored.targets ?? []) {
    const cur = targets.get(t.name);
    if (!cur) {
      targets.set(t.name, { ...t });
      continue;
    }
    for (const k of TARGET_COUNTERS) {
      const a = t[k];
      const b = cur[k];
      if (a !== undefined && (b === undefined || a > b)) (cur as Record<string, number | string | undefined>)[k] = a;
    }
  }
  out.targets = [...targets.values()].sort((x, y) => x.name.localeCompare(y.name));
  return out;
}

/**
 * True when two statuses differ at most in their counters (the sums and the targets' counters): the same
 * conditions, generation, pod counts and target names. Such a change is news to a dashboard, not to anyone
 * waiting on a condition, and is written at the slower counter pace (Reconciler).
 */
export function onlyCountersDiffer(a: StreamPathStatus | undefined, b: StreamPathStatus | undefined): boolean {
  return stableStringify(withoutCounters(a)) === stableStringify(withoutCounters(b));
}

function withoutCounters(s: StreamPathStatus | undefined): Record<string, unknown> {
  const out: Record<string, unknown> = { ...(s ?? {}) };
  for (const k of COUNTERS) delete out[k];
  out.targets = (s?.targets ?? []).map((t) => t.name);
  return out;
}

/** Deep equality that ignores key order (the apiserver returns objects with sorted keys). */
export function stableStringify(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(stableStringify).join(',')}]`;
  if (v && typeof v === 'object') {
    const entries = Object.entries(v as Record<string, unknown>)
      .filter(([, x]) => x !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, x]) => `${JSON.stringify(k)}:${stableStringify(x)}`).join(',')}}`;
  }
  return JSON.stringify(v);
}

export function sameStatus(a: StreamPathStatus | undefined, b: StreamPathStatus | undefined): boolean {
  return stableStringify(a ?? {}) === stableStringify(b ?? {});
}
