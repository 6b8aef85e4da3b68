// The leader's side of the agent feed: one session per connected agent (keyed by its pod, which its token
// proved), the configuration each agent should have (computed from the controller's caches and sent only
// when it differs from the last one sent), and the last report each agent sent, which the reconciler reads
// instead of polling. Changes are batched: a burst of events recomputes each affected pod once.
import type { Logger } from 'pino';
import { programKey, serviceKey, type DeliveredProgram, type FeedStreamPath, type ReportFrame, type ResolvedService } from '../../../api/src/feed.js';
import { LabelSelectorSchema, StreamPathSpecSchema, type LabelSelector } from '../../../api/src/streampath.js';
import type { Clock } from '../../../runtime/src/clock.js';
import { podKey, selectorMatches, type SlimPod } from '../kube/objects.js';
import type { StreamPathObject } from '../controller/reconciler.js';
import type { AgentObservation } from '../controller/status.js';
import type { AgentStreamPathReport } from '../../../api/src/agent.js';
import { FeedAuthError, type AgentIdentity } from './auth.js';
import type { ProgramCache } from './programs.js';
import { resolveService, type SlimEndpoints, type SlimService } from './resolve.js';
import type { FeedConnection, FeedSessionHandlers } from './server.js';

/**
 * A StreamPath's selector and spec, parsed once per cached object (the informer replaces the object on every
 * change): an edit of a StreamPath of 10k pods builds 10k configurations, each looking at every StreamPath of
 * the namespace, and parsing each spec anew there cost seconds.
 */
const parsedSpecs = new WeakMap<StreamPathObject, { selector: LabelSelector | undefined; spec: ReturnType<typeof StreamPathSpecSchema.safeParse> }>();
function parsedOf(sp: StreamPathObject) {
  let p = parsedSpecs.get(sp);
  if (!p) {
    const sel = LabelSelectorSchema.safeParse((sp.spec as { selector?: unknown } | undefined)?.selector);
    p = { selector: sel.success ? sel.data : undefined, spec: StreamPathSpecSchema.safeParse(sp.spec) };
    parsedSpecs.set(sp, p);
  }
  return p;
}

/**
 * The JSON of a StreamPath as a config frame carries it, per cached object (never modified, replaced on every
 * change): an edit of a StreamPath of 1000 pods encodes it once, not 1000 times, and the frames and their
 * fingerprints are put together from these strings.
 */
const entryJson = new WeakMap<StreamPathObject, string>();
function entryOf(sp: StreamPathObject): string {
  let j = entryJson.get(sp);
  if (j === undefined) {
    const { name, uid, generation } = sp.metadata;
    const created = (sp.metadata as { creationTimestamp?: string }).creationTimestamp;
    const entry: FeedStreamPath = {
      apiVersion: sp.apiVersion,
      kind: sp.kind,
      metadata: { name, uid, ...(generation !== undefined ? { generation } : {}), ...(created ? { creationTimestamp: created } : {}) },
      spec: sp.spec,
    };
    entryJson.set(sp, (j = JSON.stringify(entry)));
  }
  return j;
}

/** The `pod` part of a config frame, per cached pod object. */
const podJson = new WeakMap<SlimPod, string>();
function podPartOf(pod: SlimPod): string {
  let j = podJson.get(pod);
  if (j === undefined) podJson.set(pod, (j = JSON.stringify({ labels: pod.labels, ...(pod.termination ? { termination: pod.termination } : {}) })));
  return j;
}

/** An object's JSON with its keys in sorted order (services and programs: a few keys each). */
function sortedJson<T>(o: Record<string, T>): string {
  const keys = Object.keys(o).sort();
  const out: Record<string, T> = {};
  for (const k of keys) out[k] = o[k]!;
  return JSON.stringify(out);
}

