// What the operator's main.ts uses: embed WebhookConfigSchema in its config, then call startWebhook on
// every replica with the shared logger and registry.
export { WebhookConfigSchema, type WebhookConfig, type WebhookConfigInput } from './config.js';
export { startWebhook, type RunningWebhook, type StartWebhookOptions } from './server.js';
export { computePodPatch, INJECTOR_VERSION, type JsonPatchOp, type PatchReason, type PatchResult } from './patch.js';
