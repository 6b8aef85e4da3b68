// A single kubelet node for the local cluster: containerd (own config, root, state and socket) + kubelet 1.20,
// pods on a bridge (kst0 by default) with a pod subnet that exists only on this machine and has no default
// route out. Pod sandboxes use a pause image built from the Kubernetes source (static binary cached by
// scripts/install-kubernetes.sh). See docs/local-cluster.md.
//
// Use with a control plane that runs the controller-manager and the scheduler:
//   const cp = await startControlPlane({ controllerManager: true, scheduler: true });
//   const node = await startNode({ controlPlane: cp });
//   await node.importRootfsImage('kstreams.local/busybox:1', rootfsDir, { entrypoint: ['/bin/sh'] });
//   ... pods with imagePullPolicy: Never ...
//   await node.stop(); await cp.stop();
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { checkBinaries, httpGet, issueCert, kubeconfigYaml, type ControlPlane } from './controlplane.js';
import { cleanupStale, freePort, ProcessGroup, waitFor, type ManagedProcess } from './processes.js';

const execFileP = promisify(execFile);
const DIR_PREFIX = 'kstreams-node-';
const STATE_FILE = 'node-state.json';
export const PAUSE_IMAGE = 'kstreams.local/pause:1.20.2';
export const BUSYBOX_IMAGE = 'kstreams.local/busybox:1';

export interface NodeOptions {
  controlPlane: ControlPlane;
  /** Pod subnet; it must exist only on this machine. Default 10.244.77.0/24. */
  podCIDR?: string;
  /** Linux bridge for pods. Default kst0. */
  bridge?: string;
  readyTimeoutMs?: number;
  log?: (msg: string) => void;
  keepDir?: boolean;
}

export interface LocalNode {
  nodeName: string;
  podCIDR: string;
  /** The bridge's address in the pod subnet: pods reach the host (and its listeners on it) here. */
  gatewayIP: string;
  bridge: string;
  containerdSocket: string;
  dir: string;
  pauseImage: string;
  timings: { containerdMs: number; nodeReadyMs: number; totalMs: number };
  processes: ManagedProcess[];
  /** Runs `ctr` against this node's containerd in the k8s.io namespace. */
  ctr(args: string[]): Promise<string>;
  /** Imports a docker-archive tar (`docker save` format) for pods with imagePullPolicy: Never. */
  importImage(tarPath: string): Promise<void>;
  /** Builds a one-layer image from a directory and imports it. */
  importRootfsImage(ref: string, rootfsDir: string, config: ImageConfig): Promise<void>;
  /** Imports busybox-static as `ref` (default BUSYBOX_IMAGE): sh, httpd, nc, wget, ... under /bin. */
  importBusyboxImage(ref?: string): Promise<string>;
  /** Deletes all pods, waits until they are gone, stops kubelet then containerd, removes what they left. */
  stop(): Promise<void>;
}

export interface ImageConfig {
  entrypoint?: string[];
  cmd?: string[];
  env?: string[];
  workingDir?: string;
  user?: string;
}

async function run(cmd: string, args: string[], opts: { cwd?: string; allowFail?: boolean } = {}): Promise<string> {
  try {
    const r = await execFileP(cmd, args, { cwd: opts.cwd, maxBuffer: 64 << 20 });
    return r.stdout;
  } catch (e) {
    if (opts.allowFail) return '';
    const err = e as { stderr?: string; message: string };
    throw new Error(`${cmd} ${args.join(' ')} failed: ${err.stderr || err.message}`);
  }
}

