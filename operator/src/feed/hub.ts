// The leader's side of the agent feed: one session per connected agent (keyed by its pod, which its token
// proved), the configuration each agent should have (computed from the controller's caches and sent only
// when it differs from the last one sent), and the last report each agent sent, which the reconciler reads
// instead of polling. Changes are batched: a burst of events recomputes each affected pod once.
import type { Logger } from 'pino';
import { programKey, serviceKey, type ConfigFrame, type DeliveredProgram, type FeedStreamPath, type ReportFrame, type ResolvedService } from '../../../api/src/feed.js';
import { LabelSelectorSchema, StreamPathSpecSchema, type LabelSelector } from '../../../api/src/streampath.js';
import type { Clock } from '../../../runtime/src/clock.js';
import { podKey, selectorMatches, type SlimPod } from '../kube/objects.js';
import type { StreamPathObject } from '../controller/reconciler.js';
import { stableStringify, type AgentObservation } from '../controller/status.js';
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

/** Work on agents' configurations per event-loop turn before yielding (flush). */
const FLUSH_SLICE_MS = 10;

export interface FeedHubDeps {
  clock: Clock;
  log: Logger;
  getPod(key: string): SlimPod | undefined;
  streamPathsIn(namespace: string): Iterable<StreamPathObject>;
  getService(namespace: string, name: string): SlimService | undefined;
  getEndpoints(namespace: string, name: string): SlimEndpoints | undefined;
  programs: ProgramCache;
  /** An agent's observation changed (a new report, it went away): its pod's StreamPaths need a reconcile. */
  onObservation(pod: SlimPod): void;
  /** An agent whose stream closed counts as unreachable only after this long (it reconnects meanwhile). */
  disconnectGraceMs: number;
  onConfigSent?: () => void;
  onReport?: () => void;
}

interface Session {
  id: AgentIdentity;
  conn: FeedConnection;
  version: number;
  sentFingerprint: string | undefined;
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
  fingerprint: string;
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
  private synced = false;
  private stopped = false;

  constructor(private readonly d: FeedHubDeps) {}

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
    const s: Session = { id, conn, version: 0, sentFingerprint: undefined, services: new Set(), configMaps: new Set(), applied: 0, programsSent: new Set() };
    this.sessions.set(key, s);
    this.index(this.byNamespace, id.namespace, key, true);
    const o = this.observed.get(key);
    if (o) o.disconnectedAt = undefined;
    this.markDirty(key);
    return {
      frame: (f) => this.onReport(key, s, f),
      closed: () => this.onClosed(key, s),
    };
  }

  private onReport(key: string, s: Session, f: ReportFrame): void {
    if (this.sessions.get(key) !== s) return;
    s.applied = f.applied;
    this.d.onReport?.();
    // The pod is the one the token names, whatever the report says.
    const report = { ...f.report, pod: { namespace: s.id.namespace, name: s.id.pod, uid: s.id.podUid } };
    const fingerprint = stableStringify(report);
    const prev = this.observed.get(key);
    if (prev && prev.uid === s.id.podUid && prev.fingerprint === fingerprint && !prev.obs.error) return;
    this.observed.set(key, { uid: s.id.podUid, obs: { report, at: this.d.clock.now() }, fingerprint });
    const pod = this.d.getPod(key);
    if (pod) this.d.onObservation(pod);
  }

  private onClosed(key: string, s: Session): void {
    if (this.sessions.get(key) !== s) return;
    this.sessions.delete(key);
    this.unindex(key, s);
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
      o.fingerprint = '';
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
    for (const [key, s] of [...this.sessions]) {
      s.conn.close('the operator stopped leading');
      this.sessions.delete(key);
    }
  }

  private markDirty(key: string): void {
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
    if (!this.synced || this.stopped) return;
    const until = performance.now() + FLUSH_SLICE_MS;
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
    // Programs by hash: the fingerprint does not stringify their bytes, and bytes the stream has are not resent.
    const programs: Record<string, DeliveredProgram> = {};
    for (const [k, p] of Object.entries(built.body.programs)) programs[k] = 'sha256' in p && p.sha256 ? { sha256: p.sha256 } : p;
    const fingerprint = stableStringify({ ...built.body, programs });
    if (fingerprint === s.sentFingerprint) return;
    s.sentFingerprint = fingerprint;
    s.version++;
    for (const [k, p] of Object.entries(built.body.programs)) {
      if (!('data' in p) || !p.sha256) continue;
      if (s.programsSent.has(p.sha256)) continue;
      programs[k] = p;
      s.programsSent.add(p.sha256);
    }
    const frame: ConfigFrame = { type: 'config', version: s.version, ...built.body, programs };
    if (s.conn.send(frame)) this.d.onConfigSent?.();
  }

  /** The configuration of one pod: the StreamPaths that select it, with what their targets and programs resolve to. */
  private build(pod: SlimPod): { body: Omit<ConfigFrame, 'type' | 'version'>; services: Set<string>; configMaps: Set<string>; pending: boolean } {
    const streamPaths: FeedStreamPath[] = [];
    const services: Record<string, ResolvedService> = {};
    const programs: Record<string, DeliveredProgram> = {};
    const serviceIds = new Set<string>();
    const configMapIds = new Set<string>();
    let pending = false;
    for (const sp of this.d.streamPathsIn(pod.namespace)) {
      if (sp.metadata.deletionTimestamp) continue;
      // Selection by the selector alone, as the agent did: an invalid spec elsewhere is reported by exactly
      // the pods it was meant for.
      const parsed = parsedOf(sp);
      if (!parsed.selector || !selectorMatches(parsed.selector, pod.labels)) continue;
      const { name, uid, generation } = sp.metadata;
      const created = (sp.metadata as { creationTimestamp?: string }).creationTimestamp;
      streamPaths.push({
        apiVersion: sp.apiVersion,
        kind: sp.kind,
        metadata: { name, uid, ...(generation !== undefined ? { generation } : {}), ...(created ? { creationTimestamp: created } : {}) },
        spec: sp.spec,
      });
      const spec = parsed.spec;
      if (!spec.success) continue;
      for (const t of spec.data.mirror?.targets ?? []) {
        if (!t.service) continue;
        const ns = t.service.namespace ?? pod.namespace;
        serviceIds.add(`${ns}/${t.service.name}`);
        services[serviceKey(ns, t.service.name, t.service.port)] = resolveService(
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
    streamPaths.sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
    return { body: { pod: { labels: { ...pod.labels }, ...(pod.termination ? { termination: pod.termination } : {}) }, streamPaths, services, programs }, services: serviceIds, configMaps: configMapIds, pending };
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
