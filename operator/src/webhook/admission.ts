// AdmissionReview in, AdmissionReview out: pure, so that every malformed input can be fuzzed without a
// server. The answer always echoes the request's apiVersion and uid (the apiserver rejects anything else).
import { z } from 'zod';
import type { JsonPatchOp, PatchReason } from './patch.js';

export const ADMISSION_API_VERSIONS = ['admission.k8s.io/v1', 'admission.k8s.io/v1beta1'] as const;

const GroupVersionKindSchema = z.object({ group: z.string(), version: z.string(), kind: z.string() });
const GroupVersionResourceSchema = z.object({ group: z.string(), version: z.string(), resource: z.string() });

export const AdmissionRequestSchema = z.object({
  uid: z.string().min(1).max(256),
  kind: GroupVersionKindSchema,
  resource: GroupVersionResourceSchema,
  subResource: z.string().optional(),
  operation: z.string().min(1),
  namespace: z.string().optional(),
  name: z.string().optional(),
  object: z.unknown().optional(),
  dryRun: z.boolean().optional(),
});

export const AdmissionReviewSchema = z.object({
  apiVersion: z.enum(ADMISSION_API_VERSIONS),
  kind: z.literal('AdmissionReview'),
  request: AdmissionRequestSchema,
});

export type AdmissionRequest = z.infer<typeof AdmissionRequestSchema>;
export type AdmissionReview = z.infer<typeof AdmissionReviewSchema>;

/** What the handler decided, for logs and metrics. */
export type AdmissionResult =
  | { kind: 'patched'; reason: PatchReason }
  | { kind: 'allowed'; reason: PatchReason | 'not-pod-create' }
  | { kind: 'invalid'; reason: 'bad-json' | 'bad-review' };

export interface AdmissionOutcome {
  status: number;
  body: unknown;
  result: AdmissionResult;
  /** For logs: the request uid, namespace and name when known. */
  request?: { uid: string; namespace?: string; name?: string; operation: string };
}

/**
 * `warnings` go back to whoever created the pod (AdmissionReview response.warnings, shown by kubectl as
 * "Warning: ..."; the apiserver truncates each to 256 characters).
 */
export type PodMutator = (pod: unknown, namespace: string) => { patch: JsonPatchOp[]; reason: PatchReason; warnings?: string[] };

function badRequest(reason: 'bad-json' | 'bad-review', message: string): AdmissionOutcome {
  // Not an AdmissionReview: there is no uid to echo, so answer as a plain HTTP error with a Status body.
  return {
    status: 400,
    body: { kind: 'Status', apiVersion: 'v1', status: 'Failure', reason: 'BadRequest', code: 400, message },
    result: { kind: 'invalid', reason },
  };
}

function describeIssues(error: z.ZodError): string {
  return error.issues
    .slice(0, 5)
    .map((i) => `${i.path.length > 0 ? i.path.join('.') : '(root)'}: ${i.message}`)
    .join('; ');
}

/** True for a pod CREATE (not a subresource such as pods/ephemeralcontainers or pods/binding). */
export function isPodCreate(req: AdmissionRequest): boolean {
  return (
    req.operation === 'CREATE' &&
    req.resource.group === '' &&
    req.resource.resource === 'pods' &&
    (req.subResource === undefined || req.subResource === '')
  );
}

/** Handles the raw body of a POST to the mutate endpoint. Never throws. */
export function handleAdmissionReview(body: string, mutate: PodMutator): AdmissionOutcome {
  let json: unknown;
  try {
    json = JSON.parse(body);
  } catch (e) {
    return badRequest('bad-json', `request body is not JSON: ${(e as Error).message}`);
  }
  const parsed = AdmissionReviewSchema.safeParse(json);
  if (!parsed.success) {
    return badRequest(
      'bad-review',
      `request body is not an admission.k8s.io/v1 or v1beta1 AdmissionReview with a request: ${describeIssues(parsed.error)}`,
    );
  }
  const review = parsed.data;
  const req = review.request;
  const request = { uid: req.uid, namespace: req.namespace, name: req.name, operation: req.operation };
  const respond = (response: Record<string, unknown>) => ({
    apiVersion: review.apiVersion,
    kind: 'AdmissionReview',
    response: { uid: req.uid, allowed: true, ...response },
  });
  if (!isPodCreate(req)) {
    return { status: 200, body: respond({}), result: { kind: 'allowed', reason: 'not-pod-create' }, request };
  }
  // Pods created through a namespaced endpoint always carry the namespace in the request; the object's
  // metadata.namespace may be empty at CREATE.
  const namespace = req.namespace ?? '';
  let outcome: ReturnType<PodMutator>;
  try {
    outcome = mutate(req.object, namespace);
  } catch {
    // The mutator is pure and written not to throw; if it ever does, admit the pod untouched rather than
    // block it (the same as failurePolicy Ignore would do).
    return { status: 200, body: respond({}), result: { kind: 'allowed', reason: 'invalid-pod' }, request };
  }
  if (outcome.patch.length === 0) {
    return { status: 200, body: respond({}), result: { kind: 'allowed', reason: outcome.reason }, request };
  }
  const patch = Buffer.from(JSON.stringify(outcome.patch)).toString('base64');
  const warnings = outcome.warnings?.length ? { warnings: outcome.warnings } : {};
  return {
    status: 200,
    body: respond({ patchType: 'JSONPatch', patch, ...warnings }),
    result: { kind: 'patched', reason: outcome.reason },
    request,
  };
}
