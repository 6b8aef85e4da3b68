// The rules of the StreamPath schema that the CRD cannot state (the zodOnly rows of the invalid table): the
// apiserver stores such a StreamPath, and the operator, against that real apiserver, must say so in the
// status: condition Degraded, reason InvalidSpec, with a message naming the field; Ready is False.
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { systemClock } from '../../../runtime/src/clock.js';
import { parseConfig } from '../config.js';
import { KubeRest } from '../../../runtime/src/rest.js';
import { startOperator, type RunningOperator } from '../operator.js';
import { condition, createNamespace, createStreamPath, eventually, freshName, getStreamPath, installCrd } from '../testing/kube.js';
import { INVALID_CASES, validSpec } from '../../../api/src/invalid-streampaths.js';
import type { StreamPathSpecInput } from '../../../api/src/streampath.js';

const slug = (s: string) => s.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '').slice(0, 60).replace(/-$/, '');

describe('the operator on StreamPaths only zod refuses', () => {
  let kube: KubeRest;
  let op: RunningOperator;
  let ns: string;

  beforeAll(async () => {
    kube = await KubeRest.create(inject('kubeconfig'));
    await installCrd(kube);
    ns = freshName('invalid-spec');
    await createNamespace(kube, ns);
    const config = parseConfig({
      identity: 'invalid-spec-test',
      namespace: 'kstreams-system',
      kubeconfig: inject('kubeconfig'),
      logLevel: 'warn',
      leaderElection: { enabled: false },
      resyncPeriodMs: 600_000,
      statusWriteIntervalMs: 200,
      detachTimeoutMs: 3_000,
      server: { host: '127.0.0.1', port: 0 },
      webhook: { enabled: false },
    });
    op = await startOperator({ config, log: pino({ level: 'warn' }), clock: systemClock });
    await eventually('caches synced', async () => op.controller()?.synced);
  });

  afterAll(async () => {
    await op?.shutdown();
    kube?.close();
  });

  it.each(INVALID_CASES.filter((c) => c.zodOnly))('reports $name as InvalidSpec naming the field', async (c) => {
    const spec = validSpec();
    c.mutate(spec);
    const name = slug(c.name);
    await createStreamPath(kube, ns, name, spec as StreamPathSpecInput);
    const sp = await eventually(`InvalidSpec on ${name}`, async () => {
      const got = await getStreamPath(kube, ns, name);
      return condition(got, 'Degraded')?.reason === 'InvalidSpec' ? got : undefined;
    });
    expect(condition(sp, 'Degraded')).toMatchObject({ status: 'True', observedGeneration: 1 });
    expect(condition(sp, 'Degraded')!.message).toMatch(c.mentions);
    expect(condition(sp, 'Ready')).toMatchObject({ status: 'False' });
    expect(sp.status?.podsSelected ?? 0).toBe(0);
  });
});
