// The native replayer (native/src/replay): plays a capture's connections against a target on a native
// thread. This wrapper only starts it, reads its counters and waits for the result.
import { addon } from './addon.js';
import type { RawReplayHandle } from './raw.js';

export interface ReplayConfig {
  /** Numeric address and port of the target. */
  target: { host: string; port: number };
  /** Network namespace (a path such as /run/netns/NAME) the replayer's thread connects from. */
  netnsPath?: string;
  /** Recorded gaps are divided by this; 0: no gaps, as fast as the target allows. */
  speed: number;
  /** Connections open at once, at most. Default 256. */
  concurrency?: number;
  /** Plays the whole capture this many times, one pass after the other. Default 1. */
  loops?: number;
  /** Reads the answers and compares them with the recorded responses (else they are discarded in the kernel). */
  compare?: boolean;
  /** How long a turn waits for the target's answer to the previous one. Default 5000. */
  answerTimeoutMs?: number;
  /** The silence after first answer bytes that ends a turn's wait without responses, or with an answer shorter than recorded. Default 5. */
  quietMs?: number;
  connectTimeoutMs?: number;
  /** A connection whose target takes no bytes for this long fails as stalled. Default 30000. */
  stallTimeoutMs?: number;
}

export interface ReplayConnection {
  c2sPath: string;
  s2cPath?: string;
  /** The capture kept the app's answers: turns wait for as many bytes as recorded, --compare compares them. */
  responses: boolean;
  /** From the capture's first open, nanoseconds. */
  startNs: number;
  /**
   * When the recorded connection ended, on the same timeline as startNs; absent when unknown (the capture
   * cut it while it went on, or has no end record). A connection whose startNs is after another's endNs
   * starts only once that other has finished in the replay, at every speed.
   */
  endNs?: number;
  /** [c2s, s2c, atNs] per turn; atNs from the connection's open. */
  turns: Float64Array;
  endC2s: number;
  endS2c: number;
  how: 'fin' | 'rst' | 'cut';
}

export type ReplayFailure = 'connect' | 'reset' | 'closed' | 'stalled' | 'file';

export interface ReplayStats {
  started: number;
  replayed: number;
  failed: number;
  active: number;
  bytesSent: number;
  bytesReceived: number;
  turns: number;
  /** Turns sent after answerTimeoutMs without the whole answer to the previous one. */
  turnWaitsExpired: number;
  /** With compare: connections whose answers were the recorded ones, and those that differ. */
  same: number;
  differ: number;
  /** The pass being played (0-based). */
  loop: number;
  failures: Record<ReplayFailure, number>;
}

export interface ReplayOutcome {
  /** Index into the connections given. */
  conn: number;
  loop: number;
  failure?: ReplayFailure;
  code?: string;
  message?: string;
  syscall?: string;
  bytesSent: number;
  bytesReceived: number;
  turnsSent: number;
  /** With compare: the offset in the response stream of the first byte that differs. */
  differsAt?: number;
  /** Up to 32 bytes from there: the target's, and the recording's (empty past either's end). */
  got?: Buffer;
  want?: Buffer;
}

export interface ReplayResult {
  stats: ReplayStats;
  ms: number;
  cancelled: boolean;
  /** The first connection could not connect (nothing had connected yet): the replay stopped. */
  unreachable?: Error & { code?: string; syscall?: string };
  /** The connections that failed or whose answers differ. */
  outcomes: ReplayOutcome[];
}

export class Replay {
  private constructor(private readonly handle: RawReplayHandle) {}

  /** Starts the thread; throws a NativeError when the namespace cannot be entered, a TypeError for a bad field. */
  static start(config: ReplayConfig, conns: ReplayConnection[]): Replay {
    return new Replay(addon().replayStart(config, conns));
  }

  stats(): ReplayStats {
    return addon().replayStats(this.handle);
  }

  cancel(): void {
    addon().replayCancel(this.handle);
  }

  /** Resolves once the replay has ended (or was cancelled). */
  done(): Promise<ReplayResult> {
    return addon().replayWait(this.handle);
  }
}
