// The chart's optional recorder (recorder.enabled), rendered by the real helm binary: a Service that
// reaches the StatefulSet's pods on their record port, one PersistentVolumeClaim per pod mounted where the
// capture is written, the restricted securityContext, and a command line that the real `kstreams record`
// runs: started with the rendered arguments in a network namespace, it records a connection and stops
// cleanly on SIGTERM. Bad values are refused by values.schema.json.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { cleanupAll, Netns } from '../../sidecar/src/netns.js';
import { readCapture } from '../../sidecar/src/capture/reader.js';
import { cliCommand, Proc, repoRoot, runIn } from '../../test/protocols/fixtures/harness.js';
import { CHART_DIR, findObject, helmBinary, renderChart, run, type K8sObject } from './testing/helm.js';

type Obj = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

const work = mkdtempSync(join(tmpdir(), 'kstreams-recorder-chart-'));
const helmEnv: NodeJS.ProcessEnv = {
  ...process.env,
  HELM_CACHE_HOME: join(work, 'cache'),
  HELM_CONFIG_HOME: join(work, 'config'),
  HELM_DATA_HOME: join(work, 'data'),
};
afterAll(async () => {
  await Proc.killAll();
  await cleanupAll();
  rmSync(work, { recursive: true, force: true });
});

const render = (values: Record<string, unknown> = {}) => renderChart(values, { namespace: 'rec', env: helmEnv });
const recorderObjects = (objects: K8sObject[]) => objects.filter((o) => o.metadata.name.endsWith('-recorder'));

describe('the chart recorder', () => {
  it('renders nothing by default', async () => {
    expect(recorderObjects(await render())).toEqual([]);
  });

  it('recorder.enabled: a Service onto the StatefulSet pods record port, a claim per pod mounted at the capture directory, restricted', async () => {
    const objects = await render({ 'recorder.enabled': true, 'recorder.port': 9100, 'recorder.replicas': 2, 'recorder.persistence': { size: '50Gi', storageClassName: 'fast', accessModes: ['ReadWriteOnce'] } });
    const svc = findObject(objects, 'Service', 'kstreams-recorder') as Obj;
    const sts = findObject(objects, 'StatefulSet', 'kstreams-recorder') as Obj;
    const pod = sts.spec.template;
    expect(Object.entries(svc.spec.selector).every(([k, v]) => pod.metadata.labels[k] === v)).toBe(true);
    expect(Object.entries(sts.spec.selector.matchLabels).every(([k, v]) => pod.metadata.labels[k] === v)).toBe(true);
    // The operator's Services must not select the recorder pods, nor the recorder's the operator's.
    const deployment = findObject(objects, 'Deployment') as Obj;
    expect(Object.entries(svc.spec.selector).every(([k, v]) => deployment.spec.template.metadata.labels[k] === v)).toBe(false);
    const c = pod.spec.containers[0];
    expect(svc.spec.ports).toEqual([{ name: 'record', port: 9100, targetPort: 'record', protocol: 'TCP' }]);
    expect(c.ports).toEqual([{ name: 'record', containerPort: 9100, protocol: 'TCP' }]);
    expect(sts.spec.replicas).toBe(2);
    const claim = sts.spec.volumeClaimTemplates[0];
    expect(claim.spec).toEqual({ accessModes: ['ReadWriteOnce'], storageClassName: 'fast', resources: { requests: { storage: '50Gi' } } });
    const dir = c.args[c.args.indexOf('--dir') + 1];
    expect(c.volumeMounts).toEqual([{ name: claim.metadata.name, mountPath: dir }]);
    expect(c.securityContext).toMatchObject({ allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } });
    expect(pod.spec.securityContext).toMatchObject({ runAsNonRoot: true, fsGroup: 65532 });
    expect(c.readinessProbe).toBeUndefined(); // a TCP probe would be a recorded connection
    expect(pod.spec.terminationGracePeriodSeconds).toBe(10);
  });

  it('runs: the rendered command line is one the real kstreams record takes, records a connection, ends cleanly on SIGTERM', async () => {
    const objects = await render({ 'recorder.enabled': true, 'recorder.maxConnectionBytes': '1Mi', 'recorder.turnGapMs': 20 });
    const c = (findObject(objects, 'StatefulSet', 'kstreams-recorder') as Obj).spec.template.spec.containers[0];
    expect(c.command).toEqual(['node', '/opt/kstreams/dist/sidecar/src/cli/main.js']);
    // The image's CLI is this tree's; the volume is a temporary directory here.
    const args: string[] = [...c.args];
    const dir = join(work, 'capture');
    args[args.indexOf('--dir') + 1] = dir;
    expect(args).toEqual(['record', '--listen', ':9000', '--dir', dir, '--max-bytes', '8Gi', '--max-connection-bytes', '1Mi', '--turn-gap', '20', '--drain-timeout', '5']);
    const ns = Netns.create('rec-chart');
    const [cmd, ...cli] = cliCommand();
    const recorder = new Proc(ns.spawn(cmd!, [...cli, ...args], { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] }), 'kstreams record');
    await recorder.until('the recorder to listen', () => recorder.stderr.includes('kstreams: recording connections to [::]:9000'), 20_000);
    const sent = await runIn(ns, 'sh', ['-c', 'printf "hello recorder" | socat -t 1 - TCP:127.0.0.1:9000']);
    expect(sent.code, sent.stderr).toBe(0);
    recorder.child.kill('SIGTERM');
    expect((await recorder.exited).code).toBe(0);
    const summary = JSON.parse(recorder.lines.find((l) => l.includes('"type":"record"'))!) as Obj;
    expect(summary).toMatchObject({ connections: 1, connectionsRecorded: 1, bytesRecorded: 14 });
    const cap = await readCapture(dir);
    expect(cap.sessions[0]!.meta).toMatchObject({ writer: 'recorder', maxBytes: 8 * 1024 ** 3, maxConnectionBytes: 1024 ** 2 });
    expect(cap.connections.map((x) => x.end.c2s)).toEqual([14]);
  });

  it('refuses bad recorder values, naming them', async () => {
    const bad: [Record<string, unknown>, RegExp][] = [
      [{ 'recorder.maxBytes': '10GB' }, /recorder\/maxBytes/],
      [{ 'recorder.port': 0 }, /recorder\/port/],
      [{ 'recorder.persistence.size': 'big' }, /recorder\/persistence\/size/],
      [{ 'recorder.persistence.accessModes': [] }, /recorder\/persistence\/accessModes/],
      [{ 'recorder.retention': '7d' }, /retention/],
    ];
    for (const [values, mentions] of bad) {
      const args = ['template', 'kstreams', CHART_DIR];
      for (const [k, v] of Object.entries(values)) args.push('--set-json', `${k}=${JSON.stringify(v)}`);
      const r = await run(helmBinary(), args, helmEnv);
      expect(r.code, JSON.stringify(values)).not.toBe(0);
      expect(r.stderr).toMatch(mentions);
    }
  });
});
