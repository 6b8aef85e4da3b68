// The HTTPS server on loopback with an in-memory cert: no cluster needed (serverVersion is passed in).
import { spawn } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { request as httpRequest } from 'node:http';
import { createServer as createNetServer } from 'node:net';
import { createInterface } from 'node:readline';
import { request } from 'node:https';
import { connect } from 'node:tls';
import type { KubeTransport } from '../../../runtime/src/rest.js';
import fc from 'fast-check';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCA, fingerprint, issueServingCert } from './certs.js';
import { WebhookConfigSchema } from './config.js';
import { SIDECAR_CONTAINER_NAME } from '../../../api/src/agent.js';
import { startWebhook, type RunningWebhook } from './server.js';
import type { SlimNode } from './sidecar-mode.js';
import { MemoryCache } from './testing/memory-cache.js';
import { StaticTls } from './testing/static-tls.js';
import { slim, VERSION } from './testing/versions.js';
import { waitFor } from '../../../e2e/cluster/local/processes.js';

/** These tests give the server its version and TLS: it never calls the apiserver. */
const noApiserver: KubeTransport = {
  request: () => Promise.reject(new Error('no apiserver in this test')),
  watch: () => Promise.reject(new Error('no apiserver in this test')),
};

interface Reply {
  status: number;
  body: string;
}

function post(port: number, ca: string, body: Buffer | string, headers: Record<string, string | number> = {}, path = '/mutate-pods'): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request(
      { host: '127.0.0.1', port, path, method: 'POST', ca, agent: false, headers: { 'content-type': 'application/json', ...headers } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

function servedFingerprint(port: number, ca: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: '127.0.0.1', port, ca, servername: 'localhost' }, () => {
      const fp = s.getPeerCertificate().fingerprint256;
      s.end();
      resolve(fp);
    });
    s.on('error', reject);
  });
}

const review = (object: unknown = { spec: { containers: [{ name: 'app', image: 'x' }] } }) =>
  JSON.stringify({
    apiVersion: 'admission.k8s.io/v1',
    kind: 'AdmissionReview',
    request: {
      uid: 'u-1',
      kind: { group: '', version: 'v1', kind: 'Pod' },
      resource: { group: '', version: 'v1', resource: 'pods' },
      operation: 'CREATE',
      namespace: 'shop',
      object,
    },
  });

const THREADS = ['worker', 'main'] as const;

