// The watch layer: list + watch one resource type into a local cache, and own every reconnect.
//  - a watch that the server closes normally (timeout) is resumed from the last resourceVersion seen;
//  - 410 Gone (the resourceVersion fell out of the apiserver's window) relists, after backoff with jitter;
//  - any other failure backs off with jitter, then resumes (or relists when no resourceVersion is known);
//  - every resyncPeriodMs the handlers' resync() runs, so level-triggered consumers re-check everything;
//  - a watch that delivers nothing (no event, no bookmark) for idleTimeoutMs is taken for a silently dead
//    connection (no FIN, no RST: a NAT or proxy dropped it), aborted, and the cache relisted;
//  - a handler (or transform) that throws is logged and counted, and the watch goes on with the next event:
//    one bad object or consumer bug never freezes the cache.
// Objects are passed through transform() before they are kept: the operator keeps only the fields it
// reads (a slim pod is a few hundred bytes instead of several KiB), which bounds memory at 10k pods.
import { isAbortError, type Clock } from './clock.js';
import type { Backoff } from './backoff.js';
import { ApiError, type KubeTransport, type WatchEvent } from './rest.js';

/** Lifecycle of an informer, as an enum so that metrics and logs hook in without string guessing. */
export enum InformerLifecycle {
  ListStarted = 'list_started',
  Listed = 'listed',
  WatchStarted = 'watch_started',
  /** The server ended the watch normally; it is resumed from the last resourceVersion. */
  WatchClosed = 'watch_closed',
  /** 410 Gone: the cache is rebuilt by a relist. */
  Expired = 'expired',
  /** A list or watch failed; retried after a backoff delay. */
  Failed = 'failed',
  Resync = 'resync',
  Stopped = 'stopped',
  /** No event or bookmark for idleTimeoutMs: the connection is abandoned and the cache relisted. */
  IdleTimeout = 'idle_timeout',
  /** A handler or the transform threw on one object; the event was skipped for it, the watch goes on. */
  HandlerFailed = 'handler_failed',
}

export interface LifecycleDetail {
  error?: unknown;
  /** Backoff delay before the next attempt (Expired, Failed). */
  delayMs?: number;
  /** Objects in the cache (Listed). */
  count?: number;
  /** Which handler threw (HandlerFailed): add, update, delete, resync or transform. */
  handler?: string;
}

export interface InformerHandlers<T> {
  add?(obj: T): void;
  update?(old: T, obj: T): void;
  delete?(obj: T): void;
  /** Periodic resync: consumers re-enqueue what they own. */
  resync?(): void;
}

export interface InformerOptions<T> {
  /** Resource name for logs and metrics, e.g. "pods". */
  name: string;
  transport: KubeTransport;
  /** Collection path, e.g. /api/v1/pods. */
  path: string;
  labelSelector?: string;
  /** e.g. `metadata.name=kstreams-sidecar`: RBAC can then limit list/watch to that name (resourceNames). */
  fieldSelector?: string;
  /**
   * Replaces the paged list of `path`: the objects (raw) and the resourceVersion to watch from. For one object
   * read by name where RBAC grants get and watch on that name but not list (the webhook's TLS Secret).
   */
  list?: (signal: AbortSignal) => Promise<{ items: Record<string, unknown>[]; resourceVersion?: string }>;
  /** Keeps what the operator needs of a raw object. */
  transform: (raw: Record<string, unknown>) => T;
  key: (obj: T) => string;
  /** When true for (old, new), an update is not passed on (e.g. a pod status change the operator ignores). */
  equal?: (a: T, b: T) => boolean;
  clock: Clock;
  backoff: Backoff;
  resyncPeriodMs: number;
  pageSize?: number;
  /** Server-side watch timeout, randomised so that informers do not reconnect together. */
  watchTimeoutSeconds?: () => number;
  /**
   * A watch silent (no event, no bookmark) for this long is abandoned and the cache relisted. Default: the
   * watch's server-side timeout plus 30 s, after which the apiserver would have closed a live watch anyway.
   */
  idleTimeoutMs?: number;
  onLifecycle?: (event: InformerLifecycle, detail: LifecycleDetail) => void;
}

export class WatchIdleError extends Error {
  constructor(name: string, idleMs: number) {
    super(`${name}: watch silent for ${idleMs} ms (no event, no bookmark, not closed by the server): connection taken for dead, relisting`);
    this.name = 'WatchIdleError';
  }
}

export class GoneError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'GoneError';
  }
}

interface Meta {
  resourceVersion?: string;
}

export class Informer<T> {
  private readonly store = new Map<string, T>();
  private resourceVersion: string | undefined;
  private readonly handlers: InformerHandlers<T>[] = [];
  private abort = new AbortController();
  private loops: Promise<void>[] = [];
  private syncedResolve!: () => void;
  private readonly syncedPromise: Promise<void>;
  private syncedFlag = false;

