// Builds the StreamPath CustomResourceDefinition from the zod schemas in streampath.ts, so that the
// apiserver validates exactly what the operator, the sidecar and the CLI parse. crds/streampath.yaml is
// this function's output (`npm run crd:generate`); a test fails when the committed file differs.
import { z } from 'zod';
import {
  GROUP,
  KIND,
  PLURAL,
  SHORT_NAMES,
  SINGULAR,
  StreamPathSpecSchema,
  StreamPathStatusSchema,
  VERSION,
} from './streampath.js';

type JsonSchema = { [key: string]: unknown };

function isObject(v: unknown): v is JsonSchema {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Turns zod's OpenAPI 3.0 output into a Kubernetes structural schema:
 * - `additionalProperties: false` is not allowed beside `properties`; unknown fields are pruned by the
 *   apiserver and rejected by kubectl's schema validation instead (see docs/api.md).
 * - a union of single-key objects (the transform ops) becomes one object with every key and a oneOf
 *   of `required`, the only form of oneOf a structural schema accepts.
 */
export function toStructural(node: unknown): unknown {
  if (Array.isArray(node)) return node.map(toStructural);
  if (!isObject(node)) return node;
  const out: JsonSchema = {};
  for (const [key, value] of Object.entries(node)) {
    if (key === '$schema') continue;
    if (key === 'additionalProperties' && value === false) continue;
    out[key] = toStructural(value);
  }
  const branches = (out['anyOf'] ?? out['oneOf']) as JsonSchema[] | undefined;
  if (branches && branches.every((b) => b['type'] === 'object' && isObject(b['properties']))) {
    const properties: JsonSchema = {};
    const oneOf: JsonSchema[] = [];
    for (const b of branches) {
      Object.assign(properties, b['properties']);
      oneOf.push({ required: b['required'] ?? Object.keys(b['properties'] as JsonSchema) });
    }
    delete out['anyOf'];
    return { ...out, type: 'object', properties, oneOf };
  }
  return out;
}

function jsonSchemaOf(schema: z.ZodType): JsonSchema {
  return toStructural(z.toJSONSchema(schema, { target: 'openapi-3.0', io: 'input', unrepresentable: 'any' })) as JsonSchema;
}

/** Rules the zod schema states in code (superRefine) that the OpenAPI schema must state too. */
function addCrossFieldRules(spec: JsonSchema): JsonSchema {
  const mirror = (spec['properties'] as JsonSchema)['mirror'] as JsonSchema;
  const targets = (mirror['properties'] as JsonSchema)['targets'] as JsonSchema;
  const items = targets['items'] as JsonSchema;
  items['oneOf'] = [{ required: ['address'] }, { required: ['service'] }, { required: ['file'] }];
  // spec.mirror is required unless spec.transform.applyTo is primary. The apiserver states the part it can
  // word well: a spec with neither mirror nor transform is refused as `spec.mirror: Required value` (when no
  // branch holds, it reports the first one's errors). A transform of the mirror without a mirror passes here
  // and is refused by zod: an anyOf on applyTo would be reported as "applyTo: supported values: primary",
  // which points the user at transforming the primary instead of at the missing mirror.
  spec['anyOf'] = [{ required: ['mirror'] }, { required: ['transform'] }];

  const transform = (spec['properties'] as JsonSchema)['transform'] as JsonSchema;
  const ops = (transform['properties'] as JsonSchema)['ops'] as JsonSchema;
  const op = ops['items'] as JsonSchema;
  const opProps = op['properties'] as JsonSchema;
  op['oneOf'] = Object.keys(opProps).map((kind) => ({ required: [kind] }));
  // Kubernetes 1.20 validates an empty string as null ("must be of type string: \"null\""): nullable lets an
  // empty replace.to (a deletion) through. A literal null is then stored too, and refused by zod.
  const replace = opProps['replace'] as JsonSchema;
  ((replace['properties'] as JsonSchema)['to'] as JsonSchema)['nullable'] = true;
  const byteMap = opProps['byteMap'] as JsonSchema;
  byteMap['anyOf'] = [{ required: ['preset'] }, { required: ['pairs'] }];
  ((byteMap['properties'] as JsonSchema)['pairs'] as JsonSchema)['minProperties'] = 1;
  // A program's path is for `kstreams run` only: left out of the CRD, so that kubectl refuses it as an
  // unknown field and the apiserver prunes it; in a cluster a program comes from a ConfigMap.
  const program = opProps['program'] as JsonSchema;
  delete (program['properties'] as JsonSchema)['path'];
  program['required'] = ['configMap', 'key'];
  return spec;
}

const condition = (type: string, field: 'status' | 'reason' = 'status') => `.status.conditions[?(@.type=="${type}")].${field}`;

export function buildCrd(): JsonSchema {
  return {
    apiVersion: 'apiextensions.k8s.io/v1',
    kind: 'CustomResourceDefinition',
    metadata: {
      name: `${PLURAL}.${GROUP}`,
      labels: { 'app.kubernetes.io/name': 'kstreams', 'app.kubernetes.io/part-of': 'kstreams' },
    },
    spec: {
      group: GROUP,
      scope: 'Namespaced',
      names: { kind: KIND, listKind: `${KIND}List`, plural: PLURAL, singular: SINGULAR, shortNames: [...SHORT_NAMES], categories: ['kstreams'] },
      versions: [
        {
          name: VERSION,
          served: true,
          storage: true,
          subresources: { status: {} },
          additionalPrinterColumns: [
            { name: 'Port', type: 'integer', jsonPath: '.spec.port' },
            { name: 'Selected', type: 'integer', description: 'Pods the selector picks', jsonPath: '.status.podsSelected' },
            { name: 'Attached', type: 'integer', description: 'Pods whose data plane is attached', jsonPath: '.status.podsAttached' },
            { name: 'Connections', type: 'integer', description: 'Primary connections seen', jsonPath: '.status.connections' },
            { name: 'Mirrored', type: 'integer', description: 'Bytes mirrored', jsonPath: '.status.bytesMirrored' },
            { name: 'Dropped', type: 'integer', description: 'Bytes not mirrored (cut or failed mirrors)', jsonPath: '.status.bytesDropped' },
            { name: 'Ready', type: 'string', jsonPath: condition('Ready') },
            { name: 'Degraded', type: 'string', description: 'Reason of the Degraded condition (AsExpected when nothing is wrong)', jsonPath: condition('Degraded', 'reason') },
            { name: 'Age', type: 'date', jsonPath: '.metadata.creationTimestamp' },
          ],
          schema: {
            openAPIV3Schema: {
              type: 'object',
              description: 'StreamPath mirrors and transforms the inbound TCP traffic of the pods it selects, in the kernel.',
              required: ['spec'],
              properties: {
                apiVersion: { type: 'string' },
                kind: { type: 'string' },
                metadata: { type: 'object' },
                spec: addCrossFieldRules(jsonSchemaOf(StreamPathSpecSchema)),
                status: jsonSchemaOf(StreamPathStatusSchema),
              },
            },
          },
        },
      ],
    },
  };
}
