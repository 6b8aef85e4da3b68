// The capture reader (docs/capture.md, "Reading a capture"): opens a capture directory (one session, or a
// parent holding sessions), checks it against the format's "Validity" rules and returns what a replayer
// needs: per connection its data files, its turns and how it ended. Every refusal is a CaptureError whose
// one-line message names the file and the byte offset (and, for an index, the line).
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';

export const CAPTURE_FORMAT = 'kstreams-capture';
export const CAPTURE_VERSION = 1;

/** A capture the reader refuses. `message` is one line: `FILE: byte OFFSET (line N): what is wrong`. */
export class CaptureError extends Error {
  override readonly name = 'CaptureError';

  constructor(
    /** The file at fault (a data file, an index, session.json) or the directory. */
    readonly file: string,
    /** Byte offset in `file` where the fault is, when there is one. */
    readonly offset: number | undefined,
    /** 1-based line of `file` (indexes only). */
    readonly line: number | undefined,
    readonly detail: string,
  ) {
    const where = [offset !== undefined ? `byte ${offset}` : '', line !== undefined ? `(line ${line})` : ''].filter(Boolean).join(' ');
    super(`${file}${where ? `: ${where}` : ''}: ${detail}`);
  }
}

export interface SessionMeta {
  format: typeof CAPTURE_FORMAT;
  version: number;
  session: string;
  startedAt: string;
  /** The writer's CLOCK_MONOTONIC at startedAt, nanoseconds. */
  startedNs: bigint;
  writer: 'engine' | 'recorder';
  /** The writer kept the app's answers (`<id>.s2c` files). */
  responses: boolean;
  maxBytes: number;
  maxConnectionBytes: number;
  target?: string;
  listen?: string;
}

export interface CaptureTurn {
  /** 1, 2, ... */
  n: number;
  ns: bigint;
  /** Offset in the c2s file where this turn's client bytes start. */
  c2s: number;
  /** Offset in the s2c file the app had reached when the turn started (0 without responses). */
  s2c: number;
}

export type EndHow = 'fin' | 'rst' | 'cut';

export interface CaptureEnd {
  how: EndHow;
  /** The index's end time; for a connection without an end record, its last record's. */
  ns: bigint;
  /** Total bytes of each data file (exact: validated against the files). */
  c2s: number;
  s2c: number;
  /** False when the index had no end record (the writer stopped abruptly): read as `cut` at the files' lengths. */
  recorded: boolean;
}

export interface CaptureConnection {
  /** The session directory's name. */
  session: string;
  /** The connection's id as in its file names, e.g. `000000001`. */
  id: string;
  idxPath: string;
  c2sPath: string;
  /** The session kept the app's answers: `s2c` offsets and the s2c file are the recorded responses. */
  responses: boolean;
  /** Undefined when the connection has no response bytes (the session kept none, or the app sent none). */
  s2cPath: string | undefined;
  client: string;
  server: string;
  /** Wall clock of the accept, as written. */
  at: string;
  openNs: bigint;
  /** Nanoseconds from the capture's first connection open to this one's (across sessions: by wall clock). */
  startOffsetNs: bigint;
  turns: CaptureTurn[];
  end: CaptureEnd;
}

export interface CaptureSession {
  dir: string;
  meta: SessionMeta;
  connections: CaptureConnection[];
}

export interface Capture {
  dir: string;
  sessions: CaptureSession[];
  /** All connections of all sessions, in start order. */
  connections: CaptureConnection[];
  /** Things a user should know that do not make the capture invalid (one line each). */
  notes: string[];
}

const decimal = z.string().regex(/^\d+$/, 'must be a decimal string of nanoseconds');
const offset = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER);

const sessionSchema = z.object({
  format: z.literal(CAPTURE_FORMAT),
  version: z.literal(CAPTURE_VERSION),
  session: z.string().min(1),
  startedAt: z.iso.datetime(),
  startedNs: decimal,
  writer: z.enum(['engine', 'recorder']),
  responses: z.boolean(),
  maxBytes: offset.default(0),
  maxConnectionBytes: offset.default(0),
  target: z.string().optional(),
  listen: z.string().optional(),
});