function sameStrings(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * Work on agents' configurations per event-loop turn before yielding (flush), by default: with the webhook
 * on the same event loop its admission reviews wait for at most this long.
 */
const FLUSH_SLICE_MS = 10;
/** An agent's report waits at most this long for the pending configurations to be sent (afterBacklog). */
const HOLD_MS = 1_000;
/**
 * A configuration sent and not acknowledged within this long no longer counts as in flight (propagating): an
 * agent that is slow, stuck or gone does not hold status work back longer than this.
 */
const ACK_WAIT_MS = 3_000;

/**
 * Work that waits while something is busy, for at most its own deadline: callbacks run oldest first, in
 * slices of `sliceMs` per event-loop turn (10,000 held reports do not hold the loop either), those past their
 * deadline even while still busy. `run()` is called when the busy state may have ended.
 */
class Waiters {
  private list: { cb: () => void; due: number }[] = [];
  private head = 0;
  private timer: NodeJS.Timeout | undefined;
  private running = false;

  constructor(
    private readonly busy: () => boolean,
    private readonly sliceMs: number,
    private readonly log: Logger,
  ) {}

  get waiting(): boolean {
    return this.head < this.list.length;
  }

  /** Runs `cb` at once when nothing is busy or waiting, else when not busy or at `due` (performance.now()). */
  add(cb: () => void, due: number): void {
    if (!this.busy() && !this.waiting) return cb();
    this.list.push({ cb, due });
    this.arm();
  }

  /** Runs what no longer has to wait (everything once not busy), a slice per turn. */
  run(): void {
    if (!this.waiting || this.running) return;
    clearTimeout(this.timer);
    this.timer = undefined;
    this.slice();
  }

  /** One timer, for the oldest waiter's deadline (deadlines never decrease along the list: the earliest). */
  private arm(): void {
    if (this.timer || this.running) return;
    const first = this.list[this.head];
    if (!first) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.slice();
    }, Math.max(0, first.due - performance.now()));
    this.timer.unref?.();
  }

  private slice(): void {
    this.running = false;
    const until = performance.now() + this.sliceMs;
    while (this.head < this.list.length) {
      const w = this.list[this.head]!;
      if (w.due > performance.now() && this.busy()) break;
      this.head++;
      try {
        w.cb();
      } catch (err) {
        this.log.error({ err }, 'feed: deferred work failed');
      }
      if (this.head < this.list.length && performance.now() >= until) {
        this.running = true;
        setImmediate(() => this.slice());
        return;
      }
    }
    if (this.head === this.list.length) {
      this.list = [];
      this.head = 0;
    } else if (this.head > 1024 && this.head * 2 > this.list.length) {
      this.list = this.list.slice(this.head);
      this.head = 0;
    }
    this.arm();
  }
}

export interface FeedHubDeps {
  clock: Clock;
  log: Logger;
  getPod(key: string): SlimPod | undefined;
  streamPathsIn(namespace: string): Iterable<StreamPathObject>;
  /**
   * The StreamPaths whose selector may match the pod (an index kept by the caller, a superset: each is
   * checked again here). Without it every StreamPath of the pod's namespace is looked at.
   */
  streamPathsSelecting?(pod: SlimPod): Iterable<StreamPathObject>;
  getService(namespace: string, name: string): SlimService | undefined;
  getEndpoints(namespace: string, name: string): SlimEndpoints | undefined;
  programs: ProgramCache;
  /**
   * An agent's observation changed (a new report, it went away): its pod's StreamPaths need a reconcile.
   * `changed` names the StreamPaths whose part of the report changed (their entry); undefined: all of them
   * (first report, readiness, an error). `countersOnly`: those of `changed` whose entry changed in its
   * counters alone (same generation, attachment, problem and targets), news that may wait longer.
   */
  onObservation(pod: SlimPod, changed?: ReadonlySet<string>, countersOnly?: ReadonlySet<string>): void;
  /** An agent whose stream closed counts as unreachable only after this long (it reconnects meanwhile). */
  disconnectGraceMs: number;
  /**
   * Work on configurations per event-loop turn (default FLUSH_SLICE_MS). Between slices the loop reads the
   * sockets (reports, PINGs, watches) and runs reconciles; with the webhook on its own thread a longer slice
   * sends an edit's frames sooner, before the acknowledgements of its first frames take the loop's turns.
   */
  flushSliceMs?: number;
  /** How long a configuration sent counts as in flight without an acknowledgement (default ACK_WAIT_MS). */
  ackWaitMs?: number;
  onConfigSent?: () => void;
  onReport?: () => void;
}

