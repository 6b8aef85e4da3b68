// The kernel's per-user pipe budget must never cost primary traffic. Without CAP_SYS_RESOURCE (the
// sidecar's case) every pipe of a uid counts against fs.pipe-user-pages-soft (16384 pages = 64 MiB by
// default), shared by every process of that uid on the node: all sidecars of all pods. Once it is used
// up, F_SETPIPE_SZ fails (EPERM) and new pipes get 2 slots. The engine runs here in a child process as a
// dedicated unprivileged uid (setpriv: no capabilities), so the budget it exhausts is its own, not the
// machine's, and the machine-wide sysctl is left alone.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Netns, cleanupAll } from '../../sidecar/src/netns.js';
import type { EngineConfig, EngineStats } from '../lib/types.js';
import { Peer, startPeer, startServer, until, type ClientReport, type ConnReport } from './fixtures/engine-harness.js';

const KB = 1024;
const MB = 1 << 20;
const PAGE = 4096;
let pod: Netns;
const peers: Peer[] = [];

beforeAll(() => {
  pod = Netns.create('pipe-budget');
});

afterEach(() => {
  for (const p of peers.splice(0)) if (p.child.exitCode === null) p.child.kill('SIGKILL');
});

afterAll(async () => {
  await cleanupAll();
});

const sysctl = (name: string) => Number(readFileSync(`/proc/sys/fs/${name}`, 'utf8').trim());

// A uid nobody else on this machine uses (no passwd entry needed), different per test process, so its
// pipe budget is ours alone even when several engineers run this suite at once.
const UID = String(3_000_000_000 + (process.pid % 1_000_000));

// (The system python: a pyenv shim under /root is not readable by that uid.) Holds 1 MiB pipes until F_SETPIPE_SZ is refused (the budget is then used up), and keeps them until
// stdin closes.
const BALLAST = `
import fcntl, json, os, sys
pipes, refused = [], False
while len(pipes) < 4096 and not refused:
    r, w = os.pipe()
    pipes.append((r, w))
    try:
        fcntl.fcntl(r, 1031, 1 << 20)  # F_SETPIPE_SZ
    except PermissionError:
        refused = True
print(json.dumps({"event": "full", "pipes": len(pipes), "refused": refused}), flush=True)
sys.stdin.read()
`;

type Sample = { event: 'sample'; rssKb: number | null; stats: EngineStats };

/** The engine in a child process inside `pod`, running as UID without any capability. */
async function unprivilegedEngine(config: Omit<EngineConfig, 'netnsPath'>, nofile = 4096): Promise<{ child: Peer; port: number }> {
  const script = fileURLToPath(new URL('./fixtures/engine-child.mjs', import.meta.url));
  // prlimit first (as root: raising the hard limit needs CAP_SYS_RESOURCE), then drop to the uid.
  const child = new Peer(
    pod.spawn('prlimit', [`--nofile=${nofile}:${nofile}`, 'setpriv', '--reuid', UID, '--regid', UID, '--clear-groups', '--inh-caps=-all', process.execPath, script, JSON.stringify(config)], {
      stdio: ['pipe', 'pipe', 'pipe'],
    }),
  );
  peers.push(child);
  const [l] = await child.waitFor<{ port: number }>('listening', 1, 15_000);
  // It really is unprivileged: the budget applies to it.
  const status = readFileSync(`/proc/${child.pid}/status`, 'utf8');
  expect(/^Uid:\s+(\d+)/m.exec(status)![1]).toBe(UID);
  expect(/^CapEff:\s+([0-9a-f]+)/m.exec(status)![1]).toMatch(/^0+$/);
  return { child, port: l!.port };
}

const samples = (p: Peer) => p.lines.filter((x) => x.event === 'sample') as unknown as Sample[];

const fleetScript = fileURLToPath(new URL('./fixtures/keepalive-fleet.mjs', import.meta.url));
function fleet(args: string[]): Peer {
  const child = new Peer(pod.spawn('prlimit', ['--nofile=16384:16384', process.execPath, fleetScript, ...args]));
  peers.push(child);
  return child;
}

