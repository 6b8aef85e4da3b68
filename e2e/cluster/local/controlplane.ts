// A real Kubernetes control plane on loopback for integration tests: etcd (Debian's etcd-server) and
// kube-apiserver 1.20 (built by scripts/install-kubernetes.sh), optionally kube-controller-manager and
// kube-scheduler. Everything lives in one temp dir that stop() removes; see docs/local-cluster.md.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { accessSync, constants, existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { cleanupStale, freePort, ProcessGroup, waitFor, type ManagedProcess } from './processes.js';

const execFileP = promisify(execFile);

export const KUBERNETES_VERSION = '1.20.2';
export const DEFAULT_BIN_DIR = `/var/cache/kstreams/kubernetes-${KUBERNETES_VERSION}/bin`;
const DIR_PREFIX = 'kstreams-cp-';

export interface ControlPlaneOptions {
  /** Directory holding kube-apiserver etc. Default: $KSTREAMS_K8S_BIN or DEFAULT_BIN_DIR. */
  binDir?: string;
  /** etcd binary. Default: $KSTREAMS_ETCD or `etcd` on PATH. */
  etcdBin?: string;
  /** Also run kube-controller-manager (default ServiceAccounts, namespace deletion, GC, ...). Default false. */
  controllerManager?: boolean;
  /** With controllerManager: wait until namespace `default` has its `default` ServiceAccount. Default true. */
  waitForServiceAccounts?: boolean;
  /** Also run kube-scheduler. Default false. */
  scheduler?: boolean;
  /** Parent of the temp dir. Default: $KSTREAMS_CLUSTER_TMP, else /dev/shm when present (etcd fsyncs), else os.tmpdir(). */
  tmpParent?: string;
  /** Address the apiserver binds to and advertises. Default 127.0.0.1. */
  bindAddress?: string;
  /** Serve the apiserver's /debug/pprof (benchmarks' profiles). Default false. */
  profiling?: boolean;
  /** Extra subjectAltNames for the serving certificate, e.g. ['IP:10.244.77.1']. */
  extraSANs?: string[];
  serviceClusterIPRange?: string;
  /** Extra kube-apiserver flags (`--name=value`). */
  extraApiServerArgs?: string[];
  /**
   * Audit-log every request made by a ServiceAccount (level Metadata: verb, resource, namespace, name, user,
   * status; no bodies) as JSON lines to `auditLogPath`, so a test can see what a component asked for under
   * its own RBAC. Nothing else is logged.
   */
  auditServiceAccounts?: boolean;
  readyTimeoutMs?: number;
  /** Progress lines. Default: silent unless $KSTREAMS_CLUSTER_DEBUG is set. */
  log?: (msg: string) => void;
  /** Keep the temp dir (logs, pki) after stop(), for debugging. Default: $KSTREAMS_CLUSTER_KEEP === '1'. */
  keepDir?: boolean;
}

export interface ControlPlaneTimings {
  /** Certificates and keys generated. */
  pkiMs: number;
  /** etcd answering /health. */
  etcdMs: number;
  /** kube-apiserver /readyz = ok (from its spawn). */
  apiServerMs: number;
  /** kube-controller-manager started and (when waited for) default ServiceAccount present. */
  controllerManagerMs?: number;
  /** From start() to ready, everything included. */
  totalMs: number;
}

export interface ControlPlane {
  /** kubeconfig (admin token, CA embedded) - usable by kubectl, helm and @kubernetes/client-node. */
  kubeconfigPath: string;
  /** https://127.0.0.1:<port> */
  server: string;
  /** Bearer token of an admin in system:masters. */
  token: string;
  /** CA that signed the serving cert; also the client CA and the cluster signing CA. */
  caFile: string;
  /** The CA's private key: tests may mint client certificates or webhook serving certs with it. */
  caKeyFile: string;
  /** Client certificate/key of an admin in system:masters (alternative to the token). */
  adminCertFile: string;
  adminKeyFile: string;
  /** Service-account signing key pair. */
  serviceAccountKeyFile: string;
  serviceAccountPubFile: string;
  serviceAccountIssuer: string;
  serviceClusterIPRange: string;
  etcdUrl: string;
  binDir: string;
  /** The temp dir (pki/, logs/, etcd/, kubeconfig). Removed by stop(). */
  dir: string;
  /** With auditServiceAccounts: the apiserver's audit log (one JSON audit.k8s.io/v1 Event per line). */
  auditLogPath?: string;
  timings: ControlPlaneTimings;
  processes: ManagedProcess[];
  /** Stops the processes started here (SIGTERM, SIGKILL after a timeout), awaits their exit, removes dir. */
  stop(): Promise<void>;
}

