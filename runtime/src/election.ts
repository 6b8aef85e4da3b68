// Lease-based leader election (coordination.k8s.io/v1), as client-go does it:
//  - a candidate takes the Lease when it is free, released, or not renewed for leaseDuration as measured
//    on the candidate's own monotonic clock since it last saw the record change (no trust in other nodes'
//    clocks, and no wall-clock step can shorten or stretch a wait);
//  - the leader renews every retryPeriod; renewDeadline (< leaseDuration) after the last renew that
//    succeeded (counted from when that request was sent) it stops leading, at that instant: the renew in
//    flight is aborted then, not when a hung connection finally times out, so leadership always ends before
//    any other replica can take over;
//  - writes use the Lease's resourceVersion, so two candidates can never both win the same round;
//  - on shutdown the leader releases the Lease (empty holder), so a follower takes over without waiting.
import type { V1Lease } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { isAbortError, type Clock } from './clock.js';
import { isStatus, type KubeTransport } from './rest.js';

export interface LeaderElectionOptions {
  transport: KubeTransport;
  clock: Clock;
  log: Logger;
  namespace: string;
  name: string;
  identity: string;
  leaseDurationMs: number;
  renewDeadlineMs: number;
  retryPeriodMs: number;
  /** Called when this replica becomes leader; `signal` aborts the moment leadership is lost. */
  onStartedLeading: (signal: AbortSignal) => void;
  /** Called when leadership is lost or released; must stop every leader-only activity. */
  onStoppedLeading: () => void;
  onNewLeader?: (identity: string) => void;
  /** Written on the Lease whenever this replica acquires or renews it (e.g. where agents find the leader). */
  annotations?: Record<string, string>;
  /** Monotonic milliseconds for every duration (default performance.now()); clock.now() only writes timestamps. */
  monotonic?: () => number;
}

/** MicroTime as the apiserver writes it: RFC 3339 with microseconds. */
export function microTime(ms: number): string {
  return new Date(ms).toISOString().replace(/\.(\d{3})Z$/, '.$1000Z');
}

export class LeaderElector {
  private observedRecord = '';
  private observedAt = 0;
  private lease: V1Lease | undefined;
  private leading = false;
  private leaderAbort: AbortController | undefined;
  private lastRenew = 0;
  private readonly path: string;
  private lastObservedLeader = '';

  private readonly mono: () => number;

  constructor(private readonly o: LeaderElectionOptions) {
    this.path = `/apis/coordination.k8s.io/v1/namespaces/${encodeURIComponent(o.namespace)}/leases`;
    this.mono = o.monotonic ?? (() => performance.now());
  }

  get isLeader(): boolean {
    return this.leading;
  }

  /** Campaigns until `signal` aborts; returns after leadership (if held) has been released. */
  async run(signal: AbortSignal): Promise<void> {
    const { clock, retryPeriodMs, renewDeadlineMs, log } = this.o;
    while (!signal.aborted) {
      let ok = false;
      const attempt = new AbortController();
      const onStop = () => attempt.abort();
      signal.addEventListener('abort', onStop, { once: true });
      // While leading, the renew deadline is a timer of its own: when it passes, leadership ends and the
      // request in flight is aborted, whatever the connection does.
      const deadlineTimer = new AbortController();
      if (this.leading) {
        const remaining = this.lastRenew + renewDeadlineMs - this.mono();
        clock.sleep(Math.max(0, remaining), deadlineTimer.signal).then(
          () => {
            if (!this.leading) return;
            log.error({ lease: this.o.name, sinceRenewMs: Math.round(this.mono() - this.lastRenew) }, 'leader election: renew deadline passed, stopping leading');
            attempt.abort(new Error('renew deadline passed'));
            this.stopLeading();
          },
          () => {},
        );
      }
      const sentAt = this.mono();
      try {
        // A follower's attempt is bounded too: a hung request must not stall the campaign.
        ok = await this.tryAcquireOrRenew(attempt.signal, this.leading ? renewDeadlineMs : Math.max(retryPeriodMs, renewDeadlineMs));
      } catch (err) {
        if (!attempt.signal.aborted) log.warn({ err, lease: `${this.o.namespace}/${this.o.name}` }, 'leader election: could not read or write the Lease');
      } finally {
        deadlineTimer.abort();
        signal.removeEventListener('abort', onStop);
      }
      if (signal.aborted) break;
      if (ok) {
        // Counted from when the request was sent: the apiserver wrote the renewal after that, so every other
        // candidate's wait began after it too.
        this.lastRenew = sentAt;
        if (!this.leading) this.startLeading();
      } else if (this.leading && this.mono() - this.lastRenew >= renewDeadlineMs) {
        log.error({ lease: this.o.name, sinceRenewMs: Math.round(this.mono() - this.lastRenew) }, 'leader election: renew deadline passed, stopping leading');
        this.stopLeading();
      } else if (this.leading && this.lease?.spec?.holderIdentity && this.lease.spec.holderIdentity !== this.o.identity) {
        log.error({ holder: this.lease.spec.holderIdentity }, 'leader election: another replica holds the Lease, stopping leading');
        this.stopLeading();
      }
      try {
        // A leader renews at the retry period; a follower retries at the same pace with a little jitter so
        // that followers do not hit the apiserver together.
        const jitter = this.leading ? 0 : Math.floor(Math.random() * retryPeriodMs * 0.2);
        await clock.sleep(retryPeriodMs + jitter, signal);
      } catch (err) {
        if (!isAbortError(err)) throw err;
      }
    }
    await this.release();
  }

