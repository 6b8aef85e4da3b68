// Runs a process as if in a pod, for tests and benchmarks on this machine (root): KUBERNETES_SERVICE_HOST/PORT
// name the apiserver, and /var/run/secrets/kubernetes.io/serviceaccount holds a token and ca.crt, in a
// private mount namespace (a tmpfs over /run, gone with the process): the process reads its credentials
// from the real in-cluster paths, nothing on the host changes.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface PodCommand {
  command: string;
  args: string[];
  /** The environment to spawn it with: `env` without KUBECONFIG, HOME without ~/.kube, the service variables. */
  env: Record<string, string>;
  /** Where token and ca.crt were written (the caller removes it). */
  dir: string;
}

export function podCommand(opts: { server: string; token: string; caPem: string; argv: string[]; env?: Record<string, string | undefined> }): PodCommand {
  const dir = mkdtempSync(join(tmpdir(), 'kstreams-pod-'));
  writeFileSync(join(dir, 'token'), opts.token);
  writeFileSync(join(dir, 'ca.crt'), opts.caPem);
  const url = new URL(opts.server);
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(opts.env ?? process.env)) if (v !== undefined && k !== 'KUBECONFIG') env[k] = v;
  Object.assign(env, { HOME: dir, KUBERNETES_SERVICE_HOST: url.hostname.replace(/^\[|\]$/g, ''), KUBERNETES_SERVICE_PORT: url.port || '443' });
  const script =
    'd=$1; shift; mount -t tmpfs -o size=1m,mode=755 kstreams-pod /run && ' +
    'mkdir -p /run/secrets/kubernetes.io/serviceaccount && cp "$d/token" "$d/ca.crt" /run/secrets/kubernetes.io/serviceaccount/ && exec "$@"';
  // unshare and sh exec: the spawned pid is the process's own (its /proc/PID/status is what is measured).
  return { command: 'unshare', args: ['--mount', '--propagation', 'private', '--', 'sh', '-c', script, 'sh', dir, ...opts.argv], env, dir };
}
