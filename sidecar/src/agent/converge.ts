// The agent's level-triggered core: given the pod's labels and every StreamPath of the namespace, make the
// set of live attachments equal to the set of StreamPaths that select the pod, touching only what differs.
// A second converge with nothing changed makes no data-plane call. Calls are serialised by the caller.
import type { Logger } from 'pino';
import type { AgentStreamPathReport } from '../../../api/src/agent.js';
import {
  LabelSelectorSchema,
  parseStreamPath,
  type StreamPathSpec,
  type TargetCounters,
} from '../../../api/src/streampath.js';
import type { Attachment, AttachmentStats, AgentDataPlane, DrainOutcome, ServiceResolver } from './dataplane.js';
import type { ProgramReader } from '../dataplane/transform.js';
import { selectorMatches, type Labels } from './selector.js';

/** Condition reasons the agent reports, beyond the data plane's own (AttachError reasons pass through). */
export const Reasons = {
  InvalidSpec: 'InvalidSpec',
  PortConflict: 'PortConflict',
  AttachFailed: 'AttachFailed',
  UpdateFailed: 'UpdateFailed',
  DetachFailed: 'DetachFailed',
  TargetUnreachable: 'TargetUnreachable',
  InsufficientPrivileges: 'InsufficientPrivileges',
  KernelFeatureMissing: 'KernelFeatureMissing',
  ProgramRejected: 'ProgramRejected',
} as const;

export interface Problem {
  reason: string;
  message: string;
}

/** The world as the watches see it. `podLabels` undefined: our pod is gone (or not known yet). */
export interface World {
  podLabels: Labels | undefined;
  streamPaths: readonly unknown[];
}

export interface ConvergeOptions {
  /** Also retry StreamPaths whose last attach or update failed (periodic resync), not only changed ones. */
  retryFailed?: boolean;
}

interface Entry {
  name: string;
  uid: string | undefined;
  /** Generation of the spec that is live (attached) or that was last tried (not attached). */
  generation: number;
  /** JSON of the spec that is live; undefined when nothing is attached. */
  liveSpecKey: string | undefined;
  livePort: number | undefined;
  /** spec.drainTimeoutSeconds of the live spec, in ms: how long its detach drains. */
  liveDrainMs: number | undefined;
  attachment: Attachment | undefined;
  problem: Problem | undefined;
  /** Set by sampleHealth() when a target's connects keep failing while attached. */
  degraded: Problem | undefined;
  /** connectFailures per target at the previous sample. */
  lastFailures: Map<string, number>;
  /** Spec (JSON) whose attach/update failed; not tried again until it changes or a resync says so. */
  failedSpecKey: string | undefined;
  /** Counters of an attachment that was replaced (port change) or went away, so totals do not run back. */
  lastStats: AttachmentStats | undefined;
}

interface Desired {
  name: string;
  uid: string | undefined;
  generation: number;
  created: string;
  spec: StreamPathSpec | undefined;
  errors: string[];
}

const ZERO: AttachmentStats = { connections: 0, bytesPrimary: 0, bytesMirrored: 0, bytesDropped: 0, targets: [] };

/** A detach whose interception is released and whose engine is still draining live connections. */
interface Drain {
  name: string;
  attachment: Attachment;
  /** Settles when the engine has ended (never rejects: failures are logged and reported). */
  done: Promise<void>;
}

/** What /metrics shows beside the report: the data plane's own figures (not in StreamPath status). */
export type LocalStats = Pick<AttachmentStats, 'connectionsActive' | 'setupFailures' | 'memory' | 'transformFailures' | 'targetTransformFailures' | 'captures'>;

