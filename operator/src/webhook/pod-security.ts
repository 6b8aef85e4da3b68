// Pod Security admission (Kubernetes 1.23+, GA in 1.25) as it concerns the injected sidecar: which of the
// namespace's levels (pod-security.kubernetes.io/{enforce,warn,audit}[-version] labels) the kstreams-sidecar
// container breaks, and what to tell the user. Pure: the webhook (AdmissionReview warnings) and the
// controller (the StreamPath's condition and Event) both call it with a namespace's labels.
//
// Only the checks of the Pod Security Standards that the sidecar's own fields can fail are evaluated; the
// rest of the pod is the user's and the apiserver judges it. The apiserver's rules for the labels are
// followed: an unparsable enforce or warn level counts as "restricted", an unparsable audit level as
// "privileged" (fail open), an unparsable or absent version as "latest".
// What the labels cannot show: the cluster-wide defaults and exemptions of the apiserver's PodSecurity
// admission configuration. A namespace without an enforce label is taken as privileged (the built-in
// default), and an exempt namespace looks like any other (the controller copes: docs/operator.md).

export const POD_SECURITY_LABEL_PREFIX = 'pod-security.kubernetes.io/';
export const POD_SECURITY_MODES = ['enforce', 'warn', 'audit'] as const;
export type PodSecurityMode = (typeof POD_SECURITY_MODES)[number];
export type PodSecurityLevel = 'privileged' | 'baseline' | 'restricted';

/** A level with its version: minor undefined means "latest". */
export interface PodSecurityPolicy {
  level: PodSecurityLevel;
  /** The label's value as written (for messages), or undefined when the label is absent. */
  label?: string;
  minor?: number;
}

/** What one mode's level forbids in the sidecar container; empty `forbidden` means it is allowed. */
export interface PodSecurityVerdict {
  mode: PodSecurityMode;
  policy: PodSecurityPolicy;
  /** One short phrase per failed check, e.g. "capabilities NET_ADMIN, BPF". */
  forbidden: string[];
}

/** Capabilities the baseline level allows to add (the container runtime's default set). */
const BASELINE_CAPABILITIES = new Set([
  'AUDIT_WRITE',
  'CHOWN',
  'DAC_OVERRIDE',
  'FOWNER',
  'FSETID',
  'KILL',
  'MKNOD',
  'NET_BIND_SERVICE',
  'SETFCAP',
  'SETGID',
  'SETPCAP',
  'SETUID',
  'SYS_CHROOT',
]);

function parseLevel(value: string | undefined, mode: PodSecurityMode): PodSecurityLevel {
  if (value === undefined) return 'privileged';
  if (value === 'privileged' || value === 'baseline' || value === 'restricted') return value;
  return mode === 'audit' ? 'privileged' : 'restricted';
}

function parseMinor(value: string | undefined): number | undefined {
  const m = /^v1\.(0|[1-9][0-9]*)$/.exec(value ?? '');
  return m ? Number(m[1]) : undefined;
}

