// Captures (a `file` mirror target, docs/capture.md) through the real `kstreams run`, with real clients
// and servers: curl against Python's HTTP/1.1 server (keep-alive: two requests, two turns) and redis-cli /
// redis-benchmark against redis-server. Every connection's files and index are checked against the
// format's rules and against what the clients and servers really exchanged.
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cleanupAll, link, Netns } from '../../sidecar/src/netns.js';
import { readOnlySession } from '../../native/test/fixtures/capture-files.js';
import { cliCommand, KstreamsRun, Proc, repoRoot, runIn, waitFor, writeCaptureStreamPath } from './fixtures/harness.js';

let app: Netns;
let client: Netns;
let appAddress: string;
let dir: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'kstreams-capture-proto-'));
  chmodSync(dir, 0o700);
  app = Netns.create('capp-app');
  client = Netns.create('capp-cli');
  appAddress = link(client, app).bAddress;
});

afterAll(async () => {
  await Proc.killAll();
  await cleanupAll();
  rmSync(dir, { recursive: true, force: true });
});

const streamPath = (name: string, port: number, file: Record<string, unknown>) => writeCaptureStreamPath(dir, name, port, file);

interface CaptureSummary {
  connections: number;
  bytesPrimary: number;
  targets: { name: string; connectionsMirrored: number; connectionsCut: number; bytesMirrored: number; bytesDropped: number }[];
  captures?: Record<string, { session: string; responseBytes: number; cutsFull: number; cutsSlow: number; cutsDisk: number; connectionsNotRecorded: number }>;
}

