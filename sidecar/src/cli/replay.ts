// `kstreams replay DIR --to HOST:PORT`: plays a capture (docs/capture.md) against a target with the
// native replayer, shows progress on a terminal, prints a JSON summary on stdout.
import { isIP } from 'node:net';
import { Replay, type ReplayConnection, type ReplayOutcome, type ReplayResult, type ReplayStats } from '../../../native/lib/replay.js';
import { CaptureError, readCapture, type Capture, type CaptureConnection } from '../capture/reader.js';
import { defaultLookup, splitHostPort, type HostLookup } from '../dataplane/targets.js';
import { CliError, EXIT, oneLine } from './errors.js';
import { formatBytes, formatDuration, LiveBlock } from './live.js';
import { resolveNetns } from './netns.js';

export interface ReplayOptions {
  dir: string;
  to: string;
  /** Divides the recorded gaps; 0 (`max`): no gaps. */
  speed: number;
  concurrency?: number;
  loops?: number;
  compare?: boolean;
  netns?: string;
  answerTimeoutMs?: number;
  lookup?: HostLookup;
}

/** At most this many differing connections are listed (the counts cover all). */
const LISTED = 20;
export const DEFAULT_CONCURRENCY = 256;
export const DEFAULT_ANSWER_TIMEOUT_MS = 5000;

function note(message: string): void {
  process.stderr.write(`kstreams: ${oneLine(message)}\n`);
}

/** Bytes as a short printable string: ASCII as is, \r \n \t escaped, other bytes as \xNN. */
export function printable(b: Buffer): string {
  let s = '';
  for (const c of b) {
    if (c === 0x0a) s += '\\n';
    else if (c === 0x0d) s += '\\r';
    else if (c === 0x09) s += '\\t';
    else if (c === 0x5c) s += '\\\\';
    else if (c >= 0x20 && c < 0x7f) s += String.fromCharCode(c);
    else s += `\\x${c.toString(16).padStart(2, '0')}`;
  }
  return s;
}

/** Which answer byte `at` of the response stream belongs to: 0 is the app's greeting, n the answer to turn n. */
export function answerOf(c: CaptureConnection, at: number): number {
  let turn = 0;
  for (const t of c.turns) {
    if (t.s2c <= at) turn = t.n;
    else break;
  }
  // A turn whose start saw exactly `at` bytes only answers from there; before turn 1 was the greeting.
  return c.turns[0] && at < c.turns[0].s2c ? 0 : turn;
}

/** What the native replayer takes for one connection of the capture. */
export function toReplayConnection(c: CaptureConnection): ReplayConnection {
  const turns = c.turns.length ? c.turns : c.end.c2s > 0 ? [{ n: 1, ns: c.openNs, c2s: 0, s2c: 0 }] : [];
  const flat = new Float64Array(turns.length * 3);
  turns.forEach((t, i) => {
    flat[i * 3] = t.c2s;
    flat[i * 3 + 1] = t.s2c;
    flat[i * 3 + 2] = Number(t.ns - c.openNs);
  });
  return {
    c2sPath: c.c2sPath,
    ...(c.s2cPath !== undefined ? { s2cPath: c.s2cPath } : {}),
    responses: c.responses,
    startNs: Number(c.startOffsetNs),
    // A cut connection went on after the capture stopped recording it: its end is not known.
    ...(c.end.recorded && c.end.how !== 'cut' ? { endNs: Number(c.startOffsetNs + (c.end.ns - c.openNs)) } : {}),
    turns: flat,
    endC2s: c.end.c2s,
    endS2c: c.end.s2c,
    how: c.end.how,
  };
}

/** The capture's own duration: first open to last end, seconds. */
export function recordedSeconds(cap: Capture): number {
  let last = 0n;
  for (const c of cap.connections) {
    const end = c.startOffsetNs + (c.end.ns - c.openNs);
    if (end > last) last = end;
  }
  return Number(last / 1_000_000n) / 1000;
}

