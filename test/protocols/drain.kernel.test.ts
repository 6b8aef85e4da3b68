// Detach and live edits never truncate a stream with a FIN. Long connections stream at a fixed rate
// through the real `kstreams run` while it is interrupted (SIGINT) or edited (SIGHUP); the app and the
// mirror target (fixtures/stream-peer.mjs) hash what each connection brought and record how it ended.
// A connection must either arrive whole (its sha is the client's) or end with a reset: an orderly EOF
// after a truncated stream would let the app take a cut-off upload for a complete one.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { cleanupAll, link, Netns } from '../../sidecar/src/netns.js';
import {
  KstreamsRun,
  Proc,
  resetCount,
  skLookupLinkCount,
  sorted,
  startPeer,
  streamPathYaml,
  waitFor,
  writeStreamPath,
  type StreamPathOptions,
} from './fixtures/harness.js';

const MiB = 1 << 20;
const CONNS = 4;
const BYTES = 32 * MiB;
const RATE = 8 * MiB; // 4 s per stream

interface Conn {
  id: number;
  bytes: number;
  sha: string;
  end: string;
  remote: string;
}
interface ClientConn {
  bytes: number;
  queued: number;
  sha: string;
  written: number;
  end: string;
  ms: number;
}
interface ClientDone {
  ms: number;
  conns: ClientConn[];
}

let app: Netns;
let staging: Netns;
let client: Netns;
let appAddress: string;
let clientAddress: string;
let stagingAddress: string;
let dir: string;
let nextPort = 7400;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'kstreams-drain-'));
  app = Netns.create('drn-app');
  staging = Netns.create('drn-stg');
  client = Netns.create('drn-cli');
  const l = link(client, app);
  clientAddress = l.aAddress;
  appAddress = l.bAddress;
  stagingAddress = link(app, staging).bAddress;
});

afterEach(async () => {
  await Proc.killAll();
});

afterAll(async () => {
  await Proc.killAll();
  await cleanupAll();
  rmSync(dir, { recursive: true, force: true });
});

interface Scene {
  port: number;
  appServer: Proc;
  mirror: Proc;
  run: KstreamsRun;
  spec: StreamPathOptions;
  file: string;
}

async function server(ns: Netns, host: string, port: number, label: string): Promise<Proc> {
  const p = startPeer(ns, 'stream-peer.mjs', ['server', '--host', host, '--port', String(port), '--progress', String(4 * MiB)], label);
  await p.waitEvents('listening', 1, 15_000);
  return p;
}

async function scene(name: string, extra: string[], spec: Partial<StreamPathOptions> = {}): Promise<Scene> {
  const port = nextPort++;
  const [appServer, mirror] = await Promise.all([server(app, appAddress, port, 'app'), server(staging, stagingAddress, port, 'mirror')]);
  const o: StreamPathOptions = { name, port, targets: { staging: `${stagingAddress}:${port}` }, ...spec };
  const file = writeStreamPath(dir, o);
  const run = KstreamsRun.start(file, app, extra);
  await run.attached();
  return { port, appServer, mirror, run, spec: o, file };
}

function streams(port: number, conns = CONNS, bytes = BYTES, rate = RATE): Proc {
  const args = ['client', '--host', appAddress, '--port', String(port), '--conns', String(conns), '--bytes', String(bytes)];
  return startPeer(client, 'stream-peer.mjs', rate ? [...args, '--rate', String(rate)] : args, 'stream client');
}

/** Resolves once every one of `count` connections has brought at least `bytes` to the app. */
function streaming(appServer: Proc, count: number, bytes: number): Promise<unknown> {
  return appServer.until(`${count} connections past ${bytes} bytes`, () => {
    const ended = appServer.eventsOf<Conn>('conn').filter((c) => c.bytes < bytes);
    if (ended.length) throw new Error(`connections ended before ${bytes} bytes: ${JSON.stringify(ended)}`);
    const best = new Map<number, number>();
    for (const p of appServer.eventsOf<{ id: number; bytes: number }>('progress')) best.set(p.id, Math.max(best.get(p.id) ?? 0, p.bytes));
    return [...best.values()].filter((b) => b >= bytes).length >= count;
  }, 20_000);
}

