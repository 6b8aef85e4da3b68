// The floor under bench/operator/feed-memory.ts: native memory of N idle Node TLS connections (`tls`) or TLS +
// HTTP/2 sessions with one open stream (`h2`) on a server process, nothing of the operator's. OPTS: JSON server
// options (HTTP/2 settings, maxSessionMemory, ...).   N=2000 npx tsx bench/operator/tls-h2-memory.ts tls|h2
import { fork } from 'node:child_process';
import * as tls from 'node:tls';
import * as http2 from 'node:http2';
import { createCA, issueServingCert } from '../../operator/src/webhook/certs.js';
const mode = process.argv[2]!;
if (process.argv[3] === '--server') {
  const t = JSON.parse(process.env.T!);
  const socks: unknown[] = [];
  const opts = { key: t.keyPem, cert: t.certPem, ...(process.env.OPTS ? JSON.parse(process.env.OPTS) : {}) };
  const srv: any = mode === 'tls' ? tls.createServer(opts, (s) => { socks.push(s); s.write('hi\n'); }) : http2.createSecureServer({ ...opts, allowHTTP1: false });
  if (mode === 'h2') srv.on('stream', (st: any) => { st.respond({ ':status': 200 }); st.write('hi\n'); socks.push(st); });
  srv.listen(0, '127.0.0.1', () => process.send!({ port: srv.address().port }));
  process.on('message', () => { (global as any).gc(); const m = process.memoryUsage(); process.send!({ n: socks.length, rss: m.rss / 2 ** 20, heap: m.heapUsed / 2 ** 20 }); });
} else {
  const ca = await createCA({ commonName: 'x', nowMs: Date.now(), validitySeconds: 86400 });
  const s = await issueServingCert({ ca, sans: ['127.0.0.1'], nowMs: Date.now(), validitySeconds: 86400 });
  const child = fork(process.argv[1]!, [mode, '--server'], { execArgv: ['--import', 'tsx', '--expose-gc'], env: { ...process.env, T: JSON.stringify(s) } });
  const port: number = await new Promise((r) => child.once('message', (m: any) => r(m.port)));
  const mem = () => new Promise<any>((r) => { child.once('message', r); child.send('m'); });
  const base = await mem();
  const N = Number(process.env.N ?? 2000);
  const ctx = tls.createSecureContext({ ca: ca.certPem });
  for (let i = 0; i < N; i++) {
    if (mode === 'tls') tls.connect({ port, host: '127.0.0.1', secureContext: ctx, servername: 'x', checkServerIdentity: () => undefined }).on('error', () => {});
    else { const c = http2.connect(`https://127.0.0.1:${port}`, { secureContext: ctx, checkServerIdentity: () => undefined } as any); c.on('error', () => {}); c.request({ ':method': 'POST', ':path': '/' }, { endStream: false }).on('error', () => {}); }
    if (i % 100 === 99) await new Promise((r) => setTimeout(r, 200));
  }
  await new Promise((r) => setTimeout(r, 5000));
  const end = await mem();
  console.log(mode, process.env.OPTS ?? '', `n=${end.n}`, `rss ${base.rss.toFixed(0)} -> ${end.rss.toFixed(0)} MiB`, `${(((end.rss - base.rss) * 1024) / end.n).toFixed(1)} KiB/conn`, `heap ${(((end.heap - base.heap) * 1024) / end.n).toFixed(1)} KiB/conn`);
  child.kill(); process.exit(0);
}