async function resolveTarget(to: string, lookup: HostLookup): Promise<{ host: string; port: number }> {
  let ep;
  try {
    ep = splitHostPort(to);
  } catch {
    throw new CliError(EXIT.usage, `--to ${to}: must be HOST:PORT (IPv4, [IPv6] or a name, port 1-65535)`);
  }
  if (!(ep.port >= 1 && ep.port <= 65535)) throw new CliError(EXIT.usage, `--to ${to}: port must be 1-65535`);
  if (isIP(ep.host)) return ep;
  try {
    return { host: await lookup(ep.host), port: ep.port };
  } catch (err) {
    throw new CliError(EXIT.usage, `--to ${to}: cannot resolve ${ep.host} (${(err as Error).message}); give a numeric address or a name this host can resolve`);
  }
}

function renderProgress(target: string, total: number, loops: number, s: ReplayStats, startedAt: number, now: number): string[] {
  const failures = Object.entries(s.failures).filter(([, n]) => n > 0).map(([k, n]) => `${n} ${k}`);
  return [
    `kstreams: replaying to ${target}, ${formatDuration(now - startedAt)}${loops > 1 ? `, pass ${s.loop + 1} of ${loops}` : ''} (Ctrl-C stops)`,
    `  connections ${s.replayed + s.failed}/${total * loops} done (${s.active} open${failures.length ? `, failed: ${failures.join(', ')}` : ''})   sent ${formatBytes(s.bytesSent)}   received ${formatBytes(s.bytesReceived)}   turns ${s.turns}${s.turnWaitsExpired ? ` (${s.turnWaitsExpired} answer waits expired)` : ''}${s.same + s.differ ? `   answers: ${s.same} same, ${s.differ} differ` : ''}`,
  ];
}

function describeFailure(cap: Capture, o: ReplayOutcome): string {
  const c = cap.connections[o.conn]!;
  const why = o.code ? `${o.syscall}: ${o.message} (${o.code})` : o.failure === 'closed' ? 'the target closed the connection with turns still to send' : String(o.failure);
  return `${c.session}/${c.id}: ${o.failure} after ${o.turnsSent} of ${c.turns.length} turns: ${why}`;
}

export interface ReplaySummary {
  type: 'replay';
  capture: string;
  target: string;
  speed: number | 'max';
  loops: number;
  concurrency: number;
  connections: number;
  connectionsReplayed: number;
  connectionsFailed: number;
  bytesSent: number;
  bytesReceived: number;
  turns: number;
  turnWaitsExpired: number;
  failures: ReplayStats['failures'];
  seconds: number;
  recordedSeconds: number;
  /** CPU time of this process (all its threads) during the replay, seconds. */
  cpuSeconds: number;
  compare?: {
    same: number;
    differ: number;
    /** Connections whose answers had no recording to compare with (the capture kept no responses). */
    notCompared: number;
    differences: Array<{ session: string; id: string; loop: number; differsAt: number; answerTo: number; got: string; recorded: string }>;
  };
  failed?: string[];
  cancelled?: boolean;
}

export function summarize(cap: Capture, o: ReplayOptions, target: string, r: ReplayResult, cpuSeconds: number): ReplaySummary {
  const s = r.stats;
  const loops = o.loops ?? 1;
  const summary: ReplaySummary = {
    type: 'replay',
    capture: o.dir,
    target,
    speed: o.speed > 0 ? o.speed : 'max',
    loops,
    concurrency: o.concurrency ?? DEFAULT_CONCURRENCY,
    connections: s.started,
    connectionsReplayed: s.replayed,
    connectionsFailed: s.failed,
    bytesSent: s.bytesSent,
    bytesReceived: s.bytesReceived,
    turns: s.turns,
    turnWaitsExpired: s.turnWaitsExpired,
    failures: s.failures,
    seconds: Math.round(r.ms) / 1000,
    recordedSeconds: recordedSeconds(cap),
    cpuSeconds: Math.round(cpuSeconds * 1000) / 1000,
  };
  if (o.compare) {
    const differing = r.outcomes.filter((x) => x.differsAt !== undefined);
    summary.compare = {
      same: s.same,
      differ: s.differ,
      notCompared: cap.connections.filter((c) => !c.responses).length * loops,
      differences: differing.slice(0, LISTED).map((x) => {
        const c = cap.connections[x.conn]!;
        return { session: c.session, id: c.id, loop: x.loop, differsAt: x.differsAt!, answerTo: answerOf(c, x.differsAt!), got: printable(x.got!), recorded: printable(x.want!) };
      }),
    };
  }
  const failed = r.outcomes.filter((x) => x.failure !== undefined);
  if (failed.length) summary.failed = failed.slice(0, LISTED).map((x) => describeFailure(cap, x));
  if (r.cancelled) summary.cancelled = true;
  return summary;
}

