// attachStreamPath() on the real kernel, in process: live edits (mirror set, port, pipe size, pacing and
// buffer, all on one engine), rollback when the interception is refused, nothing left on the namespace
// after detach, and detach's drain: live connections keep moving, the rest are reset (RST, never FIN).
import { spawnSync } from 'node:child_process';
import { statSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { EXAMPLE_STREAMPATH_YAML, parseStreamPath, type StreamPathSpec } from '../../../api/src/streampath.js';
import { HttpServer, startScene, waitFor, type Scene } from '../demo/scenario.js';
import { attachStreamPath, nativeDataPlane, type Attachment, type DataPlane } from './attach.js';
import { KeepAlive } from './keep-alive-client.js';
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
    await Promise.all(attachments.map((a) => a.abort().catch(() => undefined)));
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

    // New pipe size, pacing and buffer: the same engine applies them to new connections; the totals go on.
    const before = a.stats();
    expect(before.connections).toBe(3);
    const listenersBefore = listeningPorts(scene);
    await a.update(spec((s) => {
      s.port = 9090;
      s.mirror.pipeSize = 65536;
      s.mirror.turnTimeoutMs = 0;
      s.mirror.bufferSize = 1024 * 1024;
      s.mirror.targets = [{ name: 'staging2', address: `${scene.stagingAddress}:8081` }];
    }));
    expect(listeningPorts(scene)).toEqual(listenersBefore);
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

  describe('detach drains', () => {
    it('keeps a live connection moving to the end, while new connections reach the app directly', async () => {
      const a = await attachStreamPath({ name: 'drain', spec: spec((s) => (s.drainTimeoutSeconds = 30)), netnsPath: scene.app.path });
      attachments.push(a);
      const conn = KeepAlive.open(scene);
      expect(await conn.request('/drain/1')).toBe(200);
      let draining: { connections: number; timeoutMs: number } | undefined;
      const done = a.detach({ onDraining: (i) => (draining = i) });
      await waitFor('the drain to start', () => a.state === 'draining' && draining);
      expect(draining).toEqual({ connections: 1, timeoutMs: 30_000 });
      expect(skLookupLinkCount(scene.app.path)).toBe(0);
      expect(await scene.curl('/drain/direct')).toBe(200);
      expect(lastRemote(scene.appServer).startsWith(`${scene.clientAddress}:`)).toBe(true);
      // The connection opened before the detach still goes through the engine, and to staging.
      expect(await conn.request('/drain/2')).toBe(200);
      await waitFor('staging to see /drain/2', () => scene.stagingServer.requests().some((r) => r.requestLine === 'GET /drain/2 HTTP/1.1'));
      conn.close();
      const result = await done;
      expect(result).toMatchObject({ timeoutMs: 30_000, drained: 1, reset: 0, cutShort: false });
      expect(result.ms).toBeLessThan(30_000);
      expect(await conn.ended()).toBe('closed by us');
      expect(a.stats().connectionsReset).toBe(0);
    });

    it('resets what is still open at the deadline: the client sees a reset, not an orderly end', async () => {
      const a = await attachStreamPath({ name: 'deadline', spec: spec(), netnsPath: scene.app.path });
      attachments.push(a);
      const conn = KeepAlive.open(scene);
      expect(await conn.request('/deadline/1')).toBe(200);
      const started = Date.now();
      const result = await a.detach({ timeoutMs: 500 });
      expect(Date.now() - started).toBeGreaterThanOrEqual(400);
      expect(result).toMatchObject({ timeoutMs: 500, drained: 0, reset: 1, cutShort: false });
      expect(await conn.ended()).toBe('ECONNRESET');
      expect(a.stats()).toMatchObject({ connectionsReset: 1, connectionsActive: 0 });
    });

    it('abort() cuts a long drain short with a reset', async () => {
      const a = await attachStreamPath({ name: 'abort', spec: spec((s) => (s.drainTimeoutSeconds = 3600)), netnsPath: scene.app.path });
      attachments.push(a);
      const conn = KeepAlive.open(scene);
      expect(await conn.request('/abort/1')).toBe(200);
      const done = a.detach();
      await waitFor('the drain to start', () => a.state === 'draining');
      const started = Date.now();
      await a.abort();
      expect(await done).toMatchObject({ reset: 1, cutShort: true });
      expect(Date.now() - started).toBeLessThan(5000);
      expect(await conn.ended()).toBe('ECONNRESET');
    });
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
