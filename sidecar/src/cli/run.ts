// `kstreams run`: attach one StreamPath to a port until SIGINT/SIGTERM, then detach (the interception at
// once, live connections drained up to the drain timeout, then reset) and print a summary.
import { mirrorTargets, targetName } from '../../../api/src/streampath.js';
import { attachStreamPath, type Attachment, type AttachmentCounters, type DetachResult } from '../dataplane/attach.js';
import { CliError, EXIT, oneLine, toCliError } from './errors.js';
import { formatSeconds, LiveBlock, renderLive, type Summary } from './live.js';
import { loadStreamPath } from './load.js';
import { resolveNetns } from './netns.js';
import { currentPrivileges } from './privileges.js';
import { readProgramFile } from './program-file.js';

export interface RunOptions {
  file: string;
  netns?: string;
  jsonInterval?: number;
  /** Overrides spec.drainTimeoutSeconds (seconds; 0 resets at once). */
  drainTimeout?: number;
  /** Engine-wide cap on mirror send-buffer growth, bytes. Default 64 MiB. */
  mirrorBufferBudget?: number;
}

function writeStdout(text: string): Promise<void> {
  return new Promise((resolve) => process.stdout.write(text, () => resolve()));
}

function note(message: string): void {
  process.stderr.write(`kstreams: ${oneLine(message)}\n`);
}

