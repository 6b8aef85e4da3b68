// Applies every invalid StreamPath of the shared table to a real kube-apiserver, the way users do
// (kubectl apply) and the way controllers do (a direct API create), and checks that each is rejected with
// a message naming the field; the rules the CRD cannot state (zodOnly rows) are accepted and stored, and
// the operator's parse of the stored object refuses them naming the field.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { ApiException, CoreV1Api, CustomObjectsApi, KubeConfig } from '@kubernetes/client-node';
import { beforeAll, describe, expect, inject, it } from 'vitest';
import YAML from 'yaml';
import { DEFAULT_BIN_DIR } from '../../e2e/cluster/local/controlplane.js';
import { INVALID_CASES, VALID_CASES, validSpec } from './invalid-streampaths.js';
import { API_VERSION, GROUP, KIND, PLURAL, VERSION, parseClusterSpec } from './streampath.js';

const crdFile = fileURLToPath(new URL('../../crds/streampath.yaml', import.meta.url));
const kubectlBin = `${process.env['KSTREAMS_K8S_BIN'] ?? DEFAULT_BIN_DIR}/kubectl`;
const namespace = `crd-validation-${process.pid}`;

function kubectl(args: string[], input?: string) {
  const r = spawnSync(kubectlBin, ['--kubeconfig', inject('kubeconfig'), ...args], { input, encoding: 'utf8' });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function manifest(name: string, spec: unknown): Record<string, unknown> {
  return { apiVersion: API_VERSION, kind: KIND, metadata: { name, namespace }, spec };
}

// Kubernetes 1.20 names list items without their index (spec.mirror.targets.address): accept both.
const withoutIndex = (r: RegExp) => new RegExp(r.source.replaceAll('\\[0\\]', '(\\[0\\])?'));

const slug = (s: string) => s.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '');

