// Interception and the real engine together, as the sidecar wires them: the engine's listener in the pod's
// namespace, the sk_lookup program steering the app's port to it, the engine's upstream connections from
// 127.0.0.6 let through to the app.
import { once } from 'node:events';
import net from 'node:net';
import { dirname, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Netns, link, cleanupAll, type Link } from '../../sidecar/src/netns.js';
import { Engine, Interception } from '../lib/index.js';

const fixture = resolve(dirname(fileURLToPath(import.meta.url)), 'fixtures/interception-fixture.ts');
const APP_PORT = 18081;

async function within<T>(promise: Promise<T>, what: string, ms = 10_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

describe('interception in front of the real engine', () => {
  let pod: Netns;
  let veth: Link;
  let engine: Engine | undefined;
  let interception: Interception | undefined;

  beforeAll(async () => {
    pod = Netns.create('icpt-eng');
    veth = link(undefined, pod);
    const app = pod.spawn(process.execPath, ['--import', 'tsx', fixture, 'app', String(APP_PORT)]);
    const [line] = (await within(once(createInterface({ input: app.stdout! }), 'line'), 'the app')) as [string];
    expect(JSON.parse(line)).toEqual({ ready: true });
  });

  afterAll(async () => {
    interception?.detach();
    await engine?.stop();
    await pod?.destroy();
    await cleanupAll();
  });

  it('a client reaches the app through the engine, which the program lets through by its source', async () => {
    engine = Engine.start({
      netnsPath: pod.path,
      upstream: 'original-destination',
      mirrors: [],
      pipeSize: 65_536,
      mirrorConnectTimeoutMs: 1, turnTimeoutMs: 1000, mirrorBufferSize: 4 << 20_000,
    });
    interception = Interception.attach({ netnsPath: pod.path, port: APP_PORT, listenerFd: engine.listenerFd });

    const client = net.connect({ host: veth.bAddress, port: APP_PORT });
    client.on('error', () => {});
    const lines = createInterface({ input: client });
    const [greeting] = (await within(once(lines, 'line'), 'the app greeting')) as [string];
    // The app sees the engine's upstream connection, from the bypass source, to the original destination.
    expect(JSON.parse(greeting)).toMatchObject({
      via: 'app',
      localAddress: `::ffff:${veth.bAddress}`,
      localPort: APP_PORT,
      remoteAddress: '::ffff:127.0.0.6',
    });
    client.write('through the engine\n');
    const [echo] = (await within(once(lines, 'line'), 'the echo')) as [string];
    expect(echo).toBe('through the engine');
    client.end();
    await within(once(client, 'close'), 'the connection to close');

    expect(interception.counters()).toEqual({ steered: 1, bypassed: 1, noListener: 0, assignFailed: 0 });
    expect(engine.stats()).toMatchObject({ connectionsAccepted: 1 });
  });

  it('after the engine stops, the still-attached program fails open to the app', async () => {
    await engine!.stop();
    const client = net.connect({ host: veth.bAddress, port: APP_PORT });
    client.on('error', () => {});
    const [greeting] = (await within(once(createInterface({ input: client }), 'line'), 'the app greeting')) as [string];
    client.destroy();
    expect(JSON.parse(greeting)).toMatchObject({ via: 'app', localPort: APP_PORT, remoteAddress: `::ffff:${veth.aAddress}` });
    expect(interception!.counters()).toMatchObject({ steered: 1, noListener: 1 });
  });
});