/** Connections that ended with an orderly EOF without having received the whole stream. */
function truncatedEofs(conns: Conn[], sent: ClientConn[]): Conn[] {
  const whole = new Set(sent.filter((c) => c.queued === c.bytes).map((c) => c.sha));
  return conns.filter((c) => c.end === 'eof' && !(c.bytes === BYTES && whole.has(c.sha)));
}

/** Every connection either arrived whole (sha of a complete client stream) or was reset. */
function wholeOrReset(conns: Conn[], sent: ClientConn[]) {
  const whole = new Set(sent.filter((c) => c.queued === c.bytes).map((c) => c.sha));
  return conns.map((c) => (c.bytes === BYTES && whole.has(c.sha) ? 'whole' : c.end === 'ECONNRESET' ? 'reset' : `truncated ${c.bytes} B, end ${c.end}`));
}

describe('drain on detach', () => {
  it('--drain-timeout 1 passes mid-stream: every connection is whole or reset, none ends in a truncated EOF', async () => {
    const s = await scene('drain-deadline', ['--drain-timeout', '1']);
    const c = streams(s.port);
    await streaming(s.appServer, CONNS, 4 * MiB);
    const t0 = Date.now();
    const { code, summary } = await s.run.interrupt();
    const stopMs = Date.now() - t0;
    const [done] = await c.waitEvents<ClientDone>('done', 1, 30_000);
    const atApp = await s.appServer.waitEvents<Conn>('conn', CONNS, 20_000);
    const atMirror = await s.mirror.waitEvents<Conn>('conn', CONNS, 20_000);

    expect(truncatedEofs(atApp, done!.conns)).toEqual([]);
    // Each stream had ~3.5 s left at SIGINT: the 1 s deadline passed on all of them.
    expect(wholeOrReset(atApp, done!.conns)).toEqual(Array(CONNS).fill('reset'));
    expect(done!.conns.map((x) => x.end === 'eof')).toEqual(Array(CONNS).fill(false));
    // The mirror target cannot take a cut-off stream for a whole one either.
    expect(truncatedEofs(atMirror, done!.conns)).toEqual([]);
    expect(code).toBe(0);
    expect(stopMs).toBeGreaterThanOrEqual(900);
    expect(stopMs).toBeLessThan(8_000);
    expect(resetCount(summary!)).toBe(CONNS);
  });

  it('a long enough drain lets every stream finish; new connections meanwhile go to the app directly', async () => {
    const s = await scene('drain-complete', ['--drain-timeout', '30']);
    const c = streams(s.port);
    await streaming(s.appServer, CONNS, 4 * MiB);
    const t0 = Date.now();
    s.run.signal('SIGINT');
    // Interception goes first: once the sk_lookup link is gone, a new connection reaches the app itself
    // (from the client's own address, not the engine's), while the old streams are still moving.
    await waitFor('the sk_lookup link to be detached', () => skLookupLinkCount(app) === 0, 10_000);
    const direct = streams(s.port, 1, 64 * 1024, 0);
    const [d] = await direct.waitEvents<ClientDone>('done', 1, 10_000);
    expect(d!.conns[0]!.end).toBe('eof');
    const straight = await s.appServer.until('the direct connection at the app', () => s.appServer.eventsOf<Conn>('conn').find((x) => x.remote === clientAddress), 10_000);
    expect(straight).toMatchObject({ bytes: 64 * 1024, end: 'eof' });
    expect(s.run.running).toBe(true);

    const [done] = await c.waitEvents<ClientDone>('done', 1, 30_000);
    const { code, summary } = await s.run.ended(40_000);
    const stopMs = Date.now() - t0;
    const atApp = (await s.appServer.waitEvents<Conn>('conn', CONNS + 1, 20_000)).filter((x) => x.remote !== clientAddress);
    const atMirror = await s.mirror.waitEvents<Conn>('conn', CONNS, 20_000);

    const sent = sorted(done!.conns.map((x) => x.sha));
    expect(done!.conns.map((x) => x.end)).toEqual(Array(CONNS).fill('eof'));
    expect(atApp.map((x) => [x.bytes, x.end])).toEqual(Array(CONNS).fill([BYTES, 'eof']));
    expect(sorted(atApp.map((x) => x.sha))).toEqual(sent);
    expect(sorted(atMirror.map((x) => x.sha))).toEqual(sent);
    expect(code).toBe(0);
    // Ended when the streams did, not at the 30 s deadline.
    expect(stopMs).toBeLessThan(20_000);
    expect(summary).toMatchObject({ connections: CONNS, bytesPrimary: CONNS * BYTES, bytesDropped: 0 });
    expect(summary!.targets[0]).toMatchObject({ connectionsMirrored: CONNS, connectionsCut: 0, bytesMirrored: CONNS * BYTES });
    expect(resetCount(summary!)).toBe(0);
  });

  it('a second SIGINT during the drain resets at once: quick exit, no truncated EOF', async () => {
    const s = await scene('drain-second-signal', ['--drain-timeout', '30']);
    const c = streams(s.port);
    await streaming(s.appServer, CONNS, 4 * MiB);
    s.run.signal('SIGINT');
    // The drain has begun once the interception is gone.
    await waitFor('the sk_lookup link to be detached', () => skLookupLinkCount(app) === 0, 10_000);
    await streaming(s.appServer, CONNS, 8 * MiB);
    expect(s.run.running).toBe(true);
    const t0 = Date.now();
    s.run.signal('SIGINT');
    await s.run.ended(10_000);
    const exitMs = Date.now() - t0;
    const [done] = await c.waitEvents<ClientDone>('done', 1, 30_000);
    const atApp = await s.appServer.waitEvents<Conn>('conn', CONNS, 20_000);
    const atMirror = await s.mirror.waitEvents<Conn>('conn', CONNS, 20_000);

    expect(exitMs).toBeLessThan(3_000);
    expect(truncatedEofs(atApp, done!.conns)).toEqual([]);
    expect(wholeOrReset(atApp, done!.conns)).toEqual(Array(CONNS).fill('reset'));
    expect(truncatedEofs(atMirror, done!.conns)).toEqual([]);
  });
});

