import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { createCA, issueServingCert, type CertKeyPem } from './certs.js';
import { CertManagerTlsSchema, WebhookConfigSchema } from './config.js';
import { MountedTls, SelfManagedTls, type Timers } from './tls-source.js';
import { KubeRest } from '../../../runtime/src/rest.js';

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
