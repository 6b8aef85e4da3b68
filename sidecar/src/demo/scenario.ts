// The three-namespace scene shared by the demo and the CLI kernel test: a client, an app and a staging
// namespace linked by veth pairs, a real HTTP server in app and in staging, and the real `kstreams` CLI
// as a child process attached to the app's port. Everything started here is torn down by destroy().
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parse, stringify } from 'yaml';
import { EXAMPLE_STREAMPATH_YAML } from '../../../api/src/streampath.js';
import { cleanupAll, link, Netns } from '../netns.js';

const here = dirname(fileURLToPath(import.meta.url));
// From the sources the scripts run through tsx; from dist/ they are plain JavaScript.
const fromSources = import.meta.url.endsWith('.ts');
const ext = fromSources ? 'ts' : 'js';

/** The repository root (where package.json and node_modules are), for tsx resolution. */
export const repoRoot = fromSources ? join(here, '../../..') : join(here, '../../../..');

/** argv for running one of our scripts with node (adds tsx when running from the sources). */
export function nodeScript(relToSidecarSrc: string, args: string[]): string[] {
  const file = join(here, '..', relToSidecarSrc.replace(/\.js$/, `.${ext}`));
  return [process.execPath, ...(fromSources ? ['--import', 'tsx'] : []), file, ...args];
}

/** Resolves with `pred`'s first truthy value; polls until `timeoutMs`, then rejects naming `what`. */
export async function waitFor<T>(what: string, pred: () => T | undefined | false, timeoutMs = 15_000, everyMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = pred();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

export interface ServerEvent {
  server: string;
  event: 'listening' | 'request' | 'connection-closed';
  requestLine?: string;
  demoRequest?: string | null;
  bodyBytes?: number;
  bytesRead?: number;
  remote?: string;
}

/** An http-server.ts process in a namespace, with the JSON lines it logged. */
export class HttpServer {
  readonly events: ServerEvent[] = [];
  private constructor(
    readonly name: string,
    readonly child: ChildProcess,
  ) {
    createInterface({ input: child.stdout! }).on('line', (line) => {
      try {
        this.events.push(JSON.parse(line) as ServerEvent);
      } catch {
        // Not one of our lines (a runtime warning): not an event.
      }
    });
  }

  static async start(ns: Netns, name: string, port: number): Promise<HttpServer> {
    const [cmd, ...args] = nodeScript('demo/http-server.js', ['--name', name, '--port', String(port)]);
    const s = new HttpServer(name, ns.spawn(cmd!, args, { cwd: repoRoot }));
    let stderr = '';
    s.child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    await waitFor(`the ${name} server to listen (stderr: ${stderr})`, () => {
      if (s.child.exitCode !== null) throw new Error(`the ${name} server exited: ${stderr.trim()}`);
      return s.events.some((e) => e.event === 'listening');
    }, 30_000);
    return s;
  }

  requests(): ServerEvent[] {
    return this.events.filter((e) => e.event === 'request');
  }

  closedConnections(): ServerEvent[] {
    return this.events.filter((e) => e.event === 'connection-closed');
  }

  bytesReceived(): number {
    return this.closedConnections().reduce((a, e) => a + (e.bytesRead ?? 0), 0);
  }
}

export interface Summary {
  type: 'summary';
  connections: number;
  bytesPrimary: number;
  bytesMirrored: number;
  bytesDropped: number;
  targets: { name: string; connectionsMirrored: number; connectionsCut: number; connectFailures: number; bytesMirrored: number; bytesDropped: number }[];
}

/** The real `kstreams run` as a child process. */
export class CliRun {
  readonly stdoutLines: string[] = [];
  stderr = '';
  readonly exited: Promise<number | null>;

  /** Every run still going, so that a failing test or demo cannot leave one behind. */
  private static readonly live = new Set<CliRun>();

  static {
    // Last resort when the test runner or the demo exits without cleaning up: no kstreams outlives us.
    process.once('exit', () => {
      for (const run of CliRun.live) run.child.kill('SIGKILL');
    });
  }

  static async killAll(): Promise<void> {
    await Promise.all([...CliRun.live].map((r) => r.kill()));
  }

  private constructor(readonly child: ChildProcess) {
    CliRun.live.add(this);
    child.once('exit', () => CliRun.live.delete(this));
    createInterface({ input: child.stdout! }).on('line', (l) => this.stdoutLines.push(l));
    child.stderr!.on('data', (d: Buffer) => (this.stderr += d.toString()));
    this.exited = once(child, 'exit').then(([code]) => code as number | null);
  }

  /** `kstreams run -f FILE --netns NETNS`, from the root namespace. */
  static start(file: string, netns: string, extra: string[] = []): CliRun {
    const [cmd, ...args] = nodeScript('cli/main.js', ['run', '-f', file, '--netns', netns, ...extra]);
    return new CliRun(spawn(cmd!, args, { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] }));
  }

  /** `kstreams run -f FILE` started inside `ns`, as a process in a pod would run it (no --netns). */
  static startInside(ns: Netns, file: string, extra: string[] = []): CliRun {
    const [cmd, ...args] = nodeScript('cli/main.js', ['run', '-f', file, ...extra]);
    return new CliRun(ns.spawn(cmd!, args, { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] }));
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  async attached(timeoutMs = 30_000): Promise<void> {
    await waitFor('kstreams run to attach', () => {
      if (!this.running) throw new Error(`kstreams run exited early: ${this.stderr.trim()}`);
      return this.stderr.includes('kstreams: attached ');
    }, timeoutMs);
  }

  /** The last `{"type":"counters"}` line (with --json-interval). */
  lastCounters(): Summary | undefined {
    for (let i = this.stdoutLines.length - 1; i >= 0; i--) {
      const line = this.stdoutLines[i]!;
      if (line.includes('"type":"counters"')) return JSON.parse(line) as Summary;
    }
    return undefined;
  }

  /** SIGINT, then the exit code and the summary printed on stdout. */
  async interrupt(timeoutMs = 20_000): Promise<{ code: number | null; summary: Summary | undefined }> {
    if (this.running) this.child.kill('SIGINT');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs);
    const code = await this.exited;
    clearTimeout(timer);
    const line = this.stdoutLines.find((l) => l.includes('"type":"summary"'));
    return { code, summary: line ? (JSON.parse(line) as Summary) : undefined };
  }

  async kill(): Promise<void> {
    if (this.running) {
      this.child.kill('SIGKILL');
      await this.exited;
    }
  }
}

