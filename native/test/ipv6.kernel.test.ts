// IPv6 through interception and the engine (docs/adr/0004-ipv6-bypass.md). A "pod" namespace holds the
// app (dual-stack [::]:P), the engine and the sk_lookup program; a "clients" namespace reaches it over a
// veth with an IPv4 /30 and an IPv6 /64. The engine's upstream to the original destination must carry a
// source the program lets through, or the engine steers its own connection back to itself.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Netns, link, cleanupAll } from '../../sidecar/src/netns.js';
import { Engine } from '../lib/engine.js';
import { Interception } from '../lib/interception.js';
import { DEFAULT_UPSTREAM_SOURCES, sourcesPerFamily } from '../lib/types.js';
import type { EngineConfig, InterceptionConfig } from '../lib/types.js';
import { Peer, runClient, startPeer, startServer, until, type ConnReport } from './fixtures/engine-harness.js';

const MB = 1 << 20;
const POD_V6 = 'fd00:6b73:1::1';
const CLIENT_V6 = 'fd00:6b73:1::2';
let pod: Netns;
let clients: Netns;
let podV4: string;
const engines: Engine[] = [];
const interceptions: Interception[] = [];
const peers: Peer[] = [];

beforeAll(() => {
  pod = Netns.create('v6-pod');
  clients = Netns.create('v6-cli');
  const l = link(pod, clients);
  podV4 = l.aAddress;
  // nodad: usable at once, instead of "tentative" for the second or so of duplicate address detection.
  pod.run('ip', ['-6', 'addr', 'add', `${POD_V6}/64`, 'dev', l.aDevice, 'nodad']);
  clients.run('ip', ['-6', 'addr', 'add', `${CLIENT_V6}/64`, 'dev', l.bDevice, 'nodad']);
});

afterEach(async () => {
  // Interception first, so new connections go straight to the app, then the engines.
  for (const i of interceptions.splice(0)) i.detach();
  await Promise.all(engines.splice(0).map((e) => e.stop()));
  for (const p of peers.splice(0)) if (p.child.exitCode === null) p.child.kill('SIGKILL');
});

afterAll(async () => {
  await cleanupAll();
});

async function server(ns: Netns, host: string, args: string[] = []): Promise<{ peer: Peer; port: number }> {
  const s = await startServer(ns, host, args);
  peers.push(s.peer);
  return s;
}

/** The engine (original destination) and the program steering appPort to it, as the sidecar wires them. */
function tap(appPort: number, extra: Partial<EngineConfig> = {}, bypass: Partial<InterceptionConfig> = {}) {
  const engine = Engine.start({
    netnsPath: pod.path,
    upstream: 'original-destination',
    mirrors: [],
    pipeSize: MB,
    mirrorConnectTimeoutMs: 1000, turnTimeoutMs: 1000, mirrorBufferSize: 4 << 20,
    ...extra,
  });
  engines.push(engine);
  const interception = Interception.attach({ netnsPath: pod.path, port: appPort, listenerFd: engine.listenerFd, ...bypass });
  interceptions.push(interception);
  return { engine, interception };
}

describe('the shared source defaults', () => {
  it('engine and interception default to one source per family, and a single address replaces only its own family', () => {
    expect(DEFAULT_UPSTREAM_SOURCES).toEqual(['127.0.0.6', '::1']);
    expect(sourcesPerFamily(undefined, undefined)).toEqual(['127.0.0.6', '::1']);
    expect(sourcesPerFamily('127.0.0.9', undefined)).toEqual(['127.0.0.9', '::1']);
    expect(sourcesPerFamily('::6', undefined)).toEqual(['::6', '127.0.0.6']);
    expect(sourcesPerFamily('::6', ['127.0.0.6'])).toEqual(['127.0.0.6']);
  });

  it('the engine refuses two upstream sources of one family', () => {
    expect(() =>
      Engine.start({ upstream: 'original-destination', upstreamSources: ['::1', '::2'], mirrors: [], pipeSize: MB, mirrorConnectTimeoutMs: 100, turnTimeoutMs: 1000, mirrorBufferSize: 4 << 20 }),
    ).toThrow(expect.objectContaining({ code: 'EINVAL', message: expect.stringMatching(/at most one upstream source per address family/) }));
  });
});

