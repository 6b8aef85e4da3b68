// Reconcile of one StreamPath, level-triggered: read the caches, compute the desired status, write only
// the difference. A reconcile whose inputs did not change since the last one is skipped outright; one whose
// result equals the stored status makes no write at all.
import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import { FINALIZER } from '../../../api/src/agent.js';
import { API_VERSION, GROUP, KIND, PLURAL, VERSION, parseClusterSpec, type Condition, type LabelSelector, type StreamPathStatus } from '../../../api/src/streampath.js';
import { AbortError, type Clock } from '../../../runtime/src/clock.js';
import type { EventRecorder, EventType, InvolvedObject } from '../../../runtime/src/events.js';
import { selectorMatches, type SlimNamespace, type SlimPod } from '../kube/objects.js';
import { isStatus, type KubeTransport } from '../../../runtime/src/rest.js';
import type { ProcessResult } from '../../../runtime/src/queue.js';
import { CONDITION_DEGRADED, CONDITION_READY, computeStatus, holdCounters, onlyCountersDiffer, sameStatus, stableStringify, type AgentObservation } from './status.js';

/** A StreamPath as kept in the cache: the raw object (spec validated at reconcile time). */

/**
 * The canonical strings of cached pods and agent observations, per object: the informer and the feed replace
 * an object whenever it changes and never modify one, so an object's string stays valid for its life. A
 * StreamPath of 1000 pods is fingerprinted on every reconcile, and restringifying each pod and its whole
 * report there was the largest part of the leader's CPU during an edit at 10,000 agents (docs/bench.md).
 */
const podStrings = new WeakMap<object, string>();
const observationStrings = new WeakMap<object, string>();
function cachedString(cache: WeakMap<object, string>, o: object, make: () => string): string {
  let s = cache.get(o);
  if (s === undefined) cache.set(o, (s = make()));
  return s;
}

export interface StreamPathObject {
  apiVersion: string;
  kind: string;
  metadata: {
    name: string;
    namespace: string;
    uid: string;
    generation?: number;
    resourceVersion?: string;
    finalizers?: string[];
    deletionTimestamp?: string;
    labels?: Record<string, string>;
  };
  spec?: Record<string, unknown>;
  status?: StreamPathStatus;
}

export function streamPathPath(namespace: string, name?: string): string {
  const base = `/apis/${GROUP}/${VERSION}/namespaces/${encodeURIComponent(namespace)}/${PLURAL}`;
  return name ? `${base}/${encodeURIComponent(name)}` : base;
}

export interface ReconcilerDeps {
  transport: KubeTransport;
  clock: Clock;
  log: Logger;
  events: EventRecorder;
  getStreamPath(key: string): StreamPathObject | undefined;
  /** Replaces the cached object by a newer one the operator just wrote (write-through cache). */
  storeStreamPath(obj: StreamPathObject): void;
  podsInNamespace(namespace: string): Iterable<SlimPod>;
  /** The pods the StreamPath's selector matches (an index kept by the caller; filtered again here). */
  podsSelectedBy(key: string): Iterable<SlimPod>;
  getNamespace(name: string): SlimNamespace | undefined;
  observe(pod: SlimPod): AgentObservation | undefined;
  detachTimeoutMs: number;
  /** The container the webhook injects, checked against each namespace's Pod Security labels (computeStatus). */
  sidecar?: Record<string, unknown>;
  /** While waiting for agents to detach, look again this often. */
  detachRecheckMs: number;
  /** A status write went out (key: namespace/name). */
  onStatusWrite?: (key: string) => void;
  onResult?: (result: 'changed' | 'unchanged' | 'skipped' | 'waiting' | 'deferred') => void;
  /**
   * At most one status write per StreamPath per this many ms: a change within it is written when it has
   * passed (the reconcile is requeued for then), together with whatever changed meanwhile. 0: no bound.
   */
  statusWriteIntervalMs?: number;
  /**
   * Writes per second that changes of counters alone may cost, all StreamPaths together (0 or unset: no such
   * budget). Such a change of a StreamPath waits `max(statusWriteIntervalMs, count / budget s)` since its
   * last write; a change of a condition, generation or pod count still goes out within statusWriteIntervalMs.
   */
  statusWritesPerSecond?: number;
  /** How many StreamPaths share the budget (the cache's size). */
  streamPathCount?: () => number;
  /**
   * True while this operator has only just started leading: a StreamPath's status is then not written (nor
   * its Events emitted) until every pod it selects has been polled once, so the status stored by the previous
   * leader is not replaced by one computed without the agents' reports. Bounded by the caller.
   */
  warmingUp?: () => boolean;
  /**
   * True for the reconnect grace after becoming leader: selected pods whose agent has not reconnected yet keep
   * their part of the stored status (attached, counters) instead of being waited for (computeStatus).
   * Returns how many ms of it are left (0: over).
   */
  presumeUnheard?: () => number;
}