describe.each(THREADS)('webhook HTTPS server (thread: %s)', (thread) => {
  let tls: StaticTls;
  let hook: RunningWebhook;
  const registry = new Registry();
  const config = WebhookConfigSchema.parse({ thread, port: 0, host: '127.0.0.1', maxBodyBytes: 64 * 1024, headersTimeoutMs: 1000, requestTimeoutMs: 1500 });

  beforeAll(async () => {
    tls = await StaticTls.create();
    hook = await startWebhook({
      config,
      kube: noApiserver,
      logger: pino({ level: 'silent' }),
      registry,
      serverVersion: { major: 1, minor: 20 },
      tlsSource: tls,
    });
  });
  afterAll(async () => {
    await hook?.close();
  });

  it('mutates a pod CREATE and counts it', async () => {
    const r = await post(hook.port, tls.caPem, review());
    expect(r.status).toBe(200);
    expect(JSON.parse(r.body).response.patchType).toBe('JSONPatch');
    const metrics = await registry.getSingleMetricAsString('kstreams_webhook_admission_requests_total');
    expect(metrics).toMatch(/result="patched",reason="injected"} [1-9]/);
    expect(await registry.getSingleMetricAsString('kstreams_webhook_admission_duration_seconds')).toMatch(/_count\{result="patched"} [1-9]/);
  });

  it('serves /healthz and 404s/405s the rest', async () => {
    const get = (path: string) =>
      new Promise<number>((resolve, reject) => {
        request({ host: '127.0.0.1', port: hook.port, path, ca: tls.caPem, agent: false }, (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        })
          .on('error', reject)
          .end();
      });
    expect(await get('/healthz')).toBe(200);
    expect(await get('/mutate-pods')).toBe(405);
    expect(await get('/nope')).toBe(404);
  });

  it('GET /prestop?ms=N (the preStop hook) answers after N ms, a few at a time, and changes nothing', async () => {
    const get = (path: string) =>
      new Promise<{ status: number; ms: number }>((resolve, reject) => {
        const t0 = performance.now();
        request({ host: '127.0.0.1', port: hook.port, path, ca: tls.caPem, agent: false }, (res) => {
          res.resume();
          res.on('end', () => resolve({ status: res.statusCode ?? 0, ms: performance.now() - t0 }));
        })
          .on('error', reject)
          .end();
      });
    const waits = [1, 2, 3, 4].map(() => get('/prestop?ms=400'));
    await new Promise((r) => setTimeout(r, 100));
    expect((await get('/prestop?ms=400')).status).toBe(429); // a fifth while four wait
    for (const w of await Promise.all(waits)) {
      expect(w.status).toBe(200);
      expect(w.ms).toBeGreaterThanOrEqual(390);
    }
    expect((await get('/prestop?ms=nonsense')).status).toBe(200);
    // Plain HTTP on the same port, as kubelets before 1.23 call a preStop httpGet whatever its scheme; only
    // the preStop wait is served that way.
    const plainGet = (path: string) =>
      new Promise<{ status: number; ms: number }>((resolve, reject) => {
        const t0 = performance.now();
        httpRequest({ host: '127.0.0.1', port: hook.port, path, agent: false }, (res) => {
          res.resume();
          res.on('end', () => resolve({ status: res.statusCode ?? 0, ms: performance.now() - t0 }));
        })
          .on('error', reject)
          .end();
      });
    const plainWait = await plainGet('/prestop?ms=200');
    expect(plainWait.status).toBe(200);
    expect(plainWait.ms).toBeGreaterThanOrEqual(190);
    expect((await plainGet('/mutate-pods')).status).toBe(400);
    // Still serving admissions afterwards.
    expect((await post(hook.port, tls.caPem, review())).status).toBe(200);
  });

  it('refuses a body over the cap with 413, whether announced or streamed', async () => {
    const big = Buffer.alloc(config.maxBodyBytes + 1, 'a');
    expect((await post(hook.port, tls.caPem, big)).status).toBe(413);
    // Chunked: no content-length, the cap trips while reading.
    expect((await post(hook.port, tls.caPem, big, { 'transfer-encoding': 'chunked' })).status).toBe(413);
  });

  it('refuses a non-JSON content type with 415', async () => {
    expect((await post(hook.port, tls.caPem, review(), { 'content-type': 'text/plain' })).status).toBe(415);
  });

  it('answers a request whose body never completes with 408 within the request timeout', async () => {
    const started = Date.now();
    const r = await post(hook.port, tls.caPem, '{"apiVersion":', { 'content-length': 1000 });
    expect(r.status).toBe(408);
    expect(Date.now() - started).toBeLessThan(config.requestTimeoutMs + 2000);
  });

  it('fuzz: random, truncated and mistyped bodies always get a clean 4xx, never a 5xx', async () => {
    const valid = review();
    const body = fc.oneof(
      fc.string({ maxLength: 200 }),
      fc.jsonValue().map((v) => JSON.stringify(v) ?? ''),
      fc.integer({ min: 0, max: valid.length - 1 }).map((n) => valid.slice(0, n)),
      fc.uint8Array({ maxLength: 300 }).map((a) => Buffer.from(a).toString('latin1')),
      fc.record({ apiVersion: fc.anything(), kind: fc.anything(), request: fc.anything() }).map((v) => JSON.stringify(v)),
      fc.integer({ min: config.maxBodyBytes + 1, max: config.maxBodyBytes * 3 }).map((n) => 'x'.repeat(n)),
    );
    await fc.assert(
      fc.asyncProperty(body, async (b) => {
        const r = await post(hook.port, tls.caPem, b);
        expect(r.status).toBeGreaterThanOrEqual(400);
        expect(r.status).toBeLessThan(500);
        expect(() => JSON.parse(r.body)).not.toThrow();
      }),
      { numRuns: 200 },
    );
    // Still serving afterwards.
    expect((await post(hook.port, tls.caPem, review())).status).toBe(200);
  });

  it('refuses to start on a port in use, saying which', async () => {
    const second = startWebhook({
      config: { ...config, port: hook.port },
      kube: noApiserver,
      logger: pino({ level: 'silent' }),
      registry,
      serverVersion: { major: 1, minor: 20 },
      tlsSource: await StaticTls.create(),
    });
    await expect(second).rejects.toThrow(new RegExp(`cannot listen on 127.0.0.1:${hook.port}: .*EADDRINUSE`));
  });

  it('hands injected agents the feed set with setFeed and the CA the TLS source trusts now', async () => {
    const env = async () => {
      const r = await post(hook.port, tls.caPem, review());
      const ops = JSON.parse(Buffer.from(JSON.parse(r.body).response.patch, 'base64').toString()) as { path: string; value: unknown }[];
      const sidecar = ops.map((o) => (Array.isArray(o.value) ? o.value[0] : o.value) as { name?: string; env?: { name: string; value?: string }[] }).find((c) => c?.name === SIDECAR_CONTAINER_NAME);
      return Object.fromEntries((sidecar?.env ?? []).map((e) => [e.name, e.value]));
    };
    expect((await env()).KSTREAMS_OPERATOR_ADDRESSES).toBeUndefined();
    hook.setFeed({ addresses: ['10.0.0.1:9444'], serverName: 'kstreams-webhook.kstreams-system.svc' });
    await hook.flush();
    const first = await env();
    expect(first.KSTREAMS_OPERATOR_ADDRESSES).toBe('10.0.0.1:9444');
    expect(first.KSTREAMS_OPERATOR_CA).toBe(tls.caPem);
    // A staged CA: the trust changes before any cert it signs is served.
    const next = await createCA({ commonName: 'staged-ca', nowMs: Date.now(), validitySeconds: 3600 });
    tls.rotateTrust(`${tls.caPem.trimEnd()}\n${next.certPem}`);
    await hook.flush();
    expect((await env()).KSTREAMS_OPERATOR_CA).toBe(tls.caPem);
    expect(tls.caPem).toContain(next.certPem);
  });

  it('hot-reloads a new certificate for new connections', async () => {
    const before = await servedFingerprint(hook.port, tls.caPem);
    expect(before).toBe(fingerprint(tls.pem.certPem));
    const ca = await createCA({ commonName: 'next-ca', nowMs: Date.now(), validitySeconds: 3600 });
    const next = await issueServingCert({ ca, sans: ['127.0.0.1', 'localhost'], nowMs: Date.now(), validitySeconds: 3600 });
    tls.rotate(next);
    await hook.flush();
    expect(await servedFingerprint(hook.port, ca.certPem)).toBe(fingerprint(next.certPem));
    expect((await post(hook.port, ca.certPem, review())).status).toBe(200);
    expect(await registry.getSingleMetricAsString('kstreams_webhook_certificate_expiry_timestamp_seconds')).toContain(
      ` ${Date.parse(new X509Certificate(next.certPem).validTo) / 1000}`,
    );
  });

});

