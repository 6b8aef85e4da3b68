// Exponential backoff with jitter, so that N replicas or informers that fail together do not retry in
// lockstep against a struggling apiserver.

export interface BackoffOptions {
  initialMs: number;
  maxMs: number;
  /** Multiplier per consecutive failure. */
  factor?: number;
  /** Share of each delay that is randomised, 0..1 (0.5: delay in [d/2, d]). */
  jitter?: number;
  /** Source of randomness in [0, 1); injected for deterministic tests. */
  random?: () => number;
}

export class Backoff {
  private failures = 0;
  private readonly factor: number;
  private readonly jitter: number;
  private readonly random: () => number;

  constructor(private readonly opts: BackoffOptions) {
    this.factor = opts.factor ?? 2;
    this.jitter = opts.jitter ?? 0.5;
    this.random = opts.random ?? Math.random;
  }

  /** The delay before the next attempt; each call counts one more consecutive failure. */
  next(): number {
    const base = Math.min(this.opts.maxMs, this.opts.initialMs * this.factor ** this.failures);
    this.failures++;
    return Math.round(base * (1 - this.jitter) + base * this.jitter * this.random());
  }

  reset(): void {
    this.failures = 0;
  }

  get attempts(): number {
    return this.failures;
  }
}
