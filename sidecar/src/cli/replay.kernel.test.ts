// `kstreams replay` as a user runs it (the real binary, the native replayer, --netns) against a real
// server in a network namespace: the turn-based negotiation server of the protocol tests, which refuses
// any byte that arrives before it has answered the previous message, so a replay that does not wait for
// each answer fails visibly. The captures are written here per docs/capture.md, with the answers the
// server gives (`OK <i> <sha256 of payload>`), so --compare has a known truth.
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { cpSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cliCommand, Proc, startPeer } from '../../../test/protocols/fixtures/harness.js';
import { writeTestSession, type TestConnection } from '../capture/testing.js';
import { cleanupAll, Netns } from '../netns.js';
import type { ReplaySummary } from './replay.js';

interface Session {
  bytes: number;
  sha: string;
  turns: number;
  rejected: boolean;
  earlyBytes: number;
  end: string;
}

let ns: Netns;
let server: Proc;
let slowServer: Proc;
let port: number;
let slowPort: number;
let root: string;

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'kstreams-replay-'));
  ns = Netns.create('replay');
  server = startPeer(ns, 'negotiation.mjs', ['server', '--host', '127.0.0.1', '--port', '0'], 'negotiation server');
  slowServer = startPeer(ns, 'negotiation.mjs', ['server', '--host', '127.0.0.1', '--port', '0', '--delay', '20'], 'slow negotiation server');
  const listening = async (p: Proc) => Number((await p.waitEvents<{ port: number }>('listening'))[0]!.port);
  [port, slowPort] = await Promise.all([listening(server), listening(slowServer)]);
});

afterAll(async () => {
  await Proc.killAll();
  await cleanupAll();
  rmSync(root, { recursive: true, force: true });
});

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

function frame(payload: Buffer): Buffer {
  const b = Buffer.alloc(4 + payload.length);
  b.writeUInt32BE(payload.length, 0);
  payload.copy(b, 4);
  return b;
}

/** A session of the negotiation protocol as the server answers it: message 0 of 4 bytes, 1 of ~100, then larger. */
function conversation(turns: number, opts: { gapMs?: number; startMs?: number; maxSize?: number } = {}): TestConnection & { bytes: Buffer } {
  const messages = Array.from({ length: turns }, (_, i) => (i === 0 ? randomBytes(4) : i === 1 ? randomBytes(100) : randomBytes(1 + Math.floor(Math.random() * (opts.maxSize ?? 32768)))));
  return {
    startMs: opts.startMs ?? 0,
    turns: messages.map((m, i) => ({ send: frame(m), answer: `OK ${i} ${sha(m)}\n`, gapMs: i ? (opts.gapMs ?? 0) : 0 })),
    bytes: Buffer.concat(messages.map(frame)),
  };
}

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
  summary?: ReplaySummary;
  ms: number;
}

function kstreams(args: string[], timeoutMs = 60_000): Promise<Run> {
  const [cmd, ...pre] = cliCommand();
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const child = spawn(cmd!, [...pre, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    ns.track(child);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      let summary: ReplaySummary | undefined;
      try {
        summary = stdout.trim() ? (JSON.parse(stdout) as ReplaySummary) : undefined;
      } catch {
        summary = undefined;
      }
      resolve({ code, stdout, stderr, summary, ms: Date.now() - t0 });
    });
  });
}

const replay = (dir: string, ...args: string[]) => kstreams(['replay', dir, '--netns', ns.path, ...args]);

/** The server's session lines from `from` on, once `count` of them are there. */
async function sessions(p: Proc, from: number, count: number): Promise<Session[]> {
  const all = await p.waitEvents<Session>('session', from + count, 20_000);
  return all.slice(from);
}

