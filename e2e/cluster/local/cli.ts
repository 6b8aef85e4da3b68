// Runs the local control plane in the foreground, for humans and for the crash test:
//
//   npx tsx e2e/cluster/local/cli.ts [--controllers] [--scheduler]
//
// Prints one JSON line ({kubeconfigPath, server, dir, pids, timings}) on stdout once ready, then waits;
// SIGINT/SIGTERM stop everything and remove the temp dir.
import { startControlPlane } from './controlplane.js';

const args = new Set(process.argv.slice(2));
const cp = await startControlPlane({
  controllerManager: args.has('--controllers'),
  scheduler: args.has('--scheduler'),
  log: (m) => console.error(`[controlplane] ${m}`),
});
process.stdout.write(
  `${JSON.stringify({
    kubeconfigPath: cp.kubeconfigPath,
    server: cp.server,
    dir: cp.dir,
    pids: cp.processes.map((p) => ({ name: p.name, pid: p.pid })),
    timings: cp.timings,
  })}\n`,
);
console.error(`export KUBECONFIG=${cp.kubeconfigPath}   # Ctrl-C stops the control plane`);
let stopping = false;
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.on(sig, () => {
    if (stopping) return;
    stopping = true;
    cp.stop().then(
      () => process.exit(0),
      (e: unknown) => {
        console.error(e);
        process.exit(1);
      },
    );
  });
}
// Keep the event loop alive until a signal arrives.
setInterval(() => {}, 1 << 30);
