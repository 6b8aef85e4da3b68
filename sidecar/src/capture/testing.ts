// Writes captures per docs/capture.md for tests: a session directory with chosen turns, answers, gaps and
// endings, and the means to damage one in each way the reader must refuse.
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

export interface TestTurn {
  /** The client's bytes of the turn. */
  send: Buffer | string;
  /** The app's answer to it (recorded in s2c when the session keeps responses). */
  answer?: Buffer | string;
  /** Milliseconds from the previous turn's start (from the open for the first turn). Default 0. */
  gapMs?: number;
}

export interface TestConnection {
  turns: TestTurn[];
  how?: 'fin' | 'rst' | 'cut' | 'none';
  /** Milliseconds from the session start to the open. Default 0. */
  startMs?: number;
  /** Bytes the app sent before the first turn (its greeting). */
  greeting?: Buffer | string;
}

export interface TestSession {
  dir: string;
  name?: string;
  responses?: boolean;
  writer?: 'engine' | 'recorder';
  connections: TestConnection[];
  startedAt?: string;
  startedNs?: bigint;
}

const MS = 1_000_000n;

export function connectionId(i: number): string {
  return String(i + 1).padStart(9, '0');
}

/** Writes one session; returns its directory. */
export async function writeTestSession(s: TestSession): Promise<string> {
  const name = s.name ?? '20261202T031500Z-test-1';
  const responses = s.responses ?? true;
  const startedNs = s.startedNs ?? 1_000_000_000_000n;
  const sessionDir = join(s.dir, name);
  await mkdir(join(sessionDir, 'conns'), { recursive: true });
  const meta = {
    format: 'kstreams-capture',
    version: 1,
    session: name,
    startedAt: s.startedAt ?? '2026-12-02T03:15:00.000Z',
    startedNs: String(startedNs),
    writer: s.writer ?? 'engine',
    responses,
    maxBytes: 0,
    maxConnectionBytes: 0,
    target: 'capture',
    listen: '10.1.2.3:8080',
  };
  await writeFile(join(sessionDir, 'session.json'), `${JSON.stringify(meta)}\n`);
  for (const [i, c] of s.connections.entries()) {
    const id = connectionId(i);
    let ns = startedNs + BigInt(c.startMs ?? 0) * MS;
    const lines: object[] = [{ r: 'open', ns: String(ns), at: new Date(Date.parse(meta.startedAt) + (c.startMs ?? 0)).toISOString(), client: `10.1.0.7:${50000 + i}`, server: '10.1.2.3:8080' }];
    const c2s: Buffer[] = [];
    const s2c: Buffer[] = c.greeting !== undefined ? [Buffer.from(c.greeting)] : [];
    let c2sLen = 0;
    let s2cLen = s2c.reduce((n, b) => n + b.length, 0);
    for (const [t, turn] of c.turns.entries()) {
      ns += BigInt(Math.round((turn.gapMs ?? 0) * 1000)) * 1000n;
      lines.push({ r: 'turn', ns: String(ns), n: t + 1, c2s: c2sLen, ...(responses ? { s2c: s2cLen } : {}) });
      const send = Buffer.from(turn.send);
      c2s.push(send);
      c2sLen += send.length;
      if (responses && turn.answer !== undefined) {
        const a = Buffer.from(turn.answer);
        s2c.push(a);
        s2cLen += a.length;
      }
    }
    if (c.how !== 'none') lines.push({ r: 'end', ns: String(ns + MS), how: c.how ?? 'fin', c2s: c2sLen, ...(responses ? { s2c: s2cLen } : {}) });
    const conns = join(sessionDir, 'conns');
    await writeFile(join(conns, `${id}.c2s`), Buffer.concat(c2s));
    if (responses) await writeFile(join(conns, `${id}.s2c`), Buffer.concat(s2c));
    await writeFile(join(conns, `${id}.idx`), lines.map((l) => `${JSON.stringify(l)}\n`).join(''));
  }
  return sessionDir;
}
