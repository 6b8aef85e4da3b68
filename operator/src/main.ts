// Entry point of the operator (dist/operator/src/main.js): config, logger, one replica, signal handling.
import { pino } from 'pino';
import { systemClock } from '../../runtime/src/clock.js';
import { ConfigError, loadConfig } from './config.js';
import { errSerializer } from '../../runtime/src/errors.js';
import { startOperator } from './operator.js';

async function main(): Promise<void> {
  let config;
  try {
    config = loadConfig(process.env);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  // Errors are logged as one readable line (kube/errors.ts), never as a client library's dump.
  const log = pino({ level: config.logLevel, base: { identity: config.identity }, serializers: { err: errSerializer } });
  log.info({ namespace: config.namespace, leaderElection: config.leaderElection.enabled, webhook: config.webhook.enabled }, 'kstreams operator starting');
  const op = await startOperator({ config, log, clock: systemClock });
  log.info({ healthPort: op.healthPort, webhookPort: op.webhook?.port }, 'kstreams operator running');

  let shuttingDown = false;
  const shutdown = (signal: string) => {
    if (shuttingDown) return;
    shuttingDown = true;
    log.info({ signal }, 'shutting down');
    const deadline = setTimeout(() => {
      log.error({ timeoutMs: config.shutdownTimeoutMs, step: op.shutdownStep() }, 'shutdown did not finish in time, exiting anyway');
      process.exit(1);
    }, config.shutdownTimeoutMs);
    deadline.unref();
    op.shutdown().then(
      () => {
        log.info('shut down cleanly');
        process.exit(0);
      },
      (err) => {
        log.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
}

main().catch((err) => {
  process.stderr.write(`kstreams operator: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
