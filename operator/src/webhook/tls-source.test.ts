import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { createCA, issueServingCert, type CertKeyPem } from './certs.js';
import { CertManagerTlsSchema, WebhookConfigSchema } from './config.js';
import { MountedTls, SelfManagedTls, type Timers } from './tls-source.js';
import { ApiError, KubeRest, type KubeRequestOptions, type KubeTransport, type WatchEvent } from '../../../runtime/src/rest.js';
import { waitFor } from '../../../e2e/cluster/local/processes.js';

/** Timers that fire only when the test says so. */
function manualTimers() {
  const pending = new Map<number, () => void>();
  let next = 0;
  const timers: Timers = {
    setTimeout: (fn) => {
      pending.set(++next, fn);
      return next;
    },
    clearTimeout: (h) => void pending.delete(h as number),
  };
  return { timers, pending };
}

async function mint(): Promise<CertKeyPem> {
  const ca = await createCA({ commonName: 't', nowMs: Date.now(), validitySeconds: 3600 });
  return issueServingCert({ ca, sans: ['127.0.0.1'], nowMs: Date.now(), validitySeconds: 3600 });
}

describe('MountedTls (cert-manager mode)', () => {
  const dirs: string[] = [];
  afterEach(() => {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });

  it('serves the mounted cert and reports a changed one at the next reload', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kstreams-webhook-tls-'));
    dirs.push(dir);
    const first = await mint();
    writeFileSync(join(dir, 'tls.crt'), first.certPem);
    writeFileSync(join(dir, 'tls.key'), first.keyPem);
    const { timers, pending } = manualTimers();
    const src = new MountedTls({ tls: CertManagerTlsSchema.parse({ mode: 'cert-manager', certDir: dir }), logger: pino({ level: 'silent' }), timers });
    const seen: CertKeyPem[] = [];
    src.onChange((p) => seen.push(p));
    expect(await src.start()).toEqual(first);
    expect(pending.size).toBe(1);
    expect(await src.reload()).toBe(false);

    const second = await mint();
    writeFileSync(join(dir, 'tls.crt'), second.certPem);
    writeFileSync(join(dir, 'tls.key'), second.keyPem);
    expect(await src.reload()).toBe(true);
    expect(seen).toEqual([second]);
    await src.stop();
    expect(pending.size).toBe(0);
  });

  it('reports a changed ca.crt to onTrustChange before the cert it signs reaches onChange', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kstreams-webhook-tls-'));
    dirs.push(dir);
    const write = async (commonName: string) => {
      const ca = await createCA({ commonName, nowMs: Date.now(), validitySeconds: 3600 });
      const serving = await issueServingCert({ ca, sans: ['127.0.0.1'], nowMs: Date.now(), validitySeconds: 3600 });
      writeFileSync(join(dir, 'ca.crt'), ca.certPem);
      writeFileSync(join(dir, 'tls.crt'), serving.certPem);
      writeFileSync(join(dir, 'tls.key'), serving.keyPem);
      return ca.certPem;
    };
    const firstCa = await write('first');
    const src = new MountedTls({ tls: CertManagerTlsSchema.parse({ mode: 'cert-manager', certDir: dir }), logger: pino({ level: 'silent' }), timers: manualTimers().timers });
    const order: string[] = [];
    src.onTrustChange((ca) => order.push(`trust ${ca === firstCa ? 'first' : 'second'}`));
    src.onChange(() => order.push('cert'));
    await src.start();
    expect(src.trustPem()).toBe(firstCa);
    expect(await src.reload()).toBe(false);
    expect(order).toEqual([]);
    const secondCa = await write('second');
    expect(await src.reload()).toBe(true);
    expect(src.trustPem()).toBe(secondCa);
    expect(order).toEqual(['trust second', 'cert']);
    await src.stop();
  });

  it('says where it looked when the files are missing', async () => {
    const src = new MountedTls({
      tls: CertManagerTlsSchema.parse({ mode: 'cert-manager', certDir: '/nonexistent/kstreams' }),
      logger: pino({ level: 'silent' }),
    });
    await expect(src.start()).rejects.toThrow(/cannot read tls.crt\/tls.key in \/nonexistent\/kstreams.*mounted/);
  });
});

describe('SelfManagedTls start-up errors', () => {
  it('an apiserver that refuses connections is named as unreachable, not as missing RBAC on secrets', async () => {
    // A loopback port nobody listens on: a real ECONNREFUSED from the operator's transport.
    const port = await new Promise<number>((resolve) => {
      const s = createServer();
      s.listen(0, '127.0.0.1', () => {
        const p = (s.address() as AddressInfo).port;
        s.close(() => resolve(p));
      });
    });
    const kube = KubeRest.fromCredentials({ server: `https://127.0.0.1:${port}`, tls: { rejectUnauthorized: false }, headers: async () => ({ Authorization: 'Bearer t' }) });
    const config = WebhookConfigSchema.parse({ namespace: 'kstreams-system' });
    const tls = new SelfManagedTls({ config, kube, logger: pino({ level: 'silent' }) });
    const err = (await tls.start().catch((e: Error) => e)) as Error;
    await tls.stop();
    kube.close();
    expect(err.message).toMatch(/^webhook TLS: get Secret kstreams-system\/kstreams-webhook-tls: apiserver unreachable \(ECONNREFUSED\): connect ECONNREFUSED 127\.0\.0\.1:\d+; fix: the apiserver cannot be reached/);
    expect(err.message).not.toMatch(/needs|secrets in|RoleBinding|Role /);
  });
});

/**
 * An apiserver in memory for one Secret collection and the webhook configurations: resourceVersions,
 * optimistic concurrency (409 on a stale PUT), 404, and watch events delivered a turn after the write, as a
 * real watch delivers them.
 */
