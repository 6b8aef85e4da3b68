// Polls the agent sidecar of every injected pod for its report (GET /v1/report) and keeps the last one.
// Polling, not pushing: the operator is the only writer of StreamPath status, agents need no write access
// to the API, and a dead agent shows up as a poll failure rather than as silence.
import { request } from 'node:http';
import { AgentReportSchema, type AgentReport } from '../api/agent.js';
import { formatIssues } from '../api/streampath.js';
import { type Clock } from '../clock.js';
import { podKey, type SlimPod } from '../kube/objects.js';
import { stableStringify, type AgentObservation } from './status.js';

/** Reports larger than this are refused: an agent reports a few StreamPaths, not megabytes. */
const MAX_REPORT_BYTES = 1 << 20;

export type AgentFetcher = (pod: SlimPod, timeoutMs: number) => Promise<AgentReport>;

/** GET http://<podIP>:<agent-port>/v1/report, parsed with the contract's schema. */
export const httpAgentFetcher: AgentFetcher = (pod, timeoutMs) =>
  new Promise<AgentReport>((resolve, reject) => {
    const host = pod.podIP!.includes(':') ? `[${pod.podIP}]` : pod.podIP!;
    const url = `http://${host}:${pod.agentPort}/v1/report`;
    const req = request(url, { method: 'GET', timeout: timeoutMs, headers: { Accept: 'application/json' } }, (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (c: Buffer) => {
        size += c.length;
        if (size > MAX_REPORT_BYTES) req.destroy(new Error(`${url}: report larger than ${MAX_REPORT_BYTES} bytes`));
        else chunks.push(c);
      });
      res.on('error', reject);
      res.on('end', () => {
        if (res.statusCode !== 200) return reject(new Error(`${url}: HTTP ${res.statusCode}`));
        let body: unknown;
        try {
          body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
        } catch {
          return reject(new Error(`${url}: report is not JSON`));
        }
        const r = AgentReportSchema.safeParse(body);
        if (!r.success) return reject(new Error(`${url}: invalid report: ${formatIssues(r.error).slice(0, 3).join('; ')}`));
        if (r.data.pod.name !== pod.name || r.data.pod.namespace !== pod.namespace) {
          return reject(new Error(`${url}: answered for pod ${r.data.pod.namespace}/${r.data.pod.name}, expected ${podKey(pod)}`));
        }
        resolve(r.data);
      });
    });
    // A connect that hangs (blackholed IP) must not hold a poll slot for longer than the timeout.
    const deadline = setTimeout(() => req.destroy(new Error(`${url}: no answer within ${timeoutMs} ms`)), timeoutMs);
    req.on('close', () => clearTimeout(deadline));
    req.on('timeout', () => req.destroy(new Error(`${url}: no answer within ${timeoutMs} ms`)));
    req.on('error', (err) => reject(err.message.startsWith(url) ? err : new Error(`${url}: ${err.message}`)));
    req.end();
  });

export interface AgentPollerOptions {
  clock: Clock;
  intervalMs: number;
  timeoutMs: number;
  concurrency: number;
  fetch: AgentFetcher;
  /** A pod's observation changed (new counters, new error, recovered): its StreamPaths need a reconcile. */
  onChange: (pod: SlimPod) => void;
  onPoll?: (outcome: 'ok' | 'error') => void;
}

interface Tracked {
  pod: SlimPod;
  obs?: AgentObservation;
  fingerprint?: string;
}

export class AgentPoller {
  private readonly tracked = new Map<string, Tracked>();
  private readonly urgent = new Set<string>();
  private wake: (() => void) | undefined;

  constructor(private readonly opts: AgentPollerOptions) {}

  observe(pod: SlimPod): AgentObservation | undefined {
    const t = this.tracked.get(podKey(pod));
    return t && t.pod.uid === pod.uid ? t.obs : undefined;
  }

  /** Follows a pod from the pod cache: polled while it is injected and has an IP. */
  update(pod: SlimPod): void {
    const key = podKey(pod);
    if (!pod.injected || !pod.podIP || pod.deleting || pod.terminated) {
      this.tracked.delete(key);
      return;
    }
    const cur = this.tracked.get(key);
    if (cur && cur.pod.uid === pod.uid && cur.pod.podIP === pod.podIP && cur.pod.agentPort === pod.agentPort) {
      cur.pod = pod;
      return;
    }
    this.tracked.set(key, { pod });
    // A new agent is asked at once, not at the next tick, so a fresh pod turns Ready quickly.
    this.urgent.add(key);
    this.wake?.();
  }

  remove(pod: SlimPod): void {
    this.tracked.delete(podKey(pod));
  }

  get size(): number {
    return this.tracked.size;
  }

  async run(signal: AbortSignal): Promise<void> {
    let nextFull = this.opts.clock.now();
    while (!signal.aborted) {
      const now = this.opts.clock.now();
      let keys: string[];
      if (now >= nextFull) {
        keys = [...this.tracked.keys()];
        nextFull = now + this.opts.intervalMs;
        this.urgent.clear();
      } else {
        keys = [...this.urgent];
        this.urgent.clear();
      }
      await this.pollAll(keys, signal);
      if (signal.aborted || this.urgent.size > 0) continue;
      // Sleep until the next full round, or until a new pod needs an urgent poll.
      const woken = new Promise<void>((r) => (this.wake = r));
      const ctl = new AbortController();
      const onAbort = () => ctl.abort();
      signal.addEventListener('abort', onAbort, { once: true });
      await Promise.race([this.opts.clock.sleep(Math.max(0, nextFull - this.opts.clock.now()), ctl.signal).catch(() => {}), woken]);
      ctl.abort();
      signal.removeEventListener('abort', onAbort);
      this.wake = undefined;
    }
  }

  /** One round over the given pods with bounded concurrency. */
  async pollAll(keys: string[], signal?: AbortSignal): Promise<void> {
    let i = 0;
    const worker = async () => {
      while (i < keys.length && !signal?.aborted) {
        const key = keys[i++]!;
        await this.pollOne(key);
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.opts.concurrency, keys.length) }, worker));
  }

  private async pollOne(key: string): Promise<void> {
    const t = this.tracked.get(key);
    if (!t) return;
    const pod = t.pod;
    let obs: AgentObservation;
    try {
      const report = await this.opts.fetch(pod, this.opts.timeoutMs);
      obs = { report, at: this.opts.clock.now() };
      this.opts.onPoll?.('ok');
    } catch (err) {
      // Keep the last good report: a deleted StreamPath must still be known as attached there until the
      // agent says otherwise.
      obs = { report: t.obs?.report, error: (err as Error).message, at: this.opts.clock.now() };
      this.opts.onPoll?.('error');
    }
    if (this.tracked.get(key) !== t) return; // the pod went away or was replaced meanwhile
    t.obs = obs;
    const fingerprint = stableStringify({ r: obs.report ?? null, e: obs.error ?? null });
    if (fingerprint !== t.fingerprint) {
      t.fingerprint = fingerprint;
      this.opts.onChange(pod);
    }
  }
}