/** The policy a namespace's labels set for one mode. */
export function namespacePolicy(labels: Readonly<Record<string, string>> | undefined, mode: PodSecurityMode): PodSecurityPolicy {
  const label = labels?.[`${POD_SECURITY_LABEL_PREFIX}${mode}`];
  const minor = parseMinor(labels?.[`${POD_SECURITY_LABEL_PREFIX}${mode}-version`]);
  return { level: parseLevel(label, mode), ...(label !== undefined ? { label } : {}), ...(minor !== undefined ? { minor } : {}) };
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
const strings = (v: unknown): string[] => (Array.isArray(v) ? v.filter((s): s is string => typeof s === 'string') : []);
/** A check that entered the standard at v1.<since>: a policy pinned to an older version does not run it. */
const applies = (policy: PodSecurityPolicy, since: number) => policy.minor === undefined || policy.minor >= since;

/** The checks of the Pod Security Standards a container's securityContext can fail, at one level and version. */
export function containerViolations(container: Obj, policy: PodSecurityPolicy): string[] {
  if (policy.level === 'privileged') return [];
  const sc = isObj(container.securityContext) ? container.securityContext : {};
  const caps = isObj(sc.capabilities) ? sc.capabilities : {};
  const added = strings(caps.add);
  const out: string[] = [];
  if (sc.privileged === true) out.push('privileged: true');
  const beyondBaseline = added.filter((c) => !BASELINE_CAPABILITIES.has(c.replace(/^CAP_/, '')));
  if (policy.level === 'baseline') {
    if (beyondBaseline.length > 0) out.push(`capabilities ${beyondBaseline.join(', ')}`);
    return out;
  }
  // restricted
  if (sc.allowPrivilegeEscalation !== false) out.push('allowPrivilegeEscalation not false');
  if (applies(policy, 22)) {
    const beyondRestricted = added.filter((c) => c.replace(/^CAP_/, '') !== 'NET_BIND_SERVICE');
    if (beyondRestricted.length > 0) out.push(`capabilities ${beyondRestricted.join(', ')}`);
    if (!strings(caps.drop).includes('ALL')) out.push('capabilities not dropping ALL');
  } else if (beyondBaseline.length > 0) {
    out.push(`capabilities ${beyondBaseline.join(', ')}`);
  }
  if (sc.runAsNonRoot !== true) out.push('runAsNonRoot not true');
  if (applies(policy, 23) && sc.runAsUser === 0) out.push('runAsUser 0');
  return out;
}

/** For each mode the namespace sets, what its level forbids in `container` (modes that forbid nothing are left out). */
export function sidecarPodSecurity(labels: Readonly<Record<string, string>> | undefined, container: Obj): PodSecurityVerdict[] {
  const out: PodSecurityVerdict[] = [];
  for (const mode of POD_SECURITY_MODES) {
    const policy = namespacePolicy(labels, mode);
    const forbidden = containerViolations(container, policy);
    if (forbidden.length > 0) out.push({ mode, policy, forbidden });
  }
  return out;
}

export function describePolicy(p: PodSecurityPolicy): string {
  const version = p.minor === undefined ? 'latest' : `v1.${p.minor}`;
  return p.label === undefined || p.label === p.level ? `"${p.level}:${version}"` : `"${p.level}:${version}" (label value ${JSON.stringify(p.label)})`;
}

/** The kubectl command that lets the sidecar into `namespace` for `mode`. */
export function podSecurityFixCommand(namespace: string, mode: PodSecurityMode): string {
  return `kubectl label --overwrite ns ${namespace} ${POD_SECURITY_LABEL_PREFIX}${mode}=privileged`;
}

/**
 * One line for the StreamPath's condition or Event: which level rejects what, and the fix. `short` is for an
 * AdmissionReview warning, which the apiserver may cut at 256 characters: the fix comes before the details.
 */
export function describeVerdict(namespace: string, v: PodSecurityVerdict, short = false): string {
  const what = `the ${v.forbidden.join(', ')} of the kstreams-sidecar container`;
  const fix = podSecurityFixCommand(namespace, v.mode);
  if (v.mode === 'enforce') {
    return short
      ? `Pod Security ${describePolicy(v.policy)} rejects kstreams-sidecar; fix: ${fix} or exempt the namespace (forbidden: ${v.forbidden.join(', ')})`
      : `namespace ${namespace} enforces Pod Security ${describePolicy(v.policy)} (label ${POD_SECURITY_LABEL_PREFIX}enforce), which forbids ${what}, so the apiserver rejects every new injected pod: run ${fix} (or exempt the namespace in the apiserver's PodSecurity admission configuration), then recreate the pods`;
  }
  if (short) return `Pod Security ${v.mode} ${describePolicy(v.policy)} flags kstreams-sidecar; to silence it: ${fix} (forbidden: ${v.forbidden.join(', ')})`;
  const effect = v.mode === 'warn' ? 'warns on every injected pod' : 'adds an audit annotation to every injected pod';
  return `namespace ${namespace}'s Pod Security ${v.mode} level ${describePolicy(v.policy)} ${effect} for ${what} (pods are admitted): ${fix} to silence it`;
}