describe('the StreamPath CRD on a real apiserver', () => {
  let api: CustomObjectsApi;

  beforeAll(async () => {
    const kc = new KubeConfig();
    kc.loadFromFile(inject('kubeconfig'));
    api = kc.makeApiClient(CustomObjectsApi);
    await kc.makeApiClient(CoreV1Api).createNamespace({ body: { metadata: { name: namespace } } });
    // Other test files may have created the CRD already (kubectl then warns about the missing
    // last-applied annotation): only the outcome matters.
    const applied = kubectl(['apply', '-f', crdFile]);
    expect(applied.code, applied.stderr).toBe(0);
    const established = kubectl(['wait', '--for=condition=Established', '--timeout=60s', `crd/${PLURAL}.${GROUP}`]);
    expect(established.code, established.stderr).toBe(0);
    // kubectl validates against the OpenAPI document the apiserver republishes a moment after the CRD is
    // established; until then it leaves all checks to the server, which prunes unknown fields.
    const deadline = Date.now() + 60_000;
    while (kubectl(['explain', `${PLURAL}.spec.mirror.targets`]).code !== 0) {
      if (Date.now() > deadline) throw new Error('the StreamPath schema never appeared in the published OpenAPI');
      await new Promise((r) => setTimeout(r, 200));
    }
  });

  it('accepts a valid StreamPath through kubectl and fills in the defaults', () => {
    const r = kubectl(['apply', '-f', '-'], YAML.stringify(manifest('valid', validSpec())));
    expect(r.code, r.stderr).toBe(0);
    const got = kubectl(['get', 'sp', 'valid', '-n', namespace, '-o', 'json']);
    const spec = JSON.parse(got.stdout).spec;
    expect(spec.mirror.onOverflow).toBe('cut');
    expect(spec.mirror.pipeSize).toBe(256 * 1024);
    expect(spec.mirror.turnTimeoutMs).toBe(1000);
    expect(spec.mirror.bufferSize).toBe(4 * 1024 * 1024);
    expect(spec.drainTimeoutSeconds).toBe(20);
    const table = kubectl(['get', 'streampaths', '-n', namespace]);
    expect(table.stdout.split('\n')[0]).toMatch(/NAME\s+PORT\s+SELECTED\s+ATTACHED\s+CONNECTIONS\s+MIRRORED\s+DROPPED\s+READY\s+DEGRADED\s+AGE/);
  });

  it('shows the selected and attached pods and the reason of the Degraded condition in kubectl get sp', async () => {
    const name = 'columns';
    const r = kubectl(['apply', '-f', '-'], YAML.stringify(manifest(name, validSpec())));
    expect(r.code, r.stderr).toBe(0);
    const current = (await api.getNamespacedCustomObject({ group: GROUP, version: VERSION, namespace, plural: PLURAL, name })) as Record<string, unknown>;
    const now = new Date().toISOString();
    const status = {
      podsSelected: 3,
      podsAttached: 1,
      connections: 7,
      bytesMirrored: 4096,
      bytesDropped: 12,
      conditions: [
        { type: 'Ready', status: 'False', reason: 'TargetUnreachable', message: 'staging refused', lastTransitionTime: now },
        { type: 'Degraded', status: 'True', reason: 'TargetUnreachable', message: 'staging refused', lastTransitionTime: now },
      ],
    };
    await api.replaceNamespacedCustomObjectStatus({ group: GROUP, version: VERSION, namespace, plural: PLURAL, name, body: { ...current, status } });
    const row = kubectl(['get', 'sp', name, '-n', namespace, '--no-headers']);
    expect(row.code, row.stderr).toBe(0);
    expect(row.stdout.trim().split(/\s+/).slice(0, 9)).toEqual(['columns', '8080', '3', '1', '7', '4096', '12', 'False', 'TargetUnreachable']);
  });

  /** The stored spec, as the operator reads it from the apiserver. */
  function storedSpec(name: string): unknown {
    const got = kubectl(['get', 'sp', name, '-n', namespace, '-o', 'json']);
    expect(got.code, got.stderr).toBe(0);
    return JSON.parse(got.stdout).spec;
  }

  it.each(VALID_CASES)('kubectl apply accepts $name, and the stored spec parses', (c) => {
    const spec = validSpec();
    c.mutate(spec);
    const name = `v-${slug(c.name)}`;
    const r = kubectl(['apply', '-f', '-'], YAML.stringify(manifest(name, spec)));
    expect(r.code, r.stderr).toBe(0);
    const parsed = parseClusterSpec(storedSpec(name));
    expect(parsed.ok, parsed.ok ? '' : parsed.errors.join('; ')).toBe(true);
  });

  it('stores a transform of the primary without a mirror as given, with applyTo and mask.with defaulted', () => {
    const spec: Record<string, any> = validSpec();
    delete spec['mirror'];
    spec['transform'] = { applyTo: 'primary', ops: [{ mask: { after: 'password=', until: '&' } }] };
    expect(kubectl(['apply', '-f', '-'], YAML.stringify(manifest('primary-only', spec))).code).toBe(0);
    const stored = storedSpec('primary-only') as Record<string, any>;
    expect(stored['mirror']).toBeUndefined();
    expect(stored['transform'].applyTo).toBe('primary');
    expect(stored['transform'].ops).toEqual([{ mask: { after: 'password=', until: '&', with: '*' } }]);
  });

  it.each(INVALID_CASES.filter((c) => c.zodOnly))('kubectl apply stores $name (the CRD cannot state it); the operator\'s parse refuses it naming the field', (c) => {
    const spec = validSpec();
    c.mutate(spec);
    const name = `z-${slug(c.name)}`;
    const r = kubectl(['apply', '-f', '-'], YAML.stringify(manifest(name, spec)));
    expect(r.code, r.stderr).toBe(0);
    const parsed = parseClusterSpec(storedSpec(name));
    expect(parsed.ok).toBe(false);
    if (!parsed.ok) expect(parsed.errors.join('\n')).toMatch(c.mentions);
  });

  it.each(INVALID_CASES.filter((c) => !c.zodOnly))('kubectl apply rejects $name, naming the field', (c) => {
    const spec = validSpec();
    c.mutate(spec);
    const r = kubectl(['apply', '-f', '-'], YAML.stringify(manifest(`k-${slug(c.name)}`, spec)));
    expect(r.code).not.toBe(0);
    // kubectl words what it catches itself differently from what the server returns: either names the field.
    const patterns = [c.mentions, c.kubectlMentions].filter((p): p is RegExp => p !== undefined).map(withoutIndex);
    expect(patterns.some((p) => p.test(r.stderr)), r.stderr).toBe(true);
  });

  it.each(INVALID_CASES.filter((c) => c.serverRejects !== false && !c.zodOnly))(
    'the apiserver itself rejects $name with 422 naming the field',
    async (c) => {
      const spec = validSpec();
      c.mutate(spec);
      const err = await api
        .createNamespacedCustomObject({ group: GROUP, version: VERSION, namespace, plural: PLURAL, body: manifest(`s-${slug(c.name)}`, spec) })
        .then(() => undefined, (e: unknown) => e);
      expect(err).toBeInstanceOf(ApiException);
      const e = err as ApiException<string>;
      expect(e.code).toBe(422);
      expect(String(e.body)).toMatch(withoutIndex(c.mentions));
    },
  );

  it.each(INVALID_CASES.filter((c) => c.zodOnly))(
    'the apiserver stores $name on a direct create; the operator\'s parse refuses it naming the field',
    async (c) => {
      const spec = validSpec();
      c.mutate(spec);
      const created = (await api.createNamespacedCustomObject({
        group: GROUP, version: VERSION, namespace, plural: PLURAL, body: manifest(`sz-${slug(c.name)}`, spec),
      })) as { spec: unknown };
      const parsed = parseClusterSpec(created.spec);
      expect(parsed.ok).toBe(false);
      if (!parsed.ok) expect(parsed.errors.join('\n')).toMatch(c.mentions);
    },
  );

  it('refuses a program given by path, which is for kstreams run only: kubectl as an unknown field, the apiserver for want of configMap', async () => {
    const spec: Record<string, any> = validSpec();
    spec['transform'] = { ops: [{ program: { path: '/opt/bpf/mask.o' } }] };
    const r = kubectl(['apply', '-f', '-'], YAML.stringify(manifest('program-path', spec)));
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/unknown field "path"/);
    const err = await api
      .createNamespacedCustomObject({ group: GROUP, version: VERSION, namespace, plural: PLURAL, body: manifest('program-path', spec) })
      .then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(ApiException);
    expect((err as ApiException<string>).code).toBe(422);
    expect(String((err as ApiException<string>).body)).toMatch(/spec\.transform\.ops(\[0\])?\.program\.configMap: Required value/);
  });

  it('prunes unknown fields on a direct API create (kubectl and the CLI reject them before)', async () => {
    const spec: Record<string, any> = validSpec();
    spec['bogus'] = 1;
    const created = (await api.createNamespacedCustomObject({
      group: GROUP, version: VERSION, namespace, plural: PLURAL, body: manifest('pruned', spec),
    })) as { spec: Record<string, unknown> };
    expect(created.spec).not.toHaveProperty('bogus');
  });
});
