// The sk_lookup interception on the real kernel: a "pod" network namespace with an app on the tapped
// port and a fixture process standing in for the engine (its own listener + Interception), clients in
// the root namespace over a veth pair and inside the pod over loopback.
import { spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { closeSync, openSync, statSync } from 'node:fs';
import net from 'node:net';
import { dirname, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Netns, link, cleanupAll, type Link } from '../../sidecar/src/netns.js';
import { Interception } from '../lib/interception.js';
import { describeKernelProbe, probeKernelFeatures } from '../lib/kernel.js';
import type { NativeError } from '../lib/types.js';

const fixture = resolve(dirname(fileURLToPath(import.meta.url)), 'fixtures/interception-fixture.ts');
const DEADLINE_MS = 10_000;

interface Greeting {
  via: 'app' | 'listener';
  localAddress: string;
  localPort: number;
  remoteAddress: string;
}

/** A fixture process in a namespace, read as JSON lines. */
class Fixture {
  private readonly queue: Record<string, unknown>[] = [];
  private waiter: (() => void) | undefined;
  private stderr = '';
  readonly exited: Promise<unknown>;

  constructor(readonly child: ChildProcess) {
    this.exited = once(child, 'exit');
    child.stderr!.on('data', (d: Buffer) => (this.stderr += d.toString()));
    createInterface({ input: child.stdout! }).on('line', (line) => {
      this.queue.push(JSON.parse(line) as Record<string, unknown>);
      this.waiter?.();
    });
    child.once('exit', () => this.waiter?.());
  }

  static start(ns: Netns, args: string[], options: { wrap?: string[] } = {}): Fixture {
    const command = [...(options.wrap ?? []), process.execPath, '--import', 'tsx', fixture, ...args];
    return new Fixture(ns.spawn(command[0]!, command.slice(1), { stdio: ['pipe', 'pipe', 'pipe'] }));
  }

  async next(): Promise<Record<string, unknown>> {
    const deadline = Date.now() + DEADLINE_MS * 2;
    while (this.queue.length === 0) {
      if (this.child.exitCode !== null || this.child.signalCode !== null) {
        throw new Error(`fixture exited (${this.child.exitCode ?? this.child.signalCode}) without answering: ${this.stderr}`);
      }
      if (Date.now() > deadline) throw new Error(`fixture did not answer in time: ${this.stderr}`);
      await new Promise<void>((r) => {
        this.waiter = r;
        setTimeout(r, 200);
      });
    }
    return this.queue.shift()!;
  }

  async ask(command: string): Promise<Record<string, unknown>> {
    this.child.stdin!.write(`${command}\n`);
    return this.next();
  }
}

/** Connects from this process (root namespace), returns the greeting and the still-open socket. */
async function connect(host: string, port: number): Promise<{ greeting: Greeting; socket: net.Socket }> {
  const socket = net.connect({ host, port });
  socket.setTimeout(DEADLINE_MS, () => socket.destroy(new Error(`no greeting from ${host}:${port} in time`)));
  const lines = createInterface({ input: socket });
  const [line] = (await once(lines, 'line')) as [string];
  socket.setTimeout(0);
  lines.close();
  socket.resume(); // closing readline paused it
  return { greeting: JSON.parse(line) as Greeting, socket };
}

async function greet(host: string, port: number): Promise<Greeting> {
  const { greeting, socket } = await connect(host, port);
  socket.destroy();
  return greeting;
}

/** Connects from inside the namespace with socat (optionally from a given source), returns the greeting. */
function greetFrom(ns: Netns, target: string, source?: string): Greeting {
  const address = `${target}${source ? `,bind=${source}` : ''}`;
  const out = ns.run('socat', ['-T', '5', '-', address]);
  return JSON.parse(out.split('\n')[0]!) as Greeting;
}

interface BpfObject {
  id: number;
  name?: string;
  prog_id?: number;
  netns_ino?: number;
}

function bpftool(kind: 'prog' | 'link' | 'map'): BpfObject[] {
  const r = spawnSync('bpftool', ['-j', kind, 'show'], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`bpftool ${kind} show failed: ${r.stderr}`);
  return JSON.parse(r.stdout || '[]') as BpfObject[];
}

function within<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), DEADLINE_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Polls until `check` passes: the kernel frees programs and maps after their last fd, in deferred work. */
async function eventually(check: () => void): Promise<void> {
  const deadline = Date.now() + DEADLINE_MS;
  for (;;) {
    try {
      check();
      return;
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

function expectGone(ready: Record<string, unknown>, ns: Netns): void {
  const ino = statSync(ns.path).ino;
  const progs = bpftool('prog');
  expect(progs.filter((p) => p.id === ready['programId'])).toEqual([]);
  expect(bpftool('link').filter((l) => l.id === ready['linkId'] || l.netns_ino === ino)).toEqual([]);
  const mapIds = ready['mapIds'] as number[];
  expect(bpftool('map').filter((m) => mapIds.includes(m.id))).toEqual([]);
}

function expectAttached(ready: Record<string, unknown>, ns: Netns): void {
  const prog = bpftool('prog').find((p) => p.id === ready['programId']);
  expect(prog?.name).toBe('kstreams_steer');
  const ourLink = bpftool('link').find((l) => l.id === ready['linkId']);
  expect(ourLink).toMatchObject({ prog_id: ready['programId'], netns_ino: statSync(ns.path).ino });
}

describe('sk_lookup interception', () => {
  const APP_PORT = 18080;
  const POD_V6 = 'fd00:6b73:2::1';
  let pod: Netns;
  let veth: Link;
  let app: Fixture;
  const steers: Fixture[] = [];

  async function startSteer(...options: string[]): Promise<{ steer: Fixture; ready: Record<string, unknown> }> {
    const steer = Fixture.start(pod, ['steer', String(APP_PORT), ...options]);
    steers.push(steer);
    const ready = await steer.next();
    expect(ready['error']).toBeUndefined();
    expect(ready['ready']).toBe(true);
    return { steer, ready };
  }

  async function stopSteer(steer: Fixture): Promise<void> {
    if (steer.child.exitCode === null && steer.child.signalCode === null) {
      steer.child.kill('SIGKILL');
      await steer.exited;
    }
  }

  beforeAll(async () => {
    pod = Netns.create('icpt-pod');
    veth = link(undefined, pod);
    // A global IPv6 address in the pod: in-pod IPv6 clients from ::1 are bypassed by default (ADR 0004).
    pod.run('ip', ['-6', 'addr', 'add', `${POD_V6}/64`, 'dev', veth.bDevice, 'nodad']);
    app = Fixture.start(pod, ['app', String(APP_PORT)]);
    expect(await app.next()).toEqual({ ready: true });
  });

  afterEach(async () => {
    await Promise.all(steers.splice(0).map(stopSteer));
  });

  afterAll(async () => {
    await pod?.destroy();
    await cleanupAll();
  });

  it('the kernel offers what interception needs', () => {
    expect(probeKernelFeatures()).toEqual({ bpfSyscall: true, btf: true, skLookup: true, sockmap: true, unknown: [], problems: [] });
  });

  it('says in words what a kernel or a sandbox lacks', () => {
    const features = describeKernelProbe({
      bpfSyscall: false,
      bpfSyscallError: 'EPERM',
      btf: false,
      skLookup: false,
      skLookupError: null,
      sockmap: false,
      sockmapError: 'EPERM',
    });
    // A sandbox that refuses bpf(): whether sk_lookup and SOCKMAP exist cannot be told from there.
    expect(features).toMatchObject({ bpfSyscall: false, btf: false, skLookup: false, sockmap: false, unknown: ['skLookup', 'sockmap'] });
    expect(features.problems).toEqual([
      expect.stringMatching(/^BPF syscall: the kernel refused \(EPERM\); the sidecar needs CAP_BPF and CAP_NET_ADMIN/),
      expect.stringMatching(/CONFIG_DEBUG_INFO_BTF/),
      expect.stringMatching(/^sk_lookup programs: unknown, cannot probe without CAP_BPF \(the kernel refused: EPERM\)/),
      expect.stringMatching(/^SOCKMAP: unknown, cannot probe without CAP_BPF \(the kernel refused: EPERM\)/),
    ]);
    // A kernel that answered: sk_lookup is missing.
    expect(describeKernelProbe({ bpfSyscall: true, bpfSyscallError: null, btf: true, skLookup: false, skLookupError: null, sockmap: true, sockmapError: null }).problems).toEqual([
      expect.stringMatching(/sk_lookup programs are not supported \(Linux 5\.9\+ needed\)/),
    ]);
  });

  it('without interception, the app answers on its port', async () => {
    const direct = await greet(veth.bAddress, APP_PORT);
    expect(direct).toMatchObject({ via: 'app', localPort: APP_PORT });
  });

  it('steers connections for the tapped port to the listener, which sees the original destination', async () => {
    const direct = await greet(veth.bAddress, APP_PORT);
    const { steer, ready } = await startSteer();
    expectAttached(ready, pod);

    const steered = await greet(veth.bAddress, APP_PORT);
    expect(steered.via).toBe('listener');
    // What the app would have seen: the same local address and port.
    expect({ ...steered, via: 'app' }).toEqual({ ...direct, remoteAddress: steered.remoteAddress });
    expect(steered.localAddress).toBe(`::ffff:${veth.bAddress}`);

    // The listener's own port is not tapped: it is reachable as itself.
    expect(await greet(veth.bAddress, ready['listenerPort'] as number)).toMatchObject({
      via: 'listener',
      localPort: ready['listenerPort'],
    });
    // Over loopback inside the pod, IPv4 and IPv6 alike.
    expect(greetFrom(pod, `TCP4:127.0.0.1:${APP_PORT}`)).toMatchObject({
      via: 'listener',
      localAddress: '::ffff:127.0.0.1',
      localPort: APP_PORT,
    });
    expect(greetFrom(pod, `TCP6:[${POD_V6}]:${APP_PORT}`)).toMatchObject({ via: 'listener', localAddress: POD_V6, localPort: APP_PORT });

    expect((await steer.ask('counters'))['counters']).toEqual({ steered: 3, bypassed: 0, noListener: 0, assignFailed: 0 });
  });

  it('leaves connections from the default bypass sources 127.0.0.6 and ::1 to the app, and counts them', async () => {
    const { steer } = await startSteer();
    expect(greetFrom(pod, `TCP4:127.0.0.1:${APP_PORT}`, '127.0.0.6')).toMatchObject({
      via: 'app',
      localPort: APP_PORT,
      remoteAddress: '::ffff:127.0.0.6',
    });
    expect(greetFrom(pod, `TCP4:${veth.bAddress}:${APP_PORT}`, '127.0.0.6')).toMatchObject({ via: 'app' });
    expect(greetFrom(pod, `TCP6:[::1]:${APP_PORT}`)).toMatchObject({ via: 'app', remoteAddress: '::1' });
    expect(greetFrom(pod, `TCP6:[${POD_V6}]:${APP_PORT}`, '[::1]')).toMatchObject({ via: 'app', remoteAddress: '::1' });
    // Any other source in the pod is steered.
    expect(greetFrom(pod, `TCP4:127.0.0.1:${APP_PORT}`, '127.0.0.7')).toMatchObject({ via: 'listener' });
    expect(greetFrom(pod, `TCP6:[${POD_V6}]:${APP_PORT}`)).toMatchObject({ via: 'listener' });
    expect((await steer.ask('counters'))['counters']).toEqual({ steered: 2, bypassed: 4, noListener: 0, assignFailed: 0 });
  });

  it('a single bypassSource replaces the default of its own family only', async () => {
    const { steer } = await startSteer(`bypass=${POD_V6}`);
    expect(greetFrom(pod, `TCP6:[${POD_V6}]:${APP_PORT}`)).toMatchObject({ via: 'app', remoteAddress: POD_V6 });
    expect(greetFrom(pod, `TCP6:[::1]:${APP_PORT}`)).toMatchObject({ via: 'listener' });
    expect(greetFrom(pod, `TCP4:127.0.0.1:${APP_PORT}`, '127.0.0.6')).toMatchObject({ via: 'app' });
    expect((await steer.ask('counters'))['counters']).toMatchObject({ steered: 1, bypassed: 2 });
  });

  it('when the listener process is killed -9 mid-stream, new connections reach the app and nothing of ours stays attached', async () => {
    const { steer, ready } = await startSteer();
    const { greeting, socket } = await connect(veth.bAddress, APP_PORT);
    expect(greeting.via).toBe('listener');
    socket.write('in flight\n');
    const [echo] = (await within(once(socket, 'data'), 'the echo')) as [Buffer];
    expect(echo.toString()).toBe('in flight\n');

    const closed = once(socket, 'close');
    socket.on('error', () => {}); // RST or FIN, both end the connection
    steer.child.kill('SIGKILL');
    await within(steer.exited, 'the killed fixture to exit');
    await within(closed, 'the in-flight connection to end');

    expect(await greet(veth.bAddress, APP_PORT)).toMatchObject({ via: 'app', localPort: APP_PORT });
    expect(greetFrom(pod, `TCP6:[::1]:${APP_PORT}`)).toMatchObject({ via: 'app' });
    await eventually(() => expectGone(ready, pod));
  });

  it('when the listener closes but the program stays attached, connections reach the app', async () => {
    const { steer } = await startSteer();
    expect((await greet(veth.bAddress, APP_PORT)).via).toBe('listener');
    expect(await steer.ask('close-listener')).toEqual({ closed: true });
    expect(await greet(veth.bAddress, APP_PORT)).toMatchObject({ via: 'app', localPort: APP_PORT });
    expect((await steer.ask('counters'))['counters']).toEqual({ steered: 1, bypassed: 0, noListener: 1, assignFailed: 0 });
  });

  it('detach() closes every link, program and map fd it opened, and is idempotent', async () => {
    const { steer, ready } = await startSteer();
    expectAttached(ready, pod);
    expect((await greet(veth.bAddress, APP_PORT)).via).toBe('listener');
    const ours = (fds: unknown): string[] =>
      (fds as string[]).filter((fd) => /-> (anon_inode:\[?bpf|net:|socket:)/.test(fd));
    expect(ours((await steer.ask('fds'))['fds']).filter((fd) => fd.includes('bpf')).length).toBeGreaterThanOrEqual(5);
    const detached = await steer.ask('detach'); // the fixture calls detach() twice
    // Only the kinds of fd an attach opens: libuv may open unrelated ones (threads, signals) meanwhile.
    expect(ours(detached['fds'])).toEqual(ours(ready['fdsBefore']));
    await eventually(() => expectGone(ready, pod));
    expect((await greet(veth.bAddress, APP_PORT)).via).toBe('app');
    expect(await steer.ask('counters')).toMatchObject({ error: { code: 'EKSTREAMS_DETACHED' } });
    // The process lives on with its listener: only the steering is gone.
    expect(await greet(veth.bAddress, ready['listenerPort'] as number)).toMatchObject({ via: 'listener' });
    await stopSteer(steer);
  });

  it('with an IPv4-only listener, IPv6 lookups are left to the app and counted as refused', async () => {
    const { steer } = await startSteer('listen=0.0.0.0');
    expect(greetFrom(pod, `TCP4:127.0.0.1:${APP_PORT}`)).toMatchObject({ via: 'listener' });
    expect(greetFrom(pod, `TCP6:[${POD_V6}]:${APP_PORT}`)).toMatchObject({ via: 'app' });
    expect((await steer.ask('counters'))['counters']).toEqual({ steered: 1, bypassed: 0, noListener: 0, assignFailed: 1 });
  });

  describe('gives a clear error', () => {
    let server: net.Server;
    let listenerFd: number;
    beforeAll(async () => {
      server = net.createServer();
      server.listen(0, '127.0.0.1');
      await once(server, 'listening');
      listenerFd = (server as unknown as { _handle: { fd: number } })._handle.fd;
    });
    afterAll(() => server.close());

    function attachError(config: Parameters<typeof Interception.attach>[0]): NativeError {
      try {
        Interception.attach(config);
      } catch (e) {
        return e as NativeError;
      }
      throw new Error('attach did not fail');
    }

    it('for a network namespace that does not exist', () => {
      const e = attachError({ netnsPath: '/run/netns/ks-no-such-pod', port: APP_PORT, listenerFd });
      expect(e).toMatchObject({ code: 'ENOENT', syscall: 'open', errno: -2 });
      expect(e.message).toMatch(/network namespace \/run\/netns\/ks-no-such-pod not found/);
    });

    it('for a path that is not a network namespace', () => {
      const e = attachError({ netnsPath: '/proc/self/ns/uts', port: APP_PORT, listenerFd });
      expect(e.code).toBe('EKSTREAMS_NOT_NETNS');
      expect(e.message).toMatch(/is not a network namespace/);
    });

    it('for an fd that is not a socket, not open, or not listening', async () => {
      const file = openSync('/dev/null', 'r');
      try {
        expect(attachError({ port: APP_PORT, listenerFd: file })).toMatchObject({
          code: 'ENOTSOCK',
          message: expect.stringMatching(new RegExp(`listener fd ${file} is not a socket`)),
        });
      } finally {
        closeSync(file);
      }
      expect(attachError({ port: APP_PORT, listenerFd: 65_000 })).toMatchObject({
        code: 'EBADF',
        message: expect.stringMatching(/listener fd 65000 is not open/),
      });
      const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
      await once(client, 'connect');
      try {
        const fd = (client as unknown as { _handle: { fd: number } })._handle.fd;
        expect(attachError({ port: APP_PORT, listenerFd: fd })).toMatchObject({
          code: 'EKSTREAMS_NOT_LISTENER',
          message: expect.stringMatching(/is not a listening TCP socket \(not listening\)/),
        });
      } finally {
        client.destroy();
      }
    });

    it('for a listener that lives in another network namespace', () => {
      const e = attachError({ netnsPath: pod.path, port: APP_PORT, listenerFd });
      expect(e.code).toBe('EKSTREAMS_LISTENER_NETNS');
      expect(e.message).toContain(`not in ${pod.path}`);
    });

    it('for bad arguments, naming the argument', () => {
      expect(() => Interception.attach({ port: 0, listenerFd })).toThrow(/options\.port/);
      expect(() => Interception.attach({ port: APP_PORT, listenerFd, bypassSource: 'pod-a' })).toThrow(
        /options\.bypassSources\[0\]/,
      );
    });

    it('without CAP_BPF and CAP_NET_ADMIN', async () => {
      const steer = Fixture.start(pod, ['steer', String(APP_PORT)], {
        wrap: ['setpriv', '--bounding-set=-bpf,-net_admin,-sys_admin,-perfmon', '--inh-caps=-all', '--'],
      });
      steers.push(steer);
      const answer = await steer.next();
      expect(answer['error']).toMatchObject({ code: 'EPERM', message: expect.stringMatching(/needs CAP_BPF and CAP_NET_ADMIN/) });
      expect((await greet(veth.bAddress, APP_PORT)).via).toBe('app');
    });
  });
});