export class MissingBinariesError extends Error {}

export function resolveBinDir(binDir?: string): string {
  return binDir ?? process.env.KSTREAMS_K8S_BIN ?? DEFAULT_BIN_DIR;
}

/** Throws a MissingBinariesError that says how to get the binaries when any of `names` is missing. */
export function checkBinaries(binDir: string, names: string[]): void {
  const missing = names.filter((n) => {
    try {
      accessSync(join(binDir, n), constants.X_OK);
      return false;
    } catch {
      return true;
    }
  });
  if (missing.length > 0) {
    throw new MissingBinariesError(
      `Kubernetes ${KUBERNETES_VERSION} binaries missing in ${binDir}: ${missing.join(', ')}.\n` +
        `Build and cache them once with:  sudo scripts/install-kubernetes.sh   (about 7 minutes; see docs/local-cluster.md)\n` +
        `or point KSTREAMS_K8S_BIN at a directory holding them.`,
    );
  }
}

function defaultTmpParent(): string {
  if (process.env.KSTREAMS_CLUSTER_TMP) return process.env.KSTREAMS_CLUSTER_TMP;
  try {
    accessSync('/dev/shm', constants.W_OK);
    return '/dev/shm';
  } catch {
    return tmpdir();
  }
}

async function openssl(cwd: string, args: string[]): Promise<void> {
  try {
    await execFileP('openssl', args, { cwd });
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new Error(`openssl ${args.join(' ')} failed: ${err.stderr ?? err.message}`);
  }
}

const OPENSSL_CNF = `[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,digitalSignature,keyEncipherment,keyCertSign,cRLSign
subjectKeyIdentifier = hash
`;

/** Generates an EC P-256 key and a certificate signed by ca.crt/ca.key in `pki`. */
export async function issueCert(
  pki: string,
  name: string,
  subject: string,
  usage: 'server' | 'client' | 'both',
  sans: string[] = [],
  caName = 'ca',
): Promise<{ certFile: string; keyFile: string }> {
  const eku = usage === 'server' ? 'serverAuth' : usage === 'client' ? 'clientAuth' : 'serverAuth,clientAuth';
  const ext = [
    '[ext]',
    'basicConstraints = critical,CA:FALSE',
    'keyUsage = critical,digitalSignature,keyEncipherment',
    `extendedKeyUsage = ${eku}`,
    'authorityKeyIdentifier = keyid',
    ...(sans.length > 0 ? [`subjectAltName = ${sans.join(',')}`] : []),
    '',
  ].join('\n');
  writeFileSync(join(pki, `${name}.ext`), ext);
  await openssl(pki, ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', `${name}.key`]);
  await openssl(pki, ['req', '-new', '-config', 'openssl.cnf', '-key', `${name}.key`, '-subj', subject, '-out', `${name}.csr`]);
  await openssl(pki, [
    'x509', '-req', '-in', `${name}.csr`, '-CA', `${caName}.crt`, '-CAkey', `${caName}.key`,
    '-set_serial', `0x${randomBytes(12).toString('hex')}`, '-days', '3650', '-sha256',
    '-extfile', `${name}.ext`, '-extensions', 'ext', '-out', `${name}.crt`,
  ]);
  return { certFile: join(pki, `${name}.crt`), keyFile: join(pki, `${name}.key`) };
}

async function generatePki(pki: string, sans: string[]): Promise<void> {
  writeFileSync(join(pki, 'openssl.cnf'), OPENSSL_CNF);
  await Promise.all([
    (async () => {
      await openssl(pki, ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', 'ca.key']);
      await openssl(pki, [
        'req', '-x509', '-new', '-config', 'openssl.cnf', '-extensions', 'v3_ca', '-key', 'ca.key',
        '-subj', '/CN=kstreams-local-ca', '-days', '3650', '-sha256', '-out', 'ca.crt',
      ]);
      await Promise.all([
        issueCert(pki, 'apiserver', '/CN=kube-apiserver', 'server', sans),
        issueCert(pki, 'admin', '/O=system:masters/CN=kstreams-admin', 'client'),
        issueCert(pki, 'apiserver-kubelet-client', '/O=system:masters/CN=kube-apiserver-kubelet-client', 'client'),
      ]);
    })(),
    (async () => {
      await openssl(pki, ['genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048', '-out', 'sa.key']);
      await openssl(pki, ['pkey', '-in', 'sa.key', '-pubout', '-out', 'sa.pub']);
    })(),
  ]);
}

/** kubeconfig YAML with the CA embedded and a bearer token. */
export function kubeconfigYaml(server: string, caFile: string, token: string, user = 'kstreams-admin'): string {
  const ca = readFileSync(caFile).toString('base64');
  return [
    'apiVersion: v1',
    'kind: Config',
    'clusters:',
    '- name: kstreams-local',
    '  cluster:',
    `    server: ${server}`,
    `    certificate-authority-data: ${ca}`,
    'users:',
    `- name: ${user}`,
    '  user:',
    `    token: ${token}`,
    'contexts:',
    '- name: kstreams-local',
    '  context:',
    '    cluster: kstreams-local',
    `    user: ${user}`,
    'current-context: kstreams-local',
    '',
  ].join('\n');
}

/** GET over http(s); resolves with status and body. */
export function httpGet(
  url: string,
  opts: { ca?: Buffer; token?: string; timeoutMs?: number; encoding?: BufferEncoding } = {},
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    const headers: Record<string, string> = opts.token ? { Authorization: `Bearer ${opts.token}` } : {};
    const req = (u.protocol === 'https:' ? httpsRequest : httpRequest)(
      u,
      { method: 'GET', headers, ...(opts.ca ? { ca: opts.ca } : {}), timeout: opts.timeoutMs ?? 2000, agent: false },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString(opts.encoding ?? 'utf8') }));
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error(`timeout GET ${url}`)));
    req.on('error', reject);
    req.end();
  });
}

