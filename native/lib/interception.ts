// Interception: an sk_lookup program on a pod's network namespace that steers new connections for one
// TCP port to the engine's listener, leaving connections from the bypass source to the app. The link is
// never pinned: it lives with this process's file descriptors, so if the process dies the kernel detaches
// it and the app's port works as if we had never been there (fail-open). See docs/adr/0001.
import { addon } from './addon.js';
import type { RawInterception as NativeInterception } from './raw.js';
import { DEFAULT_UPSTREAM_SOURCE_V4, sourcesPerFamily, type InterceptionConfig } from './types.js';

/** @deprecated the IPv4 half of DEFAULT_UPSTREAM_SOURCES, kept for existing imports. */
export const DEFAULT_BYPASS_SOURCE = DEFAULT_UPSTREAM_SOURCE_V4;

/** What the program did with lookups for the tapped port since attach (summed over CPUs). */
export interface InterceptionCounters {
  /** Assigned to the engine's listener. */
  steered: number;
  /** From the bypass source: delivered to the app by the normal lookup. */
  bypassed: number;
  /** The listener was gone (its socket closed): delivered to the app (fail-open). */
  noListener: number;
  /** The kernel refused the listener for that lookup (e.g. an IPv6 lookup and an IPv4-only listener). */
  assignFailed: number;
}


export class Interception {
  private handle: NativeInterception | undefined;

  private constructor(
    handle: NativeInterception,
    /** Kernel ids, as `bpftool link|prog|map show` list them. */
    readonly linkId: number,
    readonly programId: number,
    readonly mapIds: number[],
  ) {
    this.handle = handle;
  }

  /**
   * Loads the program for `config.port` and attaches it to the namespace. Throws a NativeError: ENOENT
   * (namespace not found), EBADF/ENOTSOCK/EKSTREAMS_NOT_LISTENER (listenerFd is not a listening TCP
   * socket), EKSTREAMS_LISTENER_NETNS (listener in another namespace), EPERM (missing CAP_BPF and
   * CAP_NET_ADMIN), EKSTREAMS_BPF_LOAD (the kernel refused the program; the libbpf log is in the message).
   */
  static attach(config: InterceptionConfig): Interception {
    const handle = new (addon().Interception)({
      netnsPath: config.netnsPath,
      port: config.port,
      listenerFd: config.listenerFd,
      bypassSources: sourcesPerFamily(config.bypassSource, config.bypassSources),
    });
    return new Interception(handle, handle.linkId, handle.programId, [...handle.mapIds]);
  }

  get attached(): boolean {
    return this.handle !== undefined;
  }

  /** Throws EKSTREAMS_DETACHED after detach(). */
  counters(): InterceptionCounters {
    if (!this.handle) {
      throw Object.assign(new Error('interception counters: the interception is detached'), {
        code: 'EKSTREAMS_DETACHED',
      });
    }
    return this.handle.counters();
  }

  /** Closes the link, program and map fds; the kernel then frees them. Idempotent. */
  detach(): void {
    this.handle?.detach();
    this.handle = undefined;
  }
}
