// RBAC rules against what a component really asked the apiserver for: the chart's rules expanded into
// single grants (scope, group, resource, verb, name), the requests read from the apiserver's audit log,
// and the RBAC table of docs/helm.md parsed into the same grants. Matching follows Kubernetes' RBAC rules
// (a Role applies in its namespace only, resourceNames restrict get/list/watch/update/patch/delete by the
// request's name, and no create).

export interface PolicyRule {
  apiGroups?: string[];
  resources?: string[];
  verbs: string[];
  resourceNames?: string[];
  nonResourceURLs?: string[];
}

/** One verb on one resource (`resource/subresource`), cluster-wide or in the Role's namespace, maybe by name. */
export interface Grant {
  scope: 'cluster' | 'namespace';
  group: string;
  resource: string;
  verb: string;
  name?: string;
}

export interface ApiRequest {
  verb: string;
  group: string;
  /** `resource` or `resource/subresource`; '' for a non-resource URL. */
  resource: string;
  namespace?: string;
  name?: string;
  uri: string;
  code?: number;
}

export function grantsOf(rules: PolicyRule[], scope: Grant['scope']): Grant[] {
  const out: Grant[] = [];
  for (const r of rules) {
    if (r.nonResourceURLs?.length) continue;
    for (const group of r.apiGroups ?? [])
      for (const resource of r.resources ?? [])
        for (const verb of r.verbs)
          if (r.resourceNames?.length) for (const name of r.resourceNames) out.push({ scope, group, resource, verb, name });
          else out.push({ scope, group, resource, verb });
  }
  return out;
}

export function grantKey(g: Grant): string {
  return `${g.scope} ${g.group || 'core'}/${g.resource}${g.name ? `/${g.name}` : ''} ${g.verb}`;
}

export function requestKey(r: ApiRequest): string {
  return `${r.verb} ${r.group || 'core'}/${r.resource}${r.namespace ? ` in ${r.namespace}` : ''}${r.name ? ` named ${r.name}` : ''}`;
}

/** Whether `g` (from a Role in `roleNamespace` when namespaced) authorizes `req`. */
export function allows(g: Grant, req: ApiRequest, roleNamespace?: string): boolean {
  if (g.scope === 'namespace' && req.namespace !== roleNamespace) return false;
  if (g.group !== '*' && g.group !== req.group) return false;
  if (g.resource !== '*' && g.resource !== req.resource) return false;
  if (g.verb !== '*' && g.verb !== req.verb) return false;
  if (g.name !== undefined && g.name !== req.name) return false;
  return true;
}

/**
 * The requests of `username` in an audit log (JSON lines, audit.k8s.io/v1 Events), once each (a request
 * logged at several stages shares its auditID). Impersonated requests (kubectl --as) are the impersonator's.
 */
export function requestsFromAudit(log: string, username: string): ApiRequest[] {
  const seen = new Set<string>();
  const out: ApiRequest[] = [];
  for (const line of log.split('\n')) {
    if (!line.trim()) continue;
    const e = JSON.parse(line) as {
      auditID: string;
      verb: string;
      requestURI: string;
      user?: { username?: string };
      impersonatedUser?: unknown;
      objectRef?: { resource?: string; subresource?: string; namespace?: string; name?: string; apiGroup?: string };
      responseStatus?: { code?: number };
    };
    if (e.user?.username !== username || e.impersonatedUser || seen.has(e.auditID)) continue;
    seen.add(e.auditID);
    const o = e.objectRef;
    out.push({
      verb: e.verb,
      group: o?.apiGroup ?? '',
      resource: o?.resource ? (o.subresource ? `${o.resource}/${o.subresource}` : o.resource) : '',
      ...(o?.namespace ? { namespace: o.namespace } : {}),
      ...(o?.name ? { name: o.name } : {}),
      uri: e.requestURI,
      ...(e.responseStatus?.code !== undefined ? { code: e.responseStatus.code } : {}),
    });
  }
  return out;
}

/**
 * The rows of the first markdown table under `heading` with columns Scope | API group | Resources | Names |
 * Verbs | ...: scope `cluster` or `release ns`, group `core` for "", resources and names comma-separated
 * (backticks allowed), verbs space-separated.
 */
export function grantsFromDocsTable(markdown: string, heading: string): Grant[] {
  const start = markdown.indexOf(heading);
  if (start < 0) throw new Error(`heading ${JSON.stringify(heading)} not found`);
  const lines = markdown.slice(start).split('\n');
  const first = lines.findIndex((l) => l.startsWith('|'));
  const rows: string[][] = [];
  for (const l of lines.slice(first)) {
    if (!l.startsWith('|')) break;
    rows.push(l.split('|').slice(1, -1).map((c) => c.trim()));
  }
  const header = rows[0]?.map((c) => c.toLowerCase());
  if (header?.slice(0, 5).join('|') !== 'scope|api group|resources|names|verbs') throw new Error(`unexpected RBAC table header: ${rows[0]?.join(' | ')}`);
  const list = (cell: string) => cell.replace(/`/g, '').split(',').map((s) => s.trim()).filter(Boolean);
  const out: Grant[] = [];
  for (const [scopeCell, groupCell, resources, names, verbs] of rows.slice(2)) {
    const scope = scopeCell === 'cluster' ? 'cluster' : scopeCell === 'release ns' ? 'namespace' : undefined;
    if (!scope) throw new Error(`RBAC table: scope ${JSON.stringify(scopeCell)} is neither "cluster" nor "release ns"`);
    const group = groupCell!.replace(/`/g, '') === 'core' ? '' : groupCell!.replace(/`/g, '');
    const rule: PolicyRule = { apiGroups: [group], resources: list(resources!), verbs: verbs!.split(/\s+/).filter(Boolean), resourceNames: list(names!) };
    out.push(...grantsOf([rule], scope));
  }
  return out;
}