/**
 * Starts etcd + kube-apiserver (+ optional controller-manager/scheduler) and waits until ready. Ports are
 * picked free just before use; if another process grabs one in between, the whole start is retried.
 */
export async function startControlPlane(opts: ControlPlaneOptions = {}): Promise<ControlPlane> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startControlPlaneOnce(opts);
    } catch (e) {
      if (attempt >= 3 || !String(e).includes('address already in use')) throw e;
      opts.log?.(`port taken while starting (attempt ${attempt}), retrying`);
    }
  }
}

async function startControlPlaneOnce(opts: ControlPlaneOptions): Promise<ControlPlane> {
  const t0 = performance.now();
  const log = opts.log ?? (process.env.KSTREAMS_CLUSTER_DEBUG ? (m: string) => console.error(`[controlplane] ${m}`) : () => {});
  const binDir = resolveBinDir(opts.binDir);
  const needed = ['kube-apiserver'];
  if (opts.controllerManager) needed.push('kube-controller-manager');
  if (opts.scheduler) needed.push('kube-scheduler');
  checkBinaries(binDir, needed);
  const etcdBin = opts.etcdBin ?? process.env.KSTREAMS_ETCD ?? 'etcd';
  if (etcdBin === 'etcd' && !existsSync('/usr/bin/etcd') && !existsSync('/usr/local/bin/etcd')) {
    throw new MissingBinariesError('etcd not found: install Debian package etcd-server (scripts/install-kubernetes.sh does).');
  }

  const tmpParent = opts.tmpParent ?? defaultTmpParent();
  await cleanupStale(tmpParent, DIR_PREFIX, log);
  const dir = mkdtempSync(join(tmpParent, DIR_PREFIX));
  const keepDir = opts.keepDir ?? process.env.KSTREAMS_CLUSTER_KEEP === '1';
  const group = new ProcessGroup(dir, !keepDir);
  const pki = join(dir, 'pki');
  for (const d of ['pki', 'logs', 'etcd']) mkdirSync(join(dir, d), { mode: 0o700 });

  try {
    const bind = opts.bindAddress ?? '127.0.0.1';
    const serviceCIDR = opts.serviceClusterIPRange ?? '10.96.0.0/16';
    const issuer = 'https://kubernetes.default.svc.cluster.local';
    const sans = [
      'IP:127.0.0.1',
      'DNS:localhost',
      'IP:10.96.0.1',
      'DNS:kubernetes',
      'DNS:kubernetes.default',
      'DNS:kubernetes.default.svc',
      'DNS:kubernetes.default.svc.cluster.local',
      ...(bind !== '127.0.0.1' && bind !== '0.0.0.0' ? [`IP:${bind}`] : []),
      ...(opts.extraSANs ?? []),
    ];
    const [, etcdClientPort, etcdPeerPort, apiPort] = await Promise.all([
      generatePki(pki, sans),
      freePort(),
      freePort(),
      freePort(bind === '0.0.0.0' ? '127.0.0.1' : bind),
    ]);
    const tPki = performance.now();
    log(`pki ready in ${Math.round(tPki - t0)} ms; dir ${dir}`);

    const token = randomBytes(24).toString('hex');
    const cmToken = randomBytes(24).toString('hex');
    const schedToken = randomBytes(24).toString('hex');
    writeFileSync(
      join(pki, 'tokens.csv'),
      [
        `${token},kstreams-admin,kstreams-admin,"system:masters"`,
        // Full rights keep the controllers simple (no --use-service-account-credentials RBAC dance).
        `${cmToken},system:kube-controller-manager,kube-controller-manager,"system:masters"`,
        `${schedToken},system:kube-scheduler,kube-scheduler,"system:masters"`,
        '',
      ].join('\n'),
      { mode: 0o600 },
    );

    // etcd
    const etcdUrl = `http://127.0.0.1:${etcdClientPort}`;
    const peerUrl = `http://127.0.0.1:${etcdPeerPort}`;
    const etcd = group.start('etcd', etcdBin, [
      '--name=kstreams',
      `--data-dir=${join(dir, 'etcd')}`,
      `--listen-client-urls=${etcdUrl}`,
      `--advertise-client-urls=${etcdUrl}`,
      `--listen-peer-urls=${peerUrl}`,
      `--initial-advertise-peer-urls=${peerUrl}`,
      `--initial-cluster=kstreams=${peerUrl}`,
      '--initial-cluster-state=new',
      '--logger=zap',
      '--log-level=warn',
    ]);
    await waitFor('etcd /health', async () => {
      const r = await httpGet(`${etcdUrl}/health`, { timeoutMs: 1000 });
      return r.status === 200 && r.body.includes('"health":"true"');
    }, { timeoutMs: 30_000, intervalMs: 50, watch: [etcd] });
    const tEtcd = performance.now();
    log(`etcd ready in ${Math.round(tEtcd - tPki)} ms at ${etcdUrl} (pid ${etcd.pid})`);

    // kube-apiserver
    const auditLogPath = opts.auditServiceAccounts ? join(dir, 'logs', 'audit.log') : undefined;
    const auditArgs: string[] = [];
    if (auditLogPath) {
      const policy = join(dir, 'audit-policy.yaml');
      writeFileSync(
        policy,
        [
          'apiVersion: audit.k8s.io/v1',
          'kind: Policy',
          'omitStages: ["RequestReceived"]',
          'rules:',
          '- level: Metadata',
          '  userGroups: ["system:serviceaccounts"]',
          '- level: None',
          '',
        ].join('\n'),
      );
      // blocking: each event is written before the request's stage completes, so a test reads it at once.
      auditArgs.push(`--audit-policy-file=${policy}`, `--audit-log-path=${auditLogPath}`, '--audit-log-format=json', '--audit-log-mode=blocking', '--audit-log-maxbackup=1');
    }
    const server = `https://${bind === '0.0.0.0' ? '127.0.0.1' : bind}:${apiPort}`;
    const apiserver = group.start('kube-apiserver', join(binDir, 'kube-apiserver'), [
      `--etcd-servers=${etcdUrl}`,
      `--bind-address=${bind}`,
      `--advertise-address=${bind === '0.0.0.0' ? '127.0.0.1' : bind}`,
      `--secure-port=${apiPort}`,
      '--insecure-port=0',
      `--cert-dir=${pki}`,
      `--tls-cert-file=${join(pki, 'apiserver.crt')}`,
      `--tls-private-key-file=${join(pki, 'apiserver.key')}`,
      `--client-ca-file=${join(pki, 'ca.crt')}`,
      `--token-auth-file=${join(pki, 'tokens.csv')}`,
      '--authorization-mode=Node,RBAC',
      `--service-account-issuer=${issuer}`,
      `--service-account-key-file=${join(pki, 'sa.pub')}`,
      `--service-account-signing-key-file=${join(pki, 'sa.key')}`,
      `--api-audiences=${issuer}`,
      `--service-cluster-ip-range=${serviceCIDR}`,
      '--enable-admission-plugins=NodeRestriction,MutatingAdmissionWebhook,ValidatingAdmissionWebhook',
      '--allow-privileged=true',
      `--kubelet-client-certificate=${join(pki, 'apiserver-kubelet-client.crt')}`,
      `--kubelet-client-key=${join(pki, 'apiserver-kubelet-client.key')}`,
      '--kubelet-preferred-address-types=Hostname,InternalIP',
      // Endpoints may not be loopback: with a 127.0.0.1 advertise address the reconciler would only log
      // errors every 10 s. (No kube-proxy here anyway: pods reach the apiserver by address, not Service.)
      ...(bind === '127.0.0.1' || bind === '0.0.0.0' ? ['--endpoint-reconciler-type=none'] : []),
      `--profiling=${opts.profiling === true}`,
      '--logtostderr=true',
      '--v=1',
      ...auditArgs,
      ...(opts.extraApiServerArgs ?? []),
    ]);
    const ca = readFileSync(join(pki, 'ca.crt'));
    await waitFor('kube-apiserver /readyz', async () => {
      const r = await httpGet(`${server}/readyz`, { ca, token, timeoutMs: 2000 });
      return r.status === 200;
    }, { timeoutMs: opts.readyTimeoutMs ?? 90_000, intervalMs: 100, watch: [etcd, apiserver] });
    const tApi = performance.now();
    log(`kube-apiserver ready in ${Math.round(tApi - tEtcd)} ms at ${server} (pid ${apiserver.pid})`);

    const kubeconfigPath = join(dir, 'kubeconfig');
    writeFileSync(kubeconfigPath, kubeconfigYaml(server, join(pki, 'ca.crt'), token), { mode: 0o600 });

    const timings: ControlPlaneTimings = {
      pkiMs: Math.round(tPki - t0),
      etcdMs: Math.round(tEtcd - tPki),
      apiServerMs: Math.round(tApi - tEtcd),
      totalMs: 0,
    };

    let controllerManager: ManagedProcess | undefined;
    let scheduler: ManagedProcess | undefined;
    if (opts.controllerManager) {
      const kc = join(dir, 'controller-manager.kubeconfig');
      writeFileSync(kc, kubeconfigYaml(server, join(pki, 'ca.crt'), cmToken, 'system:kube-controller-manager'), { mode: 0o600 });
      controllerManager = group.start('kube-controller-manager', join(binDir, 'kube-controller-manager'), [
        `--kubeconfig=${kc}`,
        "--controllers=*,-nodeipam",
        '--leader-elect=false',
        '--port=0',
        '--secure-port=0',
        `--service-account-private-key-file=${join(pki, 'sa.key')}`,
        `--root-ca-file=${join(pki, 'ca.crt')}`,
        `--cluster-signing-cert-file=${join(pki, 'ca.crt')}`,
        `--cluster-signing-key-file=${join(pki, 'ca.key')}`,
        `--service-cluster-ip-range=${serviceCIDR}`,
        '--allocate-node-cidrs=false',
        '--use-service-account-credentials=false',
        '--logtostderr=true',
        '--v=1',
      ]);
      if (opts.waitForServiceAccounts ?? true) {
        await waitFor('default ServiceAccount in namespace default', async () => {
          const r = await httpGet(`${server}/api/v1/namespaces/default/serviceaccounts/default`, { ca, token });
          return r.status === 200;
        }, { timeoutMs: opts.readyTimeoutMs ?? 90_000, intervalMs: 100, watch: [apiserver, controllerManager] });
      }
      timings.controllerManagerMs = Math.round(performance.now() - tApi);
      log(`kube-controller-manager up in ${timings.controllerManagerMs} ms (pid ${controllerManager.pid})`);
    }
    if (opts.scheduler) {
      const kc = join(dir, 'scheduler.kubeconfig');
      writeFileSync(kc, kubeconfigYaml(server, join(pki, 'ca.crt'), schedToken, 'system:kube-scheduler'), { mode: 0o600 });
      scheduler = group.start('kube-scheduler', join(binDir, 'kube-scheduler'), [
        `--kubeconfig=${kc}`,
        `--authentication-kubeconfig=${kc}`,
        `--authorization-kubeconfig=${kc}`,
        '--leader-elect=false',
        '--port=0',
        '--secure-port=0',
        '--logtostderr=true',
        '--v=1',
      ]);
    }
    timings.totalMs = Math.round(performance.now() - t0);
    log(`control plane ready in ${timings.totalMs} ms`);

    let stopping: Promise<void> | undefined;
    return {
      kubeconfigPath,
      server,
      token,
      caFile: join(pki, 'ca.crt'),
      caKeyFile: join(pki, 'ca.key'),
      adminCertFile: join(pki, 'admin.crt'),
      adminKeyFile: join(pki, 'admin.key'),
      serviceAccountKeyFile: join(pki, 'sa.key'),
      serviceAccountPubFile: join(pki, 'sa.pub'),
      serviceAccountIssuer: issuer,
      serviceClusterIPRange: serviceCIDR,
      etcdUrl,
      binDir,
      dir,
      ...(auditLogPath ? { auditLogPath } : {}),
      timings,
      processes: group.processes,
      stop: () => {
        // Controllers first, then the apiserver, etcd last.
        stopping ??= group.stop([scheduler, controllerManager, apiserver, etcd].filter((p): p is ManagedProcess => p !== undefined));
        return stopping;
      },
    };
  } catch (e) {
    await group.stop().catch(() => {});
    throw e;
  }
}