describe.each(THREADS)('the webhook server decides native or classic sidecars per pod from its node cache (thread: %s)', (thread) => {
  let tls: StaticTls;
  let hook: RunningWebhook;
  let unsynced: RunningWebhook;
  const nodes = new MemoryCache<SlimNode>(slim('1.31', '1.28'), true);

  beforeAll(async () => {
    tls = await StaticTls.create();
    const start = (cache: MemoryCache<SlimNode>) =>
      startWebhook({
        config: WebhookConfigSchema.parse({ thread, port: 0, host: '127.0.0.1' }),
        kube: noApiserver,
        logger: pino({ level: 'silent' }),
        registry: new Registry(),
        serverVersion: VERSION['1.31'],
        tlsSource: tls,
        nodes: cache,
      });
    hook = await start(nodes);
    unsynced = await start(new MemoryCache<SlimNode>(slim('1.28')));
  });
  afterAll(async () => {
    await hook?.close();
    await unsynced?.close();
  });

  type Container = { name?: string; restartPolicy?: string };
  /** The op of the patch that adds the sidecar (to containers or initContainers; the app has no init containers). */
  const sidecarOp = async (spec: Record<string, unknown>, to = hook) => {
    const r = await post(to.port, tls.caPem, review({ spec: { containers: [{ name: 'app', image: 'x' }], ...spec } }));
    const ops = JSON.parse(Buffer.from(JSON.parse(r.body).response.patch, 'base64').toString()) as { path: string; value: Container | Container[] }[];
    const op = ops.find((o) => o.path.startsWith('/spec/containers') || o.path.startsWith('/spec/initContainers'));
    expect((Array.isArray(op?.value) ? op.value[0] : op?.value)?.name).toBe(SIDECAR_CONTAINER_NAME);
    return op!;
  };

  it('a 1.28 node in the cache: classic container; bound to the 1.31 node: native init container; the old node gone: native', async () => {
    expect((await sidecarOp({})).path).toBe('/spec/containers/0');
    const bound = await sidecarOp({ nodeName: 'n131' });
    expect(bound.path).toBe('/spec/initContainers');
    expect((bound.value as Container[])[0]!.restartPolicy).toBe('Always');
    nodes.replace(slim('1.31'));
    await hook.flush();
    expect((await sidecarOp({})).path).toBe('/spec/initContainers');
    nodes.replace(slim('1.31', '1.28'));
    await hook.flush();
    expect((await sidecarOp({})).path).toBe('/spec/containers/0');
    // Not synced yet: the apiserver's 1.31 decides, whatever the cache holds so far.
    expect((await sidecarOp({}, unsynced)).path).toBe('/spec/initContainers');
  });
});

