// The `kstreams` command line: parsing, help and the mapping of every failure to one line and an exit code.
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { CAPTURE_MOUNT_PATH, DEFAULT_AGENT_PORT } from '../../../api/src/agent.js';
import { AttachError } from '../dataplane/errors.js';
import { resolveCapturePath } from '../dataplane/targets.js';
import { EXAMPLE_STREAMPATH_YAML, mirrorTargets } from '../../../api/src/streampath.js';
import { checkCommand } from './check.js';
import { CliError, EXIT, EXIT_CODES_HELP, oneLine, toCliError } from './errors.js';
import { loadStreamPath } from './load.js';
import { DEFAULT_ANSWER_TIMEOUT_MS, DEFAULT_CONCURRENCY, replayCommand } from './replay.js';
import { DEFAULT_RECORD_DRAIN_SECONDS, DEFAULT_TURN_GAP_MS, recordCommand } from './record.js';
import { runCommand } from './run.js';

const EXAMPLES = `Examples:
  kstreams example > sp.yaml                 write the embedded default StreamPath, then edit it
  kstreams validate -f sp.yaml               parse and check a StreamPath without attaching
  kstreams check                             can this machine and user run the data plane?
  sudo kstreams run -f sp.yaml --netns app   mirror port spec.port of network namespace "app"
  kubectl get sp checkout-shadow -o yaml | kstreams validate -f -
  kstreams replay ./capture --to 10.0.0.5:8080 --speed max --compare   play a capture against a staging copy
  kstreams record --listen :9000 --dir /var/lib/kstreams/capture       a recorder to mirror to`;

const RECORD_HELP = `
Records every connection made to --listen into a capture (docs/capture.md) under --dir: a recorder that
a StreamPath mirrors to (give that target turnTimeoutMs: 0 in spec.mirror: a recorder never answers).
The stream engine receives the bytes and moves them socket -> pipe -> file with splice; nothing answers
the sender. A recorder sees only what the mirror sends, the client's bytes: it writes no responses, and
it marks a new turn where the bytes stop for more than --turn-gap (a capture taken in the sidecar, a
file target, has the app's answers and the real turns).

--max-bytes bounds the capture (default 1Gi): once full, live connections are cut at exactly that many
bytes and new ones are not recorded (the sender is not slowed: its mirror connection stays open). A full
disk does the same. A disk slower than the sender cuts nothing: the recorder stops reading that
connection until its writer caught up (counted in holds), and TCP holds the sender back.

On SIGINT/SIGTERM it stops accepting, lets live connections end for up to --drain-timeout, resets the
rest (their records end with rst), prints {"type":"record", listen, session, connections,
connectionsRecorded, bytesRecorded, bytesDropped, connectionsNotRecorded, cutsFull, cutsSlow, cutsDisk, holds,
connectionsReset, seconds} on stdout and exits 0.

Examples:
  kstreams record --listen :9000 --dir /var/lib/kstreams/capture
  kstreams record --listen 10.0.0.9:9000 --dir ./capture --max-bytes 10Gi --netns staging`;

const RUN_HELP = `
Applies spec.port and spec.mirror of the StreamPath to a port on this machine, without Kubernetes.
spec.selector and metadata.namespace are ignored locally: the namespace given with --netns (default:
the one kstreams runs in) plays the role of the pod. New connections to spec.port in that namespace are
steered to the kstreams stream engine, which forwards them to the app unchanged and tees the client's
bytes to every mirror target (spec.mirror.targets[].address, host:port; names are resolved once at start).
Service targets need a cluster: give address: host:port instead. spec.transform runs in the kernel
(an sk_msg program on the engine's sockets); a program op reads its BPF object from program.path.

One StreamPath per file: a file with several YAML documents (---) is refused.

While running:
  stderr  "attached ..." once, then live counters redrawn about once a second when stderr is a terminal
  stdout  with --json-interval N: one JSON line {"type":"counters",...} every N seconds
  SIGHUP  re-reads the file and applies the changed spec live, to new connections (mirror targets,
          sampling, pipe size, turn pacing, buffer size; a new port is tapped before the old one is
          released); connections already open keep what they started with
On SIGINT (Ctrl-C) or SIGTERM kstreams detaches: new connections reach the app directly at once, live
connections keep moving for up to spec.drainTimeoutSeconds (or --drain-timeout), and those still open
then are reset (RST), never closed with FIN. A second SIGINT/SIGTERM resets them at once. Then it prints
the final counters as one JSON object {"type":"summary", connections, bytesPrimary, bytesMirrored,
bytesDropped, connectionsReset, targets: [...], drain: {timeoutMs, drained, reset, ms, cutShort}} on
stdout and exits 0. A third signal exits at once with 1.

${EXIT_CODES_HELP}

Examples:
  sudo kstreams run -f sp.yaml --netns app
  sudo kstreams run -f - --netns /proc/4242/ns/net --json-interval 5 < sp.yaml`;