interface Session {
  id: AgentIdentity;
  conn: FeedConnection;
  version: number;
  /**
   * The parts of the last config sent (programs by hash): a config is sent when one differs. The strings of
   * unchanged StreamPaths and pods are the same cached instances, so comparing them is mostly by identity.
   */
  sent: { pod: string; streamPaths: string[]; services: string; programs: string } | undefined;
  /** "ns/name" of the Services and ConfigMaps the last computed config used. */
  services: Set<string>;
  configMaps: Set<string>;
  /** Last config version the agent said it applied. */
  applied: number;
  /** SHA-256 of the program bytes this stream has been sent: later frames carry the hash only. */
  programsSent: Set<string>;
}

interface Observed {
  uid: string;
  obs: AgentObservation;
  /** The report's JSON without its StreamPath entries ('' after an error): a change there concerns all. */
  head: string;
  /** Each StreamPath entry's JSON, by name: a change there concerns that StreamPath only. */
  entries: Map<string, string>;
  /** Each entry's JSON without its counters, by name: what a change of counters alone leaves equal. */
  states: Map<string, string>;
  /** Clock time the stream closed; undefined while connected. */
  disconnectedAt?: number;
}

export class FeedHub {
  private readonly sessions = new Map<string, Session>();
  private readonly observed = new Map<string, Observed>();
  private readonly byNamespace = new Map<string, Set<string>>();
  private readonly byService = new Map<string, Set<string>>();
  private readonly byConfigMap = new Map<string, Set<string>>();
  private readonly dirty = new Set<string>();
  private flushing = false;
  /** Configurations sent and not yet acknowledged, oldest first from inflightHead (propagating). */
  private inflight: { key: string; s: Session; version: number; at: number }[] = [];
  private inflightHead = 0;
  /** performance.now() when the hub last started propagating (nothing was pending or in flight before). */
  private propagatingSince = 0;
  /** Work waiting for the pending configurations to be sent (afterBacklog). */
  private readonly afterConfigs: Waiters;
  /** Work waiting for the configurations to be sent and acknowledged (whenPropagated). */
  private readonly afterAcks: Waiters;
  private synced = false;
  private stopped = false;

  constructor(private readonly d: FeedHubDeps) {
    const slice = d.flushSliceMs ?? FLUSH_SLICE_MS;
    this.afterConfigs = new Waiters(() => this.backlog, slice, d.log);
    this.afterAcks = new Waiters(() => this.propagating, slice, d.log);
  }

  get connected(): number {
    return this.sessions.size;
  }

  /** The last config version the agent of `key` applied (tests and the bench measure propagation with it). */
  applied(key: string): number | undefined {
    return this.sessions.get(key)?.applied;
  }

  /** Version of the last config sent to the agent of `key`. */
  sentVersion(key: string): number | undefined {
    return this.sessions.get(key)?.version;
  }

  /** "namespace/name" of the program ConfigMaps some connected agent's configuration names. */
  configMapsInUse(): ReadonlySet<string> {
    return new Set(this.byConfigMap.keys());
  }

  observe(pod: SlimPod): AgentObservation | undefined {
    const o = this.observed.get(podKey(pod));
    return o && o.uid === pod.uid ? o.obs : undefined;
  }

  /** Configurations are waiting to be computed and sent (an edit, a reconnect storm). */
  get backlog(): boolean {
    return this.synced && !this.stopped && this.dirty.size > 0;
  }