describe('captures of real clients through kstreams run', () => {
  it('curl, two requests on one keep-alive connection to an HTTP/1.1 server: both turns, both directions, byte-exact', async () => {
    const www = join(dir, 'www');
    mkdirSync(www);
    const a = randomBytes(300_000);
    const b = randomBytes(70_000);
    writeFileSync(join(www, 'a.bin'), a);
    writeFileSync(join(www, 'b.bin'), b);
    const port = 8081;
    const http = new Proc(app.spawn('python3', ['-m', 'http.server', '--protocol', 'HTTP/1.1', '--bind', appAddress, '--directory', www, String(port)], { stdio: ['ignore', 'pipe', 'pipe'] }), 'http.server');
    await waitFor('http.server to listen', () => app.run('ss', ['-Hltn', `sport = :${port}`]).includes(String(port)), 15_000);
    const out = join(dir, 'http-capture');
    const run = KstreamsRun.start(streamPath('http-capture', port, { path: out, responses: true }), app);
    await run.attached();

    const got = join(dir, 'got');
    mkdirSync(got);
    const r = await runIn(client, 'curl', ['-sS', '--fail', '-o', join(got, 'a'), `http://${appAddress}:${port}/a.bin`, '-o', join(got, 'b'), `http://${appAddress}:${port}/b.bin`]);
    expect(r.code, r.stderr).toBe(0);
    expect(readFileSync(join(got, 'a')).equals(a)).toBe(true);
    expect(readFileSync(join(got, 'b')).equals(b)).toBe(true);
    const { code, summary } = await run.interrupt();
    expect(code).toBe(0);
    await http.stop('SIGTERM');

    const cap = await readOnlySession(out);
    expect(cap.conns).toHaveLength(1);
    const c = cap.conns[0]!;
    expect(c.end).toMatchObject({ how: 'fin' });
    const c2s = readFileSync(c.c2sPath);
    const s2c = readFileSync(c.s2cPath!);
    // Two turns: the second request starts where the first response ended.
    expect(c.turns.map((t) => t.n)).toEqual([1, 2]);
    const [t1, t2] = c.turns;
    expect(t1).toMatchObject({ c2s: 0, s2c: 0 });
    expect(c2s.subarray(0, t2!.c2s).toString('latin1')).toMatch(/^GET \/a\.bin HTTP\/1\.1\r\nHost: [^\r]+\r\n[\s\S]*\r\n\r\n$/);
    expect(c2s.subarray(t2!.c2s).toString('latin1')).toMatch(/^GET \/b\.bin HTTP\/1\.1\r\n[\s\S]*\r\n\r\n$/);
    const first = s2c.subarray(0, t2!.s2c);
    const second = s2c.subarray(t2!.s2c);
    expect(first.toString('latin1')).toMatch(/^HTTP\/1\.[01] 200 OK\r\n[\s\S]*Content-Length: 300000\r\n/);
    expect(first.subarray(first.length - a.length).equals(a)).toBe(true);
    expect(second.toString('latin1')).toMatch(/^HTTP\/1\.[01] 200 OK\r\n[\s\S]*Content-Length: 70000\r\n/);
    expect(second.subarray(second.length - b.length).equals(b)).toBe(true);

    const s = summary as unknown as CaptureSummary;
    expect(s.targets[0]).toMatchObject({ name: 'capture', connectionsMirrored: 1, connectionsCut: 0, bytesMirrored: c2s.length, bytesDropped: 0 });
    expect(s.bytesPrimary).toBe(c2s.length);
    expect(s.captures?.['capture']).toMatchObject({ session: cap.path, responseBytes: s2c.length, cutsFull: 0, cutsSlow: 0, cutsDisk: 0 });
  });

  describe('redis', () => {
    const port = 6380;
    let redis: Proc;

    beforeAll(async () => {
      redis = new Proc(
        app.spawn('redis-server', ['--port', String(port), '--bind', appAddress, '--save', '', '--appendonly', 'no', '--protected-mode', 'no', '--dir', dir, '--daemonize', 'no'], { stdio: ['ignore', 'pipe', 'pipe'] }),
        'redis-server',
      );
      await redis.until('redis to be ready', () => redis.lines.some((l) => l.includes('Ready to accept connections')), 20_000);
    });

    afterAll(async () => {
      await redis?.stop('SIGTERM');
    });

    it('redis-cli, one command per turn: the c2s file is the RESP the client sent, each turn starts at a command, s2c holds the replies', async () => {
      const out = join(dir, 'redis-cli-capture');
      const run = KstreamsRun.start(streamPath('redis-cli-capture', port, { path: out, responses: true }), app);
      await run.attached();
      // A script on stdin: redis-cli sends a command, waits for its reply, then the next.
      const script = join(dir, 'commands.txt');
      writeFileSync(script, 'SET k1 hello\nAPPEND k1 world\nGET k1\nDEL k1\n');
      const r = await runIn(client, 'sh', ['-c', `redis-cli -h ${appAddress} -p ${port} < ${script}`]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout.split('\n')).toEqual(['OK', '10', 'helloworld', '1']);
      const { code } = await run.interrupt();
      expect(code).toBe(0);

      const cap = await readOnlySession(out);
      expect(cap.conns).toHaveLength(1);
      const c = cap.conns[0]!;
      expect(c.end).toMatchObject({ how: 'fin' });
      const resp = (...args: string[]) => `*${args.length}\r\n${args.map((x) => `$${Buffer.byteLength(x)}\r\n${x}\r\n`).join('')}`;
      const commands = [resp('SET', 'k1', 'hello'), resp('APPEND', 'k1', 'world'), resp('GET', 'k1'), resp('DEL', 'k1')];
      const c2s = readFileSync(c.c2sPath).toString('latin1');
      const s2c = readFileSync(c.s2cPath!).toString('latin1');
      // redis-cli may ask something first (its own handshake); the script's commands are the last turns.
      expect(c2s.endsWith(commands.join(''))).toBe(true);
      const ours = c.turns.slice(-4);
      expect(ours.map((t) => c2s.slice(t.c2s, t.c2s + commands[0]!.length).startsWith('*'))).toEqual([true, true, true, true]);
      let at = c2s.length - commands.join('').length;
      for (const [i, t] of ours.entries()) {
        expect(t.c2s).toBe(at);
        at += commands[i]!.length;
      }
      expect(s2c.endsWith('+OK\r\n:10\r\n$10\r\nhelloworld\r\n:1\r\n')).toBe(true);
      expect(s2c.slice(ours[1]!.s2c, ours[2]!.s2c)).toBe(':10\r\n');
    });

    it('kstreams record behind a mirror: redis-cli sessions recorded (writer recorder), then kstreams replay rebuilds the dataset on another redis', async () => {
      const staging = Netns.create('capp-stg');
      const stagingAddress = link(app, staging).bAddress;
      const out = join(dir, 'recorder');
      const [cmd, ...cli] = cliCommand();
      const recorder = new Proc(staging.spawn(cmd!, [...cli, 'record', '--listen', `${stagingAddress}:9100`, '--dir', out], { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] }), 'kstreams record');
      await recorder.until('the recorder to listen', () => recorder.stderr.includes('kstreams: recording connections to'), 20_000);
      const sp = join(dir, 'to-recorder.yaml');
      writeFileSync(sp, ['apiVersion: kstreams.io/v1alpha1', 'kind: StreamPath', 'metadata:', '  name: to-recorder', 'spec:', '  selector: {}', `  port: ${port}`, '  mirror:', '    turnTimeoutMs: 0', '    targets:', `      - address: ${stagingAddress}:9100`, ''].join('\n'));
      const run = KstreamsRun.start(sp, app);
      await run.attached();
      const script = join(dir, 'session.txt');
      writeFileSync(script, 'SET visits 10\nINCRBY visits 5\nRPUSH log a b c\nHSET user:1 name ada\n');
      for (let i = 0; i < 3; i++) {
        const r = await runIn(client, 'sh', ['-c', `redis-cli -h ${appAddress} -p ${port} < ${script}`]);
        expect(r.code, r.stderr).toBe(0);
      }
      const { code, summary } = await run.interrupt();
      expect(code).toBe(0);
      const s = summary as unknown as CaptureSummary;
      expect(s.targets[0]).toMatchObject({ connectionsMirrored: 3, connectionsCut: 0, bytesDropped: 0 });
      recorder.child.kill('SIGINT');
      const ended = await recorder.exited;
      expect(ended.code).toBe(0);
      const rec = JSON.parse(recorder.lines.find((l) => l.includes('"type":"record"'))!) as { connectionsRecorded: number; bytesRecorded: number; session: string };
      expect(rec).toMatchObject({ connectionsRecorded: 3, bytesRecorded: s.bytesPrimary });

      const cap = await readOnlySession(out);
      expect(cap.session).toMatchObject({ writer: 'recorder', responses: false });
      expect(cap.path).toBe(rec.session);
      expect(cap.conns.map((c) => c.end?.how)).toEqual(['fin', 'fin', 'fin']);
      expect(cap.conns.reduce((n, c) => n + c.c2sBytes, 0)).toBe(s.bytesPrimary);

      // The capture replayed against a fresh redis: the same commands, the same data.
      const fresh = new Proc(staging.spawn('redis-server', ['--port', '6391', '--bind', stagingAddress, '--save', '', '--appendonly', 'no', '--protected-mode', 'no', '--dir', dir, '--daemonize', 'no'], { stdio: ['ignore', 'pipe', 'pipe'] }), 'redis-server fresh');
      await fresh.until('the fresh redis', () => fresh.lines.some((l) => l.includes('Ready to accept connections')), 20_000);
      const replay = await runIn(staging, cmd!, [...cli, 'replay', out, '--to', `${stagingAddress}:6391`, '--speed', 'max', '--concurrency', '1']);
      expect(replay.code, replay.stderr).toBe(0);
      const get = async (...args: string[]) => (await runIn(staging, 'redis-cli', ['-h', stagingAddress, '-p', '6391', ...args])).stdout.trim();
      const prod = async (...args: string[]) => (await runIn(app, 'redis-cli', ['-h', appAddress, '-p', String(port), ...args])).stdout.trim();
      expect(await get('GET', 'visits')).toBe('15');
      expect(await get('LRANGE', 'log', '0', '-1')).toBe(await prod('LRANGE', 'log', '0', '-1'));
      expect(await get('HGET', 'user:1', 'name')).toBe('ada');
      await fresh.stop('SIGTERM');
    });

    it('redis-benchmark, 10 connections: every connection recorded, every SET in the files, totals equal to the primary', async () => {
      const out = join(dir, 'redis-bench-capture');
      const run = KstreamsRun.start(streamPath('redis-bench-capture', port, { path: out, responses: true }), app);
      await run.attached();
      const r = await runIn(client, 'redis-benchmark', ['-h', appAddress, '-p', String(port), '-c', '10', '-n', '5000', '-t', 'set', '-q'], { timeoutMs: 90_000 });
      expect(r.code, r.stderr).toBe(0);
      const { code, summary } = await run.interrupt();
      expect(code).toBe(0);
      const s = summary as unknown as CaptureSummary;
      const cap = await readOnlySession(out);
      expect(cap.conns).toHaveLength(s.connections);
      let sets = 0;
      let oks = 0;
      for (const c of cap.conns) {
        expect(c.end?.how).toBe('fin');
        sets += readFileSync(c.c2sPath).toString('latin1').split('*3\r\n$3\r\nSET\r\n').length - 1;
        oks += readFileSync(c.s2cPath!).toString('latin1').split('+OK\r\n').length - 1;
      }
      expect(sets).toBe(5000);
      expect(oks).toBe(5000);
      const c2s = cap.conns.reduce((n, c) => n + c.c2sBytes, 0);
      expect(c2s).toBe(s.bytesPrimary);
      expect(s.targets[0]).toMatchObject({ connectionsMirrored: s.connections, connectionsCut: 0, bytesMirrored: c2s, bytesDropped: 0 });
      expect(s.captures?.['capture']?.responseBytes).toBe(cap.conns.reduce((n, c) => n + c.s2cBytes, 0));
    });
  });
});
