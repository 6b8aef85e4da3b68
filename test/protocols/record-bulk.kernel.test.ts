// `kstreams record` under bulk: a recorder has no primary to protect, so when its writer thread (the
// disk) falls behind it stops reading that socket until the writer drained, rather than cutting the
// connection. A client that sends a few hundred MiB as fast as loopback takes them finds every byte in
// the capture (sha256), the connection ended `fin`, nothing cut or dropped.
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readCapture } from '../../sidecar/src/capture/reader.js';
import { cleanupAll, Netns } from '../../sidecar/src/netns.js';
import { cliCommand, Proc, repoRoot } from './fixtures/harness.js';

const PORT = 46110;
let ns: Netns;
let dir: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'kstreams-record-bulk-'));
  ns = Netns.create('rec-bulk');
});

afterAll(async () => {
  await Proc.killAll();
  await cleanupAll();
  rmSync(dir, { recursive: true, force: true });
});

// Sends `mib` MiB of pseudo-random bytes (each MiB different) to host:port as fast as the socket takes
// them, then ends with FIN; prints the stream's sha256 and length.
const CLIENT = `
const net = require('node:net'); const crypto = require('node:crypto');
const [host, port, mib] = process.argv.slice(1); const block = crypto.randomBytes(1 << 20);
const hash = crypto.createHash('sha256'); let sent = 0; let i = 0;
const s = net.connect(Number(port), host, () => {
  const more = () => { while (i < Number(mib)) { const b = Buffer.from(block); b.writeUInt32BE(i++, 0); hash.update(b); sent += b.length; if (!s.write(b)) return s.once('drain', more); } s.end(); };
  more();
});
s.on('close', () => console.log(JSON.stringify({ sha256: hash.digest('hex'), bytes: sent })));
s.on('error', (e) => { console.error(e.message); process.exit(1); });
`;

async function sha256(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest('hex');
}

describe('kstreams record under bulk', () => {
  it('a 384 MiB stream sent as fast as loopback takes it is recorded byte-exact, not cut: the recorder holds the sender back while its writer catches up', async () => {
    const out = join(dir, 'capture');
    const [cmd, ...cli] = cliCommand();
    const recorder = new Proc(ns.spawn('taskset', ['-c', '0', cmd!, ...cli, 'record', '--listen', `127.0.0.1:${PORT}`, '--dir', out], { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] }), 'kstreams record');
    await recorder.until('the recorder to listen', () => recorder.stderr.includes('kstreams: recording connections to'), 20_000);
    // The writer starved, as on a loaded machine: the recorder runs on CPU 0 only, its writer thread at
    // SCHED_IDLE, and a busy loop holds CPU 0 for the first 2 s of the stream. The capture pipe (4 MiB)
    // fills in milliseconds; a recorder that cut would cut there.
    const writer = readdirSync(`/proc/${recorder.child.pid}/task`).find((t) => readFileSync(`/proc/${recorder.child.pid}/task/${t}/comm`, 'utf8').trim() === 'ks-capture');
    expect(writer, 'the capture writer thread (ks-capture)').toBeDefined();
    expect(spawnSync('chrt', ['--idle', '-p', '0', writer!]).status).toBe(0);
    const hog = new Proc(spawn('taskset', ['-c', '0', 'timeout', '2', 'sh', '-c', 'while :; do :; done'], { stdio: 'ignore' }), 'busy loop');
    const MIB = 384;
    const client = new Proc(ns.spawn('taskset', ['-c', cpus().length > 1 ? '1' : '0', process.execPath, '-e', CLIENT, '127.0.0.1', String(PORT), String(MIB)]), 'bulk client');
    const sent = await client.exited;
    await hog.exited;
    expect(sent.code, client.stderr).toBe(0);
    const want = JSON.parse(client.lines.at(-1)!) as { sha256: string; bytes: number };
    expect(want.bytes).toBe(MIB << 20);
    recorder.child.kill('SIGINT');
    expect((await recorder.exited).code, recorder.stderr).toBe(0);
    const summary = JSON.parse(recorder.lines.find((l) => l.includes('"type":"record"'))!) as Record<string, number>;
    expect(summary).toMatchObject({ connections: 1, connectionsRecorded: 1, bytesRecorded: want.bytes, bytesDropped: 0, cutsSlow: 0, cutsFull: 0, cutsDisk: 0 });
    // It did hold the client back (else the test proved nothing).
    expect(summary.holds).toBeGreaterThan(0);

    const cap = await readCapture(out);
    expect(cap.notes).toEqual([]);
    expect(cap.connections).toHaveLength(1);
    const c = cap.connections[0]!;
    expect(c.end).toMatchObject({ how: 'fin', c2s: want.bytes, recorded: true });
    expect(await sha256(c.c2sPath)).toBe(want.sha256);
    expect(readFileSync(c.idxPath, 'utf8')).not.toContain('"cut"');
  });
});
