// Turn-paced mirrors with a protocol that refuses early bytes. fixtures/negotiation.mjs answers each
// message and rejects any byte of the next one that was there before its answer went out (PostgreSQL
// does this after an SSLRequest). It runs as the app and as the mirror target; clients go through the
// real `kstreams run`. A mirror that gets the client's bytes in the turns the client sent them sees
// every session through; one that gets them all at once rejects the second message.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { cleanupAll, link, Netns } from '../../sidecar/src/netns.js';
import { KstreamsRun, Proc, sorted, startPeer, writeStreamPath, type Summary } from './fixtures/harness.js';

interface Session {
  bytes: number;
  sha: string;
  turns: number;
  rejected: boolean;
  earlyBytes: number;
  end: string;
  remote: string;
}
interface ClientSession {
  sentBytes: number;
  sentSha: string;
  turns: number;
  error?: string;
  errLine?: string;
  ms: number;
}
interface ClientDone {
  ms: number;
  sessions: ClientSession[];
}

let app: Netns;
let staging: Netns;
let client: Netns;
let appAddress: string;
let stagingAddress: string;
let dir: string;
const runs: KstreamsRun[] = [];

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'kstreams-negotiation-'));
  app = Netns.create('neg-app');
  staging = Netns.create('neg-stg');
  client = Netns.create('neg-cli');
  appAddress = link(client, app).bAddress;
  stagingAddress = link(app, staging).bAddress;
});

afterEach(async () => {
  for (const r of runs.splice(0)) await r.proc.stop('SIGKILL');
  await Proc.killAll();
});

afterAll(async () => {
  await Proc.killAll();
  await cleanupAll();
  rmSync(dir, { recursive: true, force: true });
});

async function server(ns: Netns, host: string, port: number, extra: string[] = []): Promise<Proc> {
  const p = startPeer(ns, 'negotiation.mjs', ['server', '--host', host, '--port', String(port), ...extra], `negotiation server ${host}:${port}`);
  await p.waitEvents('listening', 1, 15_000);
  return p;
}

async function clients(port: number, args: string[], timeoutMs = 60_000): Promise<ClientDone> {
  const p = startPeer(client, 'negotiation.mjs', ['client', '--host', appAddress, '--port', String(port), ...args], 'negotiation client');
  const [done] = await p.waitEvents<ClientDone>('done', 1, timeoutMs);
  return done!;
}

function attach(name: string, port: number, targetPort: number): KstreamsRun {
  const file = writeStreamPath(dir, { name, port, targets: { staging: `${stagingAddress}:${targetPort}` } });
  const run = KstreamsRun.start(file, app);
  runs.push(run);
  return run;
}

describe('the negotiation fixture itself (no kstreams)', () => {
  it('accepts clients that wait for each answer and rejects one that sends two messages at once', async () => {
    const s = await server(app, appAddress, 7300);
    const good = await clients(7300, ['--sessions', '4', '--turns', '6']);
    expect(good.sessions.map((c) => [c.turns, c.error])).toEqual(Array(4).fill([6, undefined]));
    const bad = await clients(7300, ['--sessions', '2', '--pipeline-first']);
    expect(bad.sessions.map((c) => c.errLine)).toEqual([expect.stringMatching(/^ERR early \d+$/), expect.stringMatching(/^ERR early \d+$/)]);
    const seen = await s.waitEvents<Session>('session', 6);
    expect(seen.filter((x) => !x.rejected).map((x) => x.sha).sort()).toEqual(sorted(good.sessions.map((c) => c.sentSha)));
    expect(seen.filter((x) => x.rejected)).toHaveLength(2);
  });
});