function positiveSeconds(value: string): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0 || n > 86_400) {
    throw new InvalidArgumentError('must be a number of seconds, greater than 0 (e.g. 1 or 0.5)');
  }
  return n;
}

function drainSeconds(value: string): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || n < 0 || n > 3600) {
    throw new InvalidArgumentError('must be a number of seconds from 0 to 3600 (0 resets live connections at once)');
  }
  return n;
}

const BYTE_UNITS: Record<string, number> = { '': 1, Ki: 1024, KiB: 1024, Mi: 1024 ** 2, MiB: 1024 ** 2, Gi: 1024 ** 3, GiB: 1024 ** 3, Ti: 1024 ** 4, TiB: 1024 ** 4 };

function bytesUpTo(min: number, max: number, maxText: string, units: string): (value: string) => number {
  return (value) => {
    const m = /^(\d+)(Ki|KiB|Mi|MiB|Gi|GiB|Ti|TiB)?$/.exec(value.trim());
    const n = m ? Number(m[1]) * BYTE_UNITS[m[2] ?? '']! : NaN;
    if (!Number.isSafeInteger(n) || n < min || n > max || (!units.includes('Ti') && m?.[2]?.startsWith('Ti'))) {
      throw new InvalidArgumentError(`must be a number of bytes up to ${maxText}, optionally with ${units} (e.g. 67108864 or 64Mi)`);
    }
    return n;
  };
}

/** `67108864`, `64Mi` or `64MiB`, up to 16 GiB. */
export const byteSize = bytesUpTo(0, 16 * 1024 ** 3, '16 GiB', 'Ki, Mi or Gi');
/** A capture's bound, up to 1 TiB (as spec...file.maxBytes). */
const captureSize = bytesUpTo(1, 1024 ** 4, '1 TiB', 'Ki, Mi, Gi or Ti');

const REPLAY_HELP = `
Replays every connection of a capture (a file target's directory, or one session in it; see
docs/capture.md) as a new connection to HOST:PORT. The client's bytes go from the capture's files to the
socket with sendfile(), turn by turn: before each turn the replayer waits for the target's answer to the
previous one (as many bytes as the recorded answer, or --answer-timeout), and for the recorded gap
between the turns' starts divided by --speed. Connections start at their recorded offsets, also divided
by --speed, and never before the connections that had ended before they opened in the recording have
ended in the replay (at any speed); overlapping connections still overlap. A connection recorded as ended by FIN ends with FIN; one recorded as reset, or cut short by
the capture, ends with RST.

--compare reads the target's answers and compares them with the recorded ones, byte by byte: per
connection the same, or differs at byte N (with an excerpt of both on stderr).

Progress is redrawn on stderr when it is a terminal. At the end a JSON summary goes to stdout:
{"type":"replay", connections, connectionsReplayed, connectionsFailed, bytesSent, bytesReceived, turns,
turnWaitsExpired, failures: {connect, reset, closed, stalled, file}, seconds, recordedSeconds, compare?}.

Exit codes: 0 every connection replayed; 1 a connection failed, the target is unreachable, or the replay
was stopped (SIGINT/SIGTERM); 2 a bad flag, a missing or corrupt capture (the file and byte offset are
named); 3 --netns not found; 5 with --compare, answers differ.

Examples:
  kstreams replay ./capture --to 127.0.0.1:6379
  kstreams replay ./capture/20261202T031500Z-shop-7f9c-1234 --to staging:5432 --speed 2
  kstreams replay ./capture --to 10.0.0.5:8080 --speed max --concurrency 32 --loop 10 --compare`;

