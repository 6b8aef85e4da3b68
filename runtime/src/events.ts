// Kubernetes Events (core/v1) on the objects the operator manages, deduplicated: the same message for the
// same object is not repeated within a window, so a flapping reconcile cannot flood `kubectl describe`.
import { randomBytes } from 'node:crypto';
import { formatTime, type Clock } from './clock.js';
import type { KubeTransport } from './rest.js';

export interface InvolvedObject {
  apiVersion: string;
  kind: string;
  name: string;
  namespace: string;
  uid: string;
  resourceVersion?: string;
}

export type EventType = 'Normal' | 'Warning';

export interface EventRecorderOptions {
  transport: KubeTransport;
  clock: Clock;
  component: string;
  /** Reporting instance (the replica's identity). */
  instance: string;
  dedupeWindowMs?: number;
  /** Entries kept for dedupe; the oldest are forgotten first. */
  maxEntries?: number;
  onEmit?: (type: EventType) => void;
  onError?: (err: unknown) => void;
}

export class EventRecorder {
  private readonly recent = new Map<string, number>();

  constructor(private readonly opts: EventRecorderOptions) {}

  async record(obj: InvolvedObject, type: EventType, reason: string, message: string): Promise<boolean> {
    const now = this.opts.clock.now();
    const key = `${obj.uid}\u0000${type}\u0000${reason}\u0000${message}`;
    const last = this.recent.get(key);
    if (last !== undefined && now - last < (this.opts.dedupeWindowMs ?? 10 * 60_000)) return false;
    this.recent.delete(key);
    this.recent.set(key, now);
    const max = this.opts.maxEntries ?? 10_000;
    while (this.recent.size > max) this.recent.delete(this.recent.keys().next().value!);
    const time = formatTime(now);
    const event = {
      apiVersion: 'v1',
      kind: 'Event',
      metadata: { name: `${obj.name}.${randomBytes(8).toString('hex')}`, namespace: obj.namespace },
      involvedObject: obj,
      type,
      reason,
      message: message.slice(0, 1024),
      source: { component: this.opts.component },
      reportingComponent: this.opts.component,
      reportingInstance: this.opts.instance,
      firstTimestamp: time,
      lastTimestamp: time,
      count: 1,
    };
    try {
      await this.opts.transport.request('POST', `/api/v1/namespaces/${encodeURIComponent(obj.namespace)}/events`, { body: event });
      this.opts.onEmit?.(type);
      return true;
    } catch (err) {
      // An Event is best effort: losing one must not fail the reconcile that produced it.
      this.recent.delete(key);
      this.opts.onError?.(err);
      return false;
    }
  }
}
