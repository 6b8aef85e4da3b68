// The capture reader against captures written per docs/capture.md, whole and damaged in every way the
// format's "Validity" section lists: each refusal is one line naming the file and the byte offset.
import { appendFileSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync, mkdirSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CaptureError, readCapture } from './reader.js';
import { writeTestSession, type TestConnection } from './testing.js';

const root = mkdtempSync(join(tmpdir(), 'kstreams-capture-reader-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let n = 0;
const fresh = () => join(root, `c${++n}`);

const conversation: TestConnection = {
  greeting: 'hello\n',
  turns: [
    { send: 'GET /a\n', answer: 'A\n' },
    { send: 'GET /bb\n', answer: 'BB\n', gapMs: 20 },
    { send: 'QUIT\n', gapMs: 5 },
  ],
};

async function refusal(dir: string): Promise<CaptureError> {
  const err = await readCapture(dir).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(CaptureError);
  const e = err as CaptureError;
  expect(e.message).not.toContain('\n');
  return e;
}

function idxLines(session: string): string[] {
  return readFileSync(join(session, 'conns/000000001.idx'), 'utf8').trimEnd().split('\n');
}

function rewriteIdx(session: string, lines: string[]): void {
  writeFileSync(join(session, 'conns/000000001.idx'), `${lines.join('\n')}\n`);
}

/** Byte offset of line `i` (0-based) in the index as rewritten. */
function lineOffset(lines: string[], i: number): number {
  return lines.slice(0, i).reduce((n, l) => n + Buffer.byteLength(l) + 1, 0);
}

describe('readCapture', () => {
  it('reads a session: turns, offsets, answers, the end, and a start timeline across connections', async () => {
    const dir = fresh();
    const session = await writeTestSession({ dir, connections: [conversation, { startMs: 250, turns: [{ send: 'x', answer: 'y' }], how: 'rst' }] });
    for (const d of [dir, session]) {
      const cap = await readCapture(d);
      expect(cap.sessions).toHaveLength(1);
      expect(cap.notes).toEqual([]);
      const [a, b] = cap.connections;
      expect(a!.id).toBe('000000001');
      expect(a!.responses).toBe(true);
      expect(a!.turns.map((t) => [t.n, t.c2s, t.s2c])).toEqual([
        [1, 0, 6],
        [2, 7, 8],
        [3, 15, 11],
      ]);
      expect(a!.turns[1]!.ns - a!.turns[0]!.ns).toBe(20_000_000n);
      expect(a!.end).toMatchObject({ how: 'fin', c2s: 20, s2c: 11, recorded: true });
      expect(readFileSync(a!.c2sPath, 'utf8')).toBe('GET /a\nGET /bb\nQUIT\n');
      expect(readFileSync(a!.s2cPath!, 'utf8')).toBe('hello\nA\nBB\n');
      expect(b!.startOffsetNs).toBe(250_000_000n);
      expect(b!.end.how).toBe('rst');
    }
  });

  it('orders the connections of several sessions in one timeline by their wall clocks', async () => {
    const dir = fresh();
    await writeTestSession({ dir, name: '20261202T031501Z-b-2', startedAt: '2026-12-02T03:15:01.000Z', startedNs: 5n * 10n ** 12n, connections: [{ turns: [{ send: 'b' }] }] });
    await writeTestSession({ dir, name: '20261202T031500Z-a-1', connections: [{ startMs: 400, turns: [{ send: 'a' }] }] });
    const cap = await readCapture(dir);
    expect(cap.sessions.map((s) => s.meta.session)).toEqual(['20261202T031500Z-a-1', '20261202T031501Z-b-2']);
    expect(cap.connections.map((c) => [c.session, c.startOffsetNs])).toEqual([
      ['20261202T031500Z-a-1', 0n],
      ['20261202T031501Z-b-2', 600_000_000n],
    ]);
  });

  it("reads a connection without an end record as cut at the files' lengths, and says so", async () => {
    const dir = fresh();
    await writeTestSession({ dir, connections: [{ ...conversation, how: 'none' }] });
    const cap = await readCapture(dir);
    expect(cap.connections[0]!.end).toMatchObject({ how: 'cut', c2s: 20, s2c: 11, recorded: false });
    expect(cap.notes).toHaveLength(1);
    expect(cap.notes[0]).toMatch(/000000001\.idx: no end record .*read as cut/);
  });

  it('reads a recorder capture: no s2c anywhere', async () => {
    const dir = fresh();
    await writeTestSession({ dir, responses: false, writer: 'recorder', connections: [conversation] });
    const c = (await readCapture(dir)).connections[0]!;
    expect(c.responses).toBe(false);
    expect(c.s2cPath).toBeUndefined();
    expect(c.turns.map((t) => t.s2c)).toEqual([0, 0, 0]);
  });

  it('ignores unknown extra fields', async () => {
    const dir = fresh();
    const s = await writeTestSession({ dir, connections: [conversation] });
    const lines = idxLines(s).map((l) => JSON.stringify({ ...JSON.parse(l), later: { x: 1 } }));
    rewriteIdx(s, lines);
    const meta = JSON.parse(readFileSync(join(s, 'session.json'), 'utf8'));
    writeFileSync(join(s, 'session.json'), JSON.stringify({ ...meta, somethingNew: true }));
    expect((await readCapture(dir)).connections[0]!.turns).toHaveLength(3);
  });

  describe('refuses, naming the file and the offset', () => {
    it('a directory that holds no session', async () => {
      const dir = fresh();
      mkdirSync(join(dir, 'empty'), { recursive: true });
      expect((await refusal(dir)).message).toBe(`${dir}: not a capture: no session.json here nor in a subdirectory (give the file target's path or one session in it)`);
      expect((await refusal(join(dir, 'nope'))).message).toBe(`${join(dir, 'nope')}: no such capture directory`);
    });

    it('session.json that is not JSON, of another format, of another version, or lacking a field', async () => {
      const dir = fresh();
      const s = await writeTestSession({ dir, connections: [conversation] });
      const file = join(s, 'session.json');
      const meta = JSON.parse(readFileSync(file, 'utf8'));
      writeFileSync(file, '{"format": "kstreams-capture", "version": 1,, }');
      let e = await refusal(dir);
      expect(e.file).toBe(file);
      expect(e.offset).toBe(44);
      expect(e.message).toBe(`${file}: byte 44: not JSON`);
      writeFileSync(file, JSON.stringify({ ...meta, format: 'pcap' }));
      expect((await refusal(dir)).message).toBe(`${file}: byte 0: format "pcap" is not kstreams-capture: not a KStreams capture`);
      writeFileSync(file, JSON.stringify({ ...meta, version: 2 }));
      expect((await refusal(dir)).message).toMatch(/session\.json: byte 0: capture version 2 is not one this kstreams reads \(1\)/);
      const { startedNs: _ns, ...noNs } = meta;
      writeFileSync(file, JSON.stringify(noNs));
      e = await refusal(dir);
      expect(e.message).toMatch(/session\.json: byte 0: field startedNs: /);
    });

    it('an index line that is not JSON, of an unknown kind, or lacking a field', async () => {
      const dir = fresh();
      const s = await writeTestSession({ dir, connections: [conversation] });
      const idx = join(s, 'conns/000000001.idx');
      const lines = idxLines(s);
      const cases: Array<[string[], number, RegExp]> = [
        [[lines[0]!, lines[1]!, '{"r":"turn",', ...lines.slice(3)], 2, /not a JSON line: "\{\\"r\\":\\"turn\\","/],
        [[lines[0]!, '{"r":"pause","ns":"1"}', ...lines.slice(2)], 1, /unknown record kind r="pause" \(open, turn or end\)/],
        [[lines[0]!, lines[1]!, JSON.stringify({ ...JSON.parse(lines[2]!), c2s: undefined }), ...lines.slice(3)], 2, /turn record: field c2s: /],
        [[lines[0]!, lines[1]!, JSON.stringify({ ...JSON.parse(lines[2]!), s2c: -1 }), ...lines.slice(3)], 2, /turn record: field s2c: /],
        [[lines[0]!, lines[1]!, JSON.stringify({ ...JSON.parse(lines[2]!), n: 3 }), ...lines.slice(3)], 2, /turn n 3 where 2 was due/],
        [[lines[1]!, ...lines.slice(2)], 0, /the first record must be open, not turn/],
        [[...lines, lines[1]!], lines.length, /a record after the end record/],
        [['[1,2]', ...lines.slice(1)], 0, /not a JSON object/],
      ];
      for (const [rewritten, bad, message] of cases) {
        rewriteIdx(s, rewritten);
        const e = await refusal(dir);
        expect(e.file).toBe(idx);
        expect(e.line).toBe(bad + 1);
        expect(e.offset).toBe(lineOffset(rewritten, bad));
        expect(e.message.startsWith(`${idx}: byte ${lineOffset(rewritten, bad)} (line ${bad + 1}): `)).toBe(true);
        expect(e.message).toMatch(message);
      }
    });

    it('ns that goes backwards, and offsets that go backwards', async () => {
      const dir = fresh();
      const s = await writeTestSession({ dir, connections: [conversation] });
      const lines = idxLines(s);
      const t2 = JSON.parse(lines[2]!);
      const t1 = JSON.parse(lines[1]!);
      for (const [field, value, message] of [
        ['ns', String(BigInt(t1.ns) - 1n), /ns \d+ goes backwards \(the previous record says \d+\)/],
        ['c2s', 3, null],
        ['s2c', 3, /s2c offset 3 goes backwards \(turn 1 is at 6\)/],
      ] as const) {
        const rewritten = [...lines];
        if (field === 'c2s') rewritten[3] = JSON.stringify({ ...JSON.parse(lines[3]!), c2s: value });
        else rewritten[2] = JSON.stringify({ ...t2, [field]: value });
        rewriteIdx(s, rewritten);
        const e = await refusal(dir);
        const bad = field === 'c2s' ? 3 : 2;
        expect(e.line).toBe(bad + 1);
        expect(e.offset).toBe(lineOffset(rewritten, bad));
        expect(e.message).toMatch(message ?? /c2s offset 3 goes backwards \(turn 2 starts at 7\)/);
      }
    });

    it("an end record whose lengths differ from the data files' (truncated or overwritten)", async () => {
      const dir = fresh();
      const s = await writeTestSession({ dir, connections: [conversation] });
      const c2s = join(s, 'conns/000000001.c2s');
      const s2c = join(s, 'conns/000000001.s2c');
      const idx = join(s, 'conns/000000001.idx');
      const endOffset = lineOffset(idxLines(s), 4);
      truncateSync(c2s, 12);
      expect((await refusal(dir)).message).toBe(
        `${c2s}: byte 12: 12 bytes, but the end record (${idx} line 5, byte ${endOffset}) says 20: a truncated or overwritten data file`,
      );
      appendFileSync(c2s, 'GET /bb\nQUIT\nextra');
      expect((await refusal(dir)).message).toMatch(/000000001\.c2s: byte 20: 30 bytes, but the end record .* says 20/);
      writeFileSync(c2s, 'GET /a\nGET /bb\nQUIT\n');
      truncateSync(s2c, 4);
      expect((await refusal(dir)).message).toMatch(/000000001\.s2c: byte 4: 4 bytes, but the end record .* says 11/);
      unlinkSync(s2c);
      expect((await refusal(dir)).message).toBe(`${s2c}: missing, but the end record (${idx} line 5, byte ${endOffset}) says 11 bytes`);
    });

    it('a data file shorter than an offset the index names (no end record)', async () => {
      const dir = fresh();
      const s = await writeTestSession({ dir, connections: [{ ...conversation, how: 'none' }] });
      const c2s = join(s, 'conns/000000001.c2s');
      truncateSync(c2s, 10);
      const e = await refusal(dir);
      expect(e.file).toBe(c2s);
      expect(e.offset).toBe(10);
      expect(e.message).toMatch(/000000001\.c2s: byte 10: 10 bytes, shorter than offset 15 that turn 3 names \(.*000000001\.idx line 4, byte \d+\)/);
    });

    it('a missing index line (no open record at all)', async () => {
      const dir = fresh();
      const s = await writeTestSession({ dir, connections: [conversation] });
      writeFileSync(join(s, 'conns/000000001.idx'), '\n');
      expect((await refusal(dir)).message).toMatch(/000000001\.idx: byte 0 \(line 1\): not a JSON line/);
    });
  });

  it('skips an empty index (a writer stopped as the connection opened), with a note', async () => {
    const dir = fresh();
    const s = await writeTestSession({ dir, connections: [conversation, conversation] });
    writeFileSync(join(s, 'conns/000000002.idx'), '');
    const cap = await readCapture(dir);
    expect(cap.connections.map((c) => c.id)).toEqual(['000000001']);
    expect(cap.notes[0]).toMatch(/000000002\.idx: empty index/);
  });
});
