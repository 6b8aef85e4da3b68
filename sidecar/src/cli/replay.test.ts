// The parts of `kstreams replay` that need no kernel: excerpts, which answer a byte belongs to, the
// connection handed to the native replayer, and the help.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { readCapture } from '../capture/reader.js';
import { writeTestSession } from '../capture/testing.js';
import { buildProgram } from './program.js';
import { answerOf, printable, recordedSeconds, toReplayConnection } from './replay.js';

const root = mkdtempSync(join(tmpdir(), 'kstreams-replay-unit-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('replay', () => {
  it('printable(): ASCII as is, control bytes and backslashes escaped', () => {
    expect(printable(Buffer.from('GET / HTTP/1.1\r\n\t\\x'))).toBe('GET / HTTP/1.1\\r\\n\\t\\\\x');
    expect(printable(Buffer.from([0, 0x7f, 0xff, 0x41]))).toBe('\\x00\\x7f\\xffA');
  });

  it('hands the native replayer each connection: turns as [c2s, s2c, ns from open], its start offset and ending', async () => {
    await writeTestSession({
      dir: join(root, 'a'),
      connections: [
        { greeting: 'hi\n', turns: [{ send: 'a', answer: 'AA', gapMs: 3 }, { send: 'bb', answer: 'B', gapMs: 7 }] },
        { startMs: 1500, how: 'rst', turns: [{ send: 'c' }] },
      ],
    });
    const cap = await readCapture(join(root, 'a'));
    const [a, b] = cap.connections.map(toReplayConnection);
    expect([...a!.turns]).toEqual([0, 3, 3_000_000, 1, 5, 10_000_000]);
    expect(a).toMatchObject({ responses: true, startNs: 0, endC2s: 3, endS2c: 6, how: 'fin' });
    expect(a!.s2cPath).toMatch(/000000001\.s2c$/);
    expect(b).toMatchObject({ startNs: 1_500_000_000, endC2s: 1, endS2c: 0, how: 'rst' });
    expect(b!.s2cPath).toBeUndefined();
    expect(recordedSeconds(cap)).toBe(1.501);
    // The greeting is answer 0; bytes 3-4 answer turn 1, byte 5 turn 2.
    expect([0, 2, 3, 4, 5].map((at) => answerOf(cap.connections[0]!, at))).toEqual([0, 0, 1, 1, 2]);
  });

  it('--help documents the turns, the speed, the summary and the exit codes', () => {
    const replay = buildProgram('test').commands.find((c) => c.name() === 'replay')!;
    let help = '';
    replay.configureOutput({ writeOut: (s) => (help += s) });
    replay.outputHelp();
    for (const word of ['--to <host:port>', '--speed <factor|max>', '--concurrency <n>', '--loop <n>', '--compare', '--answer-timeout <seconds>', 'sendfile()', '"type":"replay"', '5 with --compare']) {
      expect(help).toContain(word);
    }
  });
});