/** Writes a docker-archive tar holding `rootfsDir` as its only layer. */
export async function buildImageTar(ref: string, rootfsDir: string, config: ImageConfig, outTar: string, workDir: string): Promise<void> {
  const w = mkdtempSync(join(workDir, 'img-'));
  try {
    await run('tar', ['--numeric-owner', '--owner=0', '--group=0', '-C', rootfsDir, '-cf', join(w, 'layer.tar'), '.']);
    const diffId = `sha256:${createHash('sha256').update(readFileSync(join(w, 'layer.tar'))).digest('hex')}`;
    const cfg = {
      architecture: 'amd64',
      os: 'linux',
      created: '1970-01-01T00:00:00Z',
      config: {
        ...(config.entrypoint ? { Entrypoint: config.entrypoint } : {}),
        ...(config.cmd ? { Cmd: config.cmd } : {}),
        Env: config.env ?? ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
        ...(config.workingDir ? { WorkingDir: config.workingDir } : {}),
        ...(config.user ? { User: config.user } : {}),
      },
      rootfs: { type: 'layers', diff_ids: [diffId] },
      history: [{ created: '1970-01-01T00:00:00Z', created_by: 'kstreams e2e' }],
    };
    const cfgJson = JSON.stringify(cfg);
    const cfgName = `${createHash('sha256').update(cfgJson).digest('hex')}.json`;
    writeFileSync(join(w, cfgName), cfgJson);
    writeFileSync(join(w, 'manifest.json'), JSON.stringify([{ Config: cfgName, RepoTags: [ref], Layers: ['layer.tar'] }]));
    await run('tar', ['--numeric-owner', '--owner=0', '--group=0', '-C', w, '-cf', outTar, 'manifest.json', cfgName, 'layer.tar']);
  } finally {
    rmSync(w, { recursive: true, force: true });
  }
}

function gatewayOf(cidr: string): { gateway: string; prefix: number } {
  const [net, prefix] = cidr.split('/');
  const o = (net ?? '').split('.').map(Number);
  if (o.length !== 4 || o.some((x) => !(x >= 0 && x <= 255)) || !prefix) throw new Error(`bad podCIDR ${cidr}`);
  return { gateway: `${o[0]}.${o[1]}.${o[2]}.${(o[3] ?? 0) + 1}`, prefix: Number(prefix) };
}

/** Kernel tunables kubelet 1.20 rewrites on start; restored by stop(). */
const KUBELET_SYSCTLS = ['vm/overcommit_memory', 'vm/panic_on_oom', 'kernel/panic', 'kernel/panic_on_oops', 'kernel/keys/root_maxkeys', 'kernel/keys/root_maxbytes'];

function mountsUnder(dir: string): string[] {
  const out: string[] = [];
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const mp = line.split(' ')[4];
    if (mp && (mp === dir || mp.startsWith(`${dir}/`))) out.push(mp.replace(/\\040/g, ' '));
  }
  return out.sort((a, b) => b.length - a.length);
}

const IPT_TABLES = ['nat', 'filter', 'mangle'];
const IPT_TOOLS = ['iptables', 'ip6tables'];

/** `tool/table/chain` for every KUBE-* chain present now. */
async function kubeChains(): Promise<Set<string>> {
  const out = new Set<string>();
  for (const tool of IPT_TOOLS) {
    for (const table of IPT_TABLES) {
      const rules = await run(tool, ['-w', '-t', table, '-S'], { allowFail: true });
      for (const m of rules.matchAll(/^-N (KUBE-\S+)$/gm)) out.add(`${tool}/${table}/${m[1]}`);
    }
  }
  return out;
}

