// The user's journey of the design contract on a real cluster (the local one-node cluster of
// e2e/cluster/local, or any cluster KUBECONFIG names, e.g. kind), with the real chart and the real image:
//
//   build + load the image (carrying the working tree's addon and its transform program) -> helm install
//   (CRD, operator x2 with one leader, self-managed webhook TLS)
//   -> label namespace shop -> staging recorder behind a headless Service -> StreamPath
//   -> a new app pod is injected, the sidecar attaches before the app starts -> requests are answered by the
//   app and their bytes arrive at staging; `kubectl get sp` shows it -> a live edit adds a target comparing
//   answers (staging's copy of the app: none diverges) and a file target, whose capture is fetched with
//   kubectl cp and replayed against that copy with the same answers -> a live edit adds a mask transform:
//   the app gets the Authorization header, staging gets it masked -> an edit whose program op names a missing
//   ConfigMap is refused (Degraded ProgramRejected) while the previous spec keeps running
//   -> an opted-out pod is left alone
//   -> deleting the StreamPath detaches the data plane (report, no sk_lookup link) and the finalizer goes
//   -> helm uninstall removes what it installed; new pods are no longer injected.
//
// Traffic goes from a client pod to the app's pod IP and from the sidecar to the staging pod (found through
// the API: headless Service). Agent and operator endpoints are read through the apiserver's pod proxy, so
// nothing here needs the host to reach pod IPs. See docs/e2e.md.
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { readCapture } from '../sidecar/src/capture/reader.js';
import { helmBinary, kubectlBinary, poll, repoRoot, run, Timings } from './lib/tools.js';

const RELEASE = 'kstreams';
const SYSTEM_NS = 'kstreams-system';
const SHOP = 'shop';
const STAGING = 'staging';
const SP = 'checkout-shadow';
const REQUESTS = 20;
const VERSION = (JSON.parse(readFileSync(`${repoRoot}/package.json`, 'utf8')) as { version: string }).version;
const IMAGE = `kstreams/kstreams:${VERSION}`;
const AGENT_PORT = 15090;

// The staging copy of checkout: records every connection's bytes and prints them as a JSON line when the
// connection closes. Runs on the node of the KStreams image (no other image needed).
const RECORDER = `
const net = require('net');
let n = 0;
net.createServer((s) => {
  const id = ++n, chunks = [], from = s.remoteAddress + ':' + s.remotePort;
  s.on('data', (c) => chunks.push(c));
  s.on('error', () => {});
  s.on('close', () => console.log(JSON.stringify({ id, from, bytes: Buffer.concat(chunks).toString('base64') })));
}).listen(8080, () => console.log('recorder listening on 8080'));
`;

/**
 * The StreamPath of the journey; `transform` lines (YAML, indented under spec) are a live edit, and so
 * are `targets` lines (YAML list items under spec.mirror.targets) after the staging recorder.
 */
function streamPathYaml(transform: string[] = [], targets: string[] = []): string {
  return [
    'apiVersion: kstreams.io/v1alpha1',
    'kind: StreamPath',
    `metadata: {name: ${SP}, namespace: ${SHOP}}`,
    'spec:',
    '  selector: {matchLabels: {app: checkout}}',
    '  port: 8080',
    '  mirror:',
    '    targets:',
    `      - service: {name: checkout, namespace: ${STAGING}, port: 8080}`,
    ...targets,
    '    sampling: {percent: 100}',
    '    onOverflow: cut',
    ...transform,
    '',
  ].join('\n');
}

/**
 * Live comparison and a capture: staging's copy of the app itself (same command, answers compared with
 * the app's as they happen), and a file target in the sidecar's capture volume with the app's answers.
 */
const COMPARE_AND_CAPTURE = [
  `      - {name: live, service: {name: checkout-live, namespace: ${STAGING}, port: 8080}, compareResponses: true}`,
  '      - {name: capture, file: {path: /journey, responses: true, maxBytes: 16777216}}',
];
const CAPTURE_DIR = '/var/lib/kstreams/capture/journey';
const MASK_TRANSFORM = ['  transform:', '    applyTo: mirror', '    ops:', '      - mask: {after: "Authorization: ", until: "\\r\\n", with: "*"}'];
const MISSING_CONFIGMAP = 'xf-filter-missing';

/**
 * The app's page and a CGI that answers with the Authorization header busybox httpd handed it: what the
 * app itself received.
 */
const APP_COMMAND = [
  'mkdir -p /www/cgi-bin && echo checkout-says-hi > /www/index.html',
  String.raw`printf '%s\n' '#!/bin/sh' 'printf "Content-Type: text/plain\r\n\r\n"' 'echo "authorization=$HTTP_AUTHORIZATION"' > /www/cgi-bin/auth`,
  'chmod +x /www/cgi-bin/auth',
  'exec httpd -f -p 8080 -h /www',
].join(' && ');

/** Newest mtime under `dir` of files whose name matches `re`. */
function newest(dir: string, re: RegExp): { file: string; mtime: number } {
  let best = { file: '', mtime: 0 };
  for (const e of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (!e.isFile() || !re.test(e.name)) continue;
    const f = join(e.parentPath, e.name);
    const m = statSync(f).mtimeMs;
    if (m > best.mtime) best = { file: f, mtime: m };
  }
  return best;
}

function request(i: number): string {
  return `GET /index.html?i=${i} HTTP/1.0\r\nHost: checkout\r\nUser-Agent: kstreams-e2e\r\nX-Request: ${i}\r\n\r\n`;
}

interface Condition {
  type: string;
  status: string;
  reason: string;
  message: string;
  observedGeneration?: number;
}

interface StreamPathJson {
  metadata: { generation: number; finalizers?: string[] };
  status?: { observedGeneration?: number; conditions?: Condition[]; bytesMirrored?: number; targets?: Array<{ name: string; connectionsMirrored: number; responsesCompared?: number; responsesDiverged?: number }> };
}

