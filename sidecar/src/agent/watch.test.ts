// ResourceWatch against a scripted apiserver on loopback: the real client-node ListWatch and HTTP stack,
// with the failures we need (a 500 on list, 410 Gone in a watch) served on cue.
import { createServer, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { CoreV1Api, KubeConfig, type V1Pod } from '@kubernetes/client-node';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { Backoff } from '../../../operator/src/kube/backoff.js';
import { ResourceWatch, type Timers, type WatchLifecycle } from './watch.js';

const pod = (name: string, rv: string) => ({ apiVersion: 'v1', kind: 'Pod', metadata: { name, namespace: 'shop', resourceVersion: rv } });

async function until(what: string, pred: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('ResourceWatch', () => {
  let server: Server | undefined;
  let watch: ResourceWatch<V1Pod> | undefined;
  const open: ServerResponse[] = [];

  afterEach(async () => {
    watch?.stop();
    for (const res of open) res.destroy();
    await new Promise<void>((r) => (server ? server.close(() => r()) : r()));
    server?.closeAllConnections();
  });

  it('restarts with backoff after a failed list and relists after 410 Gone, keeping the cache exact', async () => {
    const requests: string[] = [];
    let lists = 0;
    let watches = 0;
    server = createServer((req, res) => {
      const url = new URL(req.url!, 'http://x');
      const isWatch = url.searchParams.get('watch') === 'true';
      requests.push(`${isWatch ? 'watch' : 'list'} rv=${url.searchParams.get('resourceVersion') ?? ''} fs=${url.searchParams.get('fieldSelector') ?? ''}`);
      res.setHeader('content-type', 'application/json');
      if (!isWatch) {
        lists++;
        if (lists === 1) {
          res.statusCode = 500;
          return res.end(JSON.stringify({ kind: 'Status', code: 500, message: 'etcd is sulking' }));
        }
        const items = lists === 2 ? [pod('a', '10')] : [pod('b', '20')];
        return res.end(JSON.stringify({ kind: 'PodList', apiVersion: 'v1', metadata: { resourceVersion: lists === 2 ? '10' : '20' }, items }));
      }
      watches++;
      if (watches === 1) {
        res.write(`${JSON.stringify({ type: 'ADDED', object: pod('c', '11') })}\n`);
        res.write(`${JSON.stringify({ type: 'ERROR', object: { kind: 'Status', code: 410, reason: 'Expired', message: 'too old resource version' } })}\n`);
        return res.end();
      }
      // Later watches stay open, as a quiet apiserver's do.
      res.write('');
      open.push(res);
    });
    await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
    const kc = new KubeConfig();
    kc.loadFromOptions({
      clusters: [{ name: 'fake', server: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, skipTLSVerify: true }],
      users: [{ name: 'nobody' }],
      contexts: [{ name: 'fake', cluster: 'fake', user: 'nobody' }],
      currentContext: 'fake',
    });
    const core = kc.makeApiClient(CoreV1Api);

    const delays: number[] = [];
    const timers: Timers = {
      setTimeout: (fn, ms) => {
        delays.push(ms);
        return setImmediate(fn);
      },
      clearTimeout: (h) => clearImmediate(h as NodeJS.Immediate),
    };
    const events: WatchLifecycle[] = [];
    let changes = 0;
    watch = new ResourceWatch<V1Pod>({
      resource: 'pods',
      kubeConfig: kc,
      path: '/api/v1/namespaces/shop/pods',
      fieldSelector: 'metadata.name=b',
      list: () => core.listNamespacedPod({ namespace: 'shop' }),
      onChange: () => changes++,
      onLifecycle: (e) => events.push(e),
      logger: pino({ level: 'silent' }),
      backoff: new Backoff({ initialMs: 1000, maxMs: 8000, random: () => 0 }),
      timers,
    });
    expect(watch.synced).toBe(false);
    watch.start();

    await until('the relist after 410 to fill the cache', () => lists === 3 && watches === 2 && watch!.synced);
    await until('the cache to hold exactly the relisted pod', () => watch!.list().map((p) => p.metadata!.name).join() === 'b');
    expect(delays).toEqual([500]);
    expect(events.filter((e) => e === 'error')).toHaveLength(1);
    expect(events).toContain('restart');
    expect(events.filter((e) => e === 'listed')).toHaveLength(2);
    expect(changes).toBeGreaterThanOrEqual(3);
    expect(requests).toEqual([
      'list rv= fs=',
      'list rv= fs=',
      'watch rv=10 fs=metadata.name=b',
      'list rv= fs=',
      'watch rv=20 fs=metadata.name=b',
    ]);
  });
});