  /**
   * Configurations are waiting to be computed and sent, or were sent less than ACK_WAIT_MS ago and their agents
   * have not acknowledged them yet: an edit is still on its way to its agents.
   */
  get propagating(): boolean {
    if (this.backlog) return true;
    return !this.stopped && this.pruneInflight();
  }

  /** Drops the acknowledged, expired and closed from the front of `inflight`: true while one is left. */
  private pruneInflight(): boolean {
    const now = performance.now();
    while (this.inflightHead < this.inflight.length) {
      const f = this.inflight[this.inflightHead]!;
      if (this.sessions.get(f.key) === f.s && f.s.applied < f.version && now - f.at < (this.d.ackWaitMs ?? ACK_WAIT_MS)) {
        if (this.inflightHead > 1024 && this.inflightHead * 2 > this.inflight.length) {
          this.inflight = this.inflight.slice(this.inflightHead);
          this.inflightHead = 0;
        }
        return true;
      }
      this.inflightHead++;
    }
    this.inflight = [];
    this.inflightHead = 0;
    return false;
  }

  /**
   * Runs `cb` once no configuration waits, or after `maxMs` (at once when none waits). Work that can wait a
   * moment (an agent's report) lets an edit's frames go out first, so that the acknowledgements of the first
   * agents do not delay the frames of the last.
   */
  afterBacklog(cb: () => void, maxMs: number): void {
    this.afterConfigs.add(cb, performance.now() + maxMs);
  }

  whenIdle(maxMs: number): Promise<void> {
    return new Promise((resolve) => this.afterConfigs.add(resolve, performance.now() + maxMs));
  }

  /**
   * Resolves once every configuration was sent and acknowledged (or waited ACK_WAIT_MS), or `maxMs` after
   * the propagation began.
   * Status work (reconciles, their writes to the API) waits for this: on a machine that also runs the
   * agents or the apiserver, that work would take the CPU the edit's last agents need.
   */
  whenPropagated(maxMs: number): Promise<void> {
    // Counted from the start of the propagation, not of each wait: while configurations keep going out (pods
    // created all the time, a reconnect storm), status work is held back once for maxMs, not maxMs each.
    return new Promise((resolve) => this.afterAcks.add(resolve, this.propagatingSince + maxMs));
  }

  /** The caches are complete: configs can be computed (nothing is sent from a partial cache). */
  setSynced(): void {
    this.synced = true;
    for (const key of this.sessions.keys()) this.markDirty(key);
  }

  attach(id: AgentIdentity, conn: FeedConnection): FeedSessionHandlers {
    if (this.stopped) throw new FeedAuthError(503, 'the operator is stopping; retry');
    const key = podKey({ namespace: id.namespace, name: id.pod });
    const pod = this.d.getPod(key);
    if (pod && pod.uid !== id.podUid) throw new FeedAuthError(403, `pod ${key} has uid ${pod.uid}, the token is for uid ${id.podUid}`);
    if (pod && !pod.injected) throw new FeedAuthError(403, `pod ${key} was not injected by the kstreams webhook`);
    const old = this.sessions.get(key);
    if (old) {
      old.conn.close('replaced by a newer stream of the same pod');
      this.unindex(key, old);
    }
    const s: Session = { id, conn, version: 0, sent: undefined, services: new Set(), configMaps: new Set(), applied: 0, programsSent: new Set() };
    this.sessions.set(key, s);
    this.index(this.byNamespace, id.namespace, key, true);
    const o = this.observed.get(key);
    if (o) o.disconnectedAt = undefined;
    this.markDirty(key);
    return {
      frame: (f) => this.onReport(key, s, f),
      closed: () => this.onClosed(key, s),
      later: (work) => this.afterBacklog(work, HOLD_MS),
    };
  }

