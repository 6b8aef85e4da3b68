// The in-cluster credentials of a pod, as client-go's rest.InClusterConfig reads them: the apiserver at
// https://KUBERNETES_SERVICE_HOST:KUBERNETES_SERVICE_PORT (an IPv6 address in brackets), the ServiceAccount's
// token and CA from /var/run/secrets/kubernetes.io/serviceaccount. The token is a projected one that the
// kubelet rewrites well before it expires (every hour or so by default): it is read again on each call of
// headers(), and a read that fails keeps the last token (client-go's cached token file source does both).
// No @kubernetes/client-node here: a pod's operator never loads it (rest.ts).
import { readFileSync } from 'node:fs';
import { X509Certificate } from 'node:crypto';
import type { RequestOptions } from 'node:https';
import { join } from 'node:path';

export const SERVICEACCOUNT_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';

/** What a transport needs to reach and authenticate to the apiserver. */
export interface KubeCredentials {
  /** https://host:port */
  server: string;
  tls: Pick<RequestOptions, 'ca' | 'cert' | 'key' | 'rejectUnauthorized' | 'servername'>;
  /** The auth headers to send now (called again when they may have changed, at most about once a minute). */
  headers(): Promise<Record<string, string>>;
  /** What was wrong but not fatal (a ca.crt that could not be read), for the caller to log. */
  warnings?: string[];
}

/** client-go's ErrNotInCluster, word for word, with where else credentials could have come from. */
export class NotInClusterError extends Error {
  constructor() {
    super(
      'unable to load in-cluster configuration, KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be defined ' +
        '(and no kubeconfig: none given, KUBECONFIG unset, no ~/.kube/config)',
    );
    this.name = 'NotInClusterError';
  }
}

/** host:port for a URL: an IPv6 address in brackets (Go's net.JoinHostPort); one already in brackets is kept. */
export function joinHostPort(host: string, port: string): string {
  const bare = host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
  return bare.includes(':') ? `[${bare}]:${port}` : `${bare}:${port}`;
}

function readToken(file: string): string {
  const token = readFileSync(file, 'utf8').trim();
  if (!token) throw new Error(`read empty token from file ${JSON.stringify(file)}`);
  return token;
}

/**
 * The credentials of the pod this process runs in. Throws NotInClusterError without the two variables, and
 * the read error when the token cannot be read (as InClusterConfig does). A ca.crt that is missing or not a
 * certificate is reported in `warnings` and the system's roots are used instead (InClusterConfig logs it and
 * goes on); the apiserver's certificate then fails to verify with a TLS error naming the CA.
 */
export function inClusterCredentials(
  env: Record<string, string | undefined>,
  dir: string = SERVICEACCOUNT_DIR,
): KubeCredentials {
  const host = env.KUBERNETES_SERVICE_HOST;
  const port = env.KUBERNETES_SERVICE_PORT;
  if (!host || !port) throw new NotInClusterError();
  const tokenFile = join(dir, 'token');
  const caFile = join(dir, 'ca.crt');
  let token = readToken(tokenFile);
  const warnings: string[] = [];
  let ca: string | undefined;
  try {
    const pem = readFileSync(caFile, 'utf8');
    new X509Certificate(pem); // throws when it holds no certificate
    ca = pem;
  } catch (err) {
    warnings.push(`expected to load root CA config from ${caFile}, but got err: ${(err as Error).message}; using the system's roots`);
  }
  let first = true;
  return {
    server: `https://${joinHostPort(host, port)}`,
    tls: ca === undefined ? {} : { ca },
    warnings,
    headers: async () => {
      if (!first) {
        try {
          token = readToken(tokenFile);
        } catch {
          // Keep the last token: the kubelet may be replacing the file; the next call reads it again.
        }
      }
      first = false;
      return { Authorization: `Bearer ${token}` };
    },
  };
}
