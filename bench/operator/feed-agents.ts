// A load generator for bench/operator/feed-scale.ts: thousands of simulated agents in one process, each the
// sidecar's real feed client (sidecar/src/agent/feed-client.ts, through operator/src/testing/feed-agent.ts)
// on its own TLS connection with its own pod-bound token. No data plane: an agent "attaches" every
// StreamPath its configuration names, at that generation, and its counters advance every `counterMs` as
// under traffic (each change is a report the operator receives). Parent <-> child over the fork IPC channel:
//   parent -> {type:'start', agents, address, caPem, serverName, counterMs, startPerSecond}
//   parent -> {type:'query', id, streamPath, generation, since}   child -> {type:'stats', id, ...Stats}
//   parent -> {type:'stop'}                                        child exits once every client stopped
import type { AgentStreamPathReport } from '../../api/src/agent.js';
import { FeedAgent } from '../../operator/src/testing/feed-agent.js';

export interface AgentSpec {
  namespace: string;
  pod: string;
  tokenFile: string;
}

export interface StartMessage {
  type: 'start';
  agents: AgentSpec[];
  address: string;
  caPem: string;
  serverName: string;
  counterMs: number;
  /** Agents started per second by this process (a first rollout is not one instant; the storm is measured apart). */
  startPerSecond: number;
}

export interface QueryMessage {
  type: 'query';
  id: number;
  /** Agents count as `reached` once a config held this StreamPath (by name) at this generation or later. */
  streamPath: string;
  generation: number;
  /** Agents count as `configuredSince` when they received a config at or after this time (ms since epoch). */
  since: number;
  /** Also return when each agent reached the generation (ms since epoch). */
  times?: boolean;
}

export interface Stats {
  agents: number;
  connected: number;
  configured: number;
  reached: number;
  configuredSince: number;
  /** With `times`: the first arrival of the generation, per agent that reached it. */
  reachedAt?: number[];
  rssMiB: number;
}

interface Simulated {
  agent: FeedAgent;
  /** Per StreamPath name: the generation last received and when it first arrived. */
  seen: Map<string, { generation: number; at: number }>;
  lastConfigAt: number;
}

const sims: Simulated[] = [];
const started = Date.now();

function counters(counterMs: number): Partial<AgentStreamPathReport> {
  const n = Math.floor((Date.now() - started) / counterMs);
  return { connections: 3 + n, bytesPrimary: 3000 + 1000 * n, bytesMirrored: 2500 + 1000 * n, bytesDropped: 500 };
}

async function start(m: StartMessage): Promise<void> {
  const t0 = Date.now();
  for (const [i, spec] of m.agents.entries()) {
    const due = t0 + (i * 1000) / m.startPerSecond;
    if (due > Date.now()) await new Promise((r) => setTimeout(r, due - Date.now()));
    const agent = new FeedAgent(spec.namespace, spec.pod);
    const sim: Simulated = { agent, seen: new Map(), lastConfigAt: 0 };
    agent.onConfig = (f) => {
      const now = Date.now();
      sim.lastConfigAt = now;
      const names = new Set<string>();
      for (const sp of f.streamPaths) {
        const generation = sp.metadata.generation ?? 0;
        names.add(sp.metadata.name);
        const prev = sim.seen.get(sp.metadata.name);
        if (!prev || prev.generation !== generation) sim.seen.set(sp.metadata.name, { generation, at: now });
        agent.attach(sp.metadata.name, generation, counters(m.counterMs));
      }
      for (const s of agent.report.streamPaths) if (!names.has(s.name)) agent.detach(s.name);
    };
    agent.onReport = (r) => {
      const c = counters(m.counterMs);
      return { ...r, streamPaths: r.streamPaths.map((s) => ({ ...s, ...c, targets: s.targets.map((t) => ({ ...t, bytesMirrored: c.bytesMirrored ?? 0 })) })) };
    };
    sims.push(sim);
    // The agent's own report check interval (1 s); only the last config is kept.
    void agent.connect(undefined, [m.address], m.caPem, { serverName: m.serverName, tokenFile: spec.tokenFile, reportCheckMs: 1_000, keepConfigs: 1, keepLogs: false });
  }
}

function stats(q: QueryMessage): Stats {
  const s: Stats = { agents: sims.length, connected: 0, configured: 0, reached: 0, configuredSince: 0, rssMiB: process.memoryUsage.rss() / 2 ** 20 };
  const at: number[] = [];
  for (const sim of sims) {
    if (sim.agent.connected) s.connected++;
    if (sim.lastConfigAt > 0) s.configured++;
    if (sim.lastConfigAt >= q.since) s.configuredSince++;
    const seen = sim.seen.get(q.streamPath);
    if (seen && seen.generation >= q.generation) {
      s.reached++;
      at.push(seen.at);
    }
  }
  if (q.times) s.reachedAt = at;
  return s;
}

process.on('message', (m: StartMessage | QueryMessage | { type: 'stop' }) => {
  if (m.type === 'start') void start(m);
  else if (m.type === 'query') process.send?.({ type: 'stats', id: m.id, ...stats(m) });
  else if (m.type === 'stop') void Promise.all(sims.map((s) => s.agent.stop())).then(() => process.exit(0));
});
// The parent going away ends the IPC channel: stop with it.
process.on('disconnect', () => process.exit(0));
process.send?.({ type: 'ready' });
