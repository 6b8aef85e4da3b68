// Turn-paced mirrors (docs/adr/0005-turn-paced-mirrors.md): a mirror receives the client's bytes in the
// turns of the primary conversation. Servers here are line protocols on 127.0.0.1, in this process:
// a strict negotiator (like PostgreSQL after an SSLRequest) rejects a line that arrives before it has
// answered the previous one; answers can be delayed to make a mirror target slower than the app.
import { afterEach, describe, expect, it } from 'vitest';
import net from 'node:net';
import { Engine } from '../lib/engine.js';
import type { EngineConfig, TargetStats } from '../lib/types.js';
import { startLocalEngine, until } from './fixtures/engine-harness.js';

const engines: Engine[] = [];
const servers: net.Server[] = [];
const sockets: net.Socket[] = [];

afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  await Promise.all(engines.splice(0).map((e) => e.stop()));
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
});

interface Session {
  lines: string[];
  /** Lines that arrived before the answer to the previous one had been sent. */
  early: number;
  rejected: boolean;
  ended: boolean;
  /** For each line, whether the server had answered every earlier line when it arrived. */
  answeredBefore: boolean[];
  /** What each read brought and what had been answered by then: a failing pacing assertion shows it. */
  reads: string[];
}

interface LineServer {
  port: number;
  sessions: Session[];
}

/**
 * Answers every line with `ok <line>` after `delayMs`. `strict`: a line that arrives while an answer is
 * pending is rejected (`FATAL`, connection closed), as PostgreSQL rejects bytes after an SSLRequest.
 * `greeting`: sent on accept, before any line (a server-first protocol), or `greetAfterMs` later.
 * `silent`: never answers.
 */