  private startLeading(): void {
    this.leading = true;
    this.leaderAbort = new AbortController();
    this.o.log.info({ identity: this.o.identity, lease: `${this.o.namespace}/${this.o.name}` }, 'leader election: became leader');
    this.o.onStartedLeading(this.leaderAbort.signal);
  }

  private stopLeading(): void {
    if (!this.leading) return;
    this.leading = false;
    this.leaderAbort?.abort();
    this.o.onStoppedLeading();
  }

  /**
   * The holder of the Lease as last seen and its annotations; identity '' when nobody holds it, or when the
   * holder has not renewed for its lease duration (it is gone; a successor is about to take over).
   */
  observedLeader(): { identity: string; annotations: Record<string, string> } {
    const spec = this.lease?.spec;
    const durationMs = (spec?.leaseDurationSeconds ?? Math.ceil(this.o.leaseDurationMs / 1000)) * 1000;
    const alive = this.observedAt + durationMs > this.mono();
    return { identity: alive ? (spec?.holderIdentity ?? '') : '', annotations: { ...this.lease?.metadata?.annotations } };
  }

  private observe(lease: V1Lease): void {
    const spec = lease.spec ?? {};
    const record = `${spec.holderIdentity ?? ''}|${String(spec.renewTime ?? '')}|${spec.leaseDurationSeconds ?? ''}`;
    if (record !== this.observedRecord) {
      this.observedRecord = record;
      this.observedAt = this.mono();
    }
    this.lease = lease;
    const holder = spec.holderIdentity ?? '';
    if (holder && holder !== this.lastObservedLeader) {
      this.lastObservedLeader = holder;
      this.o.onNewLeader?.(holder);
    }
  }

  private async tryAcquireOrRenew(signal: AbortSignal, timeoutMs: number): Promise<boolean> {
    const { transport, clock, identity, leaseDurationMs } = this.o;
    const now = clock.now();
    const opts = { signal, timeoutMs };
    const durationSeconds = Math.max(1, Math.ceil(leaseDurationMs / 1000));
    let existing: V1Lease;
    try {
      existing = await transport.request<V1Lease>('GET', `${this.path}/${encodeURIComponent(this.o.name)}`, opts);
    } catch (err) {
      if (!isStatus(err, 404)) throw err;
      const fresh: V1Lease = {
        apiVersion: 'coordination.k8s.io/v1',
        kind: 'Lease',
        metadata: { name: this.o.name, namespace: this.o.namespace, ...(this.o.annotations ? { annotations: { ...this.o.annotations } } : {}) },
        spec: {
          holderIdentity: identity,
          leaseDurationSeconds: durationSeconds,
          acquireTime: microTime(now) as unknown as Date,
          renewTime: microTime(now) as unknown as Date,
          leaseTransitions: 0,
        },
      };
      try {
        const created = await transport.request<V1Lease>('POST', this.path, { ...opts, body: fresh });
        this.observe(created);
        return true;
      } catch (e) {
        if (isStatus(e, 409)) return false; // another candidate created it first
        throw e;
      }
    }
    this.observe(existing);
    const spec = existing.spec ?? {};
    const holder = spec.holderIdentity ?? '';
    const heldByOther = holder !== '' && holder !== identity;
    const otherDurationMs = (spec.leaseDurationSeconds ?? durationSeconds) * 1000;
    if (heldByOther && this.observedAt + otherDurationMs > this.mono()) return false;
    if (signal.aborted) return false;

    const updated: V1Lease = {
      ...existing,
      ...(this.o.annotations ? { metadata: { ...existing.metadata, annotations: { ...existing.metadata?.annotations, ...this.o.annotations } } } : {}),
      spec: {
        ...spec,
        holderIdentity: identity,
        leaseDurationSeconds: durationSeconds,
        renewTime: microTime(now) as unknown as Date,
        acquireTime: (holder === identity ? spec.acquireTime : microTime(now)) as unknown as Date,
        leaseTransitions: (spec.leaseTransitions ?? 0) + (holder === identity ? 0 : 1),
      },
    };
    try {
      const written = await transport.request<V1Lease>('PUT', `${this.path}/${encodeURIComponent(this.o.name)}`, { ...opts, body: updated });
      this.observe(written);
      return true;
    } catch (err) {
      if (isStatus(err, 409)) return false; // lost the race for this round
      throw err;
    }
  }

  /** Gives the Lease up so a follower takes over at its next retry instead of after leaseDuration. */
  async release(): Promise<void> {
    const wasLeading = this.leading;
    this.stopLeading();
    if (!wasLeading || !this.lease) return;
    const spec = this.lease.spec ?? {};
    if (spec.holderIdentity !== this.o.identity) return;
    const released: V1Lease = {
      ...this.lease,
      spec: { ...spec, holderIdentity: '', leaseDurationSeconds: 1, renewTime: microTime(this.o.clock.now()) as unknown as Date },
    };
    try {
      await this.o.transport.request('PUT', `${this.path}/${encodeURIComponent(this.o.name)}`, { body: released, timeoutMs: 3_000 });
      this.o.log.info({ lease: this.o.name }, 'leader election: Lease released');
    } catch (err) {
      this.o.log.warn({ err }, 'leader election: could not release the Lease; followers take over after it expires');
    }
  }
}