/** A condition reason and a message for an error thrown by the data plane. */
export function problemFromError(err: unknown, action: 'attach' | 'update' | 'detach'): Problem {
  const e = err as { reason?: unknown; code?: unknown; message?: unknown; detail?: unknown; cause?: { code?: unknown } };
  // A rejected program's verifier output goes into the condition verbatim: it is what its author needs.
  const detail = typeof e?.detail === 'string' && e.detail ? `\nverifier log:\n${e.detail}` : '';
  const message = (typeof e?.message === 'string' ? e.message : String(err)) + detail;
  const code = typeof e?.code === 'string' ? e.code : typeof e?.cause?.code === 'string' ? e.cause.code : '';
  // The kernel refusing our program is worth its own reason, whatever generic reason it was wrapped in.
  if (code === 'EKSTREAMS_BPF_LOAD') return { reason: Reasons.ProgramRejected, message };
  if (typeof e?.reason === 'string' && /^[A-Z][A-Za-z]+$/.test(e.reason)) return { reason: e.reason, message };
  if (code === 'EPERM' || code === 'EACCES') {
    return {
      reason: Reasons.InsufficientPrivileges,
      message: `${message}; the sidecar needs CAP_BPF and CAP_NET_ADMIN`,
    };
  }
  if (code === 'ENOSYS' || code === 'EOPNOTSUPP' || code === 'EKSTREAMS_KERNEL' || code.startsWith('EKSTREAMS_NO_')) {
    return { reason: Reasons.KernelFeatureMissing, message };
  }
  if (code === 'ECONNREFUSED' || code === 'EHOSTUNREACH' || code === 'ENETUNREACH' || code === 'ETIMEDOUT') {
    return { reason: Reasons.TargetUnreachable, message };
  }
  const reason =
    action === 'attach' ? Reasons.AttachFailed : action === 'update' ? Reasons.UpdateFailed : Reasons.DetachFailed;
  return { reason, message: code && !message.includes(code) ? `${message} (${code})` : message };
}

function meta(raw: unknown): { name?: unknown; uid?: unknown; generation?: unknown; creationTimestamp?: unknown; deletionTimestamp?: unknown } {
  const m = (raw as { metadata?: unknown } | null)?.metadata;
  return typeof m === 'object' && m !== null ? (m as Record<string, unknown>) : {};
}

export class Reconciler {
  private readonly entries = new Map<string, Entry>();
  private readonly drains = new Set<Drain>();
  /** Set by abortAll(): detaches from then on reset at once. */
  private resetNow = false;

  constructor(
    private readonly opts: {
      dataPlane: AgentDataPlane;
      netnsPath?: string;
      resolve?: ServiceResolver;
      readProgram?: ProgramReader;
      /** Engine-wide cap on mirror send-buffer growth, per attachment. */
      mirrorBufferBudget?: number;
      /** The capture volume's mount: file targets' paths are resolved under it. */
      captureRoot?: string;
      /** A detach's drain ended: how many connections ended by themselves, how many were reset. */
      onDrained?: (name: string, outcome: DrainOutcome) => void;
      logger: Logger;
    },
  ) {}

  /** StreamPaths that select the pod, from the raw objects (parsed here: the cache holds them unparsed). */
  private desired(world: World): Map<string, Desired> {
    const out = new Map<string, Desired>();
    if (world.podLabels === undefined) return out;
    for (const raw of world.streamPaths) {
      const m = meta(raw);
      if (typeof m.name !== 'string' || m.deletionTimestamp) continue;
      // Which pods a StreamPath selects is decided on its selector alone, so an invalid spec elsewhere is
      // reported by exactly the pods it was meant for, not by every pod of the namespace.
      const sel = LabelSelectorSchema.safeParse((raw as { spec?: { selector?: unknown } }).spec?.selector);
      if (!sel.success || !selectorMatches(sel.data, world.podLabels)) continue;
      const parsed = parseStreamPath(raw);
      out.set(m.name, {
        name: m.name,
        uid: typeof m.uid === 'string' ? m.uid : undefined,
        generation: typeof m.generation === 'number' ? m.generation : 0,
        created: typeof m.creationTimestamp === 'string' ? m.creationTimestamp : '',
        spec: parsed.ok ? parsed.value.spec : undefined,
        errors: parsed.ok ? [] : parsed.errors,
      });
    }
    return out;
  }

