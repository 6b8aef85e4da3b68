// The MutatingWebhookConfiguration the operator owns: desired state computed purely from the config and
// the CA bundle, written only when it differs (every replica runs this; a second run makes no write).
import type { V1MutatingWebhook, V1MutatingWebhookConfiguration } from '@kubernetes/client-node';
import type { KubeTransport } from '../../../runtime/src/rest.js';
import { INJECT_NAMESPACE_LABEL, INJECT_NAMESPACE_VALUE, INJECT_POD_LABEL } from '../../../api/src/agent.js';
import type { WebhookConfig } from './config.js';
import { kubeCall } from '../../../runtime/src/errors.js';
import { excludedNamespaces } from './patch.js';

export const MANAGED_BY_LABEL = 'app.kubernetes.io/managed-by';
export const MANAGED_BY_VALUE = 'kstreams-operator';

export function desiredWebhook(config: WebhookConfig, caBundlePem: string | undefined): V1MutatingWebhook {
  const clientConfig: V1MutatingWebhook['clientConfig'] = config.url
    ? { url: config.url }
    : { service: { name: config.serviceName, namespace: config.namespace, port: config.servicePort, path: config.path } };
  if (caBundlePem !== undefined) clientConfig.caBundle = Buffer.from(caBundlePem).toString('base64');
  return {
    name: config.webhookName,
    admissionReviewVersions: ['v1', 'v1beta1'],
    clientConfig,
    rules: [{ apiGroups: [''], apiVersions: ['v1'], operations: ['CREATE'], resources: ['pods'], scope: 'Namespaced' }],
    // Opt-in namespaces only, and never the system ones or our own, even if someone labels them: the
    // selector keeps the apiserver from calling us at all, the patch function checks again. The
    // kubernetes.io/metadata.name label exists from 1.21; on older clusters NotIn simply matches, and the
    // patch function still refuses those namespaces.
    namespaceSelector: {
      matchLabels: { [INJECT_NAMESPACE_LABEL]: INJECT_NAMESPACE_VALUE },
      matchExpressions: [{ key: 'kubernetes.io/metadata.name', operator: 'NotIn', values: [...excludedNamespaces(config)].sort() }],
    },
    objectSelector: { matchExpressions: [{ key: INJECT_POD_LABEL, operator: 'NotIn', values: ['false'] }] },
    failurePolicy: config.failurePolicy,
    matchPolicy: 'Equivalent',
    // IfNeeded: when another webhook changes the pod after us (e.g. adds a container or a volume), the
    // apiserver calls us once more, and the idempotent patch function completes what is missing.
    reinvocationPolicy: 'IfNeeded',
    sideEffects: 'None',
    timeoutSeconds: config.timeoutSeconds,
  };
}

/** JSON with sorted keys: the apiserver orders fields its own way. */
function canonical(v: unknown): string {
  return JSON.stringify(v, (_k, val: unknown) =>
    val && typeof val === 'object' && !Array.isArray(val)
      ? Object.fromEntries(Object.entries(val as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : val,
  );
}

/** Fields we set, compared after the apiserver filled in its defaults. */
function sameWebhook(have: V1MutatingWebhook | undefined, want: V1MutatingWebhook): boolean {
  if (!have) return false;
  const pick = (w: V1MutatingWebhook) =>
    canonical([
      w.name,
      w.admissionReviewVersions,
      w.clientConfig.url,
      w.clientConfig.service && { ...w.clientConfig.service },
      w.clientConfig.caBundle,
      w.rules,
      w.namespaceSelector,
      w.objectSelector,
      w.failurePolicy,
      w.matchPolicy,
      w.reinvocationPolicy,
      w.sideEffects,
      w.timeoutSeconds,
    ]);
  return pick(have) === pick(want);
}

function isStatus(e: unknown, code: number): boolean {
  return typeof e === 'object' && e !== null && (e as { code?: unknown }).code === code;
}

/**
 * Creates or updates the MutatingWebhookConfiguration. Returns 'created', 'updated' or 'unchanged'.
 * Conflicts (another replica wrote first) are retried from a fresh read.
 */
export async function ensureWebhookConfiguration(
  kube: KubeTransport,
  config: WebhookConfig,
  caBundlePem: string | undefined,
): Promise<'created' | 'updated' | 'unchanged'> {
  const name = config.webhookConfigurationName;
  const collection = '/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations';
  const path = `${collection}/${encodeURIComponent(name)}`;
  const want = desiredWebhook(config, caBundlePem);
  const ctx = (verb: string) => ({
    verb,
    object: `MutatingWebhookConfiguration ${name}`,
    forbiddenHint:
      `the operator's ServiceAccount needs get and update on mutatingwebhookconfigurations ${name} (the chart's ClusterRole ` +
      `<release>-operator grants them; the chart creates the object, without it the operator needs create too), or set ` +
      `webhook.manageWebhookConfiguration=false and keep the caBundle yourself`,
  });
  for (let attempt = 0; attempt < 5; attempt++) {
    let current: V1MutatingWebhookConfiguration | undefined;
    try {
      current = await kubeCall(ctx('get'), () => kube.request<V1MutatingWebhookConfiguration>('GET', path));
    } catch (e) {
      if (!isStatus(e, 404)) throw e;
    }
    if (!current) {
      try {
        const body: V1MutatingWebhookConfiguration = {
          apiVersion: 'admissionregistration.k8s.io/v1',
          kind: 'MutatingWebhookConfiguration',
          metadata: { name, labels: { [MANAGED_BY_LABEL]: MANAGED_BY_VALUE } },
          webhooks: [want],
        };
        await kubeCall(ctx('create'), () => kube.request('POST', collection, { body }));
        return 'created';
      } catch (e) {
        if (isStatus(e, 409)) continue;
        throw e;
      }
    }
    const webhooks = current.webhooks ?? [];
    const existing = webhooks.find((w) => w.name === want.name);
    // Without a CA of our own (cert-manager mode) keep whatever caBundle was injected.
    if (caBundlePem === undefined && existing?.clientConfig.caBundle) want.clientConfig.caBundle = existing.clientConfig.caBundle;
    if (sameWebhook(existing, want)) return 'unchanged';
    const others = webhooks.filter((w) => w.name !== want.name);
    try {
      await kubeCall(ctx('update'), () => kube.request('PUT', path, { body: { ...current, webhooks: [...others, want] } }));
      return 'updated';
    } catch (e) {
      if (isStatus(e, 409)) continue;
      throw e;
    }
  }
  throw new Error(`MutatingWebhookConfiguration ${name}: still conflicting after 5 attempts; will retry on the next resync`);
}
