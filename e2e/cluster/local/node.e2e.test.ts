// The local one-node cluster (e2e/cluster/local/e2e-setup.ts) runs real pods: scheduling, pod network,
// logs/exec through the kubelet, ServiceAccount tokens, and the apiserver from inside a pod.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import { CoreV1Api, Exec, KubeConfig } from '@kubernetes/client-node';
import { Writable } from 'node:stream';
import { describe, expect, inject, it } from 'vitest';

const execFileP = promisify(execFile);

describe.skipIf(inject('clusterProvider') !== 'local')('local node', () => {
  const kc = new KubeConfig();
  kc.loadFromFile(inject('kubeconfig'));
  const core = kc.makeApiClient(CoreV1Api);

  async function waitRunning(ns: string, name: string, timeoutMs = 60_000) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const pod = await core.readNamespacedPod({ name, namespace: ns });
      if (pod.status?.phase === 'Running' && pod.status.conditions?.some((c) => c.type === 'Ready' && c.status === 'True')) return pod;
      if (Date.now() > deadline) throw new Error(`pod ${ns}/${name} not running: ${JSON.stringify(pod.status)}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  async function exec(ns: string, pod: string, command: string[]): Promise<string> {
    let out = '';
    const sink = new Writable({
      write(chunk: Buffer, _enc, cb) {
        out += chunk.toString();
        cb();
      },
    });
    await new Promise<void>((resolve, reject) => {
      new Exec(kc)
        .exec(ns, pod, 'main', command, sink, sink, null, false, (status) => {
          if (status.status === 'Success') resolve();
          else reject(new Error(`exec failed: ${JSON.stringify(status)} ${out}`));
        })
        .catch(reject);
    });
    return out;
  }

  it('runs a busybox httpd pod reachable on its pod IP, with logs, exec and the API from inside', async () => {
    const ns = `node-${randomBytes(3).toString('hex')}`;
    await core.createNamespace({ body: { metadata: { name: ns } } });
    try {
      // Pod creation fails ("No API token found for service account default") until the controller-manager
      // has made the namespace's ServiceAccount and its token Secret (Kubernetes 1.20).
      const deadline = Date.now() + 30_000;
      for (;;) {
        const sa = await core.readNamespacedServiceAccount({ name: 'default', namespace: ns }).catch(() => undefined);
        if ((sa?.secrets?.length ?? 0) > 0) break;
        if (Date.now() > deadline) throw new Error(`no token Secret for ServiceAccount ${ns}/default`);
        await new Promise((r) => setTimeout(r, 100));
      }
      await core.createNamespacedPod({
        namespace: ns,
        body: {
          metadata: { name: 'web', labels: { app: 'web' } },
          spec: {
            terminationGracePeriodSeconds: 0,
            containers: [
              {
                name: 'main',
                image: inject('busyboxImage'),
                imagePullPolicy: 'Never',
                command: ['sh', '-c', 'mkdir -p /www && echo hello-from-pod > /www/index.html && echo started && exec httpd -f -p 8080 -h /www'],
                readinessProbe: { tcpSocket: { port: 8080 }, periodSeconds: 1 },
              },
            ],
          },
        },
      });
      const pod = await waitRunning(ns, 'web');
      const ip = pod.status?.podIP ?? '';
      expect(ip).toMatch(/^10\.244\.77\./);

      const { stdout } = await execFileP('wget', ['-qO-', '-T', '5', `http://${ip}:8080/`]);
      expect(stdout.trim()).toBe('hello-from-pod');

      const logs = await core.readNamespacedPodLog({ name: 'web', namespace: ns });
      expect(logs).toContain('started');

      // No default route: the pod can reach its subnet and the Service CIDR (the apiserver) only.
      const routes = await exec(ns, 'web', ['ip', 'route']);
      expect(routes).not.toMatch(/^default/m);
      const api = await exec(ns, 'web', [
        'sh', '-c',
        'test -s /var/run/secrets/kubernetes.io/serviceaccount/token && nc -w 3 "$KUBERNETES_SERVICE_HOST" "$KUBERNETES_SERVICE_PORT" </dev/null && echo api-open',
      ]);
      expect(api).toContain('api-open');
    } finally {
      await core.deleteNamespace({ name: ns });
    }
  });
});
