// The webhook's worker thread (thread: 'worker'): serves HTTPS and decides admissions on an event loop of its
// own, from its own copy of the admission inputs, which the main thread keeps current (worker-protocol.ts).
// It never talks to the apiserver: the informers, the TLS source (and so the caBundle-before-cert order of
// a CA rotation) and the drain stay on the main thread, which restarts this thread when it dies.
import { parentPort, workerData } from 'node:worker_threads';
import { pino } from 'pino';
import { errSerializer } from '../../../runtime/src/errors.js';
import { WebhookConfigSchema } from './config.js';
import { serveWebhook, type AdmissionResultKind, type Serving } from './serving.js';
import type { SlimNode } from './sidecar-mode.js';
import { ToWorkerSchema, WorkerStartSchema, type FromWorker, type StateDelta } from './worker-protocol.js';

const port = parentPort;
if (!port) throw new Error('worker.ts runs as the webhook worker thread only (server.ts starts it)');
const send = (m: FromWorker) => port.postMessage(m);

const start = WorkerStartSchema.parse(workerData);
const config = WebhookConfigSchema.parse(start.config);
const log = pino({ level: start.log.level, base: { ...start.log.bindings, thread: 'webhook-worker' }, serializers: { err: errSerializer } });

const namespaces = new Map<string, Readonly<Record<string, string>>>();
const nodes = new Map<string, SlimNode>();
let nodesSynced = false;
let feed: { addresses: string[]; serverName: string } | undefined;
let trustPem: string | undefined;
const apply = (d: StateDelta) => {
  for (const [name, labels] of d.namespaces ?? []) labels ? namespaces.set(name, labels) : namespaces.delete(name);
  for (const [name, node] of d.nodes ?? []) node ? nodes.set(name, node) : nodes.delete(name);
  if (d.nodesSynced !== undefined) nodesSynced = d.nodesSynced;
  if (d.feed !== undefined) feed = d.feed ?? undefined;
  if (d.trustPem !== undefined) trustPem = d.trustPem ?? undefined;
};
apply(start.state);

// Counts go to the main thread's registry in batches: each flush request answered, and on a timer.
let admissions: Array<[AdmissionResultKind, string, number]> = [];
let handshakes = 0;
const flush = (seq?: number) => {
  send({ type: 'metrics', ...(seq !== undefined ? { seq } : {}), admissions, handshakes });
  admissions = [];
  handshakes = 0;
};
const timer = setInterval(() => {
  if (admissions.length > 0 || handshakes > 0) flush();
}, start.metricsFlushMs);

let serving: Serving;
try {
  serving = await serveWebhook({
    config,
    version: start.version ?? undefined,
    log,
    port: start.port,
    pem: start.pem,
    inputs: {
      namespaceLabels: (name) => namespaces.get(name),
      nodes: () => (nodesSynced ? nodes.values() : undefined),
      feed: () => (feed && trustPem ? { ...feed, caPem: trustPem } : undefined),
    },
    observer: {
      admission: (kind, reason, seconds) => {
        admissions.push([kind, reason, seconds]);
        if (admissions.length >= 1024) flush();
      },
      handshake: () => void handshakes++,
    },
  });
} catch (e) {
  clearInterval(timer);
  send({ type: 'failed', message: (e as Error).message });
  process.exit(1);
}

port.on('message', (raw: unknown) => {
  const parsed = ToWorkerSchema.safeParse(raw);
  if (!parsed.success) {
    log.error({ err: parsed.error.message }, 'webhook worker: message from the main thread does not parse; dropped');
    return;
  }
  const m = parsed.data;
  if (m.type === 'state') apply(m.delta);
  else if (m.type === 'tls') send({ type: 'tls', seq: m.seq, applied: serving.setTls(m.pem) });
  else if (m.type === 'flush') flush(m.seq);
  else if (m.type === 'close') {
    void serving.close().then(() => {
      clearInterval(timer);
      flush();
      send({ type: 'closed' });
      port.close();
    });
  }
});
send({ type: 'listening', port: serving.port });
