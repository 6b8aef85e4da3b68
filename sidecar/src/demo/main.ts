// `npm run demo`: KStreams end to end on this machine, no cluster. Three network namespaces play client,
// app pod and staging; the real `kstreams run` mirrors the app's port 8080 to staging while curl drives
// requests; the demo then shows that staging saw the same requests and that detaching leaves the app
// reachable directly. Exits 0 only if every check held; cleans up on success, failure and Ctrl-C.
import { readFileSync } from 'node:fs';
import { formatBytes } from '../cli/live.js';
import { CliRun, startScene, waitFor, type Scene, type Summary } from './scenario.js';

const REQUESTS = 50;
const PORT = 8080;

const out = (s = '') => process.stdout.write(`${s}\n`);
const section = (title: string) => out(`\n== ${title} ==`);
const indent = (text: string) => text.trimEnd().split('\n').map((l) => `    ${l}`).join('\n');

function countersLine(c: Pick<Summary, 'connections' | 'bytesPrimary' | 'bytesMirrored' | 'bytesDropped'>): string {
  return `connections ${c.connections}  primary ${formatBytes(c.bytesPrimary)}  mirrored ${formatBytes(c.bytesMirrored)}  dropped ${formatBytes(c.bytesDropped)}`;
}

let scene: Scene | undefined;
let cli: CliRun | undefined;
let cleaning: Promise<void> | undefined;

function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    if (cli?.running) await cli.interrupt(5_000).catch(() => cli?.kill());
    await CliRun.killAll();
    await scene?.destroy();
  })();
  return cleaning;
}

