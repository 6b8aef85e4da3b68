// `kstreams record`: a recorder a StreamPath can mirror to. The stream engine listens with no app behind
// it (upstream 'none') and one file target: every connection's bytes go socket -> pipe -> file with
// splice, into a capture session (docs/capture.md, writer "recorder"). It runs until SIGINT/SIGTERM, then
// lets live connections end for --drain-timeout, resets the rest (their records end with rst) and prints
// a summary.
import { resolve } from 'node:path';
import { Engine } from '../../../native/lib/engine.js';
import type { Endpoint, EngineStats } from '../../../native/lib/types.js';
import { CliError, EXIT, oneLine } from './errors.js';
import { formatSeconds } from './live.js';
import { resolveNetns } from './netns.js';

export const DEFAULT_TURN_GAP_MS = 50;
export const DEFAULT_RECORD_MAX_BYTES = 1024 ** 3;
export const DEFAULT_RECORD_DRAIN_SECONDS = 5;
const TARGET = 'record';

export interface RecordOptions {
  /** `:PORT`, `HOST:PORT` or `[V6]:PORT`. */
  listen: string;
  dir: string;
  maxBytes?: number;
  maxConnectionBytes?: number;
  turnGapMs?: number;
  drainTimeout?: number;
  netns?: string;
  jsonInterval?: number;
}

/** The listener of `--listen`: `:PORT` is every address (dual-stack). */
export function parseListen(value: string): Endpoint {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([0-9.]*)):(\d{1,5})$/.exec(value.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || !(port >= 0 && port <= 65535)) {
    throw new CliError(EXIT.usage, `--listen ${value}: must be :PORT, IPv4:PORT or [IPv6]:PORT (a numeric address; port 0-65535, 0 for a free one)`);
  }
  return { host: m[1] ?? (m[2] || '::'), port };
}

function note(message: string): void {
  process.stderr.write(`kstreams: ${oneLine(message)}\n`);
}

export interface RecordSummary {
  type: 'record';
  listen: string;
  session: string;
  connections: number;
  connectionsRecorded: number;
  /** Client bytes written to the capture's files. */
  bytesRecorded: number;
  /** Bytes of connections, or parts of them, not recorded (the capture full, the disk behind or failing). */
  bytesDropped: number;
  connectionsNotRecorded: number;
  cutsFull: number;
  cutsSlow: number;
  cutsDisk: number;
  /** Times a connection's sender was held back (not read) until the writer caught up, instead of a cut. */
  holds: number;
  connectionsReset: number;
  seconds: number;
}

function summarize(s: EngineStats, listen: string, seconds: number, reset: number): RecordSummary {
  const t = s.targets.find((x) => x.name === TARGET);
  return {
    type: 'record',
    listen,
    session: t?.capture?.session ?? '',
    connections: s.connectionsAccepted,
    connectionsRecorded: t?.connectionsMirrored ?? 0,
    bytesRecorded: t?.bytesMirrored ?? 0,
    bytesDropped: t?.bytesDropped ?? 0,
    connectionsNotRecorded: t?.capture?.connectionsNotRecorded ?? 0,
    cutsFull: t?.capture?.cutsFull ?? 0,
    cutsSlow: t?.capture?.cutsSlow ?? 0,
    cutsDisk: t?.capture?.cutsDisk ?? 0,
    holds: t?.capture?.holds ?? 0,
    connectionsReset: reset,
    seconds,
  };
}

/** Resolves with the exit code once stopped by a signal. */
export async function recordCommand(o: RecordOptions): Promise<number> {
  const listen = parseListen(o.listen);
  if (o.dir.trim() === '') throw new CliError(EXIT.usage, '--dir: give the directory to record into');
  const dir = resolve(o.dir);
  const netnsPath = o.netns !== undefined ? resolveNetns(o.netns) : undefined;
  let engine: Engine;
  try {
    engine = Engine.start({
      ...(netnsPath !== undefined ? { netnsPath } : {}),
      listen,
      upstream: 'none',
      turnGapMs: o.turnGapMs ?? DEFAULT_TURN_GAP_MS,
      mirrors: [
        {
          name: TARGET,
          samplingPercent: 100,
          file: {
            path: dir,
            maxBytes: o.maxBytes ?? DEFAULT_RECORD_MAX_BYTES,
            ...(o.maxConnectionBytes !== undefined ? { maxConnectionBytes: o.maxConnectionBytes } : {}),
          },
        },
      ],
      // A recorder's connections are all bulk receivers: the largest pipe a sidecar may have (the kernel
      // keeps a smaller one where the pipe budget says so, counted, never refused).
      pipeSize: 1024 * 1024,
      turnTimeoutMs: 0,
      mirrorBufferSize: 4 * 1024 * 1024,
      mirrorConnectTimeoutMs: 1000,
    });
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { syscall?: string };
    // The directory (mkdir) and the listener (bind) are the user's to fix; the namespace has its own code.
    const code = e.syscall === 'setns' || (e.syscall === 'open' && netnsPath) ? EXIT.netns : e.syscall === 'mkdir' || e.syscall === 'bind' || e.code === 'ERR_INVALID_ARG_TYPE' ? EXIT.usage : EXIT.runtime;
    throw new CliError(code, `cannot record on ${o.listen} into ${dir}: ${oneLine(e.message ?? String(err))}`);
  }
  const where = `${listen.host.includes(':') ? `[${engine.listenAddress.host}]` : engine.listenAddress.host}:${engine.listenAddress.port}`;
  const session = engine.stats().targets[0]?.capture?.session ?? dir;
  const drainSeconds = o.drainTimeout ?? DEFAULT_RECORD_DRAIN_SECONDS;
  note(`recording connections to ${where}${o.netns !== undefined ? ` in netns ${o.netns}` : ''} into ${session}; stop with Ctrl-C (SIGINT) or SIGTERM (live connections end within ${formatSeconds(drainSeconds * 1000)})`);

  const started = Date.now();
  // The engine's threads hold no reference on Node's event loop.
  const timers: NodeJS.Timeout[] = [setInterval(() => {}, 1 << 30)];
  if (o.jsonInterval !== undefined) {
    timers.push(
      setInterval(() => {
        process.stdout.write(`${JSON.stringify({ ...summarize(engine.stats(), where, (Date.now() - started) / 1000, 0), type: 'counters' })}\n`);
      }, o.jsonInterval * 1000),
    );
  }
  let signals = 0;
  let stopRequested: (signal: NodeJS.Signals) => void = () => {};
  const stopped = new Promise<NodeJS.Signals>((done) => (stopRequested = done));
  const onSignal = (signal: NodeJS.Signals) => {
    signals++;
    if (signals === 1) stopRequested(signal);
    else {
      note(`${signal} again: resetting the live connections now`);
      engine.stop().catch(() => undefined);
    }
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const signal = await stopped;
  for (const t of timers) clearInterval(t);
  const live = engine.stats().connectionsActive;
  if (live > 0) note(`${signal}: letting ${live} live connection${live === 1 ? '' : 's'} end for up to ${formatSeconds(drainSeconds * 1000)}`);
  const drain = await engine.drain(Math.round(drainSeconds * 1000));
  const summary = summarize(engine.stats(), where, Math.round((Date.now() - started) / 100) / 10, drain.reset);
  await new Promise<void>((resolve) => process.stdout.write(`${JSON.stringify(summary)}\n`, () => resolve()));
  process.off('SIGINT', onSignal);
  process.off('SIGTERM', onSignal);
  return EXIT.ok;
}
