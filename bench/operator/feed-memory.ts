// What an idle agent stream costs the operator in memory, without an apiserver: the operator's feed server
// (operator/src/feed/server.ts, with the settings given) in its own process, with a backend that accepts every
// token and keeps per stream what the hub keeps (identity, last report and its fingerprint), and N real feed
// clients in generator processes (bench/operator/feed-agents.ts). The server's RSS, heap and external memory
// are read at 0 streams and after every step, once the streams are idle and after a GC.
//   npx tsx bench/operator/feed-memory.ts --agents 4000 --steps 4 [--generators 4] [--transport native|node]
//     [--tls-records on|off]   (native: TLS 1.3 records sealed by the feed itself, or an SSL object per stream)
import { fork, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { createCA, issueServingCert } from '../../operator/src/webhook/certs.js';
import type { StartMessage, Stats } from './feed-agents.js';
import { encodeFrame } from '../../api/src/feed.js';

const REPO = join(dirname(fileURLToPath(import.meta.url)), '../..');
const arg = (name: string, def: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1]! : def;
};

interface Mem {
  streams: number;
  rssMiB: number;
  heapUsedMiB: number;
  externalMiB: number;
  arrayBuffersMiB: number;
}

async function serverChild(): Promise<void> {
  const { startFeedServer } = await import('../../operator/src/feed/server.js');
  const { stableStringify } = await import('../../operator/src/controller/status.js');
  const tls = JSON.parse(process.env.FEED_MEMORY_TLS!) as { keyPem: string; certPem: string };
  const state = new Map<number, { report?: unknown; fingerprint?: string }>();
  let n = 0;
  const running = await startFeedServer({
    host: '127.0.0.1',
    port: 0,
    tls,
    log: pino({ level: 'silent' }),
    idleTimeoutMs: 45_000,
    transport: (process.env.FEED_MEMORY_TRANSPORT ?? 'auto') as 'native' | 'node' | 'auto',
    tlsRecords: process.env.FEED_MEMORY_TLS_RECORDS !== 'off',
    backend: {
      leaderAddress: () => undefined,
      authenticate: async () => ({ namespace: 'bench', serviceAccount: 'default', pod: `p${n}`, podUid: `u${n++}` }),
      attach: (id, conn) => {
        const key = Number(id.podUid.slice(1));
        state.set(key, {});
        setImmediate(() => conn.send(encodeFrame({ type: 'config', version: 1, pod: { labels: { app: `a${key % 100}` } }, streamPaths: [], services: {}, programs: {} })));
        return {
          frame: (f) => state.set(key, { report: f.report, fingerprint: stableStringify(f.report) }),
          closed: () => state.delete(key),
        };
      },
    },
  });
  const mem = (): Mem => {
    (globalThis as { gc?: () => void }).gc?.();
    const m = process.memoryUsage();
    const MiB = 2 ** 20;
    return { streams: state.size, rssMiB: m.rss / MiB, heapUsedMiB: m.heapUsed / MiB, externalMiB: m.external / MiB, arrayBuffersMiB: m.arrayBuffers / MiB };
  };
  process.on('message', (m: { type: string }) => {
    if (m.type === 'mem') process.send?.({ type: 'mem', ...mem() });
  });
  process.send?.({ type: 'ready', port: running.port, transport: running.transport });
}

function once<T>(child: ChildProcess, type: string): Promise<T> {
  return new Promise((resolve) => {
    const on = (m: { type: string }) => {
      if (m.type !== type) return;
      child.off('message', on);
      resolve(m as T);
    };
    child.on('message', on);
  });
}

async function main(): Promise<void> {
  const agents = Number(arg('agents', '2000'));
  const steps = Number(arg('steps', '4'));
  const generators = Number(arg('generators', '4'));
  const transport = arg('transport', 'auto');
  const tlsRecords = arg('tls-records', 'on');
  const now = Date.now();
  const ca = await createCA({ commonName: 'bench-ca', nowMs: now, validitySeconds: 86400 });
  const serving = await issueServingCert({ ca, sans: ['feed.bench.svc', '127.0.0.1'], nowMs: now, validitySeconds: 86400 });
  const server = fork(fileURLToPath(import.meta.url), ['--server'], {
    execArgv: ['--import', 'tsx', '--expose-gc'],
    env: { ...process.env, FEED_MEMORY_TLS: JSON.stringify(serving), FEED_MEMORY_TRANSPORT: transport, FEED_MEMORY_TLS_RECORDS: tlsRecords },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const { port, transport: servedBy } = await once<{ port: number; transport: string }>(server, 'ready');
  const memOf = async () => {
    server.send({ type: 'mem' });
    return once<Mem>(server, 'mem');
  };
  const dir = mkdtempSync(join(tmpdir(), 'kstreams-feed-memory-'));
  const tokenFile = join(dir, 'token');
  writeFileSync(tokenFile, 'h.e30.s');
  await new Promise((r) => setTimeout(r, 2000));
  const rows: Mem[] = [await memOf()];
  const gens: ChildProcess[] = [];
  for (let g = 0; g < generators; g++) {
    const child = fork(join(REPO, 'bench/operator/feed-agents.ts'), [], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    await once(child, 'ready');
    gens.push(child);
  }
  const perStep = Math.ceil(agents / steps);
  let q = 0;
  const connected = async () => {
    let sum = 0;
    for (const g of gens) {
      const id = ++q;
      g.send({ type: 'query', id, streamPath: '-', generation: 0, since: 0 });
      sum += (await once<Stats & { id: number }>(g, 'stats')).configured;
    }
    return sum;
  };
  let started = 0;
  for (let step = 1; step <= steps; step++) {
    const count = Math.min(perStep, agents - started);
    for (let g = 0; g < generators; g++) {
      const share = Math.floor(count / generators) + (g < count % generators ? 1 : 0);
      const m: StartMessage = {
        type: 'start',
        agents: Array.from({ length: share }, (_, i) => ({ namespace: 'bench', pod: `s${step}g${g}i${i}`, tokenFile })),
        address: `127.0.0.1:${port}`,
        caPem: ca.certPem,
        serverName: 'feed.bench.svc',
        counterMs: 3_600_000,
        startPerSecond: 400 / generators,
      };
      gens[g]!.send(m);
    }
    started += count;
    const t0 = Date.now();
    while ((await connected()) < started && Date.now() - t0 < 300_000) await new Promise((r) => setTimeout(r, 1000));
    // Idle: every stream has sent its first report and its keepalive is far off.
    await new Promise((r) => setTimeout(r, 5000));
    const m = await memOf();
    rows.push(m);
    console.log(JSON.stringify(m));
  }
  const first = rows[0]!;
  const last = rows.at(-1)!;
  const per = (k: keyof Mem) => (((last[k] - first[k]) * 1024) / Math.max(1, last.streams)).toFixed(1);
  console.log(
    `transport ${servedBy}${servedBy === 'native' ? `, TLS records ${tlsRecords === 'off' ? 'by OpenSSL' : 'by the feed'}` : ''}: ${last.streams} idle streams: RSS ${first.rssMiB.toFixed(0)} -> ${last.rssMiB.toFixed(0)} MiB = ${per('rssMiB')} KiB per stream (heap ${per('heapUsedMiB')}, external ${per('externalMiB')}, arrayBuffers ${per('arrayBuffersMiB')} KiB)`,
  );
  for (const g of gens) g.send({ type: 'stop' });
  server.kill('SIGTERM');
  setTimeout(() => process.exit(0), 3000).unref();
}

if (process.argv.includes('--server')) void serverChild();
else void main();
