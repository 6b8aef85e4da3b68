// The Pod Security decision on namespace objects in the form the apiservers of 1.20, 1.25, 1.29 and 1.31
// return them (the integration cluster is 1.20, which has no PodSecurity admission: the labels there are
// plain labels, so what a real enforcing apiserver does with them cannot be run here; docs/e2e.md).
import { describe, expect, it } from 'vitest';
import { SidecarConfigSchema } from './config.js';
import { sidecarContainer } from './patch.js';
import { containerViolations, describeVerdict, namespacePolicy, podSecurityFixCommand, sidecarPodSecurity } from './pod-security.js';
import { NAMESPACES } from './testing/versions.js';

const sidecar = (o: Record<string, unknown> = {}) => sidecarContainer(SidecarConfigSchema.parse(o), false);
const labelsOf = (ns: { metadata: { labels?: Record<string, string> } }) => ns.metadata.labels;

describe('namespacePolicy follows the apiserver on labels', () => {
  it('absent: privileged, latest; pinned versions parse; anything else is latest', () => {
    expect(namespacePolicy(undefined, 'enforce')).toEqual({ level: 'privileged' });
    expect(namespacePolicy(labelsOf(NAMESPACES['1.25']), 'enforce')).toEqual({ level: 'baseline', label: 'baseline', minor: 25 });
    expect(namespacePolicy({ 'pod-security.kubernetes.io/enforce': 'baseline', 'pod-security.kubernetes.io/enforce-version': 'v2.0' }, 'enforce')).toEqual({
      level: 'baseline',
      label: 'baseline',
    });
  });

  it('an unparsable level is restricted for enforce and warn, privileged for audit (fails open)', () => {
    const labels = { 'pod-security.kubernetes.io/enforce': 'Baseline', 'pod-security.kubernetes.io/warn': 'x', 'pod-security.kubernetes.io/audit': 'x' };
    expect(namespacePolicy(labels, 'enforce').level).toBe('restricted');
    expect(namespacePolicy(labels, 'warn').level).toBe('restricted');
    expect(namespacePolicy(labels, 'audit').level).toBe('privileged');
  });
});

describe('what each level forbids in the injected sidecar', () => {
  it('privileged allows it; baseline forbids the added capabilities; restricted also root and no runAsNonRoot', () => {
    expect(containerViolations(sidecar(), { level: 'privileged' })).toEqual([]);
    expect(containerViolations(sidecar(), { level: 'baseline' })).toEqual(['capabilities NET_ADMIN, BPF']);
    expect(containerViolations(sidecar(), { level: 'restricted' })).toEqual(['capabilities NET_ADMIN, BPF', 'runAsNonRoot not true', 'runAsUser 0']);
  });

  it('sidecar.privileged: privileged: true is already refused by baseline', () => {
    expect(containerViolations(sidecar({ privileged: true }), { level: 'baseline' })).toEqual(['privileged: true']);
    expect(containerViolations(sidecar({ privileged: true }), { level: 'restricted' })).toEqual([
      'privileged: true',
      'allowPrivilegeEscalation not false',
      'capabilities not dropping ALL',
      'runAsNonRoot not true',
      'runAsUser 0',
    ]);
  });

  it('restricted pinned before a check existed does not run it (capabilities v1.22, runAsUser v1.23)', () => {
    expect(containerViolations(sidecar(), { level: 'restricted', minor: 21 })).toEqual(['capabilities NET_ADMIN, BPF', 'runAsNonRoot not true']);
    expect(containerViolations(sidecar(), { level: 'restricted', minor: 22 })).toEqual(['capabilities NET_ADMIN, BPF', 'runAsNonRoot not true']);
    expect(containerViolations(sidecar(), { level: 'restricted', minor: 23 })).toContain('runAsUser 0');
    // Still forbidden at every version: the sidecar never passes restricted.
    for (let minor = 0; minor <= 35; minor++) expect(containerViolations(sidecar(), { level: 'restricted', minor }).length).toBeGreaterThan(0);
  });

  it('a container within baseline passes baseline (the check is not "anything but privileged")', () => {
    const c = { name: 'x', securityContext: { capabilities: { add: ['NET_BIND_SERVICE', 'CAP_CHOWN'], drop: ['ALL'] } } };
    expect(containerViolations(c, { level: 'baseline' })).toEqual([]);
    const restrictedOk = { securityContext: { allowPrivilegeEscalation: false, runAsNonRoot: true, runAsUser: 1000, capabilities: { add: ['NET_BIND_SERVICE'], drop: ['ALL'] } } };
    expect(containerViolations(restrictedOk, { level: 'restricted' })).toEqual([]);
  });
});

describe('sidecarPodSecurity on each version namespace', () => {
  it('1.20: no Pod Security labels (no PodSecurity admission): nothing to say', () => {
    expect(sidecarPodSecurity(labelsOf(NAMESPACES['1.20']), sidecar())).toEqual([]);
  });

  it('1.25: enforce baseline v1.25 and warn restricted', () => {
    const v = sidecarPodSecurity(labelsOf(NAMESPACES['1.25']), sidecar());
    expect(v.map((x) => [x.mode, x.policy.level, x.policy.minor])).toEqual([
      ['enforce', 'baseline', 25],
      ['warn', 'restricted', 25],
    ]);
    expect(describeVerdict('shop', v[0]!)).toContain('kubectl label --overwrite ns shop pod-security.kubernetes.io/enforce=privileged');
    expect(describeVerdict('shop', v[1]!)).toContain('pod-security.kubernetes.io/warn=privileged');
  });

  it('1.29: enforce restricted (latest)', () => {
    const [v] = sidecarPodSecurity(labelsOf(NAMESPACES['1.29']), sidecar());
    expect(v).toMatchObject({ mode: 'enforce', policy: { level: 'restricted' } });
    expect(describeVerdict('shop', v!)).toMatch(/^namespace shop enforces Pod Security "restricted:latest" .*rejects every new injected pod/);
  });

  it('1.31: enforce privileged lets it in; audit baseline is only reported', () => {
    const v = sidecarPodSecurity(labelsOf(NAMESPACES['1.31']), sidecar());
    expect(v.map((x) => x.mode)).toEqual(['audit']);
    expect(describeVerdict('shop', v[0]!)).toContain('pods are admitted');
  });

  it('the short (AdmissionReview warning) form has the whole fix within 256 characters for a 40-character namespace', () => {
    const ns = 'n'.repeat(40);
    for (const level of ['baseline', 'restricted']) {
      const [v] = sidecarPodSecurity({ 'pod-security.kubernetes.io/enforce': level }, sidecar());
      const line = describeVerdict(ns, v!, true);
      expect(line.slice(0, 256)).toContain(`${podSecurityFixCommand(ns, 'enforce')} or exempt the namespace`);
      expect(line).toContain(v!.forbidden.join(', '));
    }
  });
});
