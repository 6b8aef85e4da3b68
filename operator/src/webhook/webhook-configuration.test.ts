import { describe, expect, it } from 'vitest';
import { WebhookConfigSchema } from './config.js';
import { desiredWebhook } from './webhook-configuration.js';

describe('desiredWebhook', () => {
  it('registers pods CREATE for opted-in namespaces, minus opted-out pods and excluded namespaces', () => {
    const w = desiredWebhook(WebhookConfigSchema.parse({ excludedNamespaces: ['legacy'] }), 'PEM');
    expect(w.rules).toEqual([{ apiGroups: [''], apiVersions: ['v1'], operations: ['CREATE'], resources: ['pods'], scope: 'Namespaced' }]);
    expect(w.namespaceSelector?.matchLabels).toEqual({ 'kstreams.io/inject': 'enabled' });
    expect(w.namespaceSelector?.matchExpressions?.[0]?.values).toEqual(['kstreams-system', 'kube-node-lease', 'kube-public', 'kube-system', 'legacy']);
    expect(w.objectSelector).toEqual({ matchExpressions: [{ key: 'kstreams.io/inject', operator: 'NotIn', values: ['false'] }] });
    expect(w.failurePolicy).toBe('Ignore');
    expect(w.sideEffects).toBe('None');
    expect(w.timeoutSeconds).toBe(5);
    expect(w.admissionReviewVersions).toEqual(['v1', 'v1beta1']);
    expect(w.clientConfig).toEqual({
      service: { name: 'kstreams-webhook', namespace: 'kstreams-system', port: 443, path: '/mutate-pods' },
      caBundle: Buffer.from('PEM').toString('base64'),
    });
  });

  it('uses a URL when configured, and leaves caBundle out when it has none', () => {
    const w = desiredWebhook(WebhookConfigSchema.parse({ url: 'https://127.0.0.1:9443/mutate-pods', failurePolicy: 'Fail' }), undefined);
    expect(w.clientConfig).toEqual({ url: 'https://127.0.0.1:9443/mutate-pods' });
    expect(w.failurePolicy).toBe('Fail');
  });

  it('refuses a non-https URL in the config', () => {
    expect(() => WebhookConfigSchema.parse({ url: 'http://127.0.0.1/x' })).toThrow();
  });
});
