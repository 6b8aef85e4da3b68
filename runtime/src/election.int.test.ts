// Two real electors against the real apiserver; the leader reaches it through a TCP proxy of this test
// that, on command, stops forwarding without closing anything (a hung connection: no RST, no FIN, no
// error). The leader must stop leading at its renew deadline, before the other one can start.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KubeConfig } from '@kubernetes/client-node';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { systemClock } from './clock.js';
import { KubeRest } from './rest.js';
import { createNamespace, eventually, freshName } from '../../operator/src/testing/kube.js';
import { LeaderElector } from './election.js';

const kubeconfig = inject('kubeconfig');
// Below the ephemeral range (32768-60999 here): no other process's client socket can hold it.
const PROXY_PORT = 27410;
const LEASE_MS = 4_000;
const RENEW_DEADLINE_MS = 2_500;
const RETRY_MS = 400;

/** Accepts, forwards both ways, and on stall() stops reading from either side while keeping every socket open. */
class StallingProxy {
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();
  private stalled = false;
  connections = 0;

  constructor(private readonly target: { host: string; port: number }) {
    this.server = createServer((client) => {
      this.connections++;
      const upstream = connect(target.port, target.host);
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on('close', () => this.sockets.delete(s));
        s.on('error', () => {});
      }
      const pipe = (from: Socket, to: Socket) =>
        from.on('data', (chunk) => {
          if (this.stalled) return; // swallowed: the peer waits for an answer that never comes
          to.write(chunk);
        });
      pipe(client, upstream);
      pipe(upstream, client);
      client.on('end', () => upstream.end());
      upstream.on('end', () => client.end());
    });
  }

  listen(port: number): Promise<void> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, '127.0.0.1', () => resolve());
    });
  }

  stall(): void {
    this.stalled = true;
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

interface Instants {
  started?: number;
  stopped?: number;
}

function elector(rest: KubeRest, namespace: string, identity: string, at: Instants): LeaderElector {
  return new LeaderElector({
    transport: rest,
    clock: systemClock,
    log: pino({ level: process.env.KSTREAMS_TEST_LOG ?? 'silent' }),
    namespace,
    name: 'kstreams-operator',
    identity,
    leaseDurationMs: LEASE_MS,
    renewDeadlineMs: RENEW_DEADLINE_MS,
    retryPeriodMs: RETRY_MS,
    onStartedLeading: () => (at.started = performance.now()),
    onStoppedLeading: () => (at.stopped ??= performance.now()),
  });
}

describe('leader election through a connection that hangs', () => {
  let direct: KubeRest;
  let proxied: KubeRest;
  let proxy: StallingProxy;
  let dir: string;
  const stops: AbortController[] = [];
  const runs: Promise<void>[] = [];

  beforeAll(async () => {
    direct = await KubeRest.create(kubeconfig);
    const kc = new KubeConfig();
    kc.loadFromFile(kubeconfig);
    const server = new URL(kc.getCurrentCluster()!.server);
    proxy = new StallingProxy({ host: server.hostname, port: Number(server.port) });
    await proxy.listen(PROXY_PORT);
    // The same credentials and CA, through the proxy (TLS is end to end: the proxy only moves bytes).
    const cluster = kc.getCurrentCluster()!;
    const viaProxy = new KubeConfig();
    viaProxy.loadFromOptions({
      clusters: [{ ...cluster, server: `https://${server.hostname}:${PROXY_PORT}` }],
      users: kc.users,
      contexts: kc.contexts,
      currentContext: kc.currentContext,
    });
    dir = mkdtempSync(join(tmpdir(), 'ksh3-election-'));
    writeFileSync(join(dir, 'kubeconfig'), viaProxy.exportConfig());
    proxied = await KubeRest.create(join(dir, 'kubeconfig'));
  });

  afterAll(async () => {
    for (const s of stops) s.abort();
    await Promise.allSettled(runs);
    proxied?.close();
    direct?.close();
    await proxy?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('the old leader stops leading at its renew deadline, before the new one starts', async () => {
    const ns = freshName('ksh3-election');
    await createNamespace(direct, ns);
    const a: Instants = {};
    const b: Instants = {};
    const stopA = new AbortController();
    const stopB = new AbortController();
    stops.push(stopA, stopB);
    const electorA = elector(proxied, ns, 'a-via-proxy', a);
    runs.push(electorA.run(stopA.signal));
    await eventually('a to lead', async () => electorA.isLeader, 10_000, 20);
    const electorB = elector(direct, ns, 'b-direct', b);
    runs.push(electorB.run(stopB.signal));
    // Let a renew a few times through the proxy, with b standing by.
    const leaseRv = async () => (await direct.request<{ metadata: { resourceVersion: string } }>('GET', `/apis/coordination.k8s.io/v1/namespaces/${ns}/leases/kstreams-operator`)).metadata.resourceVersion;
    const rv0 = await leaseRv();
    await eventually('a renewal through the proxy', async () => (await leaseRv()) !== rv0, 5_000, 50);
    expect(electorB.isLeader).toBe(false);
    expect(proxy.connections).toBeGreaterThan(0);

    const stalledAt = performance.now();
    proxy.stall();
    await eventually('b to lead', async () => b.started !== undefined, LEASE_MS + RENEW_DEADLINE_MS + 5_000, 20);
    const stoppedA = a.stopped;
    console.log(
      `[election] stalled at 0 ms; a stopped leading at ${Math.round(stoppedA! - stalledAt)} ms; b started at ${Math.round(b.started! - stalledAt)} ms ` +
        `(renew deadline ${RENEW_DEADLINE_MS} ms, lease ${LEASE_MS} ms)`,
    );
    expect(stoppedA).toBeDefined();
    expect(electorA.isLeader).toBe(false);
    // The instants, on one monotonic clock: a's leadership ended before b's began.
    expect(stoppedA!).toBeLessThan(b.started!);
    // a gave up within its renew deadline of the stall (its last successful renew was at most one retry period
    // before), not when a transport timeout (30 s) or the kernel would have ended the hung request.
    expect(stoppedA! - stalledAt).toBeLessThanOrEqual(RENEW_DEADLINE_MS + 200);
    // b waited out the lease from when it last saw a renewal.
    expect(b.started! - stalledAt).toBeGreaterThanOrEqual(LEASE_MS - RETRY_MS - 200);
  });
});