/**
 * A client in a process of its own (the apiserver's part): an AdmissionReview every 20 ms over keep-alive
 * connections for `ms`, after a first answer it reports with "ready"; then one JSON line of
 * [sentAtMs, answeredAtMs] per review (wall clock, the same on both sides).
 */
const CLIENT = `
const https = require('node:https');
const { port, ca, body, ms } = JSON.parse(process.env.KSWW_CLIENT);
const agent = new https.Agent({ keepAlive: true, maxSockets: 4, ca });
const one = () => new Promise((resolve, reject) => {
  const sent = Date.now();
  const req = https.request({ host: '127.0.0.1', port, path: '/mutate-pods', method: 'POST', agent, headers: { 'content-type': 'application/json' } }, (res) => {
    res.resume();
    res.on('end', () => (res.statusCode === 200 ? resolve([sent, Date.now()]) : reject(new Error('status ' + res.statusCode))));
  });
  req.on('error', reject);
  req.end(body);
});
(async () => {
  await one();
  console.log('ready');
  const until = Date.now() + ms;
  const pending = [];
  while (Date.now() < until) {
    pending.push(one());
    await new Promise((r) => setTimeout(r, 20));
  }
  console.log(JSON.stringify(await Promise.all(pending)));
  agent.destroy();
})().catch((e) => { console.error(e); process.exit(1); });
`;

