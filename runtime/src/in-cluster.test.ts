// KubeRest's credentials without a kubeconfig: a pod's ServiceAccount, simulated by the two environment
// variables and a temp directory holding token and ca.crt, against a real HTTPS server on loopback that
// verifies nothing but records what it is sent. The loading rules (explicit path, KUBECONFIG, ~/.kube/config,
// in-cluster, else client-go's error) on real files.
import { mkdirSync, mkdtempSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { createCA, issueServingCert, type CertKeyPem } from '../../operator/src/webhook/certs.js';
import { formatApiError } from './errors.js';
import { inClusterCredentials, joinHostPort, NotInClusterError } from './in-cluster.js';
import { ApiError, KubeRest } from './rest.js';

describe('joinHostPort (the in-cluster server address)', () => {
  it('brackets an IPv6 address, keeps one already in brackets, leaves IPv4 and names alone', () => {
    expect(joinHostPort('10.96.0.1', '443')).toBe('10.96.0.1:443');
    expect(joinHostPort('fd00:10:96::1', '443')).toBe('[fd00:10:96::1]:443');
    expect(joinHostPort('[fd00:10:96::1]', '443')).toBe('[fd00:10:96::1]:443');
    expect(joinHostPort('::1', '6443')).toBe('[::1]:6443');
    expect(joinHostPort('kubernetes.default.svc', '443')).toBe('kubernetes.default.svc:443');
  });
});

describe('in-cluster credentials', () => {
  let ca: CertKeyPem;
  let serving: CertKeyPem;
  let server: Server;
  let port: number;
  /** Authorization header of each request, and the status to answer the next ones with. */
  const seen: string[] = [];
  const answers: number[] = [];
  const dirs: string[] = [];

  const tempDir = () => {
    const d = mkdtempSync(join(tmpdir(), 'kstreams-incluster-'));
    dirs.push(d);
    return d;
  };
  /** A ServiceAccount directory as the kubelet mounts it (token, ca.crt, namespace). */
  const serviceAccount = (token: string, caPem: string | undefined = ca.certPem) => {
    const d = tempDir();
    writeFileSync(join(d, 'token'), token);
    if (caPem !== undefined) writeFileSync(join(d, 'ca.crt'), caPem);
    writeFileSync(join(d, 'namespace'), 'kstreams-system');
    return d;
  };
  /** In a pod: the two variables, a HOME without ~/.kube/config, no KUBECONFIG. */
  const podEnv = (host = '127.0.0.1') => ({ KUBERNETES_SERVICE_HOST: host, KUBERNETES_SERVICE_PORT: String(port), HOME: tempDir() });

  beforeAll(async () => {
    ca = await createCA({ commonName: 'incluster-test-ca', nowMs: Date.now(), validitySeconds: 3600 });
    serving = await issueServingCert({ ca, sans: ['127.0.0.1', '::1'], nowMs: Date.now(), validitySeconds: 3600 });
    server = createServer({ cert: serving.certPem, key: serving.keyPem }, (req, res) => {
      seen.push(req.headers.authorization ?? '');
      const status = answers.shift() ?? 200;
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(status === 200 ? { major: '1', minor: '20' } : { kind: 'Status', code: status, reason: 'Unauthorized', message: 'Unauthorized' }));
    });
    await new Promise<void>((resolve) => server.listen(0, '::', resolve));
    port = (server.address() as AddressInfo).port;
  });
  afterEach(() => {
    vi.useRealTimers();
    seen.length = 0;
    answers.length = 0;
  });
  afterAll(async () => {
    await new Promise((r) => server.close(r));
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });

  it('without KUBERNETES_SERVICE_HOST/PORT and without a kubeconfig: client-go\'s error', async () => {
    const env = { HOME: tempDir() };
    const err = (await KubeRest.create(undefined, { env, serviceAccountDir: serviceAccount('t') }).catch((e: Error) => e)) as Error;
    expect(err).toBeInstanceOf(NotInClusterError);
    expect(err.message).toMatch(/^unable to load in-cluster configuration, KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be defined/);
    expect(() => inClusterCredentials({ KUBERNETES_SERVICE_HOST: '10.96.0.1' }, serviceAccount('t'))).toThrow(NotInClusterError);
  });

  it('a token that cannot be read fails at once, naming the file', () => {
    const dir = tempDir();
    expect(() => inClusterCredentials({ KUBERNETES_SERVICE_HOST: '10.96.0.1', KUBERNETES_SERVICE_PORT: '443' }, dir)).toThrow(/ENOENT.*token/);
    writeFileSync(join(dir, 'token'), ' \n');
    expect(() => inClusterCredentials({ KUBERNETES_SERVICE_HOST: '10.96.0.1', KUBERNETES_SERVICE_PORT: '443' }, dir)).toThrow(/read empty token from file/);
  });

  it('talks to https://HOST:PORT trusting only ca.crt, with the token as bearer; over IPv6 too', async () => {
    for (const host of ['127.0.0.1', '::1']) {
      const rest = await KubeRest.create(undefined, { env: podEnv(host), serviceAccountDir: serviceAccount('token-one\n') });
      try {
        expect(rest.source).toBe('in-cluster');
        expect(rest.warnings).toEqual([]);
        expect(await rest.request('GET', '/version')).toEqual({ major: '1', minor: '20' });
        expect(seen.at(-1)).toBe('Bearer token-one');
      } finally {
        rest.close();
      }
    }
    const creds = inClusterCredentials({ KUBERNETES_SERVICE_HOST: 'fd00:10:96::1', KUBERNETES_SERVICE_PORT: '443' }, serviceAccount('t'));
    expect(creds.server).toBe('https://[fd00:10:96::1]:443');
  });

  it('re-reads the token as the kubelet rotates it: after a minute, and at once after a 401; a failed read keeps the last one', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    const dir = serviceAccount('first');
    const rest = await KubeRest.create(undefined, { env: podEnv(), serviceAccountDir: dir });
    try {
      await rest.request('GET', '/version');
      writeFileSync(join(dir, 'token'), 'second');
      await rest.request('GET', '/version');
      expect(seen).toEqual(['Bearer first', 'Bearer first']); // within the minute: the headers as they were
      vi.setSystemTime(Date.now() + 61_000);
      await rest.request('GET', '/version');
      expect(seen.at(-1)).toBe('Bearer second');

      // A 401 (the token expired before the minute passed): the next request reads the file again.
      writeFileSync(join(dir, 'token'), 'third');
      answers.push(401);
      const err = await rest.request('GET', '/version').catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ApiError);
      expect(formatApiError(err)).toMatch(/HTTP 401 Unauthorized.*fix: the apiserver refused the credentials/);
      await rest.request('GET', '/version');
      expect(seen.slice(-2)).toEqual(['Bearer second', 'Bearer third']);

      // The file gone for a moment (the kubelet swaps it): the last token goes on.
      unlinkSync(join(dir, 'token'));
      vi.setSystemTime(Date.now() + 61_000);
      await rest.request('GET', '/version');
      expect(seen.at(-1)).toBe('Bearer third');
      writeFileSync(join(dir, 'token'), 'fourth');
      vi.setSystemTime(Date.now() + 61_000);
      await rest.request('GET', '/version');
      expect(seen.at(-1)).toBe('Bearer fourth');
    } finally {
      rest.close();
    }
  });

  it('an unreadable ca.crt is a warning and the system roots are used: the apiserver is then a TLS error, named as such', async () => {
    const rest = await KubeRest.create(undefined, { env: podEnv(), serviceAccountDir: serviceAccount('t', 'not a certificate') });
    try {
      expect(rest.warnings).toHaveLength(1);
      expect(rest.warnings[0]).toMatch(/^expected to load root CA config from .*ca\.crt, but got err: .*; using the system's roots$/);
      const err = await rest.request('GET', '/version').catch((e: unknown) => e);
      expect(formatApiError(err, { verb: 'get', object: 'version' })).toMatch(/^get version: TLS to the apiserver failed \((UNABLE_TO_VERIFY_LEAF_SIGNATURE|SELF_SIGNED_CERT_IN_CHAIN|UNABLE_TO_GET_ISSUER_CERT_LOCALLY)\)/);
      expect(seen).toEqual([]);
    } finally {
      rest.close();
    }
  });

  it('a kubeconfig wins over in-cluster: an explicit path, then KUBECONFIG, then ~/.kube/config', async () => {
    const kubeconfigFile = (dir: string, token: string) => {
      const file = join(dir, 'config');
      writeFileSync(
        file,
        JSON.stringify({
          apiVersion: 'v1',
          kind: 'Config',
          clusters: [{ name: 'c', cluster: { server: `https://127.0.0.1:${port}`, 'certificate-authority-data': Buffer.from(ca.certPem).toString('base64') } }],
          users: [{ name: 'u', user: { token } }],
          contexts: [{ name: 'x', context: { cluster: 'c', user: 'u' } }],
          'current-context': 'x',
        }),
      );
      return file;
    };
    const home = tempDir();
    mkdirSync(join(home, '.kube'));
    kubeconfigFile(join(home, '.kube'), 'from-home');
    const explicit = kubeconfigFile(tempDir(), 'from-path');
    const fromEnv = kubeconfigFile(tempDir(), 'from-env');
    const inPod = { ...podEnv(), HOME: home };
    const sa = serviceAccount('from-serviceaccount');
    const cases: [string | undefined, Record<string, string>, string][] = [
      [explicit, { ...inPod, KUBECONFIG: fromEnv }, 'from-path'],
      [undefined, { ...inPod, KUBECONFIG: fromEnv }, 'from-env'],
      [undefined, inPod, 'from-home'],
      [undefined, { ...inPod, HOME: tempDir() }, 'from-serviceaccount'],
    ];
    for (const [path, env, token] of cases) {
      const rest = await KubeRest.create(path, { env, serviceAccountDir: sa });
      try {
        await rest.request('GET', '/version');
        expect(seen.at(-1)).toBe(`Bearer ${token}`);
        expect(rest.source).toBe(token === 'from-serviceaccount' ? 'in-cluster' : `kubeconfig ${path ?? env.KUBECONFIG ?? join(home, '.kube', 'config')}`);
      } finally {
        rest.close();
      }
    }
  });
});
