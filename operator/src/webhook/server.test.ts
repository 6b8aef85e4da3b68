// The HTTPS server on loopback with an in-memory cert: no cluster needed (serverVersion is passed in).
import { request as httpRequest } from 'node:http';
import { request } from 'node:https';
import { connect } from 'node:tls';
import { KubeConfig } from '@kubernetes/client-node';
import fc from 'fast-check';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCA, fingerprint, issueServingCert } from './certs.js';
import { WebhookConfigSchema } from './config.js';
import { SIDECAR_CONTAINER_NAME } from '../../../api/src/agent.js';
import { startWebhook, type RunningWebhook } from './server.js';
import type { SlimNode } from './sidecar-mode.js';
import { StaticTls } from './testing/static-tls.js';
import { slim, VERSION } from './testing/versions.js';

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

describe('webhook HTTPS server', () => {
  let tls: StaticTls;
  let hook: RunningWebhook;
  const registry = new Registry();
  const config = WebhookConfigSchema.parse({ port: 0, host: '127.0.0.1', maxBodyBytes: 64 * 1024, headersTimeoutMs: 1000, requestTimeoutMs: 1500 });

  beforeAll(async () => {
    tls = await StaticTls.create();
    hook = await startWebhook({
      config,
      kube: new KubeConfig(),
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
      kube: new KubeConfig(),
      logger: pino({ level: 'silent' }),
      registry,
      serverVersion: { major: 1, minor: 20 },
      tlsSource: await StaticTls.create(),
    });
    await expect(second).rejects.toThrow(new RegExp(`cannot listen on 127.0.0.1:${hook.port}: .*EADDRINUSE`));
  });

  it('hot-reloads a new certificate for new connections', async () => {
    const before = await servedFingerprint(hook.port, tls.caPem);
    expect(before).toBe(fingerprint(tls.pem.certPem));
    const ca = await createCA({ commonName: 'next-ca', nowMs: Date.now(), validitySeconds: 3600 });
    const next = await issueServingCert({ ca, sans: ['127.0.0.1', 'localhost'], nowMs: Date.now(), validitySeconds: 3600 });
    tls.rotate(next);
    expect(await servedFingerprint(hook.port, ca.certPem)).toBe(fingerprint(next.certPem));
    expect((await post(hook.port, ca.certPem, review())).status).toBe(200);
  });
});

describe('the webhook server decides native or classic sidecars per pod from its node cache', () => {
  let tls: StaticTls;
  let hook: RunningWebhook;
  const nodes: { synced: boolean; items: SlimNode[]; list(): SlimNode[] } = { synced: true, items: slim('1.31', '1.28'), list: () => nodes.items };

  beforeAll(async () => {
    tls = await StaticTls.create();
    hook = await startWebhook({
      config: WebhookConfigSchema.parse({ port: 0, host: '127.0.0.1' }),
      kube: new KubeConfig(),
      logger: pino({ level: 'silent' }),
      registry: new Registry(),
      serverVersion: VERSION['1.31'],
      tlsSource: tls,
      nodes,
    });
  });
  afterAll(async () => {
    await hook?.close();
  });

  type Container = { name?: string; restartPolicy?: string };
  /** The op of the patch that adds the sidecar (to containers or initContainers; the app has no init containers). */
  const sidecarOp = async (spec: Record<string, unknown>) => {
    const r = await post(hook.port, tls.caPem, review({ spec: { containers: [{ name: 'app', image: 'x' }], ...spec } }));
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
    nodes.items = slim('1.31');
    expect((await sidecarOp({})).path).toBe('/spec/initContainers');
    // Not synced yet: the apiserver's 1.31 decides.
    nodes.items = slim('1.28');
    nodes.synced = false;
    expect((await sidecarOp({})).path).toBe('/spec/initContainers');
  });
});
