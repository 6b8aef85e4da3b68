import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { buildCrd } from './crd.js';
import { renderCrdYaml } from './crd-yaml.js';

const committed = fileURLToPath(new URL('../../crds/streampath.yaml', import.meta.url));

describe('the StreamPath CRD', () => {
  it('committed crds/streampath.yaml is what the zod schema generates (run npm run crd:generate)', () => {
    expect(readFileSync(committed, 'utf8')).toBe(renderCrdYaml());
  });

  it('is a structural schema: no additionalProperties: false, no typed oneOf branches', () => {
    const walk = (node: unknown, path: string): void => {
      if (Array.isArray(node)) return node.forEach((n, i) => walk(n, `${path}[${i}]`));
      if (typeof node !== 'object' || node === null) return;
      const o = node as Record<string, unknown>;
      expect(o['additionalProperties'], path).not.toBe(false);
      for (const branch of (o['oneOf'] as Record<string, unknown>[] | undefined) ?? []) {
        expect(Object.keys(branch), `${path}.oneOf`).toEqual(['required']);
      }
      for (const [k, v] of Object.entries(o)) walk(v, `${path}.${k}`);
    };
    walk(YAML.parse(readFileSync(committed, 'utf8')), '');
  });

  it('has the status subresource, short name sp and the printer columns users read', () => {
    const crd = buildCrd() as any;
    const version = crd.spec.versions[0];
    expect(crd.spec.names.shortNames).toEqual(['sp']);
    expect(version.subresources).toEqual({ status: {} });
    expect(version.additionalPrinterColumns.map((c: { name: string }) => c.name)).toEqual([
      'Port', 'Selected', 'Attached', 'Connections', 'Mirrored', 'Dropped', 'Ready', 'Degraded', 'Age',
    ]);
    const column = (name: string) => version.additionalPrinterColumns.find((c: { name: string }) => c.name === name).jsonPath;
    expect(column('Selected')).toBe('.status.podsSelected');
    expect(column('Attached')).toBe('.status.podsAttached');
    expect(column('Degraded')).toBe('.status.conditions[?(@.type=="Degraded")].reason');
  });
});