describe.each(THREADS)('with the main event loop blocked for 2 s (thread: %s)', (thread) => {
  it(thread === 'worker' ? 'admissions are still answered within 500 ms' : 'no admission is answered until it is free again', async () => {
    const tls = await StaticTls.create();
    const hook = await startWebhook({
      config: WebhookConfigSchema.parse({ thread, port: 0, host: '127.0.0.1' }),
      kube: noApiserver,
      logger: pino({ level: 'silent' }),
      registry: new Registry(),
      serverVersion: { major: 1, minor: 20 },
      tlsSource: tls,
    });
    try {
      const child = spawn(process.execPath, ['-e', CLIENT], {
        env: { ...process.env, KSWW_CLIENT: JSON.stringify({ port: hook.port, ca: tls.caPem, body: review(), ms: 3000 }) },
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
      expect((await lines.next()).value).toBe('ready');
      const blockedFrom = Date.now();
      while (Date.now() - blockedFrom < 2000) {
        // The main thread busy, as under a storm of feed reports: no timer, no socket of this loop runs.
      }
      const blockedUntil = Date.now();
      const answers = JSON.parse((await lines.next()).value as string) as [number, number][];
      // Sent while the loop was blocked (well inside, so that the edges do not count).
      const during = answers.filter(([sent]) => sent > blockedFrom + 100 && sent < blockedUntil - 600);
      expect(during.length).toBeGreaterThan(20);
      const answeredDuring = during.filter(([, answered]) => answered < blockedUntil - 100);
      if (thread === 'worker') {
        expect(answeredDuring.length).toBe(during.length);
        expect(Math.max(...during.map(([sent, answered]) => answered - sent))).toBeLessThan(500);
      } else {
        expect(answeredDuring.length).toBe(0);
      }
    } finally {
      await hook.close();
    }
  });
});

describe('the webhook worker, when it dies', () => {
  async function startWorkerWebhook() {
    const tls = await StaticTls.create();
    const registry = new Registry();
    const hook = await startWebhook({
      config: WebhookConfigSchema.parse({ thread: 'worker', port: 0, host: '127.0.0.1' }),
      kube: noApiserver,
      logger: pino({ level: 'silent' }),
      registry,
      serverVersion: { major: 1, minor: 20 },
      tlsSource: tls,
    });
    return { tls, registry, hook };
  }

  it('is started again with backoff on the same port: not ready meanwhile, the restart counted, admissions answered again', { timeout: 60_000 }, async () => {
    const { tls, registry, hook } = await startWorkerWebhook();
    try {
      expect(hook.ready()).toBe(true);
      expect((await post(hook.port, tls.caPem, review())).status).toBe(200);
      // Counts not yet posted when a worker dies are lost (at most metricsFlushMs of them): post them first.
      await hook.flush();
      await hook.killWorker();
      expect(hook.ready()).toBe(false);
      const t0 = performance.now();
      // No upper bound asserted: a new worker loads its modules (under vitest through tsx), seconds on a loaded machine.
      await waitFor('the worker to listen again', async () => hook.ready(), { timeoutMs: 30_000, intervalMs: 10 });
      // The first restart waits 200 ms (then 400, 800, ... up to 10 s while they keep dying).
      expect(performance.now() - t0).toBeGreaterThanOrEqual(190);
      expect((await post(hook.port, tls.caPem, review())).status).toBe(200);
      expect(await registry.getSingleMetricAsString('kstreams_webhook_worker_restarts_total')).toMatch(/_total 1$/m);
      // The counts of the new worker reach the same series.
      expect(await registry.getSingleMetricAsString('kstreams_webhook_admission_requests_total')).toMatch(/result="patched",reason="injected"} 2$/m);
    } finally {
      await hook.close();
    }
    expect(hook.ready()).toBe(false);
  });

  it('backs off 200, 400, 800 ms ... while a new one cannot listen (its port taken meanwhile), not ready all that time', { timeout: 60_000 }, async () => {
    const { tls, registry, hook } = await startWorkerWebhook();
    const blocker = createNetServer();
    try {
      await hook.killWorker();
      const t0 = performance.now();
      // Within the first 200 ms: the port is free once the thread is gone.
      await new Promise<void>((resolve, reject) => blocker.once('error', reject).listen(hook.port, '127.0.0.1', () => resolve()));
      const restarts = async () => Number(/_total (\d+)$/m.exec(await registry.getSingleMetricAsString('kstreams_webhook_worker_restarts_total'))?.[1]);
      const readiness: boolean[] = [];
      await waitFor('three failed starts', async () => (readiness.push(hook.ready()), (await restarts()) >= 4), { timeoutMs: 30_000, intervalMs: 20 });
      // The kill, then starts at 200, 600 and 1400 ms that found the port taken.
      expect(performance.now() - t0).toBeGreaterThanOrEqual(1350);
      expect(readiness.every((r) => !r)).toBe(true);
      await new Promise<void>((resolve) => blocker.close(() => resolve()));
      await waitFor('the worker to listen again', async () => hook.ready(), { timeoutMs: 30_000, intervalMs: 20 });
      expect((await post(hook.port, tls.caPem, review())).status).toBe(200);
    } finally {
      if (blocker.listening) blocker.close();
      await hook.close();
    }
  });
});