describe('turn-paced mirrors through kstreams run', () => {
  it('the mirror target sees every session complete, in turns, byte-exact', async () => {
    const N = 16;
    const TURNS = 6;
    const appServer = await server(app, appAddress, 7301);
    const mirror = await server(staging, stagingAddress, 7301);
    const run = attach('negotiation', 7301, 7301);
    await run.attached();

    const r = await clients(7301, ['--sessions', String(N), '--turns', String(TURNS)]);
    expect(r.sessions.filter((c) => c.error || c.turns !== TURNS)).toEqual([]);
    const sent = sorted(r.sessions.map((c) => c.sentSha));

    const atApp = await appServer.waitEvents<Session>('session', N);
    expect(atApp.filter((s) => s.rejected || s.end !== 'eof')).toEqual([]);
    expect(sorted(atApp.map((s) => s.sha))).toEqual(sent);

    const atMirror = await mirror.waitEvents<Session>('session', N, 30_000);
    // Every mirrored session went through all its turns without one early byte...
    expect(atMirror.map((s) => ({ rejected: s.rejected, earlyBytes: s.earlyBytes, turns: s.turns, end: s.end }))).toEqual(
      Array(N).fill({ rejected: false, earlyBytes: 0, turns: TURNS, end: 'eof' }),
    );
    // ...and got exactly the client's bytes.
    expect(sorted(atMirror.map((s) => s.sha))).toEqual(sent);

    const { code, summary } = await run.interrupt();
    expect(code).toBe(0);
    expect(summary).toMatchObject<Partial<Summary>>({ connections: N, bytesDropped: 0 });
    expect(summary!.targets[0]).toMatchObject({ name: 'staging', connectionsMirrored: N, connectionsCut: 0, connectFailures: 0, bytesDropped: 0 });
  });

  it('long chatty sessions (1000 small turns each, like a database session) are mirrored whole, not cut', async () => {
    const N = 2;
    const TURNS = 1000;
    const appServer = await server(app, appAddress, 7304);
    const mirror = await server(staging, stagingAddress, 7304);
    const run = attach('negotiation-chatty', 7304, 7304);
    await run.attached();
    const r = await clients(7304, ['--sessions', String(N), '--turns', String(TURNS), '--max-size', '300']);
    expect(r.sessions.filter((c) => c.error || c.turns !== TURNS)).toEqual([]);
    await appServer.waitEvents<Session>('session', N);
    const atMirror = await mirror.waitEvents<Session>('session', N, 30_000);
    const { summary } = await run.interrupt();
    expect.soft(summary!.targets[0]).toMatchObject({ connectionsMirrored: N, connectionsCut: 0, bytesDropped: 0 });
    expect(atMirror.map((s) => ({ rejected: s.rejected, turns: s.turns, end: s.end }))).toEqual(Array(N).fill({ rejected: false, turns: TURNS, end: 'eof' }));
    expect(sorted(atMirror.map((s) => s.sha))).toEqual(sorted(r.sessions.map((c) => c.sentSha)));
  });

  it('bytes a client pipelined before the app answered reach the mirror together: both reject alike', async () => {
    const appServer = await server(app, appAddress, 7302);
    const mirror = await server(staging, stagingAddress, 7302);
    const run = attach('negotiation-pipelined', 7302, 7302);
    await run.attached();
    const r = await clients(7302, ['--sessions', '4', '--pipeline-first']);
    expect(r.sessions.map((c) => c.errLine)).toEqual(Array(4).fill(expect.stringMatching(/^ERR early \d+$/)));
    const atApp = await appServer.waitEvents<Session>('session', 4);
    const atMirror = await mirror.waitEvents<Session>('session', 4, 30_000);
    expect(atApp.map((s) => s.rejected)).toEqual([true, true, true, true]);
    expect(atMirror.map((s) => s.rejected)).toEqual([true, true, true, true]);
    expect(sorted(atMirror.map((s) => s.sha))).toEqual(sorted(r.sessions.map((c) => c.sentSha)));
    const { summary } = await run.interrupt();
    expect(summary!.targets[0]).toMatchObject({ connectionsMirrored: 4, connectionsCut: 0 });
  });

  it('a mirror target slower than turnTimeoutMs gets its turns on the timeout and never slows the primary', async () => {
    const N = 4;
    const TURNS = 4;
    const DELAY_MS = 1500; // > the default spec.mirror.turnTimeoutMs of 1000
    const appServer = await server(app, appAddress, 7303);
    const slow = await server(staging, stagingAddress, 7303, ['--delay', String(DELAY_MS), '--lenient']);

    // Unmirrored: the same clients straight to the app.
    const direct = await clients(7303, ['--sessions', String(N), '--turns', String(TURNS)]);
    expect(direct.sessions.filter((c) => c.error || c.turns !== TURNS)).toEqual([]);
    await appServer.waitEvents<Session>('session', N);

    const run = attach('negotiation-slow', 7303, 7303);
    await run.attached();
    const mirrored = await clients(7303, ['--sessions', String(N), '--turns', String(TURNS)]);
    expect(mirrored.sessions.filter((c) => c.error || c.turns !== TURNS)).toEqual([]);
    // Waiting for the mirror's answers would take TURNS x DELAY_MS = 6 s per session; the primary must
    // take about as long as unmirrored (the machine is noisy: 2x plus a second, still far below 6 s).
    expect(mirrored.ms).toBeLessThan(2 * direct.ms + 1000);

    const atApp = await appServer.waitEvents<Session>('session', 2 * N);
    expect(sorted(atApp.slice(N).map((s) => s.sha))).toEqual(sorted(mirrored.sessions.map((c) => c.sentSha)));
    // The slow target still gets every byte, later.
    const atSlow = await slow.waitEvents<Session>('session', N, 40_000);
    expect(sorted(atSlow.map((s) => s.sha))).toEqual(sorted(mirrored.sessions.map((c) => c.sentSha)));

    const { code, summary } = await run.interrupt();
    expect(code).toBe(0);
    const t = summary!.targets[0]!;
    expect(t).toMatchObject({ connectionsMirrored: N, connectionsCut: 0 });
    expect(t.turnWaitsExpired).toBeGreaterThan(0);
  });
});