  async converge(world: World, options: ConvergeOptions = {}): Promise<void> {
    const desired = this.desired(world);
    const log = this.opts.logger;

    // 1. Detach what no longer selects us, is being deleted, or was deleted and recreated (new uid).
    for (const entry of [...this.entries.values()]) {
      const d = desired.get(entry.name);
      if (!d || d.uid !== entry.uid) {
        await this.detachEntry(entry, d ? 'recreated' : 'no longer selects this pod');
        this.entries.delete(entry.name);
      }
    }

    // 2. Ports: what runs keeps its port; newcomers queue behind it in creation order, so adding a
    //    StreamPath can never break one that works.
    const claims = new Map<number, string>();
    for (const entry of this.entries.values()) {
      const d = desired.get(entry.name)!;
      if (entry.attachment && entry.livePort !== undefined && (!d.spec || d.spec.port === entry.livePort)) {
        claims.set(entry.livePort, entry.name);
      }
    }
    // Attached ones go first: one that moves to another port (update() re-intercepts live) frees its old
    // port before a newcomer may claim it.
    const attachedFirst = (d: Desired) => (this.entries.get(d.name)?.attachment ? 0 : 1);
    const order = [...desired.values()].sort(
      (a, b) =>
        attachedFirst(a) - attachedFirst(b) ||
        a.created.localeCompare(b.created) ||
        a.name.localeCompare(b.name),
    );

    // 3. Apply each one.
    for (const d of order) {
      let entry = this.entries.get(d.name);
      if (!entry) {
        entry = {
          name: d.name,
          uid: d.uid,
          generation: d.generation,
          liveSpecKey: undefined,
          livePort: undefined,
          liveDrainMs: undefined,
          attachment: undefined,
          problem: undefined,
          failedSpecKey: undefined,
          lastStats: undefined,
          degraded: undefined,
          lastFailures: new Map(),
        };
        this.entries.set(d.name, entry);
      }

      if (!d.spec) {
        // Invalid: keep whatever runs (it was valid), say why the edit is not applied.
        const message = `spec not applied: ${d.errors.join('; ')}`;
        if (entry.problem?.message !== message) log.warn({ streamPath: d.name, errors: d.errors }, 'invalid StreamPath');
        entry.problem = { reason: Reasons.InvalidSpec, message };
        if (!entry.attachment) entry.generation = d.generation;
        continue;
      }

      const spec = d.spec;
      const key = JSON.stringify(spec);
      const owner = claims.get(spec.port);
      if (owner !== undefined && owner !== d.name) {
        if (entry.attachment) await this.detachEntry(entry, `port ${spec.port} is taken by ${owner}`);
        entry.generation = d.generation;
        entry.failedSpecKey = undefined;
        entry.problem = {
          reason: Reasons.PortConflict,
          message: `port ${spec.port} of this pod is already tapped by StreamPath ${owner}; one StreamPath per port`,
        };
        continue;
      }
      claims.set(spec.port, d.name);

      if (entry.attachment && entry.liveSpecKey === key) {
        entry.generation = d.generation;
        if (entry.problem) entry.problem = undefined;
        continue;
      }
      if (key === entry.failedSpecKey && !options.retryFailed) continue;

      if (entry.attachment) {
        try {
          await entry.attachment.update(spec);
          log.info({ streamPath: d.name, generation: d.generation }, 'StreamPath updated live');
          entry.generation = d.generation;
          entry.liveSpecKey = key;
          entry.livePort = spec.port;
          entry.liveDrainMs = spec.drainTimeoutSeconds * 1000;
          entry.failedSpecKey = undefined;
          entry.problem = undefined;
        } catch (err) {
          // The previous spec keeps running; the report shows the old generation and why.
          entry.problem = problemFromError(err, 'update');
          entry.failedSpecKey = key;
          log.warn({ streamPath: d.name, generation: d.generation, err }, 'live update failed');
        }
        continue;
      }

      try {
        const attachment = await this.opts.dataPlane({
          name: d.name,
          spec,
          ...(this.opts.netnsPath !== undefined ? { netnsPath: this.opts.netnsPath } : {}),
          ...(this.opts.resolve ? { resolve: this.opts.resolve } : {}),
          ...(this.opts.readProgram ? { readProgram: this.opts.readProgram } : {}),
          ...(this.opts.mirrorBufferBudget !== undefined ? { mirrorBufferBudget: this.opts.mirrorBufferBudget } : {}),
          ...(this.opts.captureRoot !== undefined ? { captureRoot: this.opts.captureRoot } : {}),
        });
        entry.attachment = attachment;
        entry.liveSpecKey = key;
        entry.livePort = spec.port;
        entry.liveDrainMs = spec.drainTimeoutSeconds * 1000;
        entry.generation = d.generation;
        entry.failedSpecKey = undefined;
        entry.problem = undefined;
        log.info({ streamPath: d.name, generation: d.generation, port: spec.port }, 'StreamPath attached');
      } catch (err) {
        entry.generation = d.generation;
        entry.failedSpecKey = key;
        entry.problem = problemFromError(err, 'attach');
        log.warn({ streamPath: d.name, generation: d.generation, err }, 'attach failed');
      }
    }
  }