/** Removes KUBE-* chains kubelet created since `before` (jumps to them first, then flush and delete). */
async function removeNewKubeChains(before: Set<string>): Promise<void> {
  const created = [...(await kubeChains())].filter((c) => !before.has(c));
  for (const key of created) {
    const [tool = 'iptables', table = 'filter', chain = ''] = key.split('/');
    const rules = await run(tool, ['-w', '-t', table, '-S'], { allowFail: true });
    for (const line of rules.split('\n')) {
      if (!line.startsWith('-A ') || !new RegExp(`-j ${chain}( |$)`).test(line)) continue;
      // `-S` prints rules in a form `-D` accepts; quoted comments need splitting like a shell would.
      const args = (line.slice(3).match(/"[^"]*"|\S+/g) ?? []).map((a) => a.replace(/^"(.*)"$/, '$1'));
      await run(tool, ['-w', '-t', table, '-D', ...args], { allowFail: true });
    }
  }
  for (const key of created) {
    const [tool = 'iptables', table = 'filter', chain = ''] = key.split('/');
    await run(tool, ['-w', '-t', table, '-F', chain], { allowFail: true });
  }
  for (const key of created) {
    const [tool = 'iptables', table = 'filter', chain = ''] = key.split('/');
    await run(tool, ['-w', '-t', table, '-X', chain], { allowFail: true });
  }
}

function cgroupControllers(): string[] {
  try {
    return readdirSync('/sys/fs/cgroup');
  } catch {
    return [];
  }
}

function removeEmptyCgroupTree(d: string): void {
  let children: string[] = [];
  try {
    children = readdirSync(d, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => e.name);
  } catch {
    return;
  }
  for (const c of children) removeEmptyCgroupTree(join(d, c));
  try {
    rmdirSync(d);
  } catch {
    /* busy */
  }
}

/** What a node changed on the host, saved as <dir>/node-state.json so a later run can undo it after a crash. */
interface NodeState {
  dir: string;
  sock: string;
  bridge: string;
  natChain: string;
  sysctls: Record<string, string>;
  newCgroupRoots: string[];
  kubeChainsBefore: string[];
}

/** Undoes a node's host changes once its daemons are gone: containers, shims, mounts, iptables, bridge, sysctls, cgroups. */
async function cleanupNodeState(st: NodeState, log: (m: string) => void, removeDir: boolean): Promise<void> {
  const { dir, sock, bridge, natChain } = st;
  // Containers whose shim survived (they should not after an orderly pod deletion).
  const runcRoot = '/run/containerd/runc/k8s.io';
  if (existsSync(runcRoot)) {
    const list = await run('runc', ['--root', runcRoot, 'list', '--format', 'json'], { allowFail: true });
    let entries: Array<{ id: string; bundle: string }> = [];
    try {
      entries = (JSON.parse(list || '[]') as typeof entries | null) ?? [];
    } catch {
      /* ignore */
    }
    for (const c of entries.filter((e) => e.bundle.startsWith(`${dir}/`))) {
      log(`removing leftover container ${c.id}`);
      await run('runc', ['--root', runcRoot, 'kill', c.id, 'KILL'], { allowFail: true });
      await run('runc', ['--root', runcRoot, 'delete', '--force', c.id], { allowFail: true });
    }
  }
  // Shims of this containerd (identified by our unique socket path on their command line).
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      if (!cmdline.includes('containerd-shim') || !cmdline.includes(sock)) continue;
      process.kill(Number(pid), 'SIGKILL');
      // Its socket, /run/containerd/s/sha256(<containerd address>/<namespace>/<id>), would stay behind.
      const argv = cmdline.split('\0');
      const flag = (f: string) => (argv.includes(f) ? argv[argv.indexOf(f) + 1] : undefined);
      const id = flag('-id');
      const ns = flag('-namespace') ?? 'k8s.io';
      if (id) rmSync(`/run/containerd/s/${createHash('sha256').update(join(sock, ns, id)).digest('hex')}`, { force: true });
    } catch {
      /* gone */
    }
  }
  for (const mp of mountsUnder(dir)) {
    await run('umount', [mp], { allowFail: true });
    if (mountsUnder(mp).includes(mp)) await run('umount', ['-l', mp], { allowFail: true });
  }
  await removeNewKubeChains(new Set(st.kubeChainsBefore));
  await run('iptables', ['-w', '-t', 'nat', '-D', 'PREROUTING', '-i', bridge, '-j', natChain], { allowFail: true });
  await run('iptables', ['-w', '-t', 'nat', '-F', natChain], { allowFail: true });
  await run('iptables', ['-w', '-t', 'nat', '-X', natChain], { allowFail: true });
  if (existsSync(`/sys/class/net/${bridge}`)) await run('ip', ['link', 'del', bridge], { allowFail: true });
  for (const [s, v] of Object.entries(st.sysctls)) {
    try {
      if (readFileSync(`/proc/sys/${s}`, 'utf8').trim() !== v) writeFileSync(`/proc/sys/${s}`, v);
    } catch {
      /* best effort */
    }
  }
  // cgroups containerd created for pod containers (cgroupsPerQOS is off: they live under /k8s.io), when
  // that tree was not there before this node started. rmdir only removes empty cgroups.
  for (const root of st.newCgroupRoots) removeEmptyCgroupTree(root);
  // Empty per-boot dirs the shims and runc created (left alone when another containerd uses them).
  for (const d of ['/run/containerd/runc/k8s.io', '/run/containerd/runc', '/run/containerd/s', '/run/containerd']) {
    try {
      rmdirSync(d);
    } catch {
      /* absent or in use */
    }
  }
  if (removeDir) rmSync(dir, { recursive: true, force: true });
}

