// Lease-based leader election (coordination.k8s.io/v1), as client-go does it:
//  - a candidate takes the Lease when it is free, released, or not renewed for leaseDuration as measured
//    on the candidate's own clock since it last saw the record change (no trust in other nodes' clocks);
//  - the leader renews every retryPeriod; when it could not renew for renewDeadline (< leaseDuration) it
//    stops leading at once, before any other replica may take over;
//  - writes use the Lease's resourceVersion, so two candidates can never both win the same round;
//  - on shutdown the leader releases the Lease (empty holder), so a follower takes over without waiting.
import type { V1Lease } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { isAbortError, type Clock } from '../clock.js';
import { isStatus, type KubeTransport } from '../kube/rest.js';

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

  constructor(private readonly o: LeaderElectionOptions) {
    this.path = `/apis/coordination.k8s.io/v1/namespaces/${encodeURIComponent(o.namespace)}/leases`;
  }

  get isLeader(): boolean {
    return this.leading;
  }

  /** Campaigns until `signal` aborts; returns after leadership (if held) has been released. */
  async run(signal: AbortSignal): Promise<void> {
    const { clock, retryPeriodMs, renewDeadlineMs, log } = this.o;
    while (!signal.aborted) {
      let ok = false;
      try {
        ok = await this.tryAcquireOrRenew();
      } catch (err) {
        log.warn({ err, lease: `${this.o.namespace}/${this.o.name}` }, 'leader election: could not read or write the Lease');
      }
      if (signal.aborted) break;
      const now = clock.now();
      if (ok) {
        this.lastRenew = now;
        if (!this.leading) this.startLeading();
      } else if (this.leading && now - this.lastRenew >= renewDeadlineMs) {
        log.error({ lease: this.o.name, sinceRenewMs: now - this.lastRenew }, 'leader election: renew deadline passed, stopping leading');
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

  private observe(lease: V1Lease): void {
    const spec = lease.spec ?? {};
    const record = `${spec.holderIdentity ?? ''}|${String(spec.renewTime ?? '')}|${spec.leaseDurationSeconds ?? ''}`;
    if (record !== this.observedRecord) {
      this.observedRecord = record;
      this.observedAt = this.o.clock.now();
    }
    this.lease = lease;
    const holder = spec.holderIdentity ?? '';
    if (holder && holder !== this.lastObservedLeader) {
      this.lastObservedLeader = holder;
      this.o.onNewLeader?.(holder);
    }
  }

  private async tryAcquireOrRenew(): Promise<boolean> {
    const { transport, clock, identity, leaseDurationMs } = this.o;
    const now = clock.now();
    const durationSeconds = Math.max(1, Math.ceil(leaseDurationMs / 1000));
    let existing: V1Lease;
    try {
      existing = await transport.request<V1Lease>('GET', `${this.path}/${encodeURIComponent(this.o.name)}`);
    } catch (err) {
      if (!isStatus(err, 404)) throw err;
      const fresh: V1Lease = {
        apiVersion: 'coordination.k8s.io/v1',
        kind: 'Lease',
        metadata: { name: this.o.name, namespace: this.o.namespace },
        spec: {
          holderIdentity: identity,
          leaseDurationSeconds: durationSeconds,
          acquireTime: microTime(now) as unknown as Date,
          renewTime: microTime(now) as unknown as Date,
          leaseTransitions: 0,
        },
      };
      try {
        const created = await transport.request<V1Lease>('POST', this.path, { body: fresh });
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
    if (heldByOther && this.observedAt + otherDurationMs > now) return false;

    const updated: V1Lease = {
      ...existing,
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
      const written = await transport.request<V1Lease>('PUT', `${this.path}/${encodeURIComponent(this.o.name)}`, { body: updated });
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