async function lineServer(
  opts: { delayMs?: number; strict?: boolean; greeting?: string; greetAfterMs?: number; silent?: boolean } = {},
): Promise<LineServer> {
  const sessions: Session[] = [];
  const server = net.createServer({ allowHalfOpen: true }, (sock) => {
    sockets.push(sock);
    sock.on('error', () => undefined);
    const s: Session = { lines: [], early: 0, rejected: false, ended: false, answeredBefore: [], reads: [] };
    sessions.push(s);
    let buf = '';
    let pending = 0;
    if (opts.greeting && opts.greetAfterMs) {
      // A greeting still to come counts as a pending answer: a line before it is early.
      pending = 1;
      setTimeout(() => {
        pending--;
        if (!sock.destroyed) sock.write(`${opts.greeting}\n`);
      }, opts.greetAfterMs);
    } else if (opts.greeting) sock.write(`${opts.greeting}\n`);
    sock.setEncoding('latin1');
    let answered = 0;
    sock.on('data', (d: string) => {
      s.reads.push(`${JSON.stringify(d)} (answered ${answered}, pending ${pending})`);
      buf += d;
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        s.lines.push(line);
        s.answeredBefore.push(pending === 0);
        if (pending > 0) {
          s.early++;
          if (opts.strict) {
            s.rejected = true;
            sock.end('FATAL: received data before the answer\n');
            return;
          }
        }
        if (opts.silent) continue;
        pending++;
        const answer = () => {
          pending--;
          answered++;
          if (!sock.destroyed) sock.write(`ok ${line}\n`);
        };
        if (opts.delayMs) setTimeout(answer, opts.delayMs);
        else answer();
      }
    });
    sock.on('end', () => {
      s.ended = true;
      sock.end();
    });
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { port: (server.address() as net.AddressInfo).port, sessions };
}

/** A client conversation: sends each turn's lines together, waits for as many answers, then the next turn. */
async function converse(port: number, turns: string[][], opts: { greeting?: boolean } = {}): Promise<string[]> {
  const sock = net.connect({ host: '127.0.0.1', port, noDelay: true });
  sockets.push(sock);
  sock.setEncoding('latin1');
  let buf = '';
  const answers: string[] = [];
  const waiters: (() => void)[] = [];
  sock.on('data', (d: string) => {
    buf += d;
    let i: number;
    while ((i = buf.indexOf('\n')) >= 0) {
      answers.push(buf.slice(0, i));
      buf = buf.slice(i + 1);
    }
    for (const w of waiters.splice(0)) w();
  });
  const closed = new Promise<void>((r) => sock.on('close', () => r()));
  sock.on('error', () => undefined);
  const answered = (n: number) =>
    new Promise<void>((resolve, reject) => {
      const check = () => {
        if (answers.length >= n) resolve();
        else if (sock.destroyed) reject(new Error(`connection closed after ${answers.length} answers: ${answers.join(' | ')}`));
        else waiters.push(check);
      };
      sock.once('close', check);
      check();
    });
  await new Promise<void>((r) => sock.once('connect', () => r()));
  let expected = 0;
  if (opts.greeting) await answered(++expected);
  for (const turn of turns) {
    sock.write(turn.map((l) => `${l}\n`).join(''));
    expected += turn.length;
    await answered(expected);
  }
  sock.end();
  await closed;
  return answers;
}

const start = (config: Partial<EngineConfig> & Pick<EngineConfig, 'upstream' | 'mirrors'>) => startLocalEngine(engines, config);

const target = (e: Engine): TargetStats => e.stats().targets[0]!;
const mirrorTo = (port: number) => [{ name: 'm', host: '127.0.0.1', port, samplingPercent: 100 }];
// An SSLRequest-like opening: one short message, one answer, then the startup message and a session.
const NEGOTIATION = [['sslrequest'], ['startup user=app'], ['query 1'], ['query 2'], ['terminate']];

describe('a mirror keeps the turns of the conversation', () => {
  it('a strict negotiator behind a slower mirror target gets every turn after its own answer', async () => {
    const app = await lineServer({ strict: true });
    const staging = await lineServer({ strict: true, delayMs: 50 });
    const e = start({ upstream: { host: '127.0.0.1', port: app.port }, mirrors: mirrorTo(staging.port) });
    for (let i = 0; i < 5; i++) {
      const answers = await converse(e.listenAddress.port, NEGOTIATION);
      expect(answers).toEqual(NEGOTIATION.map(([l]) => `ok ${l}`));
    }
    await until('5 mirrored sessions ended', () => staging.sessions.filter((s) => s.ended).length === 5 || undefined);
    expect(staging.sessions.map((s) => ({ rejected: s.rejected, early: s.early, lines: s.lines }))).toEqual(
      Array(5).fill({ rejected: false, early: 0, lines: NEGOTIATION.flat() }),
    );
    expect(target(e)).toMatchObject({ connectionsMirrored: 5, connectionsCut: 0, turnWaitsExpired: 0 });
  });

  it('without pacing (turnTimeoutMs 0) the same slower target is sent a turn before it answered, and rejects it', async () => {
    const app = await lineServer({ strict: true });
    const staging = await lineServer({ strict: true, delayMs: 50 });
    const e = start({ upstream: { host: '127.0.0.1', port: app.port }, mirrors: mirrorTo(staging.port), turnTimeoutMs: 0 });
    await converse(e.listenAddress.port, NEGOTIATION);
    await until('the mirrored session ended', () => staging.sessions[0]?.ended || staging.sessions[0]?.rejected || undefined);
    expect(staging.sessions[0]!.rejected).toBe(true);
  });

  it('lines the client pipelined before the app answered reach the mirror together, without waiting', async () => {
    const app = await lineServer({});
    const staging = await lineServer({ delayMs: 100 });
    const e = start({ upstream: { host: '127.0.0.1', port: app.port }, mirrors: mirrorTo(staging.port) });
    await converse(e.listenAddress.port, [['a', 'b', 'c'], ['d']]);
    await until('the mirrored session ended', () => staging.sessions[0]?.ended || undefined);
    const s = staging.sessions[0]!;
    expect(s.lines).toEqual(['a', 'b', 'c', 'd']);
    // b and c arrived while a's answer was pending (as at the app); d only after all three answers.
    expect(s.answeredBefore, `staging's reads: ${s.reads.join(', ')}`).toEqual([true, false, false, true]);
    expect(target(e).turnWaitsExpired).toBe(0);
  });

  it('a server-first protocol: the client speaks to the mirror only after the mirror target greeted', async () => {
    const app = await lineServer({ strict: true, greeting: 'hello' });
    // The mirror target greets 200 ms after accept; a line before that would be early.
    const greetLate = await lineServer({ greeting: 'hello', greetAfterMs: 200 });
    const e = start({ upstream: { host: '127.0.0.1', port: app.port }, mirrors: mirrorTo(greetLate.port) });
    const answers = await converse(e.listenAddress.port, [['login'], ['work']], { greeting: true });
    expect(answers).toEqual(['hello', 'ok login', 'ok work']);
    await until('the mirrored session ended', () => greetLate.sessions[0]?.ended || undefined);
    expect(greetLate.sessions[0]).toMatchObject({ lines: ['login', 'work'], early: 0 });
    expect(target(e).turnWaitsExpired).toBe(0);
  });

  it('a target slower than turnTimeoutMs: the wait expires (counted) and the stream is still exact', async () => {
    const app = await lineServer({});
    const staging = await lineServer({ delayMs: 300 });
    const e = start({ upstream: { host: '127.0.0.1', port: app.port }, mirrors: mirrorTo(staging.port), turnTimeoutMs: 50 });
    await converse(e.listenAddress.port, [['a'], ['b'], ['c']]);
    await until('the mirrored session ended', () => staging.sessions[0]?.ended || undefined);
    expect(staging.sessions[0]!.lines).toEqual(['a', 'b', 'c']);
    expect(target(e).turnWaitsExpired).toBeGreaterThanOrEqual(1);
    expect(target(e).connectionsCut).toBe(0);
  });

  it('a target hundreds of small turns behind holds them in its spill, in order, and is not cut', async () => {
    const app = await lineServer({ strict: true });
    // 5 ms per answer: 400 turns take the mirror 2 s, the primary a fraction of that. A 256 KiB pipe holds
    // only 64 small turns (one slot each); the rest wait in the leg's spill.
    const staging = await lineServer({ strict: true, delayMs: 5 });
    const e = start({ upstream: { host: '127.0.0.1', port: app.port }, mirrors: mirrorTo(staging.port) });
    const turns = Array.from({ length: 400 }, (_, i) => [`update ${i} ${'x'.repeat(i % 50)}`]);
    await converse(e.listenAddress.port, turns);
    const lag = e.stats().mirrorBufferInUse;
    await until('the mirrored session ended', () => staging.sessions[0]?.ended || undefined, 30_000);
    expect(staging.sessions[0]).toMatchObject({ rejected: false, early: 0, lines: turns.flat() });
    expect(target(e)).toMatchObject({ connectionsCut: 0, turnWaitsExpired: 0 });
    // It was behind when the primary finished (its spill was granted from the budget), and caught up.
    expect(lag).toBeGreaterThan(0);
    expect(e.stats().mirrorBufferInUse).toBe(0);
  });

  it('a target that never answers (a sink) is waited for once per connection, then the turns flow', async () => {
    const app = await lineServer({});
    const sink = await lineServer({ silent: true });
    const e = start({ upstream: { host: '127.0.0.1', port: app.port }, mirrors: mirrorTo(sink.port), turnTimeoutMs: 100 });
    const t0 = Date.now();
    await converse(e.listenAddress.port, Array.from({ length: 20 }, (_, i) => [`line ${i}`]));
    await until('the mirrored session ended', () => sink.sessions[0]?.ended || undefined);
    expect(sink.sessions[0]!.lines).toHaveLength(20);
    expect(target(e).turnWaitsExpired).toBe(1);
    // 19 paced turns would have taken 1.9 s at the sink; the primary never waited in any case.
    expect(Date.now() - t0).toBeLessThan(1500);
  });
});