export async function startNode(opts: NodeOptions): Promise<LocalNode> {
  const t0 = performance.now();
  const cp = opts.controlPlane;
  const log = opts.log ?? (process.env.KSTREAMS_CLUSTER_DEBUG ? (m: string) => console.error(`[node] ${m}`) : () => {});
  checkBinaries(cp.binDir, ['kubelet', 'pause']);
  for (const b of ['/usr/bin/containerd', '/usr/bin/ctr', '/usr/sbin/runc', '/usr/lib/cni/bridge', '/usr/lib/cni/host-local', '/usr/lib/cni/loopback']) {
    if (!existsSync(b)) throw new Error(`${b} missing: run scripts/install-kubernetes.sh (installs containerd, runc, containernetworking-plugins)`);
  }
  const podCIDR = opts.podCIDR ?? '10.244.77.0/24';
  const bridge = opts.bridge ?? 'kst0';
  const { gateway, prefix } = gatewayOf(podCIDR);
  const nodeName = 'localhost';
  const natChain = `KSTREAMS-${bridge.toUpperCase()}`.slice(0, 28);
  const kubernetesServiceIP = gatewayOf(cp.serviceClusterIPRange).gateway;

  // Node state must live on a real filesystem (overlayfs snapshots), not on /dev/shm.
  const parent = process.env.KSTREAMS_NODE_TMP ?? tmpdir();
  await cleanupStale(parent, DIR_PREFIX, log, async (stale) => {
    try {
      const st = JSON.parse(readFileSync(join(stale, STATE_FILE), 'utf8')) as NodeState;
      await cleanupNodeState(st, log, false);
    } catch {
      for (const mp of mountsUnder(stale)) await run('umount', ['-l', mp], { allowFail: true });
    }
  });
  const dir = mkdtempSync(join(parent, DIR_PREFIX));
  const keepDir = opts.keepDir ?? process.env.KSTREAMS_CLUSTER_KEEP === '1';
  const group = new ProcessGroup(dir, false);
  for (const d of ['logs', 'containerd', 'cni/net.d', 'cni/ipam', 'kubelet', 'kubelet-pki', 'images']) mkdirSync(join(dir, d), { recursive: true });
  const sock = join(dir, 'containerd', 'containerd.sock');
  const sysctlBackup = new Map<string, string>();
  for (const s of KUBELET_SYSCTLS) {
    try {
      sysctlBackup.set(s, readFileSync(`/proc/sys/${s}`, 'utf8').trim());
    } catch {
      /* absent */
    }
  }
  const newCgroupRoots = cgroupControllers()
    .map((c) => join('/sys/fs/cgroup', c, 'k8s.io'))
    .filter((d) => !existsSync(d));
  const kubeChainsBefore = await kubeChains();
  const bridgeExisted = existsSync(`/sys/class/net/${bridge}`);
  if (bridgeExisted) throw new Error(`bridge ${bridge} already exists: another local node is running (or a stale one: ip link del ${bridge})`);

  let containerd: ManagedProcess | undefined;
  let kubelet: ManagedProcess | undefined;
  const ctr = (args: string[]) => run('ctr', ['--address', sock, '--namespace', 'k8s.io', ...args]);
  const kubeHeaders = { ca: readFileSync(cp.caFile), token: cp.token };

  const state: NodeState = {
    dir,
    sock,
    bridge,
    natChain,
    sysctls: Object.fromEntries(sysctlBackup),
    newCgroupRoots,
    kubeChainsBefore: [...kubeChainsBefore],
  };
  writeFileSync(join(dir, STATE_FILE), JSON.stringify(state));
  const cleanupAfterProcesses = () => cleanupNodeState(state, log, !keepDir);

  try {
    // --- CNI: bridge + host-local, no default route, no masquerade: pod traffic stays on this machine.
    writeFileSync(
      join(dir, 'cni/net.d/10-kstreams.conflist'),
      JSON.stringify(
        {
          cniVersion: '0.4.0',
          name: 'kstreams-local',
          plugins: [
            {
              type: 'bridge',
              bridge,
              isGateway: true,
              isDefaultGateway: false,
              ipMasq: false,
              hairpinMode: true,
              ipam: {
                type: 'host-local',
                ranges: [[{ subnet: podCIDR, gateway }]],
                // Only the Service CIDR is routed (to the host, see below); no default route.
                routes: [{ dst: cp.serviceClusterIPRange }],
                dataDir: join(dir, 'cni/ipam'),
              },
            },
          ],
        },
        null,
        2,
      ),
    );
    // The bridge exists before the first pod so host listeners can bind the gateway address right away.
    await run('ip', ['link', 'add', bridge, 'type', 'bridge']);
    await run('ip', ['addr', 'add', `${gateway}/${prefix}`, 'dev', bridge]);
    await run('ip', ['link', 'set', bridge, 'up']);
    // In-cluster clients (KUBERNETES_SERVICE_HOST = first Service IP, port 443) reach the loopback-only
    // apiserver: a DNAT from the bridge to 127.0.0.1:<port>, allowed by route_localnet on this bridge only.
    // This is the one Service kube-proxy would have served; there is no kube-proxy here.
    writeFileSync(`/proc/sys/net/ipv4/conf/${bridge}/route_localnet`, '1');
    await run('iptables', ['-w', '-t', 'nat', '-N', natChain]);
    await run('iptables', ['-w', '-t', 'nat', '-A', natChain, '-d', `${kubernetesServiceIP}/32`, '-p', 'tcp', '--dport', '443',
      '-j', 'DNAT', '--to-destination', `127.0.0.1:${new URL(cp.server).port}`]);
    await run('iptables', ['-w', '-t', 'nat', '-I', 'PREROUTING', '-i', bridge, '-j', natChain]);

    // --- containerd
    const c = join(dir, 'containerd');
    writeFileSync(
      join(c, 'config.toml'),
      `version = 2
root = "${c}/root"
state = "${c}/state"
plugin_dir = ""
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "${sock}"
[ttrpc]
  address = "${sock}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "${c}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "${PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  # Pod netns bind mounts under our state dir (not /run/netns), so teardown finds them.
  netns_mounts_under_state_dir = true
  enable_selinux = false
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "${dir}/cni/net.d"
    max_conf_num = 1
`,
    );
    containerd = group.start('containerd', '/usr/bin/containerd', ['--config', join(c, 'config.toml'), '--log-level', 'warn']);
    await waitFor('containerd socket', async () => {
      if (!existsSync(sock)) return false;
      await ctr(['version']);
      return true;
    }, { timeoutMs: 30_000, intervalMs: 100, watch: [containerd] });
    const tContainerd = performance.now();
    log(`containerd ready in ${Math.round(tContainerd - t0)} ms (pid ${containerd.pid})`);

    // --- pause image from the cached static binary
    const pauseRoot = mkdtempSync(join(dir, 'images', 'pause-'));
    copyFileSync(join(cp.binDir, 'pause'), join(pauseRoot, 'pause'));
    chmodSync(join(pauseRoot, 'pause'), 0o755);
    const importRootfsImage = async (ref: string, rootfsDir: string, config: ImageConfig) => {
      const tar = join(dir, 'images', `${randomBytes(6).toString('hex')}.tar`);
      await buildImageTar(ref, rootfsDir, config, tar, join(dir, 'images'));
      await ctr(['images', 'import', '--no-unpack=false', tar]).catch(async () => ctr(['images', 'import', tar]));
      rmSync(tar, { force: true });
    };
    await importRootfsImage(PAUSE_IMAGE, pauseRoot, { entrypoint: ['/pause'] });
    rmSync(pauseRoot, { recursive: true, force: true });

    // --- kubelet
    const pki = join(cp.dir, 'pki');
    const cert = await issueCert(pki, 'kubelet-localhost', `/O=system:nodes/CN=system:node:${nodeName}`, 'client');
    const kubeconfig = join(dir, 'kubelet.kubeconfig');
    writeFileSync(
      kubeconfig,
      kubeconfigYaml(cp.server, cp.caFile, 'unused', `system:node:${nodeName}`).replace(
        /    token: unused/,
        `    client-certificate: ${cert.certFile}\n    client-key: ${cert.keyFile}`,
      ),
      { mode: 0o600 },
    );
    const kubeletPort = await freePort();
    writeFileSync(
      join(dir, 'kubelet-config.yaml'),
      `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: ${kubeletPort}
readOnlyPort: 0
healthzPort: 0
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
# No KUBE-MARK-*/KUBE-FIREWALL chains on this shared machine (there is no kube-proxy to use them).
makeIPTablesUtilChains: false
# The first status after registration says NotReady (runtime not yet checked); the default 10 s until the
# next one is pure waiting for a test node.
nodeStatusUpdateFrequency: 1s
resolvConf: ""
clusterDomain: cluster.local
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: ${cp.caFile}}
authorization:
  mode: Webhook
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
maxPods: 110
podPidsLimit: -1
`,
    );
    kubelet = group.start('kubelet', join(cp.binDir, 'kubelet'), [
      `--config=${join(dir, 'kubelet-config.yaml')}`,
      `--kubeconfig=${kubeconfig}`,
      '--container-runtime=remote',
      `--container-runtime-endpoint=unix://${sock}`,
      `--hostname-override=${nodeName}`,
      `--root-dir=${join(dir, 'kubelet')}`,
      `--cert-dir=${join(dir, 'kubelet-pki')}`,
      `--pod-infra-container-image=${PAUSE_IMAGE}`,
      '--register-node=true',
      '--logtostderr=true',
      '--v=1',
    ]);
    await waitFor(`node ${nodeName} Ready`, async () => {
      const r = await httpGet(`${cp.server}/api/v1/nodes/${nodeName}`, kubeHeaders);
      if (r.status !== 200) return false;
      const n = JSON.parse(r.body) as { status?: { conditions?: Array<{ type: string; status: string }> } };
      return n.status?.conditions?.some((x) => x.type === 'Ready' && x.status === 'True') ?? false;
    }, { timeoutMs: opts.readyTimeoutMs ?? 120_000, intervalMs: 250, watch: [containerd, kubelet] });
    const tReady = performance.now();
    log(`node ${nodeName} Ready in ${Math.round(tReady - tContainerd)} ms (kubelet pid ${kubelet.pid})`);

    let stopping: Promise<void> | undefined;
    const stop = async () => {
      const tStop = performance.now();
      // 1. Pods first (their netns and volume mounts are torn down by kubelet + containerd).
      const all = await httpGet(`${cp.server}/api/v1/pods`, kubeHeaders).catch(() => undefined);
      const pods = all?.status === 200
        ? ((JSON.parse(all.body) as { items: Array<{ metadata: { name: string; namespace: string } }> }).items ?? [])
        : [];
      for (const p of pods) {
        await deleteRequest(`${cp.server}/api/v1/namespaces/${p.metadata.namespace}/pods/${p.metadata.name}?gracePeriodSeconds=0`, kubeHeaders).catch(() => {});
      }
      // Also with no pods left in the API: pods deleted with grace 0 (or by a namespace deletion) vanish from
      // the API at once while kubelet is still stopping their containers; wait for those tasks too.
      const tasksLeft = (await ctr(['tasks', 'list', '-q']).catch(() => '')).trim() !== '';
      if (pods.length > 0 || tasksLeft) {
        await waitFor('pods deleted', async () => {
          const r = await httpGet(`${cp.server}/api/v1/pods`, kubeHeaders);
          const left = (JSON.parse(r.body) as { items: unknown[] }).items.length;
          // Stopped containers stay listed until kubelet's GC; running tasks are what matters.
          const tasks = (await ctr(['tasks', 'list', '-q'])).trim();
          return left === 0 && tasks === '';
        }, { timeoutMs: 60_000, intervalMs: 250 }).catch((e: unknown) => log(`pods not all gone: ${String(e)}`));
      }
      const tPods = performance.now();
      // 2. kubelet, 3. containerd, 4. anything left (shims, mounts, bridge, sysctls, dir).
      if (kubelet) await group.stopProcess(kubelet);
      if (containerd) await group.stopProcess(containerd);
      await group.stop();
      await cleanupAfterProcesses();
      log(`node stopped: ${pods.length} pods deleted in ${Math.round(tPods - tStop)} ms, daemons and cleanup ${Math.round(performance.now() - tPods)} ms`);
    };
    return {
      nodeName,
      podCIDR,
      gatewayIP: gateway,
      bridge,
      containerdSocket: sock,
      dir,
      pauseImage: PAUSE_IMAGE,
      timings: {
        containerdMs: Math.round(tContainerd - t0),
        nodeReadyMs: Math.round(tReady - tContainerd),
        totalMs: Math.round(tReady - t0),
      },
      processes: group.processes,
      ctr,
      importImage: async (tarPath: string) => {
        await ctr(['images', 'import', tarPath]);
      },
      importRootfsImage,
      importBusyboxImage: async (ref = BUSYBOX_IMAGE) => {
        const root = mkdtempSync(join(dir, 'images', 'busybox-'));
        try {
          for (const d of ['bin', 'tmp', 'etc', 'www']) mkdirSync(join(root, d), { mode: d === 'tmp' ? 0o1777 : 0o755 });
          copyFileSync('/bin/busybox', join(root, 'bin', 'busybox'));
          chmodSync(join(root, 'bin', 'busybox'), 0o755);
          await run(join(root, 'bin', 'busybox'), ['--install', '-s', join(root, 'bin')]);
          // --install writes absolute links to <root>/bin/busybox: point them at /bin/busybox instead.
          for (const f of readdirSync(join(root, 'bin'))) {
            if (f === 'busybox') continue;
            rmSync(join(root, 'bin', f));
            symlinkSync('busybox', join(root, 'bin', f));
          }
          writeFileSync(join(root, 'etc', 'passwd'), 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n');
          writeFileSync(join(root, 'etc', 'group'), 'root:x:0:\nnobody:x:65534:\n');
          await importRootfsImage(ref, root, { cmd: ['/bin/sh'] });
        } finally {
          rmSync(root, { recursive: true, force: true });
        }
        return ref;
      },
      stop: () => {
        stopping ??= stop();
        return stopping;
      },
    };
  } catch (e) {
    if (kubelet) await group.stopProcess(kubelet).catch(() => {});
    await group.stop().catch(() => {});
    await cleanupAfterProcesses().catch(() => {});
    throw e;
  }
}

async function deleteRequest(url: string, opts: { ca: Buffer; token: string }): Promise<void> {
  const { request } = await import('node:https');
  await new Promise<void>((resolve, reject) => {
    const req = request(url, { method: 'DELETE', ca: opts.ca, headers: { Authorization: `Bearer ${opts.token}` }, agent: false }, (res) => {
      res.resume();
      res.on('end', () => resolve());
    });
    req.on('error', reject);
    req.end();
  });
}