class MemoryApiserver implements KubeTransport {
  readonly objects = new Map<string, Record<string, unknown> & { metadata: { name: string; resourceVersion?: string } }>();
  readonly writes: string[] = [];
  private rv = 100;
  private watchers: { path: string; fieldSelector?: string; onEvent: (e: WatchEvent) => void }[] = [];

  get watching(): number {
    return this.watchers.length;
  }

  async request<T>(method: string, path: string, opts: KubeRequestOptions = {}): Promise<T> {
    const body = opts.body as (Record<string, unknown> & { metadata: { name: string; resourceVersion?: string } }) | undefined;
    const target = method === 'POST' ? `${path}/${body!.metadata.name}` : path;
    const have = this.objects.get(target);
    if (method === 'GET') {
      if (!have) throw new ApiError(404, method, path, JSON.stringify({ kind: 'Status', code: 404, reason: 'NotFound', message: 'not found' }));
      return structuredClone(have) as T;
    }
    if (method === 'POST' && have) throw new ApiError(409, method, path, JSON.stringify({ kind: 'Status', code: 409, reason: 'AlreadyExists', message: 'exists' }));
    if (method === 'PUT' && (!have || have.metadata.resourceVersion !== body!.metadata.resourceVersion)) throw new ApiError(409, method, path, JSON.stringify({ kind: 'Status', code: 409, reason: 'Conflict', message: 'modified' }));
    this.writes.push(`${method} ${target}`);
    return this.put(target, body!, have ? 'MODIFIED' : 'ADDED') as T;
  }

  /** A write by someone else (another replica, a user), or a delete when `obj` is undefined. */
  put(target: string, obj: (Record<string, unknown> & { metadata: { name: string } }) | undefined, type: WatchEvent['type']): unknown {
    const stored = obj && { ...structuredClone(obj), metadata: { ...structuredClone(obj.metadata), resourceVersion: String(++this.rv) } };
    const old = this.objects.get(target);
    if (stored) this.objects.set(target, stored);
    else this.objects.delete(target);
    const event = { type, object: structuredClone(stored ?? { ...old!, metadata: { ...old!.metadata, resourceVersion: String(++this.rv) } }) };
    const name = target.split('/').pop();
    for (const w of this.watchers)
      if (target.startsWith(`${w.path}/`) && (!w.fieldSelector || w.fieldSelector === `metadata.name=${name}`)) setImmediate(() => w.onEvent(event as WatchEvent));
    return structuredClone(stored);
  }

  async watch(path: string, query: Record<string, string>, onEvent: (e: WatchEvent) => void, signal: AbortSignal): Promise<void> {
    const w = { path, fieldSelector: query.fieldSelector, onEvent };
    this.watchers.push(w);
    await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
    this.watchers = this.watchers.filter((x) => x !== w);
  }
}

describe('SelfManagedTls on the operator transport (an apiserver in memory)', () => {
  const secretPath = '/api/v1/namespaces/kstreams-system/secrets/kstreams-webhook-tls';
  const mwcPath = '/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/kstreams-sidecar-injector';

  it('creates the Secret and the caBundle, follows the Secret by its watch, repairs a damaged or deleted one, and stops watching on stop', async () => {
    const api = new MemoryApiserver();
    const config = WebhookConfigSchema.parse({ namespace: 'kstreams-system', tls: { mode: 'self-managed', extraSANs: ['127.0.0.1'] } });
    const tls = new SelfManagedTls({ config, kube: api, logger: pino({ level: 'silent' }) });
    const served: CertKeyPem[] = [];
    tls.onChange((p) => served.push(p));
    const first = await tls.start();
    expect(api.writes).toEqual([`POST ${secretPath}`, `POST ${mwcPath}`]);
    const caBundle = () => Buffer.from(((api.objects.get(mwcPath)!.webhooks as { clientConfig: { caBundle: string } }[])[0]!.clientConfig.caBundle), 'base64').toString();
    expect(caBundle()).toContain(tls.trustPem()!.trim());
    await waitFor('the Secret watched', async () => api.watching === 1, { timeoutMs: 5000, intervalMs: 5 });
    expect(api.writes).toHaveLength(2); // the watch's first list of its own Secret: no reconcile, no write

    // Someone drops the key: the watch event makes it reconcile; the bundle is unusable, so a new one (a new CA)
    // goes into the Secret and its CA into the caBundle, before its cert is served.
    const damaged = api.objects.get(secretPath)!;
    api.put(secretPath, { ...damaged, data: { ...(damaged.data as Record<string, string>), 'tls.key': '' } }, 'MODIFIED');
    await waitFor('a repaired Secret served', async () => served.length === 1, { timeoutMs: 5000, intervalMs: 5 });
    expect(api.writes.slice(2)).toEqual([`PUT ${secretPath}`, `PUT ${mwcPath}`]);
    expect(caBundle()).toContain(tls.trustPem()!.trim());
    expect(served[0]!.certPem).not.toBe(first.certPem);

    // Deleted: recreated (a new CA), its caBundle written before the cert is served.
    api.put(secretPath, undefined, 'DELETED');
    await waitFor('a recreated Secret served', async () => served.length === 2, { timeoutMs: 5000, intervalMs: 5 });
    expect(api.writes.slice(4)).toEqual([`POST ${secretPath}`, `PUT ${mwcPath}`]);
    expect(caBundle()).toContain(tls.trustPem()!.trim());
    // The events of its own writes start no further writes.
    await new Promise((r) => setTimeout(r, 100));
    expect(api.writes).toHaveLength(6);

    await tls.stop();
    expect(api.watching).toBe(0);
  });
});