describe('live edits', () => {
  it('a pipeSize edit (SIGHUP) leaves live connections untouched; a new connection after it works', async () => {
    const s = await scene('drain-pipesize', ['--drain-timeout', '30'], { pipeSize: 256 * 1024 });
    const c = streams(s.port);
    await streaming(s.appServer, CONNS, 4 * MiB);
    writeFileSync(s.file, streamPathYaml({ ...s.spec, pipeSize: 64 * 1024 }));
    s.run.signal('SIGHUP');
    await s.run.proc.until('the reload', () => /kstreams: reload(ed|.*failed)/.test(s.run.stderr), 10_000);
    expect(s.run.stderr).toContain('kstreams: reloaded ');

    const after = streams(s.port, 1, 4 * MiB, 0);
    const [a] = await after.waitEvents<ClientDone>('done', 1, 20_000);
    const [done] = await c.waitEvents<ClientDone>('done', 1, 30_000);
    const atApp = await s.appServer.waitEvents<Conn>('conn', CONNS + 1, 20_000);
    const atMirror = await s.mirror.waitEvents<Conn>('conn', CONNS + 1, 20_000);

    expect(a!.conns[0]!.end).toBe('eof');
    const newOne = atApp.find((x) => x.sha === a!.conns[0]!.sha);
    expect(newOne).toMatchObject({ bytes: 4 * MiB, end: 'eof' });
    expect(newOne!.remote).not.toBe(clientAddress); // through the engine
    expect(atMirror.map((x) => x.sha)).toContain(a!.conns[0]!.sha);

    const sent = sorted(done!.conns.map((x) => x.sha));
    expect(done!.conns.map((x) => x.end)).toEqual(Array(CONNS).fill('eof'));
    const live = atApp.filter((x) => x !== newOne);
    expect(live.map((x) => [x.bytes, x.end])).toEqual(Array(CONNS).fill([BYTES, 'eof']));
    expect(sorted(live.map((x) => x.sha))).toEqual(sent);
    expect(sorted(atMirror.filter((x) => x.sha !== a!.conns[0]!.sha).map((x) => x.sha))).toEqual(sent);

    const { code, summary } = await s.run.interrupt();
    expect(code).toBe(0);
    expect(summary).toMatchObject({ connections: CONNS + 1, bytesPrimary: CONNS * BYTES + 4 * MiB, bytesDropped: 0 });
    expect(summary!.targets[0]).toMatchObject({ connectionsMirrored: CONNS + 1, connectionsCut: 0 });
    expect(resetCount(summary!)).toBe(0);
  });
});