function replaySpeed(value: string): number {
  if (value === 'max') return 0;
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || n <= 0 || n > 1_000_000) {
    throw new InvalidArgumentError('must be a factor greater than 0 (0.5 is half speed, 2 twice as fast) or max');
  }
  return n;
}

function positiveInteger(max: number): (value: string) => number {
  return (value) => {
    const n = Number(value);
    if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(n) || n < 1 || n > max) {
      throw new InvalidArgumentError(`must be a whole number from 1 to ${max}`);
    }
    return n;
  };
}

function portNumber(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 65535) throw new InvalidArgumentError('must be a port number, 1-65535');
  return n;
}

function fileOption(): Option {
  return new Option('-f, --file <path>', 'StreamPath YAML file, - for stdin').makeOptionMandatory();
}

export function buildProgram(version: string): Command {
  const program = new Command('kstreams')
    .description('In-kernel TCP traffic mirroring: apply a StreamPath to a local port, validate one, check this machine.')
    .version(version, '-V, --version')
    .helpCommand(false)
    .showSuggestionAfterError(true)
    .addHelpText('after', `\n${EXIT_CODES_HELP}\n\nErrors are one line on stderr: kstreams: <what happened, to what, what to do next>\n\n${EXAMPLES}`);

  program
    .command('run')
    .description('attach a StreamPath to a port in a network namespace until SIGINT/SIGTERM')
    .addOption(fileOption())
    .option('--netns <name|path>', 'network namespace: a name under /run/netns (ip netns) or a path such as /proc/PID/ns/net (default: the current one)')
    .option('--json-interval <seconds>', 'also print the counters as a JSON line on stdout every <seconds>', positiveSeconds)
    .option(
      '--drain-timeout <seconds>',
      'on SIGINT/SIGTERM, keep live connections moving for up to <seconds> before resetting them (default: spec.drainTimeoutSeconds; 0 resets at once)',
      drainSeconds,
    )
    .option(
      '--mirror-buffer-budget <bytes>',
      'cap on the send-buffer memory that lagging mirror connections may grow into, all together (spec.mirror.bufferSize each; default 64Mi)',
      byteSize,
    )
    .addHelpText('after', RUN_HELP)
    .action(async (o: { file: string; netns?: string; jsonInterval?: number; drainTimeout?: number; mirrorBufferBudget?: number }) => {
      process.exitCode = await runCommand({
        file: o.file,
        ...(o.netns !== undefined ? { netns: o.netns } : {}),
        ...(o.jsonInterval !== undefined ? { jsonInterval: o.jsonInterval } : {}),
        ...(o.drainTimeout !== undefined ? { drainTimeout: o.drainTimeout } : {}),
        ...(o.mirrorBufferBudget !== undefined ? { mirrorBufferBudget: o.mirrorBufferBudget } : {}),
      });
    });

  program
    .command('replay')
    .description('replay a capture\'s connections against HOST:PORT, optionally comparing the answers')
    .argument('<dir>', 'capture directory (a file target\'s path, or one session in it)')
    .requiredOption('--to <host:port>', 'the target to replay to')
    .option('--speed <factor|max>', 'divide the recorded gaps by <factor>; max: no gaps, as fast as the target answers', replaySpeed, 1)
    .option('--concurrency <n>', `connections open at once, at most (default ${DEFAULT_CONCURRENCY})`, positiveInteger(65536))
    .option('--loop <n>', 'replay the whole capture <n> times, one pass after the other', positiveInteger(1_000_000_000), 1)
    .option('--compare', 'compare each connection\'s answers with the recorded responses')
    .option('--answer-timeout <seconds>', `how long a turn waits for the answer to the previous one (default ${DEFAULT_ANSWER_TIMEOUT_MS / 1000})`, positiveSeconds)
    .option('--netns <name|path>', 'connect from this network namespace (default: the current one)')
    .addHelpText('after', REPLAY_HELP)
    .action(async (dir: string, o: { to: string; speed: number; concurrency?: number; loop: number; compare?: boolean; answerTimeout?: number; netns?: string }) => {
      process.exitCode = await replayCommand({
        dir,
        to: o.to,
        speed: o.speed,
        loops: o.loop,
        compare: o.compare ?? false,
        ...(o.concurrency !== undefined ? { concurrency: o.concurrency } : {}),
        ...(o.answerTimeout !== undefined ? { answerTimeoutMs: Math.round(o.answerTimeout * 1000) } : {}),
        ...(o.netns !== undefined ? { netns: o.netns } : {}),
      });
    });

  program
    .command('record')
    .description('record every connection to a port into a capture directory (a recorder to mirror to)')
    .requiredOption('--listen <[host]:port>', 'where to listen: :PORT (every address), IPv4:PORT or [IPv6]:PORT')
    .requiredOption('--dir <path>', 'capture directory; a session directory is made in it')
    .option('--max-bytes <bytes>', 'bound of the capture, both directions (default 1Gi)', captureSize)
    .option('--max-connection-bytes <bytes>', 'bound of one connection\'s record', captureSize)
    .option('--turn-gap <ms>', `silence that starts a new turn, in milliseconds (default ${DEFAULT_TURN_GAP_MS})`, positiveInteger(3_600_000))
    .option('--drain-timeout <seconds>', `on SIGINT/SIGTERM, how long live connections may take to end (default ${DEFAULT_RECORD_DRAIN_SECONDS})`, drainSeconds)
    .option('--json-interval <seconds>', 'also print the counters as a JSON line on stdout every <seconds>', positiveSeconds)
    .option('--netns <name|path>', 'listen in this network namespace (default: the current one)')
    .addHelpText('after', RECORD_HELP)
    .action(async (o: { listen: string; dir: string; maxBytes?: number; maxConnectionBytes?: number; turnGap?: number; drainTimeout?: number; jsonInterval?: number; netns?: string }) => {
      process.exitCode = await recordCommand({
        listen: o.listen,
        dir: o.dir,
        ...(o.maxBytes !== undefined ? { maxBytes: o.maxBytes } : {}),
        ...(o.maxConnectionBytes !== undefined ? { maxConnectionBytes: o.maxConnectionBytes } : {}),
        ...(o.turnGap !== undefined ? { turnGapMs: o.turnGap } : {}),
        ...(o.drainTimeout !== undefined ? { drainTimeout: o.drainTimeout } : {}),
        ...(o.jsonInterval !== undefined ? { jsonInterval: o.jsonInterval } : {}),
        ...(o.netns !== undefined ? { netns: o.netns } : {}),
      });
    });

  program
    .command('validate')
    .description('parse a StreamPath file and report every invalid field; attaches nothing')
    .addOption(fileOption())
    .action(async (o: { file: string }) => {
      const sp = await loadStreamPath(o.file);
      const notes: string[] = [];
      if (sp.spec.transform?.ops.some((op) => op.program?.configMap !== undefined)) {
        notes.push('a program from a ConfigMap needs a cluster (`kstreams run` reads program.path)');
      }
      const targets = mirrorTargets(sp.spec);
      if (targets.some((t) => t.service)) notes.push('service targets need a cluster (`kstreams run` refuses them)');
      // In a cluster a file target's path is resolved under the sidecar's capture volume: refuse now
      // what every sidecar would refuse (CapturePathOutsideVolume) rather than at attach.
      targets.forEach((t, i) => {
        if (t.file === undefined) return;
        try {
          resolveCapturePath(t.file.path, CAPTURE_MOUNT_PATH, `spec.mirror.targets[${i}].file.path`);
        } catch (err) {
          if (err instanceof AttachError) throw new CliError(EXIT.usage, `${o.file === '-' ? '<stdin>' : o.file}: invalid StreamPath: ${err.message}`);
          throw err;
        }
      });
      if (targets.some((t) => t.file)) notes.push(`in a cluster a file target's path is under the sidecar's capture volume (${CAPTURE_MOUNT_PATH})`);
      const mirror = sp.spec.mirror ? `${targets.length} mirror target(s)` : 'no mirror: transforms the primary stream only';
      process.stdout.write(
        `${o.file === '-' ? '<stdin>' : o.file}: valid StreamPath ${sp.metadata.name ?? '(no name)'} (port ${sp.spec.port}, ${mirror})${notes.length ? `; note: ${notes.join('; ')}` : ''}\n`,
      );
    });

  program
    .command('check')
    .description('check kernel features (bpf, BTF, sk_lookup, sockmap) and privileges; exit 0 when ready, 4 when not')
    .option('--json', 'print the report as JSON')
    .action(async (o: { json?: boolean }) => {
      process.exitCode = await checkCommand(o);
    });

  program
    .command('example')
    .description('print the embedded default StreamPath (a starting point for run -f)')
    .action(() => {
      process.stdout.write(EXAMPLE_STREAMPATH_YAML);
    });

  const agent = program
    .command('agent')
    .description('run the in-pod agent (inside an injected pod; configured by its KSTREAMS_* environment)')
    .action(async () => {
      // Loaded only here: the agent brings the Kubernetes client, which the other commands do not need.
      const [{ runAgent }, { AgentConfigError, loadAgentConfig }] = await Promise.all([
        import('../agent/main.js'),
        import('../agent/config.js'),
      ]);
      let config;
      try {
        config = loadAgentConfig(process.env);
      } catch (err) {
        if (err instanceof AgentConfigError) throw new CliError(EXIT.usage, `agent: ${err.problems.join('; ')}; set these environment variables`);
        throw err;
      }
      await runAgent(config);
      // The agent exits from its own SIGTERM/SIGINT handler once it has detached everything.
      await new Promise<never>(() => {});
    });

  agent
    .command('wait')
    .description("wait until the agent's /readyz answers 200 (the postStart hook that holds the app until the data plane is attached)")
    .option('--port <port>', 'agent port', portNumber, DEFAULT_AGENT_PORT)
    .option('--timeout-seconds <seconds>', 'give up after this long', positiveSeconds, 120)
    .action(async (o: { port: number; timeoutSeconds: number }) => {
      const { waitForAgentReady } = await import('../agent/wait.js');
      const r = await waitForAgentReady({ port: o.port, timeoutSeconds: o.timeoutSeconds });
      if (!r.ready) {
        throw new CliError(EXIT.runtime, `agent on port ${o.port} not ready after ${o.timeoutSeconds}s (last answer: ${oneLine(r.last)}); see the kstreams-sidecar container's logs`);
      }
      process.stdout.write(`agent ready after ${r.polls} poll(s)\n`);
    });

  // Commander's own errors (unknown option, missing -f) become our one-line format with exit code 2.
  const configure = (cmd: Command) => {
    cmd.exitOverride();
    cmd.configureOutput({
      outputError: (str, write) => {
        const what = oneLine(str.replace(/^error:\s*/, ''));
        const where = cmd === program ? 'kstreams --help' : `kstreams ${cmd.name()} --help`;
        write(`kstreams: ${what}; see ${where}\n`);
      },
    });
    cmd.commands.forEach(configure);
  };
  configure(program);
  return program;
}

/** Parses argv, runs the command, and returns the exit code; never throws. */
export async function main(argv: string[], version: string): Promise<number> {
  const program = buildProgram(version);
  if (argv.length <= 2) {
    process.stderr.write('kstreams: no command given; try kstreams example, validate, check, run, record or replay (see kstreams --help)\n');
    return EXIT.usage;
  }
  try {
    await program.parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : EXIT.ok;
  } catch (err) {
    if (err instanceof CommanderError) {
      // --help and --version end here too, successfully.
      return err.exitCode === 0 ? EXIT.ok : EXIT.usage;
    }
    const e = toCliError(err);
    process.stderr.write(`kstreams: ${oneLine(e.message)}\n`);
    if (e.detail) process.stderr.write(`${e.detail.replace(/\n*$/, '')}\n`);
    return e.exitCode;
  }
}
