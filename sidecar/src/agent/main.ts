// Entry point of the in-pod agent: `kstreams agent` calls runAgent(loadAgentConfig(process.env)); it can
// also be run directly (`node --import tsx sidecar/src/agent/main.ts`), which is how tests start it.
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Agent, type AgentDeps } from './agent.js';
import { AgentConfigError, loadAgentConfig, type AgentConfig } from './config.js';
import { realDataPlane } from './dataplane.js';

export interface RunAgentDeps extends AgentDeps {
  /** Install SIGTERM/SIGINT handlers that detach everything and exit. Default true. */
  handleSignals?: boolean;
  /** Default process.exit. */
  exit?: (code: number) => void;
}

export interface RunningAgent {
  agent: Agent;
  /** The HTTP port actually bound (config.port, or the one picked for 0). */
  port: number;
  stop(why?: string): Promise<void>;
}

/** Starts the agent: HTTP server up, kernel probed, watches started. Resolves when it is serving. */
export async function runAgent(config: AgentConfig, deps: RunAgentDeps = {}): Promise<RunningAgent> {
  const agent = new Agent(config, { ...deps, dataPlane: deps.dataPlane ?? realDataPlane });
  await agent.start();
  if (deps.handleSignals !== false) {
    const exit = deps.exit ?? ((code: number) => process.exit(code));
    let shuttingDown = false;
    let exiting = false;
    const onSignal = (signal: NodeJS.Signals) => {
      if (exiting) return;
      if (shuttingDown) {
        // A second signal while draining means "now": reset the live connections, then exit. Never exit
        // before the reset: the process' sockets would end with FIN, a truncated stream looking complete.
        exiting = true;
        agent.logger.warn({ signal }, 'second signal: resetting live connections now');
        const giveUp = setTimeout(() => exit(1), 2000);
        agent
          .abort()
          .catch((err: unknown) => agent.logger.error({ err }, 'reset failed'))
          .finally(() => {
            clearTimeout(giveUp);
            exit(1);
          });
        return;
      }
      shuttingDown = true;
      // Pod termination: drain within the pod's grace period (less a margin), each StreamPath for at most
      // its spec.drainTimeoutSeconds; the deadline below only fires if a reset hangs.
      const plan = agent.shutdownPlan(Date.now());
      agent.logger.info({ signal, drainBudgetMs: plan.drainBudgetMs, exitAfterMs: plan.exitAfterMs, source: plan.source }, 'shutdown budget');
      const deadline = setTimeout(() => {
        agent.logger.error({ exitAfterMs: plan.exitAfterMs, source: plan.source }, 'detaching took too long; exiting');
        exit(1);
      }, plan.exitAfterMs);
      agent
        .stop(`received ${signal}`, { drainTimeoutMs: plan.drainBudgetMs })
        .then(
          () => exit(0),
          (err: unknown) => {
            agent.logger.error({ err }, 'shutdown failed');
            exit(1);
          },
        )
        .finally(() => clearTimeout(deadline));
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  }
  return { agent, port: agent.port!, stop: (why) => agent.stop(why) };
}

function isEntryPoint(): boolean {
  const entry = process.argv[1];
  if (!entry) return false;
  try {
    return realpathSync(entry) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isEntryPoint()) {
  let config: AgentConfig;
  try {
    config = loadAgentConfig(process.env);
  } catch (err) {
    if (err instanceof AgentConfigError) {
      process.stderr.write(`kstreams agent: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  runAgent(config).catch((err: unknown) => {
    process.stderr.write(`kstreams agent: failed to start: ${(err as Error)?.stack ?? String(err)}\n`);
    process.exit(1);
  });
}