export class Reconciler {
  /** Inputs of the last successful reconcile per key: equal inputs mean nothing to do. */
  private readonly memo = new Map<string, string>();
  /** Clock time of the last status write per key, for the write bound (kept across resyncs). */
  private readonly lastWrite = new Map<string, number>();

  constructor(private readonly d: ReconcilerDeps) {}

  /** Forget what was reconciled, so the next pass compares against the stored status again (resync). */
  forgetAll(): void {
    this.memo.clear();
  }

  forget(key: string): void {
    this.memo.delete(key);
    this.lastWrite.delete(key);
  }

  /**
   * How long until the status of `key` may be written again (at least `min`): when a reconcile is worth
   * running. `countersOnly`: the news is a change of counters alone, which waits for the counter interval.
   */
  nextWriteInMs(key: string, min: number, countersOnly = false): number {
    const interval = countersOnly ? this.counterIntervalMs() : (this.d.statusWriteIntervalMs ?? 0);
    const last = this.lastWrite.get(key);
    if (interval <= 0 || last === undefined) return min;
    return Math.max(min, last + interval - this.d.clock.now());
  }

  /**
   * The least time between two writes of one StreamPath whose counters alone changed: the write interval,
   * stretched so that all StreamPaths' counter writes together stay within statusWritesPerSecond.
   */
  counterIntervalMs(): number {
    const interval = this.d.statusWriteIntervalMs ?? 0;
    const budget = this.d.statusWritesPerSecond ?? 0;
    const count = this.d.streamPathCount?.() ?? 0;
    if (budget <= 0 || count <= 0) return interval;
    return Math.max(interval, Math.ceil((1000 * count) / budget));
  }