describe('an IPv6 client of a tapped dual-stack app', () => {
  it('without an IPv6 upstream source, the engine steers its own upstream back to itself (the loop)', async () => {
    const app = await server(pod, '::');
    // What the engine did before it had a v6 default: bind 127.0.0.6 for IPv4 only.
    const { engine, interception } = tap(app.port, { upstreamSources: ['127.0.0.6'] }, { bypassSources: ['127.0.0.6'] });
    const client = startPeer(clients, ['client', '--host', POD_V6, '--port', String(app.port), '--bytes', '1000']);
    peers.push(client);
    // One client connection, yet the engine keeps accepting: each upstream connection (from the pod's own
    // address, unbound) is steered to the engine again, which connects again, and so on.
    const s = await until('the engine to accept its own connections', () => {
      const st = engine.stats();
      return st.connectionsAccepted >= 50 && st;
    });
    const c = interception.counters();
    console.log(`loop: ${s.connectionsAccepted} connections accepted for 1 client connection`);
    expect(c.steered).toBeGreaterThanOrEqual(50);
    expect(c.bypassed).toBe(0);
    // While it loops, no connection reaches the app (the app reports each one when it closes).
    expect(app.peer.lines.filter((l) => l.event === 'conn')).toEqual([]);
    interceptions.splice(0).forEach((i) => i.detach());
    await Promise.all(engines.splice(0).map((e) => e.stop()));
    // At teardown, the one upstream connect still in flight may reach the app: from the pod's own address.
    const atApp = app.peer.lines.filter((l) => l.event === 'conn');
    expect(atApp.length).toBeLessThanOrEqual(1);
    for (const conn of atApp) expect(conn['remote']).toBe(POD_V6);
  });

  it('with the default sources, its bytes reach the app exactly, from ::1, through one engine hop; the mirror gets them too', async () => {
    const app = await server(pod, '::', ['--respond', String(8 * MB)]);
    const m = await server(pod, '::1');
    const { engine, interception } = tap(app.port, { mirrors: [{ name: 'm', host: '::1', port: m.port, samplingPercent: 100 }] });
    // Paced: on a shared 2-core machine a mirror starved of CPU is (rightly) cut, and then cannot be compared.
    const r = await runClient(clients, POD_V6, app.port, ['--bytes', String(64 * MB), '--rate', String(40 * MB)]);
    const c = r.conns[0]!;
    expect(c.error).toBeUndefined();
    const [a] = await app.peer.waitFor<ConnReport>('conn');
    expect(a).toMatchObject({ bytes: 64 * MB, sha: c.sentSha, remote: '::1' });
    expect({ bytes: c.bytes, sha: c.sha }).toEqual({ bytes: 8 * MB, sha: a!.sentSha });
    const [atMirror] = await m.peer.waitFor<ConnReport>('conn');
    expect(atMirror).toMatchObject({ bytes: 64 * MB, sha: c.sentSha });
    const s = await until('the connection to close', () => {
      const st = engine.stats();
      return st.connectionsClosed === 1 && st.targets[0]!.connectionsActive === 0 && st;
    });
    expect(s).toMatchObject({ connectionsAccepted: 1, bytesClientToApp: 64 * MB, bytesAppToClient: 8 * MB });
    expect(s.targets[0]).toMatchObject({ connectionsCut: 0, bytesMirrored: 64 * MB, bytesDropped: 0 });
    expect(interception.counters()).toEqual({ steered: 1, bypassed: 1, noListener: 0, assignFailed: 0 });
  });

  it('IPv4 is unchanged: a v4 client reaches the app from 127.0.0.6 through the same engine', async () => {
    const app = await server(pod, '::', ['--respond', String(MB)]);
    const { engine, interception } = tap(app.port);
    const r = await runClient(clients, podV4, app.port, ['--bytes', String(16 * MB)]);
    const [a] = await app.peer.waitFor<ConnReport>('conn');
    expect(a).toMatchObject({ bytes: 16 * MB, sha: r.conns[0]!.sentSha, remote: '::ffff:127.0.0.6' });
    expect(r.conns[0]).toMatchObject({ bytes: MB, sha: a!.sentSha });
    expect(interception.counters()).toEqual({ steered: 1, bypassed: 1, noListener: 0, assignFailed: 0 });
    expect(engine.stats().connectionsAccepted).toBe(1);
  });

  it('inside the pod, a v6 client from a global address is steered, one from ::1 is left to the app (the limit)', async () => {
    const app = await server(pod, '::');
    const { engine, interception } = tap(app.port);
    const steered = await runClient(pod, POD_V6, app.port, ['--bytes', '5000']);
    const direct = await runClient(pod, '::1', app.port, ['--bytes', '7000']);
    const atApp = await app.peer.waitFor<ConnReport>('conn', 2);
    const bySize = (n: number) => atApp.find((x) => x.bytes === n);
    // The first came through the engine (the app sees the engine's source), the second directly.
    expect(bySize(5000)).toMatchObject({ sha: steered.conns[0]!.sentSha, remote: '::1' });
    expect(bySize(7000)).toMatchObject({ sha: direct.conns[0]!.sentSha, remote: '::1' });
    expect(engine.stats().connectionsAccepted).toBe(1);
    expect(interception.counters()).toEqual({ steered: 1, bypassed: 2, noListener: 0, assignFailed: 0 });
  });
});