const openSchema = z.object({ r: z.literal('open'), ns: decimal, at: z.string(), client: z.string(), server: z.string() });
const turnSchema = z.object({ r: z.literal('turn'), ns: decimal, n: z.number().int().positive(), c2s: offset, s2c: offset.optional() });
const endSchema = z.object({ r: z.literal('end'), ns: decimal, how: z.enum(['fin', 'rst', 'cut']), c2s: offset, s2c: offset.optional() });
const recordSchema = z.discriminatedUnion('r', [openSchema, turnSchema, endSchema]);

function zodProblem(err: z.ZodError): string {
  const issue = err.issues[0];
  if (!issue) return 'invalid';
  const path = issue.path.join('.');
  return path ? `field ${path}: ${issue.message}` : issue.message;
}

/** The byte position in a JSON.parse error message (V8: "... at position N" or "(line L column C)"). */
function jsonErrorOffset(err: unknown): number | undefined {
  const m = /position (\d+)/.exec(err instanceof Error ? err.message : '');
  return m ? Number(m[1]) : undefined;
}

async function sizeOf(path: string): Promise<number | undefined> {
  try {
    const s = await stat(path);
    return s.isFile() ? s.size : undefined;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

async function readText(path: string, what: string): Promise<Buffer> {
  try {
    return await readFile(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new CaptureError(path, undefined, undefined, `missing: ${what}`);
    throw new CaptureError(path, undefined, undefined, `cannot read ${what} (${code ?? String(err)})`);
  }
}

/** Reads and checks one `session.json`. */
export async function readSessionMeta(sessionDir: string): Promise<SessionMeta> {
  const file = join(sessionDir, 'session.json');
  const text = (await readText(file, 'session.json, which every capture session starts with')).toString('utf8');
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new CaptureError(file, jsonErrorOffset(err) ?? 0, undefined, 'not JSON');
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new CaptureError(file, 0, undefined, 'not a JSON object');
  const o = json as Record<string, unknown>;
  if (o.format !== CAPTURE_FORMAT) {
    throw new CaptureError(file, 0, undefined, `format ${JSON.stringify(o.format)} is not ${CAPTURE_FORMAT}: not a KStreams capture`);
  }
  if (o.version !== CAPTURE_VERSION) {
    throw new CaptureError(file, 0, undefined, `capture version ${JSON.stringify(o.version)} is not one this kstreams reads (${CAPTURE_VERSION}); use a kstreams of the capture's version`);
  }
  const parsed = sessionSchema.safeParse(json);
  if (!parsed.success) throw new CaptureError(file, 0, undefined, zodProblem(parsed.error));
  const d = parsed.data;
  return {
    format: d.format,
    version: d.version,
    session: d.session,
    startedAt: d.startedAt,
    startedNs: BigInt(d.startedNs),
    writer: d.writer,
    responses: d.responses,
    maxBytes: d.maxBytes,
    maxConnectionBytes: d.maxConnectionBytes,
    ...(d.target !== undefined ? { target: d.target } : {}),
    ...(d.listen !== undefined ? { listen: d.listen } : {}),
  };
}

interface Line {
  text: string;
  offset: number;
  line: number;
}

function splitLines(buf: Buffer): Line[] {
  const lines: Line[] = [];
  let start = 0;
  let n = 1;
  while (start < buf.length) {
    let nl = buf.indexOf(0x0a, start);
    if (nl < 0) nl = buf.length;
    lines.push({ text: buf.subarray(start, nl).toString('utf8'), offset: start, line: n });
    start = nl + 1;
    n++;
  }
  return lines;
}

type Connection = Omit<CaptureConnection, 'startOffsetNs'>;

/**
 * Reads and checks one connection of a session: its index, and the data files against it. Returns
 * undefined (with a note) for an index that is empty, which only a writer stopped right after creating it
 * leaves behind.
 */
export async function readConnection(sessionDir: string, meta: SessionMeta, id: string, notes: string[] = []): Promise<Connection | undefined> {
  const conns = join(sessionDir, 'conns');
  const idxPath = join(conns, `${id}.idx`);
  const c2sPath = join(conns, `${id}.c2s`);
  const s2cPath = join(conns, `${id}.s2c`);
  const idx = await readText(idxPath, 'connection index');
  if (idx.length === 0) {
    notes.push(`${idxPath}: empty index (the writer stopped as the connection opened): skipped`);
    return undefined;
  }
  const [c2sSize, s2cSize] = await Promise.all([sizeOf(c2sPath), sizeOf(s2cPath)]);

  let open: z.infer<typeof openSchema> | undefined;
  let openNs = 0n;
  let lastNs = 0n;
  const turns: CaptureTurn[] = [];
  let end: (CaptureEnd & { at: Line }) | undefined;
  let lastTurnAt: Line | undefined;
  function fail(l: Line, detail: string): never {
    throw new CaptureError(idxPath, l.offset, l.line, detail);
  }

  for (const l of splitLines(idx)) {
    if (end) fail(l, 'a record after the end record');
    let json: unknown;
    try {
      json = JSON.parse(l.text);
    } catch {
      fail(l, `not a JSON line: ${JSON.stringify(l.text.slice(0, 40))}`);
    }
    if (typeof json !== 'object' || json === null || Array.isArray(json)) fail(l, 'not a JSON object');
    const kind = (json as { r?: unknown }).r;
    if (kind !== 'open' && kind !== 'turn' && kind !== 'end') fail(l, `unknown record kind r=${JSON.stringify(kind)} (open, turn or end)`);
    const parsed = recordSchema.safeParse(json);
    if (!parsed.success) fail(l, `${String(kind)} record: ${zodProblem(parsed.error)}`);
    const rec = parsed.data!;
    const ns = BigInt(rec.ns);
    if (ns < lastNs) fail(l, `ns ${rec.ns} goes backwards (the previous record says ${lastNs})`);
    lastNs = ns;
    if (!open) {
      if (rec.r !== 'open') fail(l, `the first record must be open, not ${rec.r}`);
      open = rec as z.infer<typeof openSchema>;
      openNs = ns;
      continue;
    }
    if (rec.r === 'open') fail(l, 'a second open record');
    const c2s = rec.c2s as number;
    const s2c = (rec.s2c as number | undefined) ?? 0;
    if (meta.responses && rec.s2c === undefined) fail(l, `${rec.r} record: field s2c is missing (the session keeps responses)`);
    const prev = turns[turns.length - 1];
    if (prev && c2s < prev.c2s) fail(l, `c2s offset ${c2s} goes backwards (turn ${prev.n} starts at ${prev.c2s})`);
    if (prev && s2c < prev.s2c) fail(l, `s2c offset ${s2c} goes backwards (turn ${prev.n} is at ${prev.s2c})`);
    if (rec.r === 'turn') {
      const n = rec.n as number;
      const want = (prev?.n ?? 0) + 1;
      if (n !== want) fail(l, `turn n ${n} where ${want} was due`);
      turns.push({ n, ns, c2s, s2c });
      lastTurnAt = l;
    } else {
      end = { how: rec.how as EndHow, ns, c2s, s2c, recorded: true, at: l };
    }
  }
  if (!open) throw new CaptureError(idxPath, 0, 1, 'no open record');

  // The data files against the index.
  const c2sLen = c2sSize ?? 0;
  const s2cLen = s2cSize ?? 0;
  if (end) {
    const where = `the end record (${idxPath} line ${end.at.line}, byte ${end.at.offset})`;
    if (end.c2s !== c2sLen) {
      if (c2sSize === undefined) throw new CaptureError(c2sPath, undefined, undefined, `missing, but ${where} says ${end.c2s} bytes`);
      throw new CaptureError(c2sPath, Math.min(end.c2s, c2sLen), undefined, `${c2sLen} bytes, but ${where} says ${end.c2s}: a truncated or overwritten data file`);
    }
    if (end.s2c !== s2cLen) {
      if (s2cSize === undefined) throw new CaptureError(s2cPath, undefined, undefined, `missing, but ${where} says ${end.s2c} bytes`);
      throw new CaptureError(s2cPath, Math.min(end.s2c, s2cLen), undefined, `${s2cLen} bytes, but ${where} says ${end.s2c}: a truncated or overwritten data file`);
    }
  } else {
    const last = turns[turns.length - 1];
    if (last && lastTurnAt) {
      const where = `${idxPath} line ${lastTurnAt.line}, byte ${lastTurnAt.offset}`;
      if (last.c2s > c2sLen) {
        throw new CaptureError(c2sPath, c2sLen, undefined, `${c2sSize === undefined ? 'missing' : `${c2sLen} bytes`}, shorter than offset ${last.c2s} that turn ${last.n} names (${where})`);
      }
      if (last.s2c > s2cLen) {
        throw new CaptureError(s2cPath, s2cLen, undefined, `${s2cSize === undefined ? 'missing' : `${s2cLen} bytes`}, shorter than offset ${last.s2c} that turn ${last.n} names (${where})`);
      }
    }
    notes.push(`${idxPath}: no end record (the writer stopped abruptly): read as cut at the data files' lengths (${c2sLen} + ${s2cLen} bytes)`);
    end = { how: 'cut', ns: lastNs, c2s: c2sLen, s2c: s2cLen, recorded: false, at: { text: '', offset: idx.length, line: 0 } };
  }
  const { at: _at, ...endRecord } = end;
  return {
    session: meta.session,
    id,
    idxPath,
    c2sPath,
    responses: meta.responses,
    s2cPath: s2cSize !== undefined && s2cLen > 0 ? s2cPath : undefined,
    client: open.client,
    server: open.server,
    at: open.at,
    openNs,
    turns,
    end: endRecord,
  };
}

const ID = /^(\d{9})\.idx$/;

/** Reads one session directory (the one holding session.json). */
export async function readSession(sessionDir: string, notes: string[] = []): Promise<CaptureSession> {
  const meta = await readSessionMeta(sessionDir);
  const conns = join(sessionDir, 'conns');
  let names: string[];
  try {
    names = await readdir(conns);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      notes.push(`${conns}: missing: the session recorded no connection`);
      return { dir: sessionDir, meta, connections: [] };
    }
    throw new CaptureError(conns, undefined, undefined, `cannot list (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
  }
  const ids = names.map((n) => ID.exec(n)?.[1]).filter((id): id is string => id !== undefined).sort();
  const connections: Connection[] = [];
  // A few files at a time: a long capture has thousands of connections.
  for (let i = 0; i < ids.length; i += 32) {
    const batch = await Promise.all(ids.slice(i, i + 32).map((id) => readConnection(sessionDir, meta, id, notes)));
    for (const c of batch) if (c) connections.push(c);
  }
  return { dir: sessionDir, meta, connections: connections.map((c) => ({ ...c, startOffsetNs: 0n })) };
}

/**
 * Opens a capture: DIR holds session.json (one session), or sessions as subdirectories (the `file`
 * target's path, shared by several writers). Throws a CaptureError for anything the format's "Validity"
 * section refuses, and when DIR holds no session at all.
 */
export async function readCapture(dir: string): Promise<Capture> {
  const notes: string[] = [];
  let sessionDirs: string[];
  if ((await sizeOf(join(dir, 'session.json'))) !== undefined) {
    sessionDirs = [dir];
  } else {
    let entries;
    try {
      entries = await readdir(dir, { withFileTypes: true });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      throw new CaptureError(dir, undefined, undefined, code === 'ENOENT' ? 'no such capture directory' : `cannot read the capture directory (${code ?? String(err)})`);
    }
    const subdirs = entries.filter((e) => e.isDirectory()).map((e) => join(dir, e.name)).sort();
    sessionDirs = [];
    for (const d of subdirs) if ((await sizeOf(join(d, 'session.json'))) !== undefined) sessionDirs.push(d);
    if (!sessionDirs.length) {
      throw new CaptureError(dir, undefined, undefined, 'not a capture: no session.json here nor in a subdirectory (give the file target\'s path or one session in it)');
    }
  }
  const sessions: CaptureSession[] = [];
  for (const d of sessionDirs) sessions.push(await readSession(d, notes));

  // One timeline for all sessions: within a session by its monotonic clock, across sessions by the wall
  // clock at each session's start.
  const absolute = (s: CaptureSession, c: CaptureConnection) => BigInt(Date.parse(s.meta.startedAt)) * 1_000_000n + (c.openNs - s.meta.startedNs);
  const all = sessions.flatMap((s) => s.connections.map((c) => ({ c, t: absolute(s, c) })));
  const first = all.reduce<bigint | undefined>((m, x) => (m === undefined || x.t < m ? x.t : m), undefined) ?? 0n;
  for (const x of all) x.c.startOffsetNs = x.t - first;
  all.sort((a, b) => (a.t < b.t ? -1 : a.t > b.t ? 1 : 0));
  return { dir, sessions, connections: all.map((x) => x.c), notes };
}