  private onReport(key: string, s: Session, f: ReportFrame): void {
    if (this.sessions.get(key) !== s) return;
    const acked = f.applied > s.applied;
    s.applied = f.applied;
    this.d.onReport?.();
    if (acked) this.maybePropagated();
    // The pod is the one the token names, whatever the report says.
    const pod = { namespace: s.id.namespace, name: s.id.pod, uid: s.id.podUid };
    const report = { ...f.report, pod };
    // The parsed report's keys are in the schema's order, so its JSON is a fingerprint (a different order
    // of an unchanged report would only cost a reconcile).
    const head = JSON.stringify({ pod, ready: report.ready });
    const entries = new Map<string, string>();
    for (const e of report.streamPaths) entries.set(e.name, JSON.stringify(e));
    const prev = this.observed.get(key);
    let changed: Set<string> | undefined;
    let countersOnly: Set<string> | undefined;
    const states = new Map<string, string>();
    if (prev && prev.uid === s.id.podUid && prev.head === head && !prev.obs.error) {
      changed = new Set();
      countersOnly = new Set();
      for (const e of report.streamPaths) {
        if (prev.entries.get(e.name) === entries.get(e.name)) {
          states.set(e.name, prev.states.get(e.name) ?? entryState(e));
          continue;
        }
        changed.add(e.name);
        const state = entryState(e);
        states.set(e.name, state);
        if (prev.states.get(e.name) === state) countersOnly.add(e.name);
      }
      for (const name of prev.entries.keys()) if (!entries.has(name)) changed.add(name);
      if (changed.size === 0) return;
    } else {
      for (const e of report.streamPaths) states.set(e.name, entryState(e));
    }
    const obs: AgentObservation = { report, at: this.d.clock.now(), key: `${head}${[...entries.values()].join(',')}` };
    this.observed.set(key, { uid: s.id.podUid, obs, head, entries, states });
    const p = this.d.getPod(key);
    if (p) this.d.onObservation(p, changed, countersOnly);
  }

  /** An acknowledgement or a closed stream may have ended the propagation: what waited for it runs. */
  private maybePropagated(): void {
    if (this.afterAcks.waiting && !this.propagating) this.afterAcks.run();
  }

  private onClosed(key: string, s: Session): void {
    if (this.sessions.get(key) !== s) return;
    this.sessions.delete(key);
    this.unindex(key, s);
    this.maybePropagated();
    const o = this.observed.get(key);
    if (o) o.disconnectedAt = this.d.clock.now();
  }

  /**
   * Agents whose stream has been closed for longer than the grace become unreachable (their last report is
   * kept: a deleted StreamPath must still be known as attached there until they say otherwise).
   */
  sweep(): void {
    const now = this.d.clock.now();
    for (const [key, o] of this.observed) {
      const pod = this.d.getPod(key);
      if (!pod || pod.uid !== o.uid) {
        if (!this.sessions.has(key)) this.observed.delete(key);
        continue;
      }
      if (o.disconnectedAt === undefined || o.obs.error || now - o.disconnectedAt < this.d.disconnectGraceMs) continue;
      const seconds = Math.round((now - o.disconnectedAt) / 1000);
      o.obs = { report: o.obs.report, error: `its stream to the operator closed ${seconds} s ago and it has not reconnected`, at: now };
      o.head = '';
      this.d.onObservation(pod);
    }
  }

  podChanged(pod: SlimPod): void {
    const key = podKey(pod);
    const s = this.sessions.get(key);
    if (!s) return;
    if (pod.uid !== s.id.podUid) {
      s.conn.close('the pod was replaced');
      this.onClosed(key, s);
      return;
    }
    this.markDirty(key);
  }

  podDeleted(pod: SlimPod): void {
    const key = podKey(pod);
    this.observed.delete(key);
    const s = this.sessions.get(key);
    if (s && s.id.podUid === pod.uid) {
      s.conn.close('the pod was deleted');
      this.onClosed(key, s);
      this.observed.delete(key);
    }
  }