export interface Scene {
  app: Netns;
  staging: Netns;
  client: Netns;
  /** The client's address on its link to the app. */
  clientAddress: string;
  /** The app's address as the client reaches it. */
  appAddress: string;
  /** Staging's address as the app reaches it. */
  stagingAddress: string;
  port: number;
  appServer: HttpServer;
  stagingServer: HttpServer;
  dir: string;
  /** Writes the embedded default StreamPath, pointed at staging, and returns its path. */
  writeStreamPath(name?: string): string;
  /** One request from the client namespace; resolves with the HTTP status code. */
  curl(path: string, opts?: { body?: string; header?: string; port?: number }): Promise<number>;
  destroy(): Promise<void>;
}

export async function startScene(port = 8080): Promise<Scene> {
  const made: Netns[] = [];
  const dir = mkdtempSync(join(tmpdir(), 'kstreams-demo-'));
  try {
    const app = Netns.create('app');
    made.push(app);
    const staging = Netns.create('staging');
    made.push(staging);
    const client = Netns.create('client');
    made.push(client);
    const clientLink = link(client, app);
    const stagingLink = link(app, staging);
    const [appServer, stagingServer] = await Promise.all([
      HttpServer.start(app, 'app', port),
      HttpServer.start(staging, 'staging', port),
    ]);
    const scene: Scene = {
      app,
      staging,
      client,
      clientAddress: clientLink.aAddress,
      appAddress: clientLink.bAddress,
      stagingAddress: stagingLink.bAddress,
      port,
      appServer,
      stagingServer,
      dir,
      writeStreamPath(name = 'demo-shadow') {
        const doc = parse(EXAMPLE_STREAMPATH_YAML) as {
          metadata: { name: string };
          spec: { port: number; mirror: { targets: { name?: string; address: string }[] } };
        };
        doc.metadata.name = name;
        doc.spec.port = port;
        doc.spec.mirror.targets = [{ name: 'staging', address: `${stagingLink.bAddress}:${port}` }];
        const file = join(dir, `${name}.yaml`);
        writeFileSync(file, stringify(doc));
        return file;
      },
      async curl(path, opts = {}) {
        const args = ['-sS', '-o', '/dev/null', '--max-time', '10', '-w', '%{http_code}'];
        if (opts.header) args.push('-H', opts.header);
        if (opts.body !== undefined) args.push('--data-binary', opts.body);
        args.push(`http://${clientLink.bAddress}:${opts.port ?? port}${path}`);
        const child = client.spawn('curl', args);
        let out = '';
        let err = '';
        child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
        child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
        const [code] = (await once(child, 'close')) as [number | null];
        if (code !== 0) throw new Error(`curl ${path} failed (${code}): ${err.trim()}`);
        return Number(out);
      },
      async destroy() {
        await Promise.all(made.map((ns) => ns.destroy()));
        rmSync(dir, { recursive: true, force: true });
      },
    };
    return scene;
  } catch (err) {
    await Promise.all(made.map((ns) => ns.destroy()));
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}

/** Every namespace this process created, for a last-resort cleanup path. */
export { cleanupAll };

