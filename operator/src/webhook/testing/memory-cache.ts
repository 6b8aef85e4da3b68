// A WatchedCache (server.ts) held in memory, for server tests: set/delete notify the handlers as an
// Informer's watch events would, markSynced as its first list would.
import type { WatchedCache } from '../server.js';

export class MemoryCache<T extends { name: string }> implements WatchedCache<T> {
  private readonly items = new Map<string, T>();
  private readonly handlers: Parameters<WatchedCache<T>['on']>[0][] = [];
  private syncedFlag = false;
  private resolveSynced!: () => void;
  private readonly syncedPromise = new Promise<void>((r) => (this.resolveSynced = r));

  constructor(items: T[] = [], synced = false) {
    for (const i of items) this.items.set(i.name, i);
    if (synced) this.markSynced();
  }

  get(name: string): T | undefined {
    return this.items.get(name);
  }
  list(): Iterable<T> {
    return this.items.values();
  }
  get synced(): boolean {
    return this.syncedFlag;
  }
  whenSynced(): Promise<void> {
    return this.syncedPromise;
  }
  on(handlers: Parameters<WatchedCache<T>['on']>[0]): void {
    this.handlers.push(handlers);
  }
  markSynced(): void {
    this.syncedFlag = true;
    this.resolveSynced();
  }
  set(item: T): void {
    const old = this.items.get(item.name);
    this.items.set(item.name, item);
    for (const h of this.handlers) old ? h.update?.(old, item) : h.add?.(item);
  }
  delete(name: string): void {
    const old = this.items.get(name);
    if (!old) return;
    this.items.delete(name);
    for (const h of this.handlers) h.delete?.(old);
  }
  /** Replaces the whole content, as a relist would. */
  replace(items: T[]): void {
    for (const name of [...this.items.keys()]) if (!items.some((i) => i.name === name)) this.delete(name);
    for (const i of items) this.set(i);
  }
}