interface AgentReport {
  ready: boolean;
  streamPaths: Array<{ name: string; attached: boolean; generation: number; connections: number; bytesPrimary: number; bytesMirrored: number; bytesDropped: number; problem?: { reason: string; message: string } }>;
}

interface ContainerStatus {
  name: string;
  ready: boolean;
  restartCount: number;
  state: { running?: { startedAt: string } };
}

interface PodJson {
  metadata: { name: string; annotations?: Record<string, string>; labels?: Record<string, string> };
  spec: { containers: Array<{ name: string; lifecycle?: unknown }>; initContainers?: Array<{ name: string; restartPolicy?: string }> };
  status: {
    phase?: string;
    podIP?: string;
    containerStatuses?: ContainerStatus[];
    initContainerStatuses?: ContainerStatus[];
  };
}

describe('journey: helm install, inject, mirror, detach, uninstall', () => {
  const provider = inject('clusterProvider');
  const kubeconfig = inject('kubeconfig');
  const busybox = inject('busyboxImage') || process.env.KSTREAMS_E2E_BUSYBOX_IMAGE || 'busybox:1.36';
  // Images imported by hand (local containerd, kind load) must never be pulled.
  const pullPolicy = provider === 'local' || process.env.KSTREAMS_E2E_KIND_CLUSTER ? 'Never' : 'IfNotPresent';
  const timings = new Timings();
  let helm = '';
  let kubectl = '';
  const k = (args: string[], input?: string, timeoutMs?: number) => run(kubectl, args, { kubeconfig, input, timeoutMs });
  const kJson = async <T>(args: string[]) => JSON.parse(await k([...args, '-o', 'json'])) as T;
  const raw = (path: string) => k(['get', '--raw', path]);
  /**
   * kubectl apply of pods in a namespace created moments ago: Kubernetes < 1.24 refuses pods until the
   * controller-manager has made the ServiceAccount's token Secret; only that refusal is retried.
   */
  const applyPods = (manifest: unknown) =>
    poll('pods admitted (ServiceAccount token present)', async () => {
      try {
        return await k(['apply', '-f', '-'], JSON.stringify(manifest));
      } catch (e) {
        if (/No API token found|serviceaccount "default" not found/.test(String(e))) return undefined;
        throw Object.assign(new Error(String(e)), { fatal: true });
      }
    }, { timeoutMs: 30_000, intervalMs: 200 });
  const report = async (pod: string) => JSON.parse(await raw(`/api/v1/namespaces/${SHOP}/pods/${pod}:${AGENT_PORT}/proxy/v1/report`)) as AgentReport;
  const exec = (ns: string, pod: string, container: string, cmd: string[]) => k(['-n', ns, 'exec', pod, '-c', container, '--', ...cmd]);
  let appIP = '';
  let leaderPod = '';
  let netnsIno = 0;
  let imageTar = '';

  /** sk_lookup links on the app pod's network namespace (kind and local nodes share this kernel). */
  const skLookupLinks = async (): Promise<number | undefined> => {
    if (process.getuid?.() !== 0) return undefined;
    const out = await run('bpftool', ['-j', 'link', 'show']).catch(() => undefined);
    if (out === undefined) return undefined;
    const links = JSON.parse(out || '[]') as Array<{ attach_type?: string; netns_ino?: number }>;
    return links.filter((l) => l.attach_type === 'sk_lookup' && l.netns_ino === netnsIno).length;
  };

  const recorded = async (): Promise<string[]> => {
    const logs = await k(['-n', STAGING, 'logs', 'recorder']);
    return logs
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => Buffer.from((JSON.parse(l) as { bytes: string }).bytes, 'base64').toString('latin1'))
      // Zero-byte connections are the kubelet's TCP readiness probes of the app, tapped like any other.
      .filter((b) => b.length > 0);
  };

  /** Sends requests from..to from the client pod; returns each raw response and nc's exit code. */
  const drive = async (from: number, to: number) => {
    const script =
      `for i in $(seq ${from} ${to}); do ` +
      `printf 'GET /index.html?i=%s HTTP/1.0\\r\\nHost: checkout\\r\\nUser-Agent: kstreams-e2e\\r\\nX-Request: %s\\r\\n\\r\\n' $i $i ` +
      `| nc -w 10 ${appIP} 8080 >/tmp/r; echo "=== $i rc=$?"; cat /tmp/r; echo; done`;
    const out = await exec(STAGING, 'client', 'client', ['sh', '-c', script]);
    const parts = out.split(/^=== /m).slice(1);
    return parts.map((p) => {
      const m = /^(\d+) rc=(\d+)\n([\s\S]*)$/.exec(p);
      return { i: Number(m?.[1]), rc: Number(m?.[2]), response: m?.[3] ?? p };
    });
  };

  /** A real HTTP client (busybox wget, from the client pod) with an Authorization header, to the app's CGI. */
  const authorized = (token: string) =>
    exec(STAGING, 'client', 'client', ['wget', '-q', '-O', '-', '--header', `Authorization: ${token}`, `http://${appIP}:8080/cgi-bin/auth`]);

  const streamPath = () => kJson<StreamPathJson>(['-n', SHOP, 'get', 'streampath', SP]);
  const conditionOf = (sp: StreamPathJson, type: string) => sp.status?.conditions?.find((c) => c.type === type);

  /** Applies the StreamPath; returns its new generation. */
  const applyStreamPath = async (transform: string[], targets: string[] = []) => {
    await k(['apply', '-f', '-'], streamPathYaml(transform, targets));
    return (await streamPath()).metadata.generation;
  };

  /** The one connection staging recorded for a request to the CGI that it had not recorded before. */
  const recordedAuthRequest = async (seen: number) => {
    const got = await poll('the CGI request at staging', async () => {
      const rec = (await recorded()).filter((b) => b.startsWith('GET /cgi-bin/auth '));
      return rec.length > seen ? rec : undefined;
    }, { timeoutMs: 30_000 });
    expect(got).toHaveLength(seen + 1);
    return got[seen]!;
  };
  const authRequestsRecorded = async () => (await recorded()).filter((b) => b.startsWith('GET /cgi-bin/auth ')).length;

  /**
   * One request with `Bearer <secret>`: the app saw the secret, staging saw the same request with the
   * header's value masked ('*', same length), and the agent counted the request's bytes as mirrored
   * (counters count what the client sent, before any transform: the same number, since a mask keeps lengths).
   */
  const sendSecretAndCheckMasked = async (label: string) => {
    const token = `Bearer ${label.replace(/\W+/g, '-')}-${randomBytes(12).toString('hex')}`;
    const seen = await authRequestsRecorded();
    const before = (await report('checkout')).streamPaths.find((x) => x.name === SP)?.bytesMirrored ?? 0;
    const answer = await timings.time(`${label}: request with Authorization (wget)`, () => authorized(token));
    expect(answer.trim()).toBe(`authorization=${token}`);
    const mirrored = await timings.time(`${label}: masked request at staging`, () => recordedAuthRequest(seen));
    expect(mirrored).not.toContain(token.slice('Bearer '.length));
    expect(mirrored).toContain(`\r\nAuthorization: ${'*'.repeat(token.length)}\r\n`);
    // Everything but the value is what the client sent.
    const unmasked = mirrored.replace(`Authorization: ${'*'.repeat(token.length)}\r\n`, `Authorization: ${token}\r\n`);
    expect(unmasked).toMatch(new RegExp(`^GET /cgi-bin/auth HTTP/1\\.[01]\r\n(.+\r\n)*Authorization: ${token}\r\n(.+\r\n)*\r\n$`));
    const after = await poll('bytesMirrored counted the request', async () => {
      const n = (await report('checkout')).streamPaths.find((x) => x.name === SP)?.bytesMirrored ?? 0;
      return n >= before + mirrored.length ? n : undefined;
    }, { timeoutMs: 10_000 });
    expect(after - before).toBe(mirrored.length);
    console.log(`[journey] ${label}: app saw ${JSON.stringify(answer.trim())}; staging saw ${JSON.stringify(mirrored)}`);
  };

  beforeAll(async () => {
    helm = await helmBinary();
    kubectl = kubectlBinary(helm);
    console.log(`[journey] cluster ${provider} (${kubeconfig}); helm ${helm}; kubectl ${kubectl}`);
  });

  // On a failure, what a user would look at: pods, events, the operator's and the agent's logs.
  afterEach(async (ctx) => {
    if (ctx.task.result?.state !== 'fail') return;
    const show = async (title: string, args: string[]) =>
      console.log(`[journey] --- ${title}\n${await k(args).catch((e: unknown) => String(e))}`);
    await show('pods', ['get', 'pods', '-A', '-o', 'wide']);
    await show('events', ['get', 'events', '-A', '--sort-by=.lastTimestamp']);
    await show('streampaths', ['get', 'sp', '-A', '-o', 'yaml']);
    await show('operator logs', ['-n', SYSTEM_NS, 'logs', '-l', 'app.kubernetes.io/component=operator', '--tail=40', '--prefix']);
    await show('agent logs', ['-n', SHOP, 'logs', 'checkout', '-c', 'kstreams-sidecar', '--tail=40']);
    // A sidecar that restarted: what the container before said last (why it ended).
    await show('agent logs, previous container', ['-n', SHOP, 'logs', 'checkout', '-c', 'kstreams-sidecar', '--previous', '--tail=60']);
  });

  afterAll(async () => {
    // Leave nothing behind, also after a failure: the StreamPath's finalizer would block its namespace when
    // the operator is already gone, and the CRD is kept by helm uninstall on purpose.
    const quiet = (p: Promise<unknown>) => p.catch(() => undefined);
    await quiet(k(['-n', SHOP, 'patch', 'streampath', SP, '--type=merge', '-p', '{"metadata":{"finalizers":null}}']));
    await quiet(run(helm, ['uninstall', RELEASE, '-n', SYSTEM_NS, '--wait', '--timeout', '120s'], { kubeconfig }));
    await quiet(k(['delete', 'namespace', SHOP, STAGING, SYSTEM_NS, '--ignore-not-found', '--wait=true', '--timeout=120s'], undefined, 150_000));
    await quiet(k(['delete', 'crd', 'streampaths.kstreams.io', '--ignore-not-found', '--wait=true', '--timeout=60s']));
    console.log(timings.report('[journey] timings'));
  });

  it('builds the KStreams image and loads it into the cluster', async () => {
    await timings.time('build + load image', async () => {
      const args = ['scripts/build-image.sh', ...(process.env.KSTREAMS_E2E_BUILD === '1' ? ['--build'] : [])];
      if (provider === 'local') args.push('--import-containerd', inject('containerdSocket'));
      else if (process.env.KSTREAMS_E2E_KIND_CLUSTER) args.push('--kind-load', process.env.KSTREAMS_E2E_KIND_CLUSTER);
      else if (process.env.KSTREAMS_E2E_IMAGE_LOADED !== '1') {
        throw new Error(`load ${IMAGE} into the cluster: set KSTREAMS_E2E_KIND_CLUSTER=<kind cluster> or KSTREAMS_E2E_IMAGE_LOADED=1`);
      }
      const tar = (await run('bash', args, { timeoutMs: 600_000 })).trim();
      expect(tar).toMatch(/kstreams-.*\.tar$/);
      imageTar = tar;
    });
    // The image packs dist/ and the addon as they are: they must be built from this working tree, or the
    // transform steps below would test an older data plane. The transform program is compiled into the
    // addon (its bpftool skeleton embeds the object), so the addon must be newer than every BPF and native
    // source, and dist/ newer than every TypeScript source it is compiled from.
    const addonPath = `${repoRoot}/native/build/Release/kstreams.node`;
    const addonTime = statSync(addonPath).mtimeMs;
    for (const src of [newest(`${repoRoot}/native/bpf`, /\.(c|h)$/), newest(`${repoRoot}/native/src`, /\.(cc|h)$/)]) {
      expect(addonTime, `${src.file} is newer than the addon: run npm run build (or KSTREAMS_E2E_BUILD=1)`).toBeGreaterThanOrEqual(src.mtime);
    }
    for (const dir of ['sidecar/src', 'operator/src', 'native/lib']) {
      const ts = newest(`${repoRoot}/${dir}`, /^(?!.*\.test\.ts$).*\.ts$/);
      const js = `${repoRoot}/dist/${ts.file.slice(repoRoot.length + 1).replace(/\.ts$/, '.js')}`;
      expect(statSync(js).mtimeMs, `${ts.file} is newer than ${js}: run npm run build (or KSTREAMS_E2E_BUILD=1)`).toBeGreaterThanOrEqual(ts.mtime);
    }
    const layer = await run('bash', ['-c', `tar -xOf "$1" layer.tar | tar -xO ./opt/kstreams/native/build/Release/kstreams.node | base64 -w0`, '-', imageTar]);
    const imageAddon = Buffer.from(layer, 'base64');
    const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
    expect(sha(imageAddon)).toBe(sha(readFileSync(addonPath)));
    expect(imageAddon.includes('xf_verdict'), 'the transform program (xf_verdict) is embedded in the image\'s addon').toBe(true);
    const files = await run('bash', ['-c', `tar -xOf "$1" layer.tar | tar -t`, '-', imageTar]);
    expect(files.split('\n')).toEqual(expect.arrayContaining(['./opt/kstreams/dist/sidecar/src/agent/feed-client.js', './opt/kstreams/dist/sidecar/src/dataplane/transform.js']));
    if (provider === 'local') {
      const images = await run('ctr', ['--address', inject('containerdSocket'), '--namespace', 'k8s.io', 'images', 'ls', '-q']);
      expect(images.split('\n')).toContain(`docker.io/${IMAGE}`);
    }
  });

  it('helm install: the operator becomes Ready, one of its 2 replicas leads, the webhook gets its caBundle', async () => {
    await timings.time('helm install', () =>
      run(helm, [
        'install', RELEASE, 'charts/kstreams', '-n', SYSTEM_NS, '--create-namespace',
        '--set', `image.pullPolicy=${pullPolicy}`,
        // Counters reach StreamPath status sooner than with the 10 s default write bound.
        '--set', 'operator.statusWriteIntervalMs=2000',
      ], { kubeconfig }));
    await timings.time('operator rollout (2 replicas Ready)', () =>
      k(['-n', SYSTEM_NS, 'rollout', 'status', `deployment/${RELEASE}`, '--timeout=180s'], undefined, 200_000));
    const pods = await kJson<{ items: PodJson[] }>(['-n', SYSTEM_NS, 'get', 'pods', '-l', `app.kubernetes.io/instance=${RELEASE},app.kubernetes.io/component=operator`]);
    const names = pods.items.map((p) => p.metadata.name);
    expect(names).toHaveLength(2);

    const leader = await timings.time('leader elected (Lease + kstreams_operator_leader)', () =>
      poll('one leader', async () => {
        const lease = await kJson<{ spec: { holderIdentity?: string } }>(['-n', SYSTEM_NS, 'get', 'lease', 'kstreams-operator']);
        const holder = lease.spec.holderIdentity ?? '';
        if (!names.includes(holder)) return undefined;
        const gauges = await Promise.all(names.map(async (n) => {
          const m = await raw(`/api/v1/namespaces/${SYSTEM_NS}/pods/${n}:8080/proxy/metrics`);
          return Number(/^kstreams_operator_leader (\S+)$/m.exec(m)?.[1] ?? 'NaN');
        }));
        const leaders = names.filter((_, i) => gauges[i] === 1);
        return leaders.length === 1 && leaders[0] === holder && gauges.every((g) => g === 0 || g === 1) ? holder : undefined;
      }, { timeoutMs: 60_000 }));
    console.log(`[journey] leader ${leader}`);
    leaderPod = leader;

    await timings.time('webhook caBundle', () =>
      poll('caBundle of kstreams-sidecar-injector', async () => {
        const ca = await k(['get', 'mutatingwebhookconfiguration', 'kstreams-sidecar-injector', '-o', 'jsonpath={.webhooks[0].clientConfig.caBundle}']);
        return Buffer.from(ca, 'base64').toString().includes('BEGIN CERTIFICATE') ? true : undefined;
      }, { timeoutMs: 60_000 }));
    const crd = await kJson<{ metadata: { annotations?: Record<string, string> } }>(['get', 'crd', 'streampaths.kstreams.io']);
    expect(crd.metadata.annotations?.['helm.sh/resource-policy']).toBe('keep');
  });

  it('opts namespace shop in; staging runs a recorder behind a headless Service', async () => {
    await timings.time('namespaces, staging pods', async () => {
      await k(['create', 'namespace', SHOP]);
      await k(['label', 'namespace', SHOP, 'kstreams.io/inject=enabled']);
      await k(['create', 'namespace', STAGING]);
      // No RoleBinding anywhere: the sidecars of shop read nothing from the API, the operator resolves the
      // Service in staging for them (docs/adr/0008-agents-get-their-configuration-from-the-operator.md).
      await applyPods({
        apiVersion: 'v1',
        kind: 'List',
        items: [
          {
            apiVersion: 'v1', kind: 'Service',
            metadata: { name: 'checkout', namespace: STAGING },
            spec: { clusterIP: 'None', selector: { app: 'checkout-staging' }, ports: [{ name: 'http', port: 8080, targetPort: 8080 }] },
          },
          {
            apiVersion: 'v1', kind: 'Pod',
            metadata: { name: 'recorder', namespace: STAGING, labels: { app: 'checkout-staging' } },
            spec: {
              terminationGracePeriodSeconds: 0,
              securityContext: { runAsUser: 65532, runAsGroup: 65532, runAsNonRoot: true },
              containers: [{
                name: 'recorder', image: IMAGE, imagePullPolicy: pullPolicy, command: ['node', '-e', RECORDER],
                ports: [{ containerPort: 8080 }], readinessProbe: { tcpSocket: { port: 8080 }, periodSeconds: 1 },
                securityContext: { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } },
              }],
            },
          },
          {
            apiVersion: 'v1', kind: 'Service',
            metadata: { name: 'checkout-live', namespace: STAGING },
            spec: { clusterIP: 'None', selector: { app: 'checkout-live' }, ports: [{ name: 'http', port: 8080, targetPort: 8080 }] },
          },
          {
            // The same app as checkout (same command, same image): a live comparison target.
            apiVersion: 'v1', kind: 'Pod',
            metadata: { name: 'checkout-live', namespace: STAGING, labels: { app: 'checkout-live' } },
            spec: {
              terminationGracePeriodSeconds: 0,
              containers: [{ name: 'app', image: busybox, imagePullPolicy: pullPolicy, command: ['sh', '-c', APP_COMMAND], ports: [{ containerPort: 8080 }], readinessProbe: { tcpSocket: { port: 8080 }, periodSeconds: 1 } }],
            },
          },
          {
            apiVersion: 'v1', kind: 'Pod',
            metadata: { name: 'client', namespace: STAGING },
            spec: {
              terminationGracePeriodSeconds: 0,
              containers: [{ name: 'client', image: busybox, imagePullPolicy: pullPolicy, command: ['sleep', '3600'] }],
            },
          },
        ],
      });
      await k(['-n', STAGING, 'wait', '--for=condition=Ready', 'pod/recorder', 'pod/client', 'pod/checkout-live', '--timeout=120s'], undefined, 150_000);
      // The agent resolves the headless Service through its Endpoints: wait until they hold the recorder.
      await poll('Endpoints of staging/checkout', async () => {
        const ep = await k(['-n', STAGING, 'get', 'endpoints', 'checkout', '-o', 'jsonpath={.subsets[0].addresses[0].ip}']);
        return ep.trim() || undefined;
      });
    });
    const ns = await kJson<{ metadata: { labels?: Record<string, string> } }>(['get', 'namespace', SHOP]);
    expect(ns.metadata.labels?.['kstreams.io/inject']).toBe('enabled');
    // shop's pods may not read the target Service, nor StreamPaths or pods of their own namespace.
    const asShop = ['--as', `system:serviceaccount:${SHOP}:default`, '--as-group', `system:serviceaccounts:${SHOP}`, '--as-group', 'system:serviceaccounts'];
    for (const [verb, what, where] of [['get', 'services', STAGING], ['get', 'endpoints', STAGING], ['list', 'streampaths.kstreams.io', SHOP], ['list', 'pods', SHOP]] as const) {
      // can-i answers "no" with exit code 1, which run() reports as a failure holding the output.
      const r = await run(kubectl, ['auth', 'can-i', verb, what, '-n', where, ...asShop], { kubeconfig }).then((o) => o.trim(), (e: Error) => (/\bno\s*$/.test(e.message) ? 'no' : e.message));
      expect(`${verb} ${what} -n ${where}: ${r}`).toBe(`${verb} ${what} -n ${where}: no`);
    }
    expect((await k(['get', 'rolebindings', '-n', SHOP, '-o', 'name'])).trim()).toBe('');
  });

  it('applies the StreamPath; a new checkout pod gets the sidecar, which is ready before the app starts', async () => {
    await timings.time('apply StreamPath', () => k(['apply', '-f', '-'], streamPathYaml()));
    await timings.time('finalizer set by the operator', () =>
      poll('finalizer kstreams.io/detach', async () => {
        const sp = await kJson<{ metadata: { finalizers?: string[] } }>(['-n', SHOP, 'get', 'streampath', SP]);
        return sp.metadata.finalizers?.includes('kstreams.io/detach') ? true : undefined;
      }));

    await timings.time('checkout pod created -> Ready (injected)', async () => {
      await applyPods({
        apiVersion: 'v1', kind: 'Pod',
        metadata: { name: 'checkout', namespace: SHOP, labels: { app: 'checkout' } },
        spec: {
          terminationGracePeriodSeconds: 5,
          containers: [{
            name: 'app', image: busybox, imagePullPolicy: pullPolicy,
            command: ['sh', '-c', APP_COMMAND],
            ports: [{ containerPort: 8080 }],
            readinessProbe: { tcpSocket: { port: 8080 }, periodSeconds: 2 },
          }],
        },
      });
      await k(['-n', SHOP, 'wait', '--for=condition=Ready', 'pod/checkout', '--timeout=180s'], undefined, 200_000);
    });
    const pod = await kJson<PodJson>(['-n', SHOP, 'get', 'pod', 'checkout']);
    expect(pod.metadata.annotations?.['kstreams.io/injected']).toBeTruthy();
    const native = pod.spec.initContainers?.find((c) => c.name === 'kstreams-sidecar');
    if (native) {
      // Kubernetes >= 1.29 (kind): a native sidecar, whose startupProbe holds the app until /readyz.
      expect(native.restartPolicy).toBe('Always');
      expect(pod.spec.containers.map((c) => c.name)).toEqual(['app']);
    } else {
      // Kubernetes 1.20 (the local cluster): the sidecar comes first and its postStart hook
      // (`kstreams agent wait`) holds the app until /readyz.
      expect(pod.spec.containers.map((c) => c.name)).toEqual(['kstreams-sidecar', 'app']);
      expect(JSON.stringify(pod.spec.containers[0]?.lifecycle ?? {})).toContain('wait');
      expect(pod.metadata.annotations?.['kubectl.kubernetes.io/default-container']).toBe('app');
    }
    console.log(`[journey] sidecar mode: ${native ? 'native (init container, restartPolicy Always)' : 'first container + postStart hold'}`);
    const status = Object.fromEntries([...(pod.status.initContainerStatuses ?? []), ...(pod.status.containerStatuses ?? [])].map((s) => [s.name, s]));
    expect(status['kstreams-sidecar']?.ready).toBe(true);
    expect(status['kstreams-sidecar']?.restartCount).toBe(0);
    const sidecarStarted = Date.parse(status['kstreams-sidecar']?.state.running?.startedAt ?? '');
    const appStarted = Date.parse(status['app']?.state.running?.startedAt ?? '');
    expect(sidecarStarted).toBeLessThanOrEqual(appStarted);
    appIP = pod.status.podIP ?? '';
    expect(appIP).not.toBe('');

    const rep = await timings.time('agent reports the StreamPath attached', () =>
      poll('attached in /v1/report', async () => {
        const r = await report('checkout');
        return r.streamPaths.find((s) => s.name === SP && s.attached) ? r : undefined;
      }));
    expect(rep.ready).toBe(true);
    // The operator verified the kubelet-projected token itself (the issuer's keys, the pod cache), no TokenReview.
    const checks = (await raw(`/api/v1/namespaces/${SYSTEM_NS}/pods/${leaderPod}:8080/proxy/metrics`)).split('\n').filter((l) => l.startsWith('kstreams_operator_feed_token_checks_total{'));
    console.log(`[journey] feed token checks on the leader:\n  ${checks.join('\n  ')}`);
    expect(checks.some((l) => /method="local"/.test(l) && /result="accepted"/.test(l) && Number(l.split(' ').at(-1)) >= 1)).toBe(true);
    netnsIno = Number(/\[(\d+)\]/.exec(await exec(SHOP, 'checkout', 'app', ['readlink', '/proc/self/ns/net']))?.[1]);
    expect(netnsIno).toBeGreaterThan(0);
    const links = await skLookupLinks();
    console.log(`[journey] sk_lookup links on the app's netns ${netnsIno}: ${links ?? 'not checked (needs root and bpftool)'}`);
    if (links !== undefined) expect(links).toBe(1);
  });

  it('the app answers every request, staging receives the same request bytes, kubectl get sp shows it', async () => {
    const responses = await timings.time(`${REQUESTS} requests through the sidecar`, () => drive(1, REQUESTS));
    expect(responses.map((r) => r.i)).toEqual(Array.from({ length: REQUESTS }, (_, i) => i + 1));
    for (const r of responses) {
      expect(r.rc, `request ${r.i}: ${r.response}`).toBe(0);
      expect(r.response).toMatch(/^HTTP\/1\.[01] 200 OK\r\n/);
      expect(r.response).toContain('checkout-says-hi');
    }
    const expected = Array.from({ length: REQUESTS }, (_, i) => request(i + 1)).sort();
    const total = expected.reduce((n, r) => n + r.length, 0);
    const got = await timings.time('staging received every request', () =>
      poll(`${REQUESTS} mirrored connections at staging`, async () => {
        const rec = await recorded();
        return rec.length >= REQUESTS ? rec : undefined;
      }, { timeoutMs: 30_000 }));
    expect(got.sort()).toEqual(expected);

    const r = await report('checkout');
    const s = r.streamPaths.find((x) => x.name === SP);
    expect(s?.bytesMirrored).toBe(total);
    expect(s?.bytesDropped).toBe(0);
    expect(s?.connections).toBeGreaterThanOrEqual(REQUESTS);

    const row = await timings.time('kubectl get sp: SELECTED 1, ATTACHED 1, MIRRORED, Ready True, Degraded AsExpected', () =>
      poll('StreamPath status with the counters', async () => {
        const out = await k(['-n', SHOP, 'get', 'sp', SP, '--no-headers']);
        const [name, port, selected, attached, conns, mirrored, dropped, ready, degraded] = out.trim().split(/\s+/);
        const v = { name, port, selected, attached, conns: Number(conns), mirrored: Number(mirrored), dropped, ready, degraded };
        return attached === '1' && ready === 'True' && v.mirrored === total && v.conns >= REQUESTS ? v : undefined;
      }, { timeoutMs: 60_000 }));
    expect(row).toMatchObject({ name: SP, port: '8080', selected: '1', attached: '1', dropped: '0', ready: 'True', degraded: 'AsExpected' });
    console.log(`[journey] kubectl get sp:\n${await k(['-n', SHOP, 'get', 'sp'])}`);
  });

  it('a live edit adds a comparing target and a file target: staging answers as the app does; the capture, fetched with kubectl cp, replays against staging with the same answers', async () => {
    const generation = await timings.time('apply compare + capture targets (live edit)', () => applyStreamPath([], COMPARE_AND_CAPTURE));
    await timings.time('agent attached the compare + capture generation', () =>
      poll(`generation ${generation} attached`, async () => {
        const s = (await report('checkout')).streamPaths.find((x) => x.name === SP);
        if (s?.problem) throw Object.assign(new Error(`agent: ${s.problem.reason}: ${s.problem.message}`), { fatal: true });
        return s?.attached && s.generation === generation ? s : undefined;
      }, { timeoutMs: 30_000 }));
    // The CGI's answer has no date or file stamp (a static file's ETag differs between two pods).
    const N = 5;
    for (let i = 0; i < N; i++) expect((await authorized(`Bearer compare-${i}`)).trim()).toBe(`authorization=Bearer compare-${i}`);

    const sp = await timings.time('status: responsesCompared > 0, none diverged', () =>
      poll('status.targets[live] with compared answers', async () => {
        const x = await streamPath();
        const t = x.status?.targets?.find((y) => y.name === 'live');
        return x.status?.observedGeneration === generation && t && (t.responsesCompared ?? 0) >= N ? x : undefined;
      }, { timeoutMs: 60_000 }));
    const live = sp.status!.targets!.find((y) => y.name === 'live')!;
    console.log(`[journey] live comparison: ${JSON.stringify(live)}`);
    expect(live.responsesDiverged).toBe(0);
    expect(conditionOf(sp, 'Degraded')).toMatchObject({ status: 'False', reason: 'AsExpected' });

    // The capture, from the sidecar's capture volume, as a user fetches it.
    const local = mkdtempSync(join(tmpdir(), 'kstreams-e2e-capture-'));
    try {
      await timings.time('kubectl cp the capture from the sidecar', () => k(['-n', SHOP, 'cp', '-c', 'kstreams-sidecar', `checkout:${CAPTURE_DIR}`, join(local, 'capture')]));
      const cap = await readCapture(join(local, 'capture'));
      const requests = cap.connections.filter((c) => c.end.c2s > 0);
      expect(requests.length, JSON.stringify(cap.notes)).toBeGreaterThanOrEqual(N);
      expect(cap.sessions[0]?.meta).toMatchObject({ writer: 'engine', responses: true });
      // Replayed against staging's copy of the app: the host reaches pod IPs on the local cluster's bridge;
      // elsewhere through kubectl port-forward.
      const stagingIP = (await k(['-n', STAGING, 'get', 'pod', 'checkout-live', '-o', 'jsonpath={.status.podIP}'])).trim();
      let to = `${stagingIP}:8080`;
      let forward: ReturnType<typeof spawn> | undefined;
      if (provider !== 'local') {
        forward = spawn(kubectl, ['-n', STAGING, 'port-forward', 'pod/checkout-live', '46480:8080'], { env: { ...process.env, KUBECONFIG: kubeconfig }, stdio: ['ignore', 'pipe', 'pipe'] });
        await new Promise<void>((resolve, reject) => {
          forward!.stdout!.on('data', (d: Buffer) => d.toString().includes('Forwarding from') && resolve());
          forward!.once('exit', (code) => reject(new Error(`kubectl port-forward exited ${code}`)));
        });
        to = '127.0.0.1:46480';
      }
      try {
        const out = await timings.time('kstreams replay of the capture against staging', () =>
          run(process.execPath, [join(repoRoot, 'dist/sidecar/src/cli/main.js'), 'replay', join(local, 'capture'), '--to', to, '--speed', 'max', '--compare']));
        const summary = JSON.parse(out) as { connectionsReplayed: number; connectionsFailed: number; compare: { same: number; differ: number } };
        console.log(`[journey] replay of the sidecar's capture: ${out.trim()}`);
        expect(summary).toMatchObject({ connectionsReplayed: cap.connections.length, connectionsFailed: 0, compare: { differ: 0 } });
        expect(summary.compare.same).toBeGreaterThanOrEqual(N);
      } finally {
        forward?.kill();
      }
    } finally {
      rmSync(local, { recursive: true, force: true });
    }
  });

  it('a live edit adds a mask transform: the app gets the Authorization header, staging gets it masked, Ready stays True', async () => {
    const generation = await timings.time('apply transform (live edit)', () => applyStreamPath(MASK_TRANSFORM));
    // A live edit applies to connections accepted after the agent has it: wait for the agent to say so.
    await timings.time('agent attached the transform generation', () =>
      poll(`generation ${generation} attached`, async () => {
        const s = (await report('checkout')).streamPaths.find((x) => x.name === SP);
        if (s?.problem) throw Object.assign(new Error(`agent: ${s.problem.reason}: ${s.problem.message}`), { fatal: true });
        return s?.attached && s.generation === generation ? s : undefined;
      }, { timeoutMs: 30_000 }));

    await sendSecretAndCheckMasked('transform');

    const sp = await timings.time('StreamPath Ready at the transform generation', () =>
      poll('Ready True, observedGeneration current', async () => {
        const x = await streamPath();
        const ready = conditionOf(x, 'Ready');
        return ready?.status === 'True' && ready.observedGeneration === generation ? x : undefined;
      }, { timeoutMs: 30_000 }));
    expect(conditionOf(sp, 'Degraded')).toMatchObject({ status: 'False', reason: 'AsExpected' });
    const pod = await kJson<PodJson>(['-n', SHOP, 'get', 'pod', 'checkout']);
    const sidecar = [...(pod.status.initContainerStatuses ?? []), ...(pod.status.containerStatuses ?? [])].find((c) => c.name === 'kstreams-sidecar');
    expect(sidecar?.restartCount).toBe(0);
  });

  it('a program op whose ConfigMap does not exist: Degraded ProgramRejected naming it, the previous spec keeps masking', async () => {
    const previous = (await streamPath()).metadata.generation;
    const edit = [...MASK_TRANSFORM, `      - program: {configMap: ${MISSING_CONFIGMAP}, key: filter.o}`];
    const generation = await timings.time('apply program op (missing ConfigMap)', () => applyStreamPath(edit));
    expect(generation).toBe(previous + 1);

    const sp = await timings.time('Degraded ProgramRejected', () =>
      poll('Degraded True with reason ProgramRejected', async () => {
        const x = await streamPath();
        const d = conditionOf(x, 'Degraded');
        return d?.status === 'True' && d.reason === 'ProgramRejected' && d.observedGeneration === generation ? x : undefined;
      }, { timeoutMs: 30_000 }));
    const degraded = conditionOf(sp, 'Degraded')!;
    console.log(`[journey] Degraded: ${degraded.reason}: ${degraded.message}`);
    expect(degraded.message).toContain(`ConfigMap ${SHOP}/${MISSING_CONFIGMAP} does not exist`);
    expect(degraded.message).toContain('checkout');
    expect(conditionOf(sp, 'Ready')).toMatchObject({ status: 'False', reason: 'ProgramRejected' });

    // The agent kept the previous generation attached and says why the edit is not applied.
    const s = (await report('checkout')).streamPaths.find((x) => x.name === SP);
    expect(s).toMatchObject({ attached: true, generation: previous, problem: { reason: 'ProgramRejected' } });
    expect(s?.problem?.message).toContain(MISSING_CONFIGMAP);

    // And it still runs: the app answers, staging still gets the header masked.
    await sendSecretAndCheckMasked('after refused edit');
  });

  it('a pod labelled kstreams.io/inject=false is not injected', async () => {
    await timings.time('opted-out pod Ready', async () => {
      await k(['apply', '-f', '-'], JSON.stringify({
        apiVersion: 'v1', kind: 'Pod',
        metadata: { name: 'legacy', namespace: SHOP, labels: { app: 'legacy', 'kstreams.io/inject': 'false' } },
        spec: { terminationGracePeriodSeconds: 0, containers: [{ name: 'app', image: busybox, imagePullPolicy: pullPolicy, command: ['sleep', '3600'] }] },
      }));
      await k(['-n', SHOP, 'wait', '--for=condition=Ready', 'pod/legacy', '--timeout=120s'], undefined, 150_000);
    });
    const pod = await kJson<PodJson>(['-n', SHOP, 'get', 'pod', 'legacy']);
    expect(pod.spec.containers.map((c) => c.name)).toEqual(['app']);
    expect(pod.spec.initContainers ?? []).toEqual([]);
    expect(pod.metadata.annotations?.['kstreams.io/injected']).toBeUndefined();
  });

  it('deleting the StreamPath detaches the data plane and removes the finalizer; the app still answers', async () => {
    const before = (await recorded()).length;
    await timings.time('delete StreamPath (finalizer released)', () =>
      k(['-n', SHOP, 'delete', 'streampath', SP, '--wait=true', '--timeout=120s'], undefined, 150_000));
    const left = await k(['-n', SHOP, 'get', 'streampaths', '-o', 'name']);
    expect(left.trim()).toBe('');
    const rep = await report('checkout');
    expect(rep.streamPaths.filter((s) => s.attached)).toEqual([]);
    const links = await skLookupLinks();
    if (links !== undefined) expect(links).toBe(0);

    // Fail-open after detach: the kernel delivers straight to the app, the sidecar keeps running.
    const [again] = await drive(REQUESTS + 1, REQUESTS + 1);
    expect(again?.rc).toBe(0);
    expect(again?.response).toContain('checkout-says-hi');
    const pod = await kJson<PodJson>(['-n', SHOP, 'get', 'pod', 'checkout']);
    const sidecar = [...(pod.status.initContainerStatuses ?? []), ...(pod.status.containerStatuses ?? [])].find((c) => c.name === 'kstreams-sidecar');
    expect(sidecar?.restartCount).toBe(0);
    // Nothing is tapped any more: the request above was not mirrored. (A mirror is written as the bytes
    // arrive and logged when its connection closes, which happens with the primary's; the agent's report
    // said detached before the request was sent.)
    expect((await recorded()).length).toBe(before);
  });

  it('helm uninstall removes the operator, its webhook and RBAC (the CRD is kept); new pods are not injected', async () => {
    await timings.time('helm uninstall', () => run(helm, ['uninstall', RELEASE, '-n', SYSTEM_NS, '--wait', '--timeout', '120s'], { kubeconfig }));
    // What the operator promises: its processes end promptly on SIGTERM (the webhook drain is bounded).
    // Removing the pod objects afterwards is the kubelet's: on this node's kubelet 1.20 that took from
    // 3.5 s to over 60 s after the containers had exited, so it gets a longer wait of its own.
    await timings.time('operator containers ended', () =>
      poll(
        'every operator container in kstreams-system terminated',
        async () => {
          const pods = (await kJson<{ items: PodJson[] }>(['-n', SYSTEM_NS, 'get', 'pods'])).items;
          return pods.every((p) => (p.status.containerStatuses ?? []).every((c) => c.state?.running === undefined)) ? true : undefined;
        },
        { timeoutMs: 30_000 },
      ));
    await timings.time('operator pods gone', () =>
      poll('no pods in kstreams-system', async () => ((await k(['-n', SYSTEM_NS, 'get', 'pods', '-o', 'name'])).trim() === '' ? true : undefined), {
        timeoutMs: 180_000,
      }));
    const gone = async (args: string[]) => (await k(['get', ...args, '--ignore-not-found', '-o', 'name'])).trim();
    expect(await gone(['mutatingwebhookconfiguration', 'kstreams-sidecar-injector'])).toBe('');
    expect(await gone(['clusterrole', 'kstreams-operator'])).toBe('');
    expect(await gone(['clusterrole', 'kstreams-sidecar'])).toBe('');
    expect(await gone(['clusterrolebinding', 'kstreams-operator'])).toBe('');
    expect(await gone(['-n', SYSTEM_NS, 'deployment,service,configmap,serviceaccount,role,rolebinding,poddisruptionbudget', '-l', `app.kubernetes.io/instance=${RELEASE}`])).toBe('');
    expect(await gone(['crd', 'streampaths.kstreams.io'])).not.toBe('');
    const leftovers = await k(['-n', SYSTEM_NS, 'get', 'secrets,leases', '-o', 'name']);
    console.log(`[journey] left in ${SYSTEM_NS} after uninstall (made by the operator at run time): ${leftovers.trim().split('\n').join(', ') || 'nothing'}`);

    await k(['apply', '-f', '-'], JSON.stringify({
      apiVersion: 'v1', kind: 'Pod',
      metadata: { name: 'after-uninstall', namespace: SHOP, labels: { app: 'checkout' } },
      spec: { terminationGracePeriodSeconds: 0, containers: [{ name: 'app', image: busybox, imagePullPolicy: pullPolicy, command: ['sleep', '3600'] }] },
    }));
    const pod = await kJson<PodJson>(['-n', SHOP, 'get', 'pod', 'after-uninstall']);
    expect(pod.spec.containers.map((c) => c.name)).toEqual(['app']);
    expect(pod.spec.initContainers ?? []).toEqual([]);
  });
});