describe('kstreams replay against a real server', () => {
  it('replays each connection turn by turn (the server sees no early byte), with zero differences under --compare', async () => {
    const convs = [conversation(8), conversation(6, { startMs: 50 }), conversation(10, { startMs: 80 })];
    const dir = join(root, 'clean');
    await writeTestSession({ dir, connections: convs });
    const before = slowServer.eventsOf('session').length;
    const r = await replay(dir, '--to', `127.0.0.1:${slowPort}`, '--speed', 'max', '--compare');
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const got = await sessions(slowServer, before, 3);
    // One session per recorded connection, each with the recorded bytes, every message answered, none early.
    expect(got.map((s) => [s.sha, s.turns, s.rejected, s.earlyBytes, s.end]).sort()).toEqual(
      convs.map((c) => [sha(c.bytes), c.turns.length, false, 0, 'eof']).sort(),
    );
    const total = convs.reduce((n, c) => n + c.bytes.length, 0);
    expect(r.summary).toMatchObject({
      type: 'replay',
      connections: 3,
      connectionsReplayed: 3,
      connectionsFailed: 0,
      bytesSent: total,
      turns: 24,
      turnWaitsExpired: 0,
      failures: { connect: 0, reset: 0, closed: 0, stalled: 0, file: 0 },
      compare: { same: 3, differ: 0, differences: [] },
    });
    expect(r.summary!.bytesReceived).toBe(convs.reduce((n, c) => n + c.turns.reduce((m, t) => m + Buffer.byteLength(t.answer as string), 0), 0));
  });

  it('--compare names the exact offset of an injected difference, with an excerpt of both', async () => {
    const dir = join(root, 'diff');
    await writeTestSession({ dir, connections: [conversation(5), conversation(5)] });
    const s2c = join(dir, '20261202T031500Z-test-1/conns/000000002.s2c');
    const recorded = readFileSync(s2c);
    // Byte 0 of the answer to message 3 (turn 4) is its 'O': the recording says 'X' there.
    const at = recorded.indexOf('OK 3 ');
    recorded[at] = 'X'.charCodeAt(0);
    writeFileSync(s2c, recorded);
    const r = await replay(dir, '--to', `127.0.0.1:${port}`, '--speed', 'max', '--compare');
    expect(r.code).toBe(5);
    expect(r.summary!.compare).toMatchObject({ same: 1, differ: 1 });
    expect(r.summary!.compare!.differences).toEqual([
      { session: '20261202T031500Z-test-1', id: '000000002', loop: 0, differsAt: at, answerTo: 4, got: expect.stringMatching(/^OK 3 [0-9a-f]{27}$/), recorded: expect.stringMatching(/^XK 3 [0-9a-f]{27}$/) },
    ]);
    const lines = r.stderr.trimEnd().split('\n');
    expect(lines).toEqual([
      expect.stringMatching(new RegExp(`^kstreams: 20261202T031500Z-test-1/000000002: differs at byte ${at} \\(the answer to turn 4\\): target "OK 3 [0-9a-f]+", recorded "XK 3 [0-9a-f]+"$`)),
      'kstreams: 1 of 2 connections answered differently from the recording',
    ]);
  });

  it('--compare: an answer shorter than recorded differs where it ends', async () => {
    const dir = join(root, 'longer');
    await writeTestSession({ dir, connections: [conversation(3)] });
    const s2c = join(dir, '20261202T031500Z-test-1/conns/000000001.s2c');
    const idx = join(dir, '20261202T031500Z-test-1/conns/000000001.idx');
    const recorded = readFileSync(s2c);
    writeFileSync(s2c, Buffer.concat([recorded, Buffer.from('MORE')]));
    writeFileSync(idx, readFileSync(idx, 'utf8').replace(/"how":"fin","c2s":(\d+),"s2c":(\d+)/, (_m, c, s) => `"how":"fin","c2s":${c},"s2c":${Number(s) + 4}`));
    const r = await replay(dir, '--to', `127.0.0.1:${port}`, '--speed', 'max', '--compare', '--answer-timeout', '0.3');
    expect(r.code).toBe(5);
    expect(r.summary!.compare!.differences[0]).toMatchObject({ differsAt: recorded.length, got: '', recorded: 'MORE' });
  });

  it('--speed 2 takes about half the recorded time, --speed max as long as the server needs', async () => {
    // 3 connections, 5 turns each 250 ms apart, starting 200 ms apart: 1.4 s recorded.
    const dir = join(root, 'paced');
    await writeTestSession({ dir, connections: [0, 200, 400].map((startMs) => conversation(5, { gapMs: 250, startMs, maxSize: 512 })) });
    const before = server.eventsOf('session').length;
    const half = await replay(dir, '--to', `127.0.0.1:${port}`, '--speed', '2');
    expect(half.code).toBe(0);
    const recorded = half.summary!.recordedSeconds;
    expect(recorded).toBeGreaterThanOrEqual(1.4);
    expect(recorded).toBeLessThan(1.45);
    // Stated tolerance: half the recorded time, within -5% (gaps are never shortened) and +25% (scheduling, a loaded machine).
    expect(half.summary!.seconds).toBeGreaterThanOrEqual(recorded / 2 * 0.95);
    expect(half.summary!.seconds, `--speed 2 took ${half.summary!.seconds} s of ${recorded} s`).toBeLessThan((recorded / 2) * 1.25);
    const max = await replay(dir, '--to', `127.0.0.1:${port}`, '--speed', 'max');
    expect(max.code).toBe(0);
    expect(max.summary!.seconds, `--speed max took ${max.summary!.seconds} s`).toBeLessThan(recorded / 4);
    const got = await sessions(server, before, 6);
    expect(got.every((s) => !s.rejected && s.earlyBytes === 0 && s.turns === 5)).toBe(true);
  });

  it('--loop N plays the capture N times, --concurrency bounds the connections open at once', async () => {
    const dir = join(root, 'loop');
    await writeTestSession({ dir, connections: [conversation(3), conversation(3), conversation(3)] });
    const before = slowServer.eventsOf('session').length;
    const r = await replay(dir, '--to', `127.0.0.1:${slowPort}`, '--speed', 'max', '--loop', '4', '--concurrency', '1');
    expect(r.code).toBe(0);
    expect(r.summary).toMatchObject({ loops: 4, concurrency: 1, connections: 12, connectionsReplayed: 12, turns: 36 });
    const got = await sessions(slowServer, before, 12);
    expect(got.every((s) => s.turns === 3 && !s.rejected)).toBe(true);
    // The server answers each message 20 ms late: one connection at a time, the 36 answers follow each
    // other (3 at once would take a third of that).
    expect(r.summary!.seconds).toBeGreaterThanOrEqual(36 * 0.02);
  });

  it('a target that closes mid-conversation: the connection fails as closed, exit 1 with one line', async () => {
    // Messages 0 and 1 in one turn: the server refuses the early bytes and closes.
    const c = conversation(4);
    const [t0, t1, ...rest] = c.turns;
    const dir = join(root, 'closed');
    await writeTestSession({ dir, connections: [{ turns: [{ send: Buffer.concat([t0!.send as Buffer, t1!.send as Buffer]), answer: t0!.answer! }, ...rest] }] });
    const r = await replay(dir, '--to', `127.0.0.1:${port}`, '--speed', 'max');
    expect(r.code).toBe(1);
    expect(r.summary).toMatchObject({ connections: 1, connectionsFailed: 1, failures: { closed: 1 } });
    expect(r.stderr.trimEnd().split('\n')).toEqual([
      'kstreams: 1 of 1 connections did not replay (closed 1); first: 20261202T031500Z-test-1/000000001: closed after 1 of 3 turns: the target closed the connection with turns still to send',
    ]);
  });

  it('an unreachable target: exit 1 at once with one line, no summary', async () => {
    const dir = join(root, 'unreachable');
    await writeTestSession({ dir, connections: [conversation(2), conversation(2)] });
    const r = await replay(dir, '--to', '127.0.0.1:1');
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toBe(`kstreams: cannot reach the target 127.0.0.1:1: connect: Connection refused (ECONNREFUSED); is it listening, and reachable from netns ${ns.path}?\n`);
  });

  it('a missing or corrupt capture, or a bad flag: exit 2 with one line naming the file and the offset, nothing sent', async () => {
    const dir = join(root, 'corrupt');
    await writeTestSession({ dir, connections: [conversation(3)] });
    const conns = join(dir, '20261202T031500Z-test-1/conns');
    const before = server.eventsOf('session').length;
    const cases: Array<[string, () => void, RegExp]> = [
      ['truncated c2s', () => truncateSync(join(conns, '000000001.c2s'), 50), /^kstreams: cannot replay .*: .*\/conns\/000000001\.c2s: byte 50: 50 bytes, but the end record \(.*000000001\.idx line 5, byte \d+\) says \d+: a truncated or overwritten data file$/],
      ['index line', () => writeFileSync(join(conns, '000000001.idx'), readFileSync(join(conns, '000000001.idx'), 'utf8').replace('"r":"turn"', '"r":"tunr"')), /^kstreams: cannot replay .*: .*000000001\.idx: byte \d+ \(line 2\): unknown record kind r="tunr"/],
      ['session.json', () => writeFileSync(join(dir, '20261202T031500Z-test-1/session.json'), '{"format":"kstreams-capture","version":9}'), /^kstreams: cannot replay .*session\.json: byte 0: capture version 9 is not one this kstreams reads \(1\)/],
      ['missing', () => rmSync(dir, { recursive: true }), /^kstreams: cannot replay .*\/corrupt: .*\/corrupt: no such capture directory$/],
    ];
    for (const [what, damage, message] of cases) {
      cpSync(dir, `${dir}.bak`, { recursive: true });
      damage();
      const r = await replay(dir, '--to', `127.0.0.1:${port}`);
      expect(r.code, what).toBe(2);
      expect(r.stdout, what).toBe('');
      expect(r.stderr.split('\n'), what).toHaveLength(2);
      expect(r.stderr.trimEnd(), what).toMatch(message);
      rmSync(dir, { recursive: true, force: true });
      cpSync(`${dir}.bak`, dir, { recursive: true });
      rmSync(`${dir}.bak`, { recursive: true });
    }
    for (const [flags, message] of [
      [['--speed', 'fast'], /^kstreams: option '--speed <factor\|max>' argument 'fast' is invalid\. must be a factor greater than 0 .*; see kstreams replay --help$/],
      [['--concurrency', '0'], /argument '0' is invalid\. must be a whole number from 1 to 65536/],
      [['--loop', '1.5'], /argument '1\.5' is invalid\. must be a whole number/],
      [['--to', 'nowhere'], /^kstreams: --to nowhere: must be HOST:PORT/],
    ] as Array<[string[], RegExp]>) {
      const r = await kstreams(['replay', dir, ...(flags[0] === '--to' ? [] : ['--to', `127.0.0.1:${port}`]), ...flags]);
      expect(r.code, flags.join(' ')).toBe(2);
      expect(r.stderr.trimEnd(), flags.join(' ')).toMatch(message);
      expect(r.stderr.trimEnd().split('\n')).toHaveLength(1);
    }
    // Nothing of the refused replays reached the server.
    expect(server.eventsOf('session').length).toBe(before);
  });
});