  async reconcile(key: string, signal: AbortSignal): Promise<ProcessResult | void> {
    const sp = this.d.getStreamPath(key);
    if (!sp) {
      this.memo.delete(key);
      return;
    }
    if (sp.metadata.deletionTimestamp) return this.reconcileDelete(key, sp, signal);

    const { namespace } = sp.metadata;
    const generation = sp.metadata.generation ?? 0;
    // The schema's rules, the cross-field ones the CRD cannot state (spec.mirror unless applyTo primary, op
    // order, UTF-8 byte lengths) and the cluster's own (no program path): a spec that fails is InvalidSpec.
    const parsed = parseClusterSpec(sp.spec);
    const selector: LabelSelector | undefined = parsed.ok ? parsed.value.selector : undefined;
    const hasFinalizer = sp.metadata.finalizers?.includes(FINALIZER) ?? false;
    const interval = this.d.statusWriteIntervalMs ?? 0;
    const last = this.lastWrite.get(key);
    if (interval > 0 && last !== undefined && hasFinalizer && this.d.clock.now() - last < interval) {
      // Written less than an interval ago: whatever changed goes out when it has passed, computed then (a
      // StreamPath whose counters move is computed once per interval, not once per report).
      this.d.onResult?.('deferred');
      return { requeueAfterMs: last + interval - this.d.clock.now() };
    }
    const pods = [...this.d.podsSelectedBy(key)].filter((p) => selectorMatches(selector, p.labels));
    const ns = this.d.getNamespace(namespace);

    const graceLeft = this.d.presumeUnheard?.() ?? 0;
    const fingerprint = this.fingerprint(sp, pods, ns, graceLeft > 0);
    if (hasFinalizer && sp.status?.observedGeneration === generation && this.memo.get(key) === fingerprint) {
      this.d.onResult?.('skipped');
      return;
    }

    let current = sp;
    if (!hasFinalizer) {
      const updated = await this.patchFinalizers(current, [...(current.metadata.finalizers ?? []), FINALIZER], signal);
      if (!updated) return;
      current = updated;
    }

    const result = computeStatus({
      name: sp.metadata.name,
      namespace,
      generation,
      selector,
      specErrors: parsed.ok ? undefined : parsed.errors,
      pods,
      namespaceObject: ns,
      observe: (p) => this.d.observe(p),
      previous: current.status,
      now: this.d.clock.now(),
      sidecar: this.d.sidecar,
      presumeUnheardAttached: graceLeft > 0,
    });
    if (result.unheard.length > 0 && this.d.warmingUp?.()) {
      // Not heard every agent yet since becoming leader: the stored status stands (no write, no Event).
      this.d.onResult?.('waiting');
      this.d.log.debug({ streamPath: key, unheard: result.unheard.length }, 'waiting for the first agent reports before writing status');
      return { requeueAfterMs: 1_000 };
    }
    const status = result.unheard.length + result.unreported.length > 0 ? holdCounters(result.status, current.status) : result.status;

    // Pods counted as attached on the stored status' word: look again when the grace ends, in case their
    // agents never come back.
    const recheck: ProcessResult | undefined = result.presumed > 0 ? { requeueAfterMs: graceLeft + 1 } : undefined;
    if (sameStatus(current.status, status)) {
      this.memo.set(key, fingerprint);
      this.d.onResult?.('unchanged');
      return recheck;
    }
    const now = this.d.clock.now();
    // Counters alone wait for the counter interval (the budget all StreamPaths share); anything else for the
    // write interval. Either way, whatever changed meanwhile goes out together when it has passed.
    const bound = current.status !== undefined && onlyCountersDiffer(current.status, status) ? this.counterIntervalMs() : interval;
    if (bound > 0 && last !== undefined && now - last < bound) {
      this.d.onResult?.('deferred');
      return { requeueAfterMs: last + bound - now };
    }
    if (signal.aborted) throw new AbortError('leadership lost: status not written');
    let written: StreamPathObject;
    try {
      written = await this.d.transport.request<StreamPathObject>('PATCH', `${streamPathPath(namespace, sp.metadata.name)}/status`, {
        body: { status },
        patch: 'merge',
      });
    } catch (err) {
      if (isStatus(err, 404)) return; // deleted meanwhile: the delete event ends it
      throw err;
    }
    this.lastWrite.set(key, this.d.clock.now());
    this.d.onStatusWrite?.(key);
    const ready = status.conditions?.find((c) => c.type === CONDITION_READY);
    this.d.log.info({ streamPath: key, generation, ready: ready?.status, reason: ready?.reason, podsSelected: status.podsSelected, podsAttached: status.podsAttached }, 'status written');
    this.d.storeStreamPath(written);
    this.memo.set(key, fingerprint);
    this.d.onResult?.('changed');
    await this.emitTransitions(sp, current.status?.conditions ?? [], status.conditions ?? []);
    return recheck;
  }

  /** Everything a status depends on, hashed: the object's generation and finalizers, the selected pods, their reports. */
  private fingerprint(sp: StreamPathObject, pods: SlimPod[], ns: SlimNamespace | undefined, presuming: boolean): string {
    const h = createHash('sha1');
    h.update(stableStringify({ uid: sp.metadata.uid, g: sp.metadata.generation, f: sp.metadata.finalizers ?? [], nsl: ns?.labels ?? null, p: presuming }));
    const sorted = [...pods].sort((a, b) => (a.name < b.name ? -1 : 1));
    for (const p of sorted) {
      h.update(cachedString(podStrings, p, () => stableStringify(p)));
      const obs = this.d.observe(p);
      if (obs) h.update(obs.key ?? cachedString(observationStrings, obs, () => stableStringify({ r: obs.report ?? null, e: obs.error ?? null })));
    }
    return h.digest('hex');
  }

