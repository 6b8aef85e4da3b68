// Network namespaces of the transform bench and its correctness test: the project's Netns (named
// ks-b1-<what>-<pid>-<n>, removed by destroy() and at process exit) with the bench's listening ports
// reserved in it, and a veth pair from the root namespace into one (sidecar/src/netns.ts's link()).
import { link, Netns } from '../../sidecar/src/netns.js';

/** The listening ports of the transform bench and its tests. */
export const BENCH_PORTS = '47300-47399';

export type XformNetns = Netns;

export interface Veth {
  /** Address of the root namespace's end. */
  rootAddress: string;
  /** Address of the namespace's end. */
  nsAddress: string;
}

/**
 * A namespace with lo up and the ports the bench listens on (47300-47399, inside the ephemeral range)
 * reserved in it, so that no client socket of a run takes one a later server binds.
 */
export function benchNetns(tag: string): XformNetns {
  const ns = Netns.create(`b1-${tag}`);
  try {
    ns.run('sysctl', ['-q', '-w', `net.ipv4.ip_local_reserved_ports=${BENCH_PORTS}`]);
  } catch (err) {
    void ns.destroy();
    throw err;
  }
  return ns;
}

/** A veth pair between the root namespace and `ns`; deleting the namespace deletes the pair. */
export function vethTo(ns: XformNetns): Veth {
  const l = link(undefined, ns);
  return { rootAddress: l.aAddress, nsAddress: l.bAddress };
}
