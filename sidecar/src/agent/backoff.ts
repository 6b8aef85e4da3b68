// Exponential backoff with full jitter for watch restarts, with the random source injected so tests are
// deterministic. Jitter keeps many agents of one namespace from hammering the apiserver in lockstep after
// it comes back.

export interface BackoffOptions {
  initialMs?: number;
  maxMs?: number;
  /** Returns [0, 1). */
  random?: () => number;
}

export class Backoff {
  private attempt = 0;
  private readonly initialMs: number;
  private readonly maxMs: number;
  private readonly random: () => number;

  constructor(opts: BackoffOptions = {}) {
    this.initialMs = opts.initialMs ?? 500;
    this.maxMs = opts.maxMs ?? 30_000;
    this.random = opts.random ?? Math.random;
  }

  /** The delay before the next attempt: uniform in [cap/2, cap], cap doubling from initialMs to maxMs. */
  next(): number {
    const cap = Math.min(this.maxMs, this.initialMs * 2 ** Math.min(this.attempt, 30));
    this.attempt++;
    return Math.round(cap / 2 + (cap / 2) * this.random());
  }

  reset(): void {
    this.attempt = 0;
  }

  get attempts(): number {
    return this.attempt;
  }
}
