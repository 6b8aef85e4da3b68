// `kstreams run` as a real process against real namespaces: traffic reaches the app through the engine,
// staging gets the same request bytes, SIGINT prints the right counters and exits 0, and afterwards no
// sk_lookup link of ours is left on the app's namespace and the client reaches the app directly.
import { spawnSync } from 'node:child_process';
import { statSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CliRun, startScene, waitFor, type Scene } from '../demo/scenario.js';

const PROGRAM_NAME = 'kstreams_steer';

interface BpfLink {
  id: number;
  type: string;
  prog_id: number;
  netns_ino?: number;
  attach_type?: string;
}

function bpftool<T>(...args: string[]): T {
  const r = spawnSync('bpftool', ['-j', ...args], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`bpftool ${args.join(' ')}: ${r.stderr.trim()}`);
  return JSON.parse(r.stdout || '[]') as T;
}

/** sk_lookup links on one namespace, with the names of their programs. */
function skLookupLinks(netnsPath: string): { link: BpfLink; program: string }[] {
  const ino = statSync(netnsPath).ino;
  return bpftool<BpfLink[]>('link', 'list')
    .filter((l) => l.attach_type === 'sk_lookup' && l.netns_ino === ino)
    .map((link) => {
      let program = '?';
      try {
        program = bpftool<{ name?: string }>('prog', 'show', 'id', String(link.prog_id)).name ?? '?';
      } catch {
        // The program went away between the two calls: the link is going too.
      }
      return { link, program };
    });
}

describe('kstreams run on a real kernel', () => {
  let scene: Scene;
  let cli: CliRun | undefined;

  beforeAll(async () => {
    scene = await startScene(8080);
  });

  afterAll(async () => {
    await cli?.kill();
    await scene?.destroy();
  });

  it('mirrors client requests to staging, reports them on SIGINT and leaves the app reachable directly', async () => {
    const file = scene.writeStreamPath('kernel-test');
    cli = CliRun.start(file, scene.app.name);
    await cli.attached();
    expect(cli.stderr).toMatch(/^kstreams: attached kernel-test: port 8080 in netns ks-app-/);
    const links = skLookupLinks(scene.app.path);
    expect(links.map((l) => l.program)).toEqual([PROGRAM_NAME]);

    const N = 8;
    const body = 'payload-'.repeat(512);
    for (let i = 0; i < N; i++) {
      const status = await scene.curl(`/k/${i}`, { header: `X-Demo-Request: ${i}`, ...(i % 2 ? { body } : {}) });
      expect(status).toBe(200);
    }
    // The engine's upstream connections come from the bypass source, not from the client.
    const viaEngine = scene.appServer.requests();
    expect(viaEngine).toHaveLength(N);
    expect(viaEngine.every((r) => !r.remote!.startsWith(`${scene.clientAddress}:`))).toBe(true);

    await waitFor('staging to close every mirrored connection', () => scene.stagingServer.closedConnections().length >= N, 20_000);
    await waitFor('the app to close every connection', () => scene.appServer.closedConnections().length >= N, 20_000);
    const appBytes = scene.appServer.bytesReceived();
    const stagingBytes = scene.stagingServer.bytesReceived();
    expect(stagingBytes).toBe(appBytes);
    expect(scene.stagingServer.requests().map((r) => r.requestLine).sort()).toEqual(viaEngine.map((r) => r.requestLine).sort());
    expect(scene.stagingServer.requests().filter((r) => r.bodyBytes === body.length)).toHaveLength(N / 2);

    const { code, summary } = await cli.interrupt();
    expect(code).toBe(0);
    expect(summary).toMatchObject({
      type: 'summary',
      streamPath: 'kernel-test',
      port: 8080,
      connections: N,
      bytesPrimary: appBytes,
      bytesMirrored: stagingBytes,
      bytesDropped: 0,
      targets: [{ name: 'staging', connectionsMirrored: N, connectionsCut: 0, connectFailures: 0, bytesMirrored: stagingBytes, bytesDropped: 0 }],
    });

    // Detached: no sk_lookup link on the app namespace, and the client's connection reaches the app itself.
    expect(skLookupLinks(scene.app.path)).toEqual([]);
    expect(await scene.curl('/direct')).toBe(200);
    const last = scene.appServer.requests().at(-1)!;
    expect(last.requestLine).toBe('GET /direct HTTP/1.1');
    expect(last.remote!.startsWith(`${scene.clientAddress}:`)).toBe(true);
    expect(scene.stagingServer.requests()).toHaveLength(N);
  });
});