  streamPathsChanged(namespace: string): void {
    for (const key of this.byNamespace.get(namespace) ?? []) this.markDirty(key);
  }

  serviceChanged(namespace: string, name: string): void {
    for (const key of this.byService.get(`${namespace}/${name}`) ?? []) this.markDirty(key);
  }

  configMapChanged(namespace: string, name: string): void {
    for (const key of this.byConfigMap.get(`${namespace}/${name}`) ?? []) this.markDirty(key);
  }

  /** Every agent stream ends (leadership lost, shutdown): agents keep their configuration and reconnect. */
  stop(): void {
    this.stopped = true;
    this.wakeIdle();
    for (const [key, s] of [...this.sessions]) {
      s.conn.close('the operator stopped leading');
      this.sessions.delete(key);
    }
  }

  private markDirty(key: string): void {
    if (!this.propagating) this.propagatingSince = performance.now();
    this.dirty.add(key);
    if (this.flushing) return;
    this.flushing = true;
    setImmediate(() => this.flush());
  }

  /**
   * Recomputes the dirty pods' configurations, for at most FLUSH_SLICE_MS per event-loop turn: an edit of a
   * StreamPath selecting 10k pods (or the first pass after the caches synced) does not hold the loop for the
   * whole batch, so the webhook's admission reviews and the agents' reports are served in between.
   */
  private flush(): void {
    this.flushing = false;
    if (!this.synced || this.stopped) return this.wakeIdle();
    const until = performance.now() + (this.d.flushSliceMs ?? FLUSH_SLICE_MS);
    for (const key of this.dirty) {
      this.dirty.delete(key);
      const s = this.sessions.get(key);
      if (s) this.sendConfig(key, s);
      if (this.dirty.size > 0 && performance.now() >= until) {
        this.flushing = true;
        setImmediate(() => this.flush());
        return;
      }
    }
    this.wakeIdle();
  }

  /** The backlog may have ended (or the hub stopped): what waited for it runs. */
  private wakeIdle(): void {
    this.afterConfigs.run();
    this.afterAcks.run();
  }

  private sendConfig(key: string, s: Session): void {
    const pod = this.d.getPod(key);
    // Not in the cache yet (the token is for a pod just created): the pod's add event brings it here again.
    if (!pod || pod.uid !== s.id.podUid) return;
    const built = this.build(pod);
    this.unindex(key, s);
    s.services = built.services;
    s.configMaps = built.configMaps;
    for (const id of s.services) this.index(this.byService, id, key, true);
    for (const id of s.configMaps) this.index(this.byConfigMap, id, key, true);
    this.index(this.byNamespace, s.id.namespace, key, true);
    if (built.pending) return; // a ConfigMap read is in flight: configMapChanged follows
    // Programs by hash: the fingerprint does not carry their bytes, and bytes the stream has are not resent.
    const programs: Record<string, DeliveredProgram> = {};
    for (const [k, p] of Object.entries(built.programs)) programs[k] = 'sha256' in p && p.sha256 ? { sha256: p.sha256 } : p;
    const parts = { pod: podPartOf(pod), streamPaths: built.entries, services: sortedJson(built.resolved), programs: sortedJson(programs) };
    const last = s.sent;
    if (last && last.pod === parts.pod && last.services === parts.services && last.programs === parts.programs && sameStrings(last.streamPaths, parts.streamPaths)) return;
    s.sent = parts;
    s.version++;
    for (const [k, p] of Object.entries(built.programs)) {
      if (!('data' in p) || !p.sha256) continue;
      if (s.programsSent.has(p.sha256)) continue;
      programs[k] = p;
      s.programsSent.add(p.sha256);
    }
    // The frame is put together from the parts' JSON: what encodeFrame makes of the same ConfigFrame
    // (hub.test.ts), without encoding each StreamPath again for every pod it selects.
    const line = `{"type":"config","version":${s.version},"pod":${parts.pod},"streamPaths":[${parts.streamPaths.join(',')}],"services":${parts.services},"programs":${sortedJson(programs)}}\n`;
    if (s.conn.send(line)) {
      this.pruneInflight();
      this.inflight.push({ key, s, version: s.version, at: performance.now() });
      this.d.onConfigSent?.();
    }
  }