  constructor(private readonly opts: InformerOptions<T>) {
    this.syncedPromise = new Promise((r) => (this.syncedResolve = r));
  }

  on(handlers: InformerHandlers<T>): void {
    this.handlers.push(handlers);
  }

  get(key: string): T | undefined {
    return this.store.get(key);
  }

  list(): IterableIterator<T> {
    return this.store.values();
  }

  /**
   * Puts an object the caller just wrote into the cache without notifying handlers (write-through), so that
   * reads before the watch event arrives see it. The watch event then replaces it as usual.
   */
  upsertLocal(obj: T): void {
    this.store.set(this.opts.key(obj), obj);
  }

  /** Drops an object the caller just deleted (write-through), without notifying handlers. */
  deleteLocal(key: string): void {
    this.store.delete(key);
  }

  get size(): number {
    return this.store.size;
  }

  get synced(): boolean {
    return this.syncedFlag;
  }

  /** Resolves after the first complete list has been delivered to the handlers. */
  whenSynced(): Promise<void> {
    return this.syncedPromise;
  }

  start(): void {
    this.abort = new AbortController();
    this.loops = [this.runWatchLoop(this.abort.signal), this.runResyncLoop(this.abort.signal)];
  }

  async stop(): Promise<void> {
    this.abort.abort();
    await Promise.allSettled(this.loops);
    this.loops = [];
    this.emit(InformerLifecycle.Stopped, {});
  }

  private emit(event: InformerLifecycle, detail: LifecycleDetail): void {
    this.opts.onLifecycle?.(event, detail);
  }

  private async runWatchLoop(signal: AbortSignal): Promise<void> {
    const { clock, backoff } = this.opts;
    while (!signal.aborted) {
      try {
        if (this.resourceVersion === undefined) await this.relist(signal);
        const sawEvents = await this.watchOnce(signal);
        if (signal.aborted) break;
        this.emit(InformerLifecycle.WatchClosed, {});
        // A watch that delivered events proves the connection is healthy; one that closed at once without
        // any may be a misbehaving proxy, so it keeps the backoff growing instead of spinning.
        if (sawEvents) backoff.reset();
        else await clock.sleep(backoff.next(), signal);
      } catch (err) {
        if (signal.aborted || isAbortError(err)) break;
        const delayMs = backoff.next();
        if (err instanceof GoneError || (err instanceof ApiError && err.statusCode === 410)) {
          this.resourceVersion = undefined;
          this.emit(InformerLifecycle.Expired, { error: err, delayMs });
        } else if (err instanceof WatchIdleError) {
          this.resourceVersion = undefined;
          this.emit(InformerLifecycle.IdleTimeout, { error: err, delayMs });
        } else {
          this.emit(InformerLifecycle.Failed, { error: err, delayMs });
        }
        try {
          await clock.sleep(delayMs, signal);
        } catch {
          break;
        }
      }
    }
  }

  private async runResyncLoop(signal: AbortSignal): Promise<void> {
    const { clock, resyncPeriodMs } = this.opts;
    for (;;) {
      try {
        await clock.sleep(resyncPeriodMs, signal);
      } catch {
        return;
      }
      if (!this.syncedFlag) continue;
      this.emit(InformerLifecycle.Resync, { count: this.store.size });
      for (const h of this.handlers) this.call('resync', () => h.resync?.());
    }
  }

  private async relist(signal: AbortSignal): Promise<void> {
    this.emit(InformerLifecycle.ListStarted, {});
    const { transport, path, transform, key, pageSize = 500 } = this.opts;
    const fresh = new Map<string, T>();
    let cont: string | undefined;
    let listRv: string | undefined;
    const keep = (raw: Record<string, unknown>) => {
      let obj: T;
      try {
        obj = transform(raw);
      } catch (error) {
        this.emit(InformerLifecycle.HandlerFailed, { error, handler: 'transform' });
        return;
      }
      fresh.set(key(obj), obj);
    };
    if (this.opts.list) {
      const got = await this.opts.list(signal);
      if (signal.aborted) return;
      listRv = got.resourceVersion;
      for (const raw of got.items) keep(raw);
    } else do {
      const q = new URLSearchParams({ limit: String(pageSize) });
      if (cont) q.set('continue', cont);
      if (this.opts.labelSelector) q.set('labelSelector', this.opts.labelSelector);
      if (this.opts.fieldSelector) q.set('fieldSelector', this.opts.fieldSelector);
      const page = await transport.request<{ metadata?: { resourceVersion?: string; continue?: string }; items?: Record<string, unknown>[] }>(
        'GET',
        `${path}?${q.toString()}`,
        { signal },
      );
      if (signal.aborted) return;
      listRv ??= page.metadata?.resourceVersion;
      for (const raw of page.items ?? []) keep(raw);
      cont = page.metadata?.continue || undefined;
    } while (cont);
    // Deliver the difference between the old cache and the new list, so that consumers see deletes that
    // happened while the watch was down.
    for (const [k, old] of this.store) {
      if (!fresh.has(k)) {
        this.store.delete(k);
        for (const h of this.handlers) this.call('delete', () => h.delete?.(old));
      }
    }
    for (const [k, obj] of fresh) {
      const old = this.store.get(k);
      this.store.set(k, obj);
      if (old === undefined) for (const h of this.handlers) this.call('add', () => h.add?.(obj));
      else if (!this.opts.equal?.(old, obj)) for (const h of this.handlers) this.call('update', () => h.update?.(old, obj));
    }
    this.resourceVersion = listRv;
    this.emit(InformerLifecycle.Listed, { count: this.store.size });
    if (!this.syncedFlag) {
      this.syncedFlag = true;
      this.syncedResolve();
    }
  }

