// attachStreamPath() on the real kernel, in process: live edits (mirror set, port, pipe size), rollback
// when the interception is refused, and nothing left on the namespace after detach.
import { spawnSync } from 'node:child_process';
import { statSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { EXAMPLE_STREAMPATH_YAML, parseStreamPath, type StreamPathSpec } from '../../../operator/src/api/streampath.js';
import { HttpServer, startScene, waitFor, type Scene } from '../demo/scenario.js';
import { attachStreamPath, nativeDataPlane, type Attachment, type DataPlane } from './attach.js';
import { AttachError } from './errors.js';

function skLookupLinkCount(netnsPath: string): number {
  const ino = statSync(netnsPath).ino;
  const r = spawnSync('bpftool', ['-j', 'link', 'list'], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`bpftool link list: ${r.stderr}`);
  const links = JSON.parse(r.stdout || '[]') as { attach_type?: string; netns_ino?: number }[];
  return links.filter((l) => l.attach_type === 'sk_lookup' && l.netns_ino === ino).length;
}

function listeningPorts(scene: Scene): number[] {
  return scene.app
    .run('ss', ['-Hltn'])
    .trim()
    .split('\n')
    .filter(Boolean)
    .map((l) => Number(l.trim().split(/\s+/)[3]!.split(':').pop()))
    .sort((a, b) => a - b);
}

describe('attachStreamPath on a real kernel', () => {
  let scene: Scene;
  let staging2: HttpServer;
  let app9090: HttpServer;
  const attachments: Attachment[] = [];

  const spec = (patch: (s: Record<string, any>) => void = () => {}): StreamPathSpec => {
    const doc = parse(EXAMPLE_STREAMPATH_YAML) as Record<string, any>;
    doc['spec'].mirror.targets = [{ name: 'staging', address: `${scene.stagingAddress}:8080` }];
    patch(doc['spec']);
    const r = parseStreamPath(doc);
    if (!r.ok) throw new Error(r.errors.join('; '));
    return r.value.spec;
  };
  /** Through the engine when the app sees the bypass source, directly when it sees the client. */
  const lastRemote = (server: HttpServer) => server.requests().at(-1)!.remote!;

  beforeAll(async () => {
    scene = await startScene(8080);
    [staging2, app9090] = await Promise.all([
      HttpServer.start(scene.staging, 'staging2', 8081),
      HttpServer.start(scene.app, 'app9090', 9090),
    ]);
  });

  afterAll(async () => {
    await Promise.all(attachments.map((a) => a.detach().catch(() => undefined)));
    await scene?.destroy();
  });

  it('follows live edits: new mirror target, new port, new pipe size; detach leaves no link', async () => {
    const a = await attachStreamPath({ name: 'live', spec: spec(), netnsPath: scene.app.path });
    attachments.push(a);
    expect(skLookupLinkCount(scene.app.path)).toBe(1);

    expect(await scene.curl('/one')).toBe(200);
    expect(lastRemote(scene.appServer).startsWith(`${scene.clientAddress}:`)).toBe(false);
    await waitFor('staging to see /one', () => scene.stagingServer.requests().some((r) => r.requestLine === 'GET /one HTTP/1.1'));

    // New mirror target: the next connection goes to staging2, not staging.
    await a.update(spec((s) => {
      s.mirror.targets = [{ name: 'staging2', address: `${scene.stagingAddress}:8081` }];
    }));
    expect(await scene.curl('/two')).toBe(200);
    await waitFor('staging2 to see /two', () => staging2.requests().some((r) => r.requestLine === 'GET /two HTTP/1.1'));
    expect(scene.stagingServer.requests().map((r) => r.requestLine)).not.toContain('GET /two HTTP/1.1');
    expect(a.stats().targets.map((t) => t.name)).toEqual(['staging2']);

    // New port: 9090 is now tapped, 8080 reaches the app directly again.
    await a.update(spec((s) => {
      s.port = 9090;
      s.mirror.targets = [{ name: 'staging2', address: `${scene.stagingAddress}:8081` }];
    }));
    expect(a.port).toBe(9090);
    expect(skLookupLinkCount(scene.app.path)).toBe(1);
    expect(await scene.curl('/three', { port: 9090 })).toBe(200);
    expect(lastRemote(app9090).startsWith(`${scene.clientAddress}:`)).toBe(false);
    expect(await scene.curl('/direct')).toBe(200);
    expect(lastRemote(scene.appServer).startsWith(`${scene.clientAddress}:`)).toBe(true);
    await waitFor('staging2 to see /three', () => staging2.requests().some((r) => r.requestLine === 'GET /three HTTP/1.1'));

    // New pipe size: a fresh engine takes over; the totals keep counting from where they were.
    const before = a.stats();
    expect(before.connections).toBe(3);
    await a.update(spec((s) => {
      s.port = 9090;
      s.mirror.pipeSize = 65536;
      s.mirror.targets = [{ name: 'staging2', address: `${scene.stagingAddress}:8081` }];
    }));
    expect(await scene.curl('/four', { port: 9090 })).toBe(200);
    await waitFor('staging2 to see /four', () => staging2.requests().some((r) => r.requestLine === 'GET /four HTTP/1.1'));
    await waitFor('the counters to include /four', () => a.stats().connections === 4);
    expect(a.stats().bytesPrimary).toBeGreaterThan(before.bytesPrimary);
    expect(skLookupLinkCount(scene.app.path)).toBe(1);

    await a.detach();
    expect(skLookupLinkCount(scene.app.path)).toBe(0);
    expect(await scene.curl('/after', { port: 9090 })).toBe(200);
    expect(lastRemote(app9090).startsWith(`${scene.clientAddress}:`)).toBe(true);
  });

  it('stops the engine again when the kernel refuses the interception', async () => {
    const listenersBefore = listeningPorts(scene);
    // A listener from one namespace steered from another: the kernel-facing code refuses it.
    const crossed: DataPlane = {
      startEngine: nativeDataPlane.startEngine,
      attachInterception: (c) => nativeDataPlane.attachInterception({ ...c, netnsPath: scene.staging.path }),
    };
    const err = await attachStreamPath({ name: 'refused', spec: spec(), netnsPath: scene.app.path, dataPlane: crossed }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(AttachError);
    expect((err as AttachError).message).toMatch(/intercepting port 8080/);
    expect(listeningPorts(scene)).toEqual(listenersBefore);
    expect(skLookupLinkCount(scene.app.path)).toBe(0);
    expect(skLookupLinkCount(scene.staging.path)).toBe(0);
  });
});
