// By hand, not a test: bulk throughput of the engine (proxy, and proxy + one mirror) by pipe size, one
// connection over loopback in a private netns, runs interleaved so that machine noise spreads evenly.
//   npx tsx native/test/pipe-size-bench.ts [MB per run, default 512] [runs, default 3]
import { Netns, cleanupAll } from '../../sidecar/src/netns.js';
import { Engine } from '../lib/engine.js';
import { runClient, startServer, type ConnReport, type Peer } from './fixtures/engine-harness.js';

const MB = 1 << 20;
const total = Number(process.argv[2] ?? 512) * MB;
const runs = Number(process.argv[3] ?? 3);
const sizes = [64 * 1024, 256 * 1024, MB];
const ns = Netns.create('pipebench');
const peers: Peer[] = [];
type Row = { size: number; mirror: boolean; mbps: number[]; cut: number; cpu: number[]; mirrored: number[] };
const rows: Row[] = [];
try {
  const app = await startServer(ns, '127.0.0.1');
  const mir = await startServer(ns, '127.0.0.1');
  peers.push(app.peer, mir.peer);
  for (let run = 0; run < runs; run++) {
    for (const mirror of [false, true]) {
      for (const size of run % 2 ? [...sizes].reverse() : sizes) {
        const e = Engine.start({
          netnsPath: ns.path, listen: { host: '127.0.0.1', port: 0 }, upstream: { host: '127.0.0.1', port: app.port },
          mirrors: mirror ? [{ name: 'm', host: '127.0.0.1', port: mir.port, samplingPercent: 100 }] : [],
          pipeSize: size, mirrorConnectTimeoutMs: 3000, turnTimeoutMs: 1000, mirrorBufferSize: 4 << 20,
        });
        const cpu0 = process.cpuUsage();
        const appSeen = app.peer.lines.filter((l) => l.event === 'conn').length;
        const r = await runClient(ns, '127.0.0.1', e.listenAddress.port, ['--bytes', String(total)]);
        await app.peer.waitFor<ConnReport>('conn', appSeen + 1);
        const cpu = process.cpuUsage(cpu0);
        const s = e.stats();
        await e.stop();
        if (r.conns[0]!.error || s.bytesClientToApp !== total) throw new Error(`run failed: ${JSON.stringify(r.conns[0])}`);
        let row = rows.find((x) => x.size === size && x.mirror === mirror);
        if (!row) rows.push((row = { size, mirror, mbps: [], cut: 0, cpu: [], mirrored: [] }));
        row.mbps.push(total / MB / (r.ms / 1000));
        row.cut += s.targets[0]?.connectionsCut ?? 0;
        // How far the mirror got before a cut (an unpaced bulk outruns a hashing Node target on 2 cores).
        row.mirrored.push((s.targets[0]?.bytesMirrored ?? 0) / total);
        // This process runs the engine (and nothing else busy): its CPU seconds per GB are the engine's.
        row.cpu.push((cpu.user + cpu.system) / 1e6 / (total / 2 ** 30));
      }
    }
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  console.log(`${total / MB} MB per run, ${runs} runs each; MB/s median [min-max], engine CPU s/GB median, mirror cuts and share of the stream mirrored`);
  for (const r of rows)
    console.log(
      `${String(r.size / 1024).padStart(5)} KiB ${r.mirror ? 'proxy+mirror' : 'proxy       '}  ${median(r.mbps).toFixed(0).padStart(5)} [${Math.min(...r.mbps).toFixed(0)}-${Math.max(...r.mbps).toFixed(0)}]  ` +
        `cpu ${median(r.cpu).toFixed(2)}  cuts ${r.mirror ? `${r.cut}/${runs}, mirrored before the cut ${(100 * median(r.mirrored)).toFixed(0)}% [${(100 * Math.min(...r.mirrored)).toFixed(0)}-${(100 * Math.max(...r.mirrored)).toFixed(0)}]` : '-'}`,
    );
} finally {
  for (const p of peers) p.child.kill('SIGKILL');
  await cleanupAll();
}