  /**
   * Detaches one attachment: resolves once its interception is released (new connections reach the app,
   * the port is free for another StreamPath), while its engine drains live connections in the background
   * for up to `timeoutMs` (default: its spec.drainTimeoutSeconds) and then resets the rest. A converge
   * never waits for a drain.
   */
  private async detachEntry(entry: Entry, why: string, timeoutMs?: number): Promise<void> {
    const attachment = entry.attachment;
    if (!attachment) return;
    const log = this.opts.logger;
    try {
      entry.lastStats = await attachment.stats();
    } catch {
      // Counters are best effort on the way out.
    }
    entry.attachment = undefined;
    entry.liveSpecKey = undefined;
    entry.livePort = undefined;
    entry.liveDrainMs = undefined;
    entry.degraded = undefined;
    entry.lastFailures.clear();
    // Still ours and not attached again (e.g. detached for a port conflict): its report can say more.
    const stillIdle = () => this.entries.get(entry.name) === entry && !entry.attachment;
    let released: () => void = () => {};
    const releasedOrDone = new Promise<void>((resolve) => (released = resolve));
    const drain: Drain = { name: entry.name, attachment, done: Promise.resolve() };
    drain.done = attachment
      .detach({
        ...(timeoutMs !== undefined ? { timeoutMs } : {}),
        ...(this.resetNow ? { now: true } : {}),
        onDraining: ({ connections, timeoutMs: drainMs }) => {
          log.info({ streamPath: entry.name, why, connections, timeoutMs: drainMs }, 'StreamPath released: draining its live connections');
          released();
        },
      })
      .then(
        async (outcome) => {
          log.info({ streamPath: entry.name, why, ...(outcome ?? {}) }, 'StreamPath detached');
          if (outcome) this.opts.onDrained?.(entry.name, outcome);
          if (stillIdle()) {
            try {
              entry.lastStats = await attachment.stats();
            } catch {
              // Keep the counters read before the detach.
            }
          }
        },
        (err: unknown) => {
          if (stillIdle()) entry.problem = problemFromError(err, 'detach');
          log.error({ streamPath: entry.name, why, err }, 'detach failed');
        },
      )
      .finally(() => {
        this.drains.delete(drain);
        released();
      });
    this.drains.add(drain);
    await releasedOrDone;
  }

  /**
   * Detaches everything (shutdown, or our pod is gone), all in parallel, and waits until every engine
   * has ended. With `timeoutMs` (the pod's remaining grace period) no drain lasts longer than that:
   * each attachment drains for its own spec.drainTimeoutSeconds or this, whichever is shorter, and
   * drains already running (StreamPaths deleted just before) are reset when it passes.
   */
  async detachAll(why: string, opts: { timeoutMs?: number } = {}): Promise<void> {
    const budget = opts.timeoutMs;
    const cutters =
      budget === undefined
        ? []
        : [...this.drains].map((d) =>
            setTimeout(() => {
              void d.attachment.abort?.().catch(() => undefined);
            }, budget),
          );
    await Promise.all(
      [...this.entries.values()].map(async (entry) => {
        const own = entry.liveDrainMs;
        const timeoutMs = budget === undefined ? undefined : Math.min(budget, own ?? budget);
        await this.detachEntry(entry, why, timeoutMs);
        this.entries.delete(entry.name);
      }),
    );
    await Promise.all([...this.drains].map((d) => d.done));
    for (const t of cutters) clearTimeout(t);
  }