  private async reconcileDelete(key: string, sp: StreamPathObject, signal: AbortSignal): Promise<ProcessResult | void> {
    this.memo.delete(key);
    const finalizers = sp.metadata.finalizers ?? [];
    if (!finalizers.includes(FINALIZER)) return;
    // Agents watch StreamPaths themselves and detach when one is deleting; the operator only waits until
    // none reports it attached any more (the last known report counts while an agent is unreachable).
    // An agent this operator never got a report from (just became leader, or it never answered) may still
    // be attached: it counts as attached until it says otherwise or the timeout passes. Pods that are gone,
    // ended (Succeeded/Failed), not injected or without an IP run no agent.
    const stillAttached: string[] = [];
    for (const pod of this.d.podsInNamespace(sp.metadata.namespace)) {
      if (pod.terminated || !pod.injected || !pod.podIP) continue;
      const report = this.d.observe(pod)?.report;
      const entry = report?.streamPaths.find((s) => s.name === sp.metadata.name);
      if (!report || entry?.attached) stillAttached.push(pod.name);
    }
    const remaining = finalizers.filter((f) => f !== FINALIZER);
    if (stillAttached.length === 0) {
      if (await this.patchFinalizers(sp, remaining, signal)) {
        this.d.log.info({ streamPath: key }, 'detached everywhere: finalizer removed');
      }
      return;
    }
    const waited = this.d.clock.now() - Date.parse(sp.metadata.deletionTimestamp!);
    if (waited >= this.d.detachTimeoutMs) {
      const msg = `agents of ${stillAttached.length} pod(s) (${stillAttached.slice(0, 3).join(', ')}) still report this StreamPath attached (or never reported) after ${Math.round(waited / 1000)} s; removing the finalizer anyway: check those pods' kstreams-sidecar logs`;
      this.d.log.warn({ streamPath: key, pods: stillAttached }, msg);
      await this.event(sp, 'Warning', 'DetachTimedOut', msg);
      await this.patchFinalizers(sp, remaining, signal);
      return;
    }
    return { requeueAfterMs: Math.min(this.d.detachRecheckMs, this.d.detachTimeoutMs - waited) };
  }

  /**
   * Sets metadata.finalizers with optimistic locking (resourceVersion in the merge patch): a concurrent
   * change makes it fail with 409 and the queue retries with fresh data. Returns the updated object.
   */
  private async patchFinalizers(sp: StreamPathObject, finalizers: string[], signal: AbortSignal): Promise<StreamPathObject | undefined> {
    if (signal.aborted) throw new AbortError('leadership lost: finalizers not written');
    try {
      const updated = await this.d.transport.request<StreamPathObject>('PATCH', streamPathPath(sp.metadata.namespace, sp.metadata.name), {
        body: { metadata: { resourceVersion: sp.metadata.resourceVersion, finalizers } },
        patch: 'merge',
      });
      this.d.storeStreamPath(updated);
      return updated;
    } catch (err) {
      if (isStatus(err, 404)) return undefined;
      throw err;
    }
  }

  private involved(sp: StreamPathObject): InvolvedObject {
    return {
      apiVersion: API_VERSION,
      kind: KIND,
      name: sp.metadata.name,
      namespace: sp.metadata.namespace,
      uid: sp.metadata.uid,
      resourceVersion: sp.metadata.resourceVersion,
    };
  }

  private async event(sp: StreamPathObject, type: EventType, reason: string, message: string): Promise<void> {
    await this.d.events.record(this.involved(sp), type, reason, message);
  }

  /** Events say what changed: Ready gained, a problem appeared or changed, a problem went away. */
  private async emitTransitions(sp: StreamPathObject, before: Condition[], after: Condition[]): Promise<void> {
    const find = (list: Condition[], type: string) => list.find((c) => c.type === type);
    const readyBefore = find(before, CONDITION_READY);
    const readyAfter = find(after, CONDITION_READY);
    const degBefore = find(before, CONDITION_DEGRADED);
    const degAfter = find(after, CONDITION_DEGRADED);
    if (degAfter?.status === 'True' && (degBefore?.status !== 'True' || degBefore.reason !== degAfter.reason)) {
      await this.event(sp, 'Warning', degAfter.reason, degAfter.message);
    } else if (degAfter?.status === 'False' && degBefore?.status === 'True') {
      await this.event(sp, 'Normal', 'Recovered', `no longer degraded (was ${degBefore.reason})`);
    }
    if (readyAfter?.status === 'True' && readyBefore?.status !== 'True') {
      await this.event(sp, 'Normal', readyAfter.reason, readyAfter.message);
    }
  }
}