  /**
   * The configuration of one pod: the StreamPaths that select it (their JSON, by name), what their targets and
   * programs resolve to, and the Services and ConfigMaps it depends on.
   */
  private build(pod: SlimPod): { entries: string[]; resolved: Record<string, ResolvedService>; programs: Record<string, DeliveredProgram>; services: Set<string>; configMaps: Set<string>; pending: boolean } {
    const selecting: { name: string; json: string }[] = [];
    const resolved: Record<string, ResolvedService> = {};
    const programs: Record<string, DeliveredProgram> = {};
    const serviceIds = new Set<string>();
    const configMapIds = new Set<string>();
    let pending = false;
    const candidates = this.d.streamPathsSelecting ? this.d.streamPathsSelecting(pod) : this.d.streamPathsIn(pod.namespace);
    for (const sp of candidates) {
      if (sp.metadata.deletionTimestamp || sp.metadata.namespace !== pod.namespace) continue;
      // Selection by the selector alone, as the agent did: an invalid spec elsewhere is reported by exactly
      // the pods it was meant for.
      const parsed = parsedOf(sp);
      if (!parsed.selector || !selectorMatches(parsed.selector, pod.labels)) continue;
      selecting.push({ name: sp.metadata.name, json: entryOf(sp) });
      const spec = parsed.spec;
      if (!spec.success) continue;
      for (const t of spec.data.mirror?.targets ?? []) {
        if (!t.service) continue;
        const ns = t.service.namespace ?? pod.namespace;
        serviceIds.add(`${ns}/${t.service.name}`);
        resolved[serviceKey(ns, t.service.name, t.service.port)] = resolveService(
          { namespace: ns, name: t.service.name, port: t.service.port },
          this.d.getService(ns, t.service.name),
          this.d.getEndpoints(ns, t.service.name),
        );
      }
      for (const op of spec.data.transform?.ops ?? []) {
        const p = op.program;
        if (!p?.configMap || !p.key) continue;
        configMapIds.add(`${pod.namespace}/${p.configMap}`);
        const got = this.d.programs.get(pod.namespace, p.configMap, p.key);
        if (got === undefined) pending = true;
        else programs[programKey(p.configMap, p.key)] = got;
      }
    }
    selecting.sort((a, b) => a.name.localeCompare(b.name));
    return { entries: selecting.map((e) => e.json), resolved, programs, services: serviceIds, configMaps: configMapIds, pending };
  }

  private index(map: Map<string, Set<string>>, id: string, key: string, add: boolean): void {
    let set = map.get(id);
    if (add) {
      if (!set) map.set(id, (set = new Set()));
      set.add(key);
    } else if (set) {
      set.delete(key);
      if (set.size === 0) map.delete(id);
    }
  }

  private unindex(key: string, s: Session): void {
    for (const id of s.services) this.index(this.byService, id, key, false);
    for (const id of s.configMaps) this.index(this.byConfigMap, id, key, false);
    if (this.sessions.get(key) !== s) this.index(this.byNamespace, s.id.namespace, key, false);
  }
}

/**
 * A report entry without its counters: equal before and after a change of counters alone. A target's connect
 * failures count while none of its connections was mirrored: the status then says it in a condition
 * (TargetUnreachable, computeStatus).
 */
function entryState(e: AgentStreamPathReport): string {
  return JSON.stringify([e.generation, e.attached, e.problem ?? null, e.targets.map((t) => [t.name, t.connectionsMirrored === 0 ? t.connectFailures : -1])]);
}
