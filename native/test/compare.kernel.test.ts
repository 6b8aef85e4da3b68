// Live response comparison (MirrorConfig.compareResponses): the engine reads a compared mirror target's
// answers and compares them, byte by byte, with the app's answers of the same connection (tee'd from the
// response pipe; the app's bytes to the client stay zero-copy). Servers are line protocols on 127.0.0.1,
// in this process: the app and one target answer alike, another target answers one line differently, a
// third target is not compared.
import { afterEach, describe, expect, it } from 'vitest';
import net from 'node:net';
import type { Engine } from '../lib/engine.js';
import type { TargetStats } from '../lib/types.js';
import { startLocalEngine, until } from './fixtures/engine-harness.js';

const engines: Engine[] = [];
const servers: net.Server[] = [];

afterEach(async () => {
  await Promise.all(engines.splice(0).map((e) => e.stop()));
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
});

/** Answers each line with `ok <line>`, or with what `answer` says; ends its side after the client's FIN. */
async function lineServer(answer: (line: string) => string = (l) => `ok ${l}`): Promise<number> {
  const server = net.createServer({ allowHalfOpen: true }, (sock) => {
    sock.on('error', () => undefined);
    let buf = '';
    sock.setEncoding('latin1');
    sock.on('data', (d: string) => {
      buf += d;
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        sock.write(`${answer(line)}\n`);
      }
    });
    sock.on('end', () => sock.end());
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return (server.address() as net.AddressInfo).port;
}

/** One conversation: each line sent after the answer to the previous one; then FIN and the server's end. */
function converse(port: number, lines: string[]): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: '127.0.0.1', port, noDelay: true });
    const answers: string[] = [];
    let buf = '';
    sock.setEncoding('latin1');
    sock.on('error', reject);
    sock.on('connect', () => sock.write(`${lines[0]}\n`));
    sock.on('data', (d: string) => {
      buf += d;
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        answers.push(buf.slice(0, i));
        buf = buf.slice(i + 1);
        if (answers.length < lines.length) sock.write(`${lines[answers.length]}\n`);
        else sock.end();
      }
    });
    sock.on('close', () => resolve(answers));
  });
}

describe('compareResponses', () => {
  it("counts per target the connections compared with the app's answers and those whose answers differ", async () => {
    const app = await lineServer();
    const alike = await lineServer();
    const unlike = await lineServer((l) => (l === 'x' ? 'ok X' : `ok ${l}`));
    const shorter = await lineServer((l) => (l === 'x' ? 'ok' : `ok ${l}`));
    const plain = await lineServer((l) => `no ${l}`);
    const mirror = (name: string, port: number, compareResponses?: boolean) => ({ name, host: '127.0.0.1', port, samplingPercent: 100, ...(compareResponses ? { compareResponses } : {}) });
    const engine = startLocalEngine(engines, {
      upstream: { host: '127.0.0.1', port: app },
      mirrors: [mirror('alike', alike, true), mirror('unlike', unlike, true), mirror('shorter', shorter, true), mirror('plain', plain)],
    });
    const port = engine.listenAddress.port;
    const conversations = [['a', 'b', 'c'], ['d', 'x', 'e'], ['f'], ['g', 'h', 'i', 'j']];
    const answers = await Promise.all(conversations.map((c) => converse(port, c)));
    // The app's answers reach the client unchanged.
    expect(answers).toEqual(conversations.map((c) => c.map((l) => `ok ${l}`)));
    const byName = (s: TargetStats[]) => Object.fromEntries(s.map((t) => [t.name, [t.responsesCompared, t.responsesDiverged]]));
    const stats = await until('every mirror connection to end', () => {
      const s = engine.stats();
      return s.targets.every((t) => t.connectionsActive === 0) && s.targets.every((t) => t.connectionsMirrored === 4) ? s : undefined;
    });
    expect(byName(stats.targets)).toEqual({ alike: [4, 0], unlike: [4, 1], shorter: [4, 1], plain: [0, 0] });
    expect(stats.targets.every((t) => t.connectionsCut === 0 && t.bytesDropped === 0)).toBe(true);
  });
});