  /** Resets every live connection now: running drains are cut short, later detaches do not drain. */
  async abortAll(): Promise<void> {
    this.resetNow = true;
    const drains = [...this.drains];
    await Promise.all(drains.map((d) => d.attachment.abort?.().catch(() => undefined)));
    await Promise.all(drains.map((d) => d.done));
  }

  /** Detaches whose engines are still draining. */
  drainsInProgress(): number {
    return this.drains.size;
  }

  /**
   * Samples counters: a target whose connect failures grew since the previous sample makes its
   * StreamPath degraded (TargetUnreachable) until a sample sees no new failure.
   */
  async sampleHealth(): Promise<void> {
    for (const e of this.entries.values()) {
      if (!e.attachment) continue;
      let stats: AttachmentStats;
      try {
        stats = await e.attachment.stats();
      } catch {
        continue;
      }
      const failing: string[] = [];
      for (const t of stats.targets) {
        const before = e.lastFailures.get(t.name) ?? 0;
        if (t.connectFailures > before) failing.push(`${t.name} (${t.connectFailures - before} failed connects)`);
        e.lastFailures.set(t.name, t.connectFailures);
      }
      e.degraded = failing.length
        ? { reason: Reasons.TargetUnreachable, message: `mirror target unreachable: ${failing.join(', ')}` }
        : undefined;
    }
  }

  /**
   * Resolves every attached StreamPath's targets again (periodic resync): Service endpoints move when
   * pods restart, and a mirror must follow them without an edit of the StreamPath. Returns the names
   * whose targets changed; a failed resolution keeps the old endpoints and is reported as a problem.
   */
  async refreshTargets(): Promise<string[]> {
    const changed: string[] = [];
    for (const e of this.entries.values()) {
      if (!e.attachment?.refreshTargets) continue;
      try {
        if (await e.attachment.refreshTargets()) changed.push(e.name);
      } catch (err) {
        e.degraded = problemFromError(err, 'update');
      }
    }
    return changed;
  }

  /** Names of the StreamPaths that are attached now. */
  attachedNames(): string[] {
    return [...this.entries.values()].filter((e) => e.attachment).map((e) => e.name);
  }

  /** Per StreamPath: live counters when attached, else the last ones seen (or zero). */
  async snapshot(): Promise<Array<{ report: AgentStreamPathReport; local?: LocalStats }>> {
    const out: Array<{ report: AgentStreamPathReport; local?: LocalStats }> = [];
    for (const e of [...this.entries.values()].sort((a, b) => a.name.localeCompare(b.name))) {
      let stats = e.lastStats ?? ZERO;
      let problem = e.problem ?? e.degraded;
      if (e.attachment) {
        try {
          stats = await e.attachment.stats();
        } catch (err) {
          problem ??= { reason: Reasons.AttachFailed, message: `reading counters failed: ${(err as Error).message}` };
        }
      }
      const local: LocalStats = {
        ...(stats.connectionsActive !== undefined ? { connectionsActive: e.attachment ? stats.connectionsActive : 0 } : {}),
        ...(stats.setupFailures !== undefined ? { setupFailures: stats.setupFailures } : {}),
        ...(stats.memory !== undefined && e.attachment ? { memory: stats.memory } : {}),
        ...(stats.transformFailures !== undefined ? { transformFailures: stats.transformFailures } : {}),
        ...(stats.targetTransformFailures !== undefined ? { targetTransformFailures: stats.targetTransformFailures } : {}),
        ...(stats.captures !== undefined ? { captures: stats.captures } : {}),
      };
      out.push({
        report: {
          name: e.name,
          generation: e.generation,
          attached: e.attachment !== undefined,
          ...(problem ? { problem } : {}),
          connections: stats.connections,
          bytesPrimary: stats.bytesPrimary,
          bytesMirrored: stats.bytesMirrored,
          bytesDropped: stats.bytesDropped,
          ...(stats.connectionsReset !== undefined ? { connectionsReset: stats.connectionsReset } : {}),
          targets: stats.targets.map((t: TargetCounters) => ({ ...t })),
        },
        local,
      });
    }
    return out;
  }
}