export async function replayCommand(o: ReplayOptions): Promise<number> {
  let cap: Capture;
  try {
    cap = await readCapture(o.dir);
  } catch (err) {
    if (err instanceof CaptureError) throw new CliError(EXIT.usage, `cannot replay ${o.dir}: ${err.message}`);
    throw err;
  }
  for (const n of cap.notes.slice(0, 5)) note(`note: ${n}`);
  if (cap.notes.length > 5) note(`note: ${cap.notes.length - 5} more notes like these`);
  if (!cap.connections.length) throw new CliError(EXIT.usage, `cannot replay ${o.dir}: the capture holds no connection`);
  const netnsPath = o.netns !== undefined ? resolveNetns(o.netns) : undefined;
  const target = await resolveTarget(o.to, o.lookup ?? defaultLookup);
  const loops = o.loops ?? 1;

  let replay: Replay;
  const cpu = process.cpuUsage();
  try {
    replay = Replay.start(
      {
        target,
        speed: o.speed,
        concurrency: o.concurrency ?? DEFAULT_CONCURRENCY,
        loops,
        compare: o.compare ?? false,
        answerTimeoutMs: o.answerTimeoutMs ?? DEFAULT_ANSWER_TIMEOUT_MS,
        ...(netnsPath !== undefined ? { netnsPath } : {}),
      },
      cap.connections.map(toReplayConnection),
    );
  } catch (err) {
    const e = err as { code?: string; message?: string };
    throw new CliError(e.code === 'EPERM' ? EXIT.privileges : EXIT.runtime, `cannot start the replay: ${e.message ?? String(err)}`);
  }
  const started = Date.now();
  let signals = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    if (++signals > 1) return;
    note(`${signal}: stopping the replay; connections still open are reset`);
    replay.cancel();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.stdout.on('error', () => {});
  const live = process.stderr.isTTY ? new LiveBlock(process.stderr) : undefined;
  const targetText = `${o.to}${isIP(splitHostPort(o.to).host) ? '' : ` (${target.host})`}`;
  const timer = live ? setInterval(() => live.draw(renderProgress(targetText, cap.connections.length, loops, replay.stats(), started, Date.now())), 1000) : undefined;
  let result: ReplayResult;
  try {
    result = await replay.done();
  } finally {
    if (timer) clearInterval(timer);
    live?.clear();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }

  if (result.unreachable) {
    const e = result.unreachable;
    throw new CliError(EXIT.runtime, `cannot reach the target ${targetText}: ${e.syscall ?? 'connect'}: ${oneLine(e.message.replace(/^\w+ to the target: /, ''))}; is it listening, and reachable from ${o.netns !== undefined ? `netns ${o.netns}` : 'here'}?`);
  }
  const used = process.cpuUsage(cpu);
  const summary = summarize(cap, o, o.to, result, (used.user + used.system) / 1e6);
  await new Promise<void>((resolve) => process.stdout.write(`${JSON.stringify(summary, null, process.stdout.isTTY ? 2 : undefined)}\n`, () => resolve()));
  for (const d of summary.compare?.differences ?? []) {
    const where = d.answerTo === 0 ? 'the greeting' : `the answer to turn ${d.answerTo}`;
    note(`${d.session}/${d.id}${loops > 1 ? ` (pass ${d.loop + 1})` : ''}: differs at byte ${d.differsAt} (${where}): target "${d.got}", recorded "${d.recorded}"`);
  }
  if (result.cancelled) return EXIT.runtime;
  if (summary.connectionsFailed) {
    const kinds = Object.entries(summary.failures).filter(([, n]) => n > 0).map(([k, n]) => `${k} ${n}`).join(', ');
    note(`${summary.connectionsFailed} of ${summary.connections} connections did not replay (${kinds}); first: ${summary.failed?.[0] ?? ''}`);
    return EXIT.runtime;
  }
  if (summary.compare && summary.compare.differ > 0) {
    note(`${summary.compare.differ} of ${summary.connections} connections answered differently from the recording`);
    return EXIT.differs;
  }
  return EXIT.ok;
}