async function demo(): Promise<string[]> {
  const failures: string[] = [];
  const check = (ok: boolean, what: string) => {
    out(`  ${ok ? 'ok  ' : 'FAIL'} ${what}`);
    if (!ok) failures.push(what);
  };

  section('1. Scene: three network namespaces, linked by veth pairs');
  scene = await startScene(PORT);
  const s = scene;
  out(`  client   ${s.client.name}`);
  out(`  app      ${s.app.name}  HTTP server on ${s.appAddress}:${PORT}`);
  out(`  staging  ${s.staging.name}  HTTP server on ${s.stagingAddress}:${PORT} (reached from the app namespace)`);

  section('2. Before kstreams: the client reaches the app directly');
  await waitFor('the app to answer', () => s.curl('/healthz').then((c) => c === 200, () => false), 15_000).catch(() => undefined);
  const direct = await s.curl('/healthz');
  check(direct === 200, `GET /healthz from the client answered ${direct}`);
  const directRequests = s.appServer.requests().length;

  section('3. The StreamPath: the embedded default, mirror target = staging');
  const file = s.writeStreamPath('demo-shadow');
  out(indent(readFileSync(file, 'utf8')));

  section(`4. kstreams run -f ${file} --netns ${s.app.name} --json-interval 0.25`);
  cli = CliRun.start(file, s.app.name, ['--json-interval', '0.25']);
  await cli.attached();
  out(indent(cli.stderr));

  section(`5. Traffic: ${REQUESTS} requests from the client (every 5th a POST with a body), live counters`);
  const statuses: number[] = [];
  // kstreams prints its counters 4 times a second (--json-interval 0.25); show them every 10 requests.
  const showLive = async (label: string) => {
    const run = cli!;
    const seen = run.stdoutLines.length;
    await waitFor('a fresh counters line from kstreams', () => run.stdoutLines.length > seen, 5_000).catch(() => undefined);
    const c = run.lastCounters();
    if (c) out(`  [live] ${label.padEnd(14)} ${countersLine(c)}`);
  };
  for (let i = 1; i <= REQUESTS; i++) {
    const post = i % 5 === 0;
    statuses.push(
      await s.curl(`/orders/${i}`, {
        header: `X-Demo-Request: ${i}`,
        ...(post ? { body: JSON.stringify({ order: i, items: ['book', 'lamp'], note: 'x'.repeat(200) }) } : {}),
      }),
    );
    if (i % 10 === 0) await showLive(`${i} requests`);
  }
  // Mirroring is asynchronous to the primary: wait until staging logged every request and closed every
  // connection (it counts bytes on close), with a deadline.
  await waitFor('staging to see every mirrored request', () => s.stagingServer.closedConnections().length >= REQUESTS, 20_000).catch(
    () => undefined,
  );
  await showLive('settled');
  check(statuses.every((c) => c === 200), `all ${REQUESTS} requests answered 200 by the app`);

  section('6. Staging saw the same requests as the app');
  const appLines = s.appServer.requests().slice(directRequests).map((e) => e.requestLine!);
  const stagingLines = s.stagingServer.requests().map((e) => e.requestLine!);
  out(`  app      ${appLines.length} requests, e.g. ${appLines.slice(0, 3).join(' | ')}`);
  out(`  staging  ${stagingLines.length} requests, e.g. ${stagingLines.slice(0, 3).join(' | ')}`);
  const sorted = (l: string[]) => [...l].sort().join('\n');
  check(appLines.length === REQUESTS, `the app got ${REQUESTS} requests through kstreams`);
  check(sorted(appLines) === sorted(stagingLines), 'staging got exactly the same request lines');
  const appBytes = s.appServer.closedConnections().slice(-REQUESTS).reduce((a, e) => a + (e.bytesRead ?? 0), 0);
  const stagingBytes = s.stagingServer.bytesReceived();
  out(`  bytes received: app ${appBytes}, staging ${stagingBytes}`);
  check(appBytes === stagingBytes, 'staging received as many bytes as the app');

  section('7. SIGINT to kstreams: it detaches and prints its summary');
  const { code, summary } = await cli.interrupt();
  if (summary) out(indent(JSON.stringify(summary, null, 2)));
  else out(indent(`(no summary; stderr: ${cli.stderr.trim()})`));
  check(code === 0, `kstreams exited ${code}`);
  check(summary?.connections === REQUESTS, `summary counts ${summary?.connections} connections (expected ${REQUESTS})`);
  check(summary?.bytesPrimary === appBytes, `summary bytesPrimary ${summary?.bytesPrimary} = bytes the app received ${appBytes}`);
  check(summary?.bytesMirrored === stagingBytes, `summary bytesMirrored ${summary?.bytesMirrored} = bytes staging received ${stagingBytes}`);
  check(summary?.bytesDropped === 0, `summary bytesDropped ${summary?.bytesDropped} = 0`);

  section('8. After detach: the client reaches the app directly again');
  const stagingBefore = s.stagingServer.requests().length;
  const after = await s.curl('/after-detach');
  check(after === 200, `GET /after-detach answered ${after}`);
  const last = s.appServer.requests().at(-1);
  check(last?.requestLine === 'GET /after-detach HTTP/1.1', 'the app logged it');
  check(last?.remote?.startsWith(`${s.clientAddress}:`) === true, `from the client's own address (${last?.remote}), not through kstreams`);
  check(s.stagingServer.requests().length === stagingBefore, 'staging did not get it');
  return failures;
}

async function main(): Promise<number> {
  if (process.getuid?.() !== 0) {
    process.stderr.write('kstreams demo: needs root (it creates network namespaces and loads BPF); run it as root: sudo npm run demo\n');
    return 4;
  }
  const stop = (signal: NodeJS.Signals) => {
    process.stderr.write(`\nkstreams demo: ${signal}, cleaning up\n`);
    void cleanup().finally(() => process.exit(130));
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);

  out('KStreams demo: mirror an app\'s inbound TCP port to staging, in the kernel, with the kstreams CLI');
  let failures: string[];
  try {
    failures = await demo();
  } catch (err) {
    failures = [(err as Error).message];
    out(`\n  error: ${(err as Error).message}`);
    if (cli) out(indent(`kstreams stderr: ${cli.stderr.trim()}`));
  } finally {
    await cleanup();
  }
  section('Result');
  if (failures.length === 0) {
    out('  OK: staging saw the same requests as the app; kstreams detached; nothing left behind');
    return 0;
  }
  out(`  FAILED: ${failures.join('; ')}`);
  return 1;
}

process.exitCode = await main();
