// `kstreams run` as a real process against real namespaces: traffic reaches the app through the engine,
// staging gets the same request bytes, SIGINT prints the right counters and exits 0, and afterwards no
// sk_lookup link of ours is left on the app's namespace and the client reaches the app directly. Also:
// SIGHUP applies an edited file, SIGTERM stops like SIGINT, SIGKILL fails open, and SIGINT drains live
// connections (a second SIGINT resets them, and the summary is still printed).
import { spawnSync } from 'node:child_process';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CliRun, HttpServer, startScene, waitFor, type Scene } from '../demo/scenario.js';
import { KeepAlive } from '../dataplane/keep-alive-client.js';

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
    await CliRun.killAll();
    await scene?.destroy();
  });

  it('mirrors client requests to staging, reports them on SIGINT and leaves the app reachable directly', async () => {
    const file = scene.writeStreamPath('kernel-test');
    cli = CliRun.start(file, scene.app.name);
    await cli.attached();
    expect(cli.stderr.startsWith(`kstreams: attached kernel-test: port 8080 in netns ${scene.app.name}`)).toBe(true);
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

  it('applies an edited file on SIGHUP and exits 0 on SIGTERM', async () => {
    const staging2 = await HttpServer.start(scene.staging, 'staging2', 8081);
    const file = scene.writeStreamPath('reload');
    cli = CliRun.start(file, scene.app.name);
    await cli.attached();
    const run = cli;

    writeFileSync(file, readFileSync(file, 'utf8').replace(`${scene.stagingAddress}:8080`, `${scene.stagingAddress}:8081`).replace('name: staging', 'name: staging2'));
    run.child.kill('SIGHUP');
    await waitFor('the reload to be applied', () => run.stderr.includes('kstreams: reloaded '));
    expect(await scene.curl('/after-reload')).toBe(200);
    await waitFor('staging2 to get the mirrored request', () => staging2.requests().some((r) => r.requestLine === 'GET /after-reload HTTP/1.1'));
    expect(scene.stagingServer.requests().map((r) => r.requestLine)).not.toContain('GET /after-reload HTTP/1.1');

    // An invalid edit is reported and the running spec stays.
    writeFileSync(file, readFileSync(file, 'utf8').replace('port: 8080', 'port: 0'));
    run.child.kill('SIGHUP');
    await waitFor('the bad reload to be reported', () => run.stderr.includes('failed, keeping the previous spec'));
    expect(run.stderr).toMatch(/spec\.port: /);
    expect(run.running).toBe(true);

    run.child.kill('SIGTERM');
    const code = await run.exited;
    expect(code).toBe(0);
    const summary = JSON.parse(run.stdoutLines.find((l) => l.includes('"type":"summary"'))!) as { connections: number; targets: { name: string }[] };
    expect(summary.connections).toBe(1);
    expect(summary.targets.map((t) => t.name)).toEqual(['staging2']);
    expect(skLookupLinks(scene.app.path)).toEqual([]);
  });

  it('drains on SIGINT: a live connection keeps moving until it ends, and the summary says so', async () => {
    cli = CliRun.start(scene.writeStreamPath('drain'), scene.app.name);
    await cli.attached();
    const run = cli;
    const conn = KeepAlive.open(scene);
    try {
      expect(await conn.request('/live/1')).toBe(200);
      run.child.kill('SIGINT');
      await waitFor('the drain note', () => run.stderr.includes('SIGINT: draining 1 live connection for up to 20s; Ctrl-C again resets them now'));
      expect(skLookupLinks(scene.app.path)).toEqual([]);
      expect(await conn.request('/live/2')).toBe(200);
      expect(run.running).toBe(true);
      conn.close();
      expect(await run.exited).toBe(0);
      expect(await conn.ended()).toBe('closed by us');
      const summary = JSON.parse(run.stdoutLines.find((l) => l.includes('"type":"summary"'))!) as Record<string, unknown>;
      expect(summary).toMatchObject({ connections: 1, connectionsReset: 0, drain: { timeoutMs: 20_000, drained: 1, reset: 0, cutShort: false } });
    } finally {
      conn.kill();
    }
  });

  it('resets on a second SIGINT, before exiting, and still prints the summary', async () => {
    cli = CliRun.start(scene.writeStreamPath('reset'), scene.app.name, ['--drain-timeout', '600']);
    await cli.attached();
    const run = cli;
    const conn = KeepAlive.open(scene);
    try {
      expect(await conn.request('/held')).toBe(200);
      run.child.kill('SIGINT');
      await waitFor('the drain note', () => run.stderr.includes('draining 1 live connection for up to 600s'));
      run.child.kill('SIGINT');
      expect(await run.exited).toBe(0);
      expect(run.stderr).toContain('SIGINT again: resetting the live connections now');
      // Reset, not closed: a FIN would make the truncated stream look complete.
      expect(await conn.ended()).toBe('ECONNRESET');
      const summary = JSON.parse(run.stdoutLines.find((l) => l.includes('"type":"summary"'))!) as Record<string, unknown>;
      expect(summary).toMatchObject({ connections: 1, connectionsReset: 1, drain: { timeoutMs: 600_000, drained: 0, reset: 1, cutShort: true } });
      expect(skLookupLinks(scene.app.path)).toEqual([]);
    } finally {
      conn.kill();
    }
  });

  it('fails open when killed with SIGKILL: no link left, the client reaches the app directly', async () => {
    cli = CliRun.start(scene.writeStreamPath('killed'), scene.app.name);
    await cli.attached();
    expect(skLookupLinks(scene.app.path)).toHaveLength(1);
    expect(await scene.curl('/before-kill')).toBe(200);
    expect(scene.appServer.requests().at(-1)!.remote!.startsWith(`${scene.clientAddress}:`)).toBe(false);

    await cli.kill();
    // The link goes with the process's file descriptors; the kernel releases it asynchronously.
    await waitFor('the kernel to release the link', () => skLookupLinks(scene.app.path).length === 0, 10_000);
    expect(await scene.curl('/after-kill')).toBe(200);
    const last = scene.appServer.requests().at(-1)!;
    expect(last.requestLine).toBe('GET /after-kill HTTP/1.1');
    expect(last.remote!.startsWith(`${scene.clientAddress}:`)).toBe(true);
  });

  it('attaches in its own namespace when started inside it without --netns', async () => {
    cli = CliRun.startInside(scene.app, scene.writeStreamPath('inside'));
    await cli.attached();
    expect(cli.stderr).toMatch(/^kstreams: attached inside: port 8080 in the current netns/);
    expect(skLookupLinks(scene.app.path)).toHaveLength(1);
    expect(await scene.curl('/inside')).toBe(200);
    expect(scene.appServer.requests().at(-1)!.remote!.startsWith(`${scene.clientAddress}:`)).toBe(false);
    await waitFor('staging to get /inside', () => scene.stagingServer.requests().some((r) => r.requestLine === 'GET /inside HTTP/1.1'));
    const { code, summary } = await cli.interrupt();
    expect(code).toBe(0);
    expect(summary).toMatchObject({ netns: 'current', connections: 1, bytesDropped: 0 });
    expect(skLookupLinks(scene.app.path)).toEqual([]);
  });

  it('counts a mirror target that refuses connections, while the app gets every byte', async () => {
    const file = scene.writeStreamPath('refused');
    // Nothing listens on 9999 in staging: every mirror connect is refused.
    writeFileSync(file, readFileSync(file, 'utf8').replace(`${scene.stagingAddress}:8080`, `${scene.stagingAddress}:9999`));
    cli = CliRun.start(file, scene.app.name);
    await cli.attached();
    const closedBefore = scene.appServer.closedConnections().length;
    const body = 'z'.repeat(4096);
    for (let i = 0; i < 3; i++) expect(await scene.curl(`/refused/${i}`, { body })).toBe(200);
    await waitFor('the app to close the 3 connections', () => scene.appServer.closedConnections().length >= closedBefore + 3);
    const appBytes = scene.appServer.closedConnections().slice(closedBefore).reduce((a, e) => a + e.bytesRead!, 0);
    expect(scene.appServer.requests().slice(-3).every((r) => r.bodyBytes === body.length)).toBe(true);

    const { code, summary } = await cli.interrupt();
    expect(code).toBe(0);
    expect(summary).toMatchObject({
      connections: 3,
      bytesPrimary: appBytes,
      bytesMirrored: 0,
      bytesDropped: appBytes,
      targets: [{ name: 'staging', connectFailures: 3, bytesMirrored: 0, bytesDropped: appBytes }],
    });
  });
});

describe('kstreams check on a real kernel', () => {
  const check = (asNobody: boolean) => {
    const node = [process.execPath, '--import', 'tsx', new URL('./main.ts', import.meta.url).pathname, 'check', '--json'];
    const argv = asNobody
      ? ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', '--inh-caps=-all', '--bounding-set=-all', ...node]
      : node;
    return spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8' });
  };

  it('says this machine is ready as root', () => {
    const r = check(false);
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ ok: true, kernel: { skLookup: true, sockmap: true, problems: [] } });
  });

  it('exits 4 without capabilities and says which ones', () => {
    const r = check(true);
    expect(r.status).toBe(4);
    expect(JSON.parse(r.stdout)).toMatchObject({ ok: false, privileges: { bpf: false, netAdmin: false } });
    expect(r.stderr).toMatch(/^kstreams: missing privileges: CAP_BPF is missing.*run as root or grant CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN, then check again\n$/);
  });
});
