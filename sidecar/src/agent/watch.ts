// One watched resource kind: client-node's ListWatch (list, then watch from the list's resourceVersion,
// relist on 410 Gone) plus what it lacks: it stops for good on any other error, so we restart it with
// jittered backoff. Consumers do not react to single events; they re-read the cache (level-triggered), so
// an event lost across a restart costs nothing.
import { ListWatch, Watch, type KubeConfig, type KubernetesListObject, type KubernetesObject } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { Backoff } from '../../../operator/src/kube/backoff.js';
import { formatApiError } from '../../../operator/src/kube/errors.js';

/** Lifecycle of a watch, as counted in metrics. */
export type WatchLifecycle = 'listed' | 'connected' | 'added' | 'updated' | 'deleted' | 'error' | 'restart';

export interface Timers {
  setTimeout(fn: () => void, ms: number): { unref?: () => unknown } | unknown;
  clearTimeout(handle: unknown): void;
}

export const realTimers: Timers = {
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

export interface ResourceWatchOptions<T extends KubernetesObject> {
  /** Short name for logs and metrics, e.g. "streampaths". */
  resource: string;
  kubeConfig: KubeConfig;
  /** API path of the collection, e.g. /api/v1/namespaces/ns/pods. */
  path: string;
  list: () => Promise<KubernetesListObject<T>>;
  fieldSelector?: string;
  /** Something in the cache may have changed. */
  onChange: () => void;
  onLifecycle?: (event: WatchLifecycle) => void;
  logger: Logger;
  backoff?: Backoff;
  timers?: Timers;
}

export class ResourceWatch<T extends KubernetesObject> {
  private readonly lw: ListWatch<T>;
  private readonly backoff: Backoff;
  private readonly timers: Timers;
  private restartTimer: unknown;
  private stopped = false;
  /** The first list has come back: the cache holds the world, not an empty guess. */
  synced = false;

  constructor(private readonly opts: ResourceWatchOptions<T>) {
    this.backoff = opts.backoff ?? new Backoff({ initialMs: 500, maxMs: 30_000 });
    this.timers = opts.timers ?? realTimers;
    const list = async () => {
      const result = await opts.list();
      // The ListWatch fills its cache synchronously after this resolves; tell the consumer afterwards.
      setImmediate(() => {
        if (this.stopped) return;
        this.synced = true;
        this.backoff.reset();
        this.lifecycle('listed');
        opts.onChange();
      });
      return result;
    };
    this.lw = new ListWatch<T>(opts.path, new Watch(opts.kubeConfig), list, false, undefined, opts.fieldSelector);
    this.lw.on('connect', () => this.lifecycle('connected'));
    for (const verb of ['add', 'update', 'delete'] as const) {
      this.lw.on(verb, () => {
        this.backoff.reset();
        this.lifecycle(verb === 'add' ? 'added' : verb === 'update' ? 'updated' : 'deleted');
        opts.onChange();
      });
    }
    this.lw.on('error', (err) => this.onError(err));
  }

  private lifecycle(e: WatchLifecycle): void {
    this.opts.onLifecycle?.(e);
  }

  private onError(err: unknown): void {
    this.lifecycle('error');
    if (this.stopped) return;
    const delay = this.backoff.next();
    this.opts.logger.warn(
      { resource: this.opts.resource, err: formatApiError(err, { verb: 'watch', object: this.opts.resource }), retryInMs: delay },
      'watch failed; restarting',
    );
    this.restartTimer = this.timers.setTimeout(() => {
      this.restartTimer = undefined;
      if (this.stopped) return;
      this.lifecycle('restart');
      this.lw.start().catch((e: unknown) => this.onError(e));
    }, delay);
  }

  start(): void {
    this.stopped = false;
    this.lw.start().catch((e: unknown) => this.onError(e));
  }

  stop(): void {
    this.stopped = true;
    if (this.restartTimer !== undefined) this.timers.clearTimeout(this.restartTimer);
    this.restartTimer = undefined;
    void this.lw.stop();
  }

  list(): readonly T[] {
    return this.lw.list();
  }
}
