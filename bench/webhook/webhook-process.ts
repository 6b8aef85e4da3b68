// The webhook in a process of its own for the benchmark, as in a cluster (the operator pod), so that the
// load generator does not compete for its event loop. Parent <-> child over the fork IPC channel:
//   child -> {type:'ready', port}   parent -> {type:'metrics'}   child -> {type:'metrics', text}
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { WebhookConfigSchema } from '../../operator/src/webhook/config.js';
import { startWebhook } from '../../operator/src/webhook/server.js';
import { KubeRest } from '../../runtime/src/rest.js';

const send = (m: unknown) => process.send?.(m);
const kubeconfig = process.env.KSTREAMS_BENCH_KUBECONFIG;
const configJson = process.env.KSTREAMS_BENCH_WEBHOOK_CONFIG;
if (!kubeconfig || !configJson || !process.send) {
  console.error('run by bench/webhook/main.ts (needs the fork IPC channel, KSTREAMS_BENCH_KUBECONFIG and KSTREAMS_BENCH_WEBHOOK_CONFIG)');
  process.exit(2);
}
const kube = await KubeRest.create(kubeconfig);
const registry = new Registry();
const hook = await startWebhook({
  config: WebhookConfigSchema.parse(JSON.parse(configJson)),
  kube,
  logger: pino({ level: 'warn' }),
  registry,
});
process.on('message', (m: { type?: string }) => {
  if (m.type === 'metrics') void registry.metrics().then((text) => send({ type: 'metrics', text }));
  if (m.type === 'stop') void hook.close().then(() => (kube.close(), process.exit(0)));
});
// The parent going away ends the IPC channel: stop with it.
process.on('disconnect', () => void hook.close().then(() => (kube.close(), process.exit(0))));
send({ type: 'ready', port: hook.port });
