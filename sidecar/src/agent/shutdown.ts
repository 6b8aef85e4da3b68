// How long the agent may drain its attachments when the pod terminates: a pure function of the signal's
// time, what the agent last saw of its own Pod and its configuration. The kubelet sends SIGKILL when the
// grace period runs out; before that the engines must have reset what is still open (a killed process
// closes its sockets with FIN where no bytes were unread, and a truncated stream then looks complete).

/** Drains end this long before the kill, and the agent exits (hard) half-way there if a reset hangs. */
export const SHUTDOWN_MARGIN_MS = 2000;
export const EXIT_MARGIN_MS = 1000;
/** Kubernetes' default terminationGracePeriodSeconds. */
export const DEFAULT_GRACE_SECONDS = 30;
/** Outside a pod (no grace period known) and without KSTREAMS_SHUTDOWN_TIMEOUT_SECONDS. */
export const DEFAULT_SHUTDOWN_SECONDS = 20;

/** What the agent knows of its Pod (V1Pod's fields; the watch cache may hold dates as strings). */
export interface PodTermination {
  deletionTimestamp?: Date | string | undefined;
  deletionGracePeriodSeconds?: number | undefined;
  terminationGracePeriodSeconds?: number | undefined;
}

export interface ShutdownPlan {
  /** Every drain ends (what is left is reset) within this many ms of the signal. */
  drainBudgetMs: number;
  /** Exit anyway (1) this many ms after the signal, should a reset hang. */
  exitAfterMs: number;
  /** What set the budget, for the log. */
  source: string;
}

/**
 * The pod's grace period counts from the kubelet's SIGTERM (deletionGracePeriodSeconds when the pod is
 * being deleted, else terminationGracePeriodSeconds, e.g. a liveness restart), and deletionTimestamp is
 * the moment of the kill when the pod is deleted; with native sidecars the app containers are stopped
 * first, so the sidecar's SIGTERM comes late and deletionTimestamp is the tighter bound. An explicit
 * KSTREAMS_SHUTDOWN_TIMEOUT_SECONDS caps the whole shutdown; without a pod and without it, 20 s.
 */
export function planShutdown(input: { now: number; pod?: PodTermination | undefined; shutdownTimeoutSeconds?: number | undefined }): ShutdownPlan {
  const { now, pod } = input;
  // Candidate moments of the hard exit.
  const exits: Array<{ at: number; source: string }> = [];
  if (pod) {
    const grace = pod.deletionGracePeriodSeconds ?? pod.terminationGracePeriodSeconds ?? DEFAULT_GRACE_SECONDS;
    exits.push({ at: now + grace * 1000 - SHUTDOWN_MARGIN_MS + EXIT_MARGIN_MS, source: `the pod's grace period (${grace} s) less ${SHUTDOWN_MARGIN_MS / 1000} s` });
    const ts = pod.deletionTimestamp === undefined ? NaN : new Date(pod.deletionTimestamp).getTime();
    if (Number.isFinite(ts)) {
      exits.push({ at: ts - SHUTDOWN_MARGIN_MS + EXIT_MARGIN_MS, source: `the pod's deletionTimestamp less ${SHUTDOWN_MARGIN_MS / 1000} s` });
    }
  }
  if (input.shutdownTimeoutSeconds !== undefined) {
    exits.push({ at: now + input.shutdownTimeoutSeconds * 1000, source: `KSTREAMS_SHUTDOWN_TIMEOUT_SECONDS (${input.shutdownTimeoutSeconds} s)` });
  }
  if (exits.length === 0) exits.push({ at: now + DEFAULT_SHUTDOWN_SECONDS * 1000, source: `the default of ${DEFAULT_SHUTDOWN_SECONDS} s (no pod grace period known)` });
  const first = exits.reduce((a, b) => (b.at < a.at ? b : a));
  // The resets get their second even when the kill is closer than that: exiting first would end the
  // connections with FIN.
  const drainBudgetMs = Math.max(0, first.at - now - EXIT_MARGIN_MS);
  return { drainBudgetMs, exitAfterMs: drainBudgetMs + EXIT_MARGIN_MS, source: first.source };
}
