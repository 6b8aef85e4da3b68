// Order across connections in `kstreams replay`: a connection that opened after another had ended in the
// recording starts only once that other has finished in the replay, at every speed; connections that
// overlapped in the recording still overlap. Checked with a real redis-server, whose dataset depends on
// that order (APPEND from separate connections) and on the overlap (a BLPOP answered by a later RPUSH).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeTestSession, type TestConnection } from '../../sidecar/src/capture/testing.js';
import type { ReplaySummary } from '../../sidecar/src/cli/replay.js';
import { cleanupAll, Netns } from '../../sidecar/src/netns.js';
import { Proc, replayCli, type Replayed } from './fixtures/harness.js';
import { Redis } from './fixtures/redis.js';

const PORT = 46379;
const HOST = '127.0.0.1';
let ns: Netns;
let dir: string;
let redis: Redis;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'kstreams-replay-order-'));
  ns = Netns.create('rpl-order');
  redis = await Redis.start('order', ns, HOST, dir, PORT);
});

afterAll(async () => {
  await redis?.proc.stop('SIGTERM');
  await Proc.killAll();
  await cleanupAll();
  rmSync(dir, { recursive: true, force: true });
});

function resp(...args: string[]): string {
  return `*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`;
}

function replay(capture: string, ...args: string[]): Promise<Replayed<ReplaySummary>> {
  return replayCli<ReplaySummary>(ns, capture, `${HOST}:${PORT}`, args, 100_000);
}

describe('kstreams replay keeps the recorded order of connections', () => {
  // 60 connections one after the other (each opens 2 ms after the previous one ended): SET, then APPENDs.
  // The first one makes Redis sleep 50 ms before its SET (recorded as 1 ms): a replay that started the
  // next connections on their schedule alone would run their APPENDs before that SET.
  const N = 60;
  const parts = Array.from({ length: N }, (_, i) => `${i},`);
  const expected = parts.join('');
  let sequential: string;

  beforeAll(async () => {
    let len = 0;
    const connections: TestConnection[] = parts.map((p, i) => {
      len += p.length;
      if (i === 0) return { startMs: 0, turns: [{ send: resp('DEBUG', 'SLEEP', '0.05'), answer: '+OK\r\n' }, { gapMs: 1, send: resp('SET', 'k', p), answer: '+OK\r\n' }] };
      return { startMs: i * 4, turns: [{ send: resp('APPEND', 'k', p), answer: `:${len}\r\n` }] };
    });
    sequential = await writeTestSession({ dir: join(dir, 'sequential'), connections });
  });

  it('--speed max: each connection starts after the ones that ended before it opened; the value is exact, pass after pass', async () => {
    for (let run = 0; run < 5; run++) {
      await redis.cli('FLUSHALL');
      const r = await replay(sequential, '--speed', 'max', '--compare');
      expect(r.code, `${r.stderr} ${JSON.stringify(r.summary)}`).toBe(0);
      expect(r.summary).toMatchObject({ connections: N, connectionsReplayed: N, connectionsFailed: 0, compare: { same: N, differ: 0 } });
      expect(await redis.cli('GET', 'k')).toBe(expected);
    }
    // Many passes, few slots: each pass starts with the SET again, and the order holds in every one of them.
    await redis.cli('FLUSHALL');
    const looped = await replay(sequential, '--speed', 'max', '--loop', '20', '--concurrency', '3');
    expect(looped.code, looped.stderr).toBe(0);
    expect(looped.summary).toMatchObject({ connections: N * 20, connectionsReplayed: N * 20, connectionsFailed: 0 });
    expect(await redis.cli('GET', 'k')).toBe(expected);
    expect(Number((await redis.info('commandstats'))['cmdstat_append']?.match(/calls=(\d+)/)?.[1])).toBeGreaterThanOrEqual((N - 1) * 20);
  });

  it('--speed 4 and --speed 1, the target slower than recorded: the order holds too', async () => {
    for (const speed of ['4', '1']) {
      await redis.cli('FLUSHALL');
      const r = await replay(sequential, '--speed', speed, '--compare');
      expect(r.code, `${r.stderr} ${JSON.stringify(r.summary)}`).toBe(0);
      expect(await redis.cli('GET', 'k')).toBe(expected);
    }
  });

  it('connections that overlapped in the recording overlap in the replay: a BLPOP is answered by the RPUSH of a connection that opened while it waited', async () => {
    await redis.cli('FLUSHALL');
    const item = resp('q', 'v');
    const capture = await writeTestSession({
      dir: join(dir, 'overlap'),
      connections: [
        // Opens at 0, blocks in BLPOP (10 s), is answered at 50 ms by the other connection, ends at 61 ms.
        { startMs: 0, turns: [{ send: resp('BLPOP', 'q', '10'), answer: item }, { gapMs: 60, send: resp('PING'), answer: '+PONG\r\n' }] },
        // Opens at 50 ms (while the first one waits), ends at 51 ms.
        { startMs: 50, turns: [{ send: resp('RPUSH', 'q', 'v'), answer: ':1\r\n' }] },
        // Opens after both ended: the list is empty again.
        { startMs: 100, turns: [{ send: resp('LLEN', 'q'), answer: ':0\r\n' }] },
      ],
    });
    const started = Date.now();
    const r = await replay(capture, '--speed', 'max', '--compare');
    expect(r.code, `${r.stderr} ${JSON.stringify(r.summary)}`).toBe(0);
    expect(r.summary.compare).toMatchObject({ same: 3, differ: 0 });
    // Had the RPUSH waited for the BLPOP's connection to end, the BLPOP would have timed out after 10 s.
    expect(Date.now() - started).toBeLessThan(8_000);
  });
});