describe('the per-user pipe budget', () => {
  it('2000 concurrent keep-alive connections, all mirrored, as an unprivileged uid: none skipped, kernel memory bounded and reported', async () => {
    const CONNS = 2000;
    const REQUESTS = 4;
    const soft = sysctl('pipe-user-pages-soft');
    const app = fleet(['server', '--host', '127.0.0.1', '--port', '0']);
    const staging = fleet(['server', '--host', '127.0.0.1', '--port', '0']);
    const [a] = await app.waitFor<{ port: number }>('listening', 1, 15_000);
    const [m] = await staging.waitFor<{ port: number }>('listening', 1, 15_000);
    const { child } = await unprivilegedEngine(
      {
        listen: { host: '127.0.0.1', port: 0 },
        upstream: { host: '127.0.0.1', port: a!.port },
        mirrors: [{ name: 'staging', host: '127.0.0.1', port: m!.port, samplingPercent: 100 }],
        pipeSize: 256 * KB,
        mirrorConnectTimeoutMs: 5000, turnTimeoutMs: 1000, mirrorBufferSize: 4 << 20,
      },
      16384,
    );
    const [l] = child.lines.filter((x) => x.event === 'listening') as unknown as { port: number }[];
    const clients = fleet(['client', '--host', '127.0.0.1', '--port', String(l!.port), '--conns', String(CONNS), '--requests', String(REQUESTS), '--interval', '1000']);
    const [done] = await clients.waitFor<{ answered: number; errorCount: number; errors: string[]; ms: number }>('done', 1, 120_000);
    const end = await until('every connection closed and no mirror open', () => {
      const st = samples(child).at(-1)?.stats;
      return st !== undefined && st.connectionsClosed === CONNS && st.targets[0]!.connectionsActive === 0 && st;
    }, 60_000);
    const all = samples(child).map((x) => x.stats);
    const peak = (f: (st: EngineStats) => number) => Math.max(...all.map(f));
    const peakPipes = peak((st) => st.pipeBytesInUse + st.pipeBytesPooled);
    console.log(
      `${CONNS} keep-alive connections x ${REQUESTS} requests in ${done!.ms} ms: peak ${peak((st) => st.connectionsActive)} open, ` +
        `peak pipe capacity ${(peakPipes / MB).toFixed(1)} MiB (${peak((st) => st.pipesInUse + st.pipesPooled)} pipes) of a ${(soft * PAGE) / MB} MiB budget, ` +
        `peak mirror buffer ${(peak((st) => st.mirrorBufferInUse) / MB).toFixed(1)} MiB of ${(end.mirrorBufferBudget / MB).toFixed(0)}`,
    );
    expect({ answered: done!.answered, errors: done!.errorCount }).toEqual({ answered: CONNS * REQUESTS, errors: 0 });
    // All open at once, every one mirrored: before pipes were pooled, ~113 mirrored connections at
    // 256 KiB filled the 64 MiB budget and the rest were skipped.
    expect(peak((st) => st.connectionsActive)).toBe(CONNS);
    expect(end.targets[0]).toMatchObject({ connectionsMirrored: CONNS, connectionsSkipped: 0, connectionsCut: 0, connectFailures: 0, bytesDropped: 0 });
    expect(end).toMatchObject({ upstreamConnectFailures: 0, setupFailures: 0, connectionsReset: 0, pipeResizeFailures: 0 });
    // Kernel memory held in pipes stays within the budget (no pipe was refused its size), is reported,
    // and is given back: at the end no connection holds a pipe.
    expect(peakPipes).toBeGreaterThan(0);
    expect(peakPipes).toBeLessThan(soft * PAGE);
    expect(end.pipesInUse).toBe(0);
    expect(peak((st) => st.mirrorBufferInUse)).toBeLessThanOrEqual(end.mirrorBufferBudget);
    // The mirror target got every request of every connection.
    const atStaging = await staging.waitFor<{ lines: number }>('conn', CONNS, 30_000);
    expect(atStaging.filter((c) => c.lines !== REQUESTS)).toEqual([]);
    child.child.stdin!.end();
  });

  it('more slow mirrored connections than full-size pipes would fit: pooled pipes mirror them all, none skipped or reset', async () => {
    const soft = sysctl('pipe-user-pages-soft');
    // Per mirrored connection at 1 MiB: P = 256 KiB, R = 1 MiB, M = 1 MiB.
    const perConn = (MB / 4 + MB + MB) / PAGE;
    expect(soft, 'fs.pipe-user-pages-soft = 0 means no budget: nothing to exhaust').toBeGreaterThan(0);
    const fit = Math.floor(soft / perConn);
    const conns = fit + 12;
    expect(conns, `fs.pipe-user-pages-soft=${soft} needs too many connections for this test`).toBeLessThanOrEqual(200);

    const app = await startServer(pod, '127.0.0.1');
    peers.push(app.peer);
    const mirror = await startServer(pod, '127.0.0.1');
    peers.push(mirror.peer);
    const { child, port } = await unprivilegedEngine({
      listen: { host: '127.0.0.1', port: 0 },
      upstream: { host: '127.0.0.1', port: app.port },
      mirrors: [{ name: 'm', host: '127.0.0.1', port: mirror.port, samplingPercent: 100 }],
      pipeSize: MB,
      mirrorConnectTimeoutMs: 5000, turnTimeoutMs: 1000, mirrorBufferSize: 4 << 20,
    });
    // Long-lived: 256 KiB each at 64 KiB/s, ~4 s, so all connections are open at the same time.
    const bytes = 256 * KB;
    const client = startPeer(pod, ['client', '--host', '127.0.0.1', '--port', String(port), '--conns', String(conns), '--bytes', String(bytes), '--rate', String(64 * KB)]);
    peers.push(client);
    const [r] = await client.waitFor<ClientReport>('done', 1, 90_000);
    const end = await until('every connection closed and no mirror open', () => {
      const s = samples(child).at(-1)?.stats;
      return s !== undefined && s.connectionsClosed === conns && s.targets[0]!.connectionsActive === 0 && s;
    });
    const peak = Math.max(...samples(child).map((x) => x.stats.connectionsActive));
    const t = end.targets[0]!;
    console.log(
      `pipe budget ${soft} pages (room for ${fit} mirrored connections at 1 MiB), ${conns} concurrent (peak ${peak}): ` +
        `${r!.conns.filter((c) => c.error).length} client errors, upstreamConnectFailures ${end.upstreamConnectFailures}, ` +
        `pipeResizeFailures ${end.pipeResizeFailures}, mirrored ${t.connectionsMirrored}, skipped ${t.connectionsSkipped}, ` +
        `cut ${t.connectionsCut}, connect failures ${t.connectFailures}`,
    );
    // Primary traffic is never lost: every client connection delivered its bytes exactly.
    expect(r!.conns.filter((c) => c.error || c.sentBytes !== bytes)).toEqual([]);
    const atApp = await app.peer.waitFor<ConnReport>('conn', conns);
    expect(atApp.map((c) => c.sha).sort()).toEqual(r!.conns.map((c) => c.sentSha).sort());
    expect(end).toMatchObject({ connectionsAccepted: conns, upstreamConnectFailures: 0 });
    // They were open at once, more than the budget holds at full size (before pooling, 12 of them were
    // skipped here): a connection holds pipes only while bytes are in them, so every one is mirrored.
    expect(peak).toBe(conns);
    const peakPipeBytes = Math.max(...samples(child).map((x) => x.stats.pipeBytesInUse + x.stats.pipeBytesPooled));
    console.log(`peak pipe capacity held: ${(peakPipeBytes / MB).toFixed(1)} MiB for ${conns} connections (budget ${(soft * PAGE) / MB} MiB)`);
    expect(peakPipeBytes).toBeLessThan(soft * PAGE);
    expect(t).toMatchObject({ connectionsMirrored: conns, connectionsSkipped: 0, connectionsCut: 0, connectFailures: 0 });
    expect(t.bytesMirrored).toBe(conns * bytes);
    expect(t.bytesDropped).toBe(0);
    // The mirrors that were opened got exact copies.
    const atMirror = await mirror.peer.waitFor<ConnReport>('conn', t.connectionsMirrored);
    const sent = new Set(r!.conns.map((c) => c.sentSha));
    expect(atMirror.filter((c) => !sent.has(c.sha) || c.bytes !== bytes)).toEqual([]);
    child.child.stdin!.end();
  });

  it('starts when other processes of its uid (other sidecars) hold the whole budget, proxies every connection and still mirrors them with 2-slot pipes', async () => {
    // Another process of the same uid takes the budget: 1 MiB pipes until the kernel refuses.
    const ballast = new Peer(
      pod.spawn('setpriv', ['--reuid', UID, '--regid', UID, '--clear-groups', '--inh-caps=-all', '/usr/bin/python3', '-c', BALLAST], { stdio: ['pipe', 'pipe', 'pipe'] }),
    );
    peers.push(ballast);
    const [full] = await ballast.waitFor<{ pipes: number; refused: boolean }>('full', 1, 15_000);
    expect(full!.refused).toBe(true);
    const app = await startServer(pod, '127.0.0.1', ['--respond', String(MB)]);
    peers.push(app.peer);
    const mirror = await startServer(pod, '127.0.0.1');
    peers.push(mirror.peer);
    // Before: start() failed here with EPERM from its probe F_SETPIPE_SZ.
    const { child, port } = await unprivilegedEngine({
      listen: { host: '127.0.0.1', port: 0 },
      upstream: { host: '127.0.0.1', port: app.port },
      mirrors: [{ name: 'm', host: '127.0.0.1', port: mirror.port, samplingPercent: 100 }],
      pipeSize: MB,
      mirrorConnectTimeoutMs: 5000, turnTimeoutMs: 1000, mirrorBufferSize: 4 << 20,
    });
    const conns = 5;
    const bytes = 4 * MB;
    const client = startPeer(pod, ['client', '--host', '127.0.0.1', '--port', String(port), '--conns', String(conns), '--bytes', String(bytes)]);
    peers.push(client);
    const [r] = await client.waitFor<ClientReport>('done', 1, 90_000);
    expect(r!.conns.filter((c) => c.error || c.sentBytes !== bytes || c.bytes !== MB)).toEqual([]);
    const atApp = await app.peer.waitFor<ConnReport>('conn', conns);
    expect(atApp.map((c) => c.sha).sort()).toEqual(r!.conns.map((c) => c.sentSha).sort());
    expect(r!.conns.map((c) => c.sha).sort()).toEqual(atApp.map((c) => c.sentSha).sort());
    const end = await until('every connection closed', () => {
      const s = samples(child).at(-1)?.stats;
      return s !== undefined && s.connectionsClosed === conns && s;
    });
    console.log(`budget held by another process (${full!.pipes} pipes): ${JSON.stringify(end)}`);
    expect(end).toMatchObject({ connectionsAccepted: conns, upstreamConnectFailures: 0, pipeResizeFailures: conns, bytesClientToApp: conns * bytes });
    // Every new pipe has 2 slots and none may grow: P's batches are 2 slots, and so is M, which holds
    // one of them. The mirror spills to its memfd instead of growing M (before M was taken at one batch's
    // size, the full-size M was refused and every mirror was skipped). A cut would be counted, never a gap.
    const t = end.targets[0]!;
    expect(t).toMatchObject({ connectionsMirrored: conns, connectionsSkipped: 0 });
    expect(t.bytesMirrored + t.bytesDropped).toBe(conns * bytes);
    const atMirror = await mirror.peer.waitFor<ConnReport>('conn', conns);
    const sent = new Set(r!.conns.map((c) => c.sentSha));
    const whole = atMirror.filter((c) => c.bytes === bytes);
    expect(whole.filter((c) => !sent.has(c.sha))).toEqual([]);
    expect(whole.length).toBe(conns - t.connectionsCut);
    child.child.stdin!.end();
    ballast.child.stdin!.end();
  });

  it('a pipeSize above fs.pipe-max-size fails start() for an unprivileged engine, with the reason', async () => {
    const max = sysctl('pipe-max-size');
    const script = fileURLToPath(new URL('./fixtures/engine-child.mjs', import.meta.url));
    const config = { listen: { host: '127.0.0.1', port: 0 }, upstream: { host: '127.0.0.1', port: 9 }, mirrors: [], pipeSize: max * 2, mirrorConnectTimeoutMs: 1000, turnTimeoutMs: 1000, mirrorBufferSize: 4 << 20 };
    const child = new Peer(
      pod.spawn('setpriv', ['--reuid', UID, '--regid', UID, '--clear-groups', '--inh-caps=-all', process.execPath, script, JSON.stringify(config)], {
        stdio: ['pipe', 'pipe', 'pipe'],
      }),
    );
    peers.push(child);
    const err = await child.waitFor('listening', 1, 15_000).then(
      () => undefined,
      (e: Error) => e,
    );
    expect(err?.message).toMatch(/EPERM/);
    expect(err?.message).toMatch(/pipe-max-size/);
  });
});