/** Resolves with the exit code once the attachment is detached after a signal. */
export async function runCommand(opts: RunOptions): Promise<number> {
  const sp = await loadStreamPath(opts.file);
  const name = sp.metadata.name ?? 'streampath';
  const netnsPath = opts.netns !== undefined ? resolveNetns(opts.netns) : undefined;
  const netnsLabel = opts.netns !== undefined ? `netns ${opts.netns}` : 'the current netns';
  const privileges = currentPrivileges(netnsPath !== undefined);
  if (privileges.problems.length) {
    throw new CliError(
      EXIT.privileges,
      `cannot attach ${name} to port ${sp.spec.port}: ${privileges.problems.join('; ')}; run as root or grant these capabilities`,
    );
  }

  // Signals are taken over before attaching: a Ctrl-C during attach must still detach what was attached.
  // The first SIGINT/SIGTERM drains, the second resets the live connections at once (and the summary is
  // still printed), the third exits. Never exit before the reset: a process that exits closes its
  // sockets with FIN where no bytes were unread, and a truncated stream then looks complete.
  let stopRequested: (signal: NodeJS.Signals) => void = () => {};
  const stopped = new Promise<NodeJS.Signals>((resolve) => {
    stopRequested = resolve;
  });
  let attachment: Attachment | undefined;
  let signals = 0;
  let resetRequested = false;
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals) => {
    signals++;
    if (signals === 1) {
      stopping = true;
      stopRequested(signal);
      return;
    }
    if (signals === 2) {
      resetRequested = true;
      note(`${signal} again: resetting the live connections now`);
      // Before the drain started (still attaching), the detach resets instead of draining.
      attachment?.abort().catch(() => undefined);
      return;
    }
    note(`${signal} a third time: exiting before the reset finished; connections still open end as the kernel closes them`);
    process.exit(EXIT.runtime);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  // SIGHUP re-reads the file and applies the edit live, like the agent does for a StreamPath edit. Its
  // handler goes in before attaching and stays until the end: SIGHUP's default action would end the
  // process, which must not happen during a drain either.
  const onHup = () => {
    if (stopping) {
      note('SIGHUP ignored: detaching');
      return;
    }
    if (!attachment) {
      note('SIGHUP ignored: not attached yet');
      return;
    }
    if (opts.file === '-') {
      note('SIGHUP ignored: the StreamPath came from stdin, there is no file to re-read');
      return;
    }
    const current = attachment;
    loadStreamPath(opts.file)
      .then((next) => current.update(next.spec))
      .then(() => note(`reloaded ${opts.file}: now port ${current.port}; the change applies to new connections`))
      .catch((err: unknown) => note(`reload of ${opts.file} failed, keeping the previous spec: ${toCliError(err).message}`));
  };
  process.on('SIGHUP', onHup);
  // A reader that goes away (\`| head\`) must not crash us before we detach.
  process.stdout.on('error', () => {});

  try {
    attachment = await attachStreamPath({
      name,
      spec: sp.spec,
      ...(netnsPath !== undefined ? { netnsPath } : {}),
      ...(opts.mirrorBufferBudget !== undefined ? { mirrorBufferBudget: opts.mirrorBufferBudget } : {}),
      readProgram: readProgramFile,
    });
  } catch (err) {
    process.off('SIGHUP', onHup);
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    throw toCliError(err, `cannot attach ${name} to port ${sp.spec.port} in ${netnsLabel}`);
  }
  const attached = attachment;
  const started = Date.now();
  const targets = mirrorTargets(sp.spec).map((t) => (t.name && t.address ? `${t.name} (${t.address})` : targetName(t)));
  const mirrored = sp.spec.mirror
    ? `is mirrored to ${targets.join(', ')} (${sp.spec.mirror.sampling.percent}% of connections)`
    : 'has no mirror (spec.transform applies to the primary stream only)';
  const drainSeconds = opts.drainTimeout ?? sp.spec.drainTimeoutSeconds;
  note(
    `attached ${name}: port ${sp.spec.port} in ${netnsLabel} ${mirrored}; stop with Ctrl-C (SIGINT) or SIGTERM (live connections drain for up to ${formatSeconds(drainSeconds * 1000)}), reload the file with SIGHUP`,
  );

  // The engine's threads and the BPF link hold no reference on Node's event loop: without this timer the
  // process would end right here, detaching everything.
  const timers: NodeJS.Timeout[] = [setInterval(() => {}, 1 << 30)];
  const live = process.stderr.isTTY ? new LiveBlock(process.stderr) : undefined;
  const safeStats = (): AttachmentCounters | undefined => {
    try {
      return attached.stats();
    } catch {
      return undefined;
    }
  };
  if (live) {
    const draw = () => {
      const c = safeStats();
      if (c) live.draw(renderLive({ name, port: attached.port, netns: netnsLabel, startedAt: started }, c, Date.now()));
    };
    draw();
    timers.push(setInterval(draw, 1000));
  }
  if (opts.jsonInterval !== undefined) {
    timers.push(
      setInterval(() => {
        const c = safeStats();
        if (c) process.stdout.write(`${JSON.stringify({ type: 'counters', streamPath: name, port: attached.port, ...c })}\n`);
      }, opts.jsonInterval * 1000),
    );
  }

  const signal = await stopped;
  for (const t of timers) clearInterval(t);
  live?.clear();

  let exitCode: number = EXIT.ok;
  let detachError: CliError | undefined;
  let drain: DetachResult | undefined;
  try {
    drain = await attached.detach({
      ...(opts.drainTimeout !== undefined ? { timeoutMs: opts.drainTimeout * 1000 } : {}),
      ...(resetRequested ? { now: true } : {}),
      onDraining: ({ connections, timeoutMs }) => {
        const n = `${connections} live connection${connections === 1 ? '' : 's'}`;
        if (timeoutMs > 0) note(`${signal}: draining ${n} for up to ${formatSeconds(timeoutMs)}; Ctrl-C again resets them now`);
        else note(`${signal}: resetting ${n} now`);
      },
    });
  } catch (err) {
    detachError = toCliError(err, `detaching ${name} after ${signal}`);
    exitCode = detachError.exitCode === EXIT.ok ? EXIT.runtime : detachError.exitCode;
  }
  const stoppedAt = Date.now();
  const summary: Summary = {
    type: 'summary',
    streamPath: name,
    port: attached.port,
    netns: opts.netns ?? 'current',
    startedAt: new Date(started).toISOString(),
    stoppedAt: new Date(stoppedAt).toISOString(),
    seconds: Math.round((stoppedAt - started) / 100) / 10,
    ...attached.stats(),
    ...(drain ? { drain } : {}),
  };
  await writeStdout(`${JSON.stringify(summary, null, process.stdout.isTTY ? 2 : undefined)}\n`);
  if (detachError) note(detachError.message);
  process.off('SIGHUP', onHup);
  process.off('SIGINT', onSignal);
  process.off('SIGTERM', onSignal);
  return exitCode;
}