  /** One watch connection; resolves when the server closes it, true when it delivered any event. */
  private async watchOnce(signal: AbortSignal): Promise<boolean> {
    const timeoutSeconds = this.opts.watchTimeoutSeconds?.() ?? 300 + Math.floor(Math.random() * 300);
    const query: Record<string, string> = {
      resourceVersion: this.resourceVersion ?? '',
      allowWatchBookmarks: 'true',
      timeoutSeconds: String(timeoutSeconds),
    };
    if (this.opts.labelSelector) query.labelSelector = this.opts.labelSelector;
    if (this.opts.fieldSelector) query.fieldSelector = this.opts.fieldSelector;
    this.emit(InformerLifecycle.WatchStarted, {});
    let sawEvents = false;
    let failure: Error | undefined;
    // This connection's own abort: the informer stopping, a watch ERROR event, or the idle timer.
    const conn = new AbortController();
    const onStop = () => conn.abort();
    signal.addEventListener('abort', onStop, { once: true });
    const idleMs = this.opts.idleTimeoutMs ?? timeoutSeconds * 1000 + 30_000;
    let idleTimer = new AbortController();
    const armIdle = () => {
      idleTimer.abort();
      idleTimer = new AbortController();
      const mine = idleTimer;
      this.opts.clock.sleep(idleMs, mine.signal).then(
        () => {
          if (mine.signal.aborted || conn.signal.aborted) return;
          failure ??= new WatchIdleError(this.opts.name, idleMs);
          conn.abort();
        },
        () => {},
      );
    };
    armIdle();
    try {
      await this.opts.transport.watch(
        this.opts.path,
        query,
        (e) => {
          if (failure) return;
          sawEvents = true;
          armIdle();
          try {
            this.apply(e);
          } catch (err) {
            // Only the watch's own ERROR events end the connection (410 relists, others reconnect).
            failure = err as Error;
            conn.abort();
          }
        },
        conn.signal,
      );
    } catch (err) {
      if (!failure) throw err;
    } finally {
      idleTimer.abort();
      signal.removeEventListener('abort', onStop);
    }
    if (failure) throw failure;
    return sawEvents;
  }

  /** Calls one handler; a throw is reported and counted, never passed up into the watch. */
  private call(what: string, fn: () => void): void {
    try {
      fn();
    } catch (error) {
      this.emit(InformerLifecycle.HandlerFailed, { error, handler: what });
    }
  }

  private apply(e: WatchEvent): void {
    const rv = (e.object.metadata as Meta | undefined)?.resourceVersion;
    if (e.type === 'ERROR') {
      const status = e.object as { code?: number; message?: string };
      if (status.code === 410) throw new GoneError(`${this.opts.name}: ${status.message ?? 'resource version too old'}`);
      throw new Error(`${this.opts.name}: watch error ${status.code ?? '?'}: ${status.message ?? JSON.stringify(status)}`);
    }
    if (e.type === 'BOOKMARK') {
      if (rv) this.resourceVersion = rv;
      return;
    }
    let obj: T;
    try {
      obj = this.opts.transform(e.object);
    } catch (error) {
      // An object the transform cannot read is skipped; the resourceVersion still moves past it.
      this.emit(InformerLifecycle.HandlerFailed, { error, handler: 'transform' });
      if (rv) this.resourceVersion = rv;
      return;
    }
    const k = this.opts.key(obj);
    const old = this.store.get(k);
    if (e.type === 'DELETED') {
      this.store.delete(k);
      if (old !== undefined) for (const h of this.handlers) this.call('delete', () => h.delete?.(obj));
    } else {
      this.store.set(k, obj);
      if (old === undefined) for (const h of this.handlers) this.call('add', () => h.add?.(obj));
      else if (!this.opts.equal?.(old, obj)) for (const h of this.handlers) this.call('update', () => h.update?.(old, obj));
    }
    if (rv) this.resourceVersion = rv;
  }
}
