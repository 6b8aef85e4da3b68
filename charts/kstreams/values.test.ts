import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { CHART_DIR } from './generate.js';

const valuesText = readFileSync(join(CHART_DIR, 'values.yaml'), 'utf8');
type Schema = { type?: string; properties?: Record<string, Schema>; additionalProperties?: unknown; required?: string[] };
const schema = JSON.parse(readFileSync(join(CHART_DIR, 'values.schema.json'), 'utf8')) as Schema;

describe('values.yaml', () => {
  it('documents every value with a `# --` comment (a documented map value covers its children)', () => {
    const lines = valuesText.split('\n');
    const undocumented: string[] = [];
    let coveredDeeperThan = -1; // indent of a documented map whose children need no comment of their own
    lines.forEach((line, i) => {
      const m = /^(\s*)([A-Za-z]\w*):(.*)$/.exec(line);
      if (!m) return;
      const indent = m[1]!.length;
      if (coveredDeeperThan >= 0 && indent > coveredDeeperThan) return;
      coveredDeeperThan = -1;
      let j = i - 1;
      while (j >= 0 && /^\s*#(?! --)/.test(lines[j]!)) j--;
      const documented = /^\s*# -- /.test(lines[j] ?? '');
      const hasChildren = m[3]!.trim() === '' && (lines[i + 1] ?? '').startsWith(`${m[1]}  `);
      if (documented && hasChildren) coveredDeeperThan = indent;
      else if (!documented && !hasChildren) undocumented.push(`values.yaml:${i + 1}: ${line.trim()}`);
    });
    expect(undocumented).toEqual([]);
  });

  it('has every section strict in values.schema.json: a typo is refused, not ignored', () => {
    const loose: string[] = [];
    const walk = (value: unknown, s: Schema | undefined, path: string) => {
      if (!s) return loose.push(`${path}: not in the schema`);
      if (value === null || typeof value !== 'object' || Array.isArray(value)) return;
      // Free-form maps (resources, labels, securityContext, ...) are typed by Kubernetes, not by us.
      if (s.properties === undefined) return;
      if (s.additionalProperties !== false) loose.push(`${path}: additionalProperties is not false`);
      for (const [k, v] of Object.entries(value)) walk(v, s.properties[k], path ? `${path}.${k}` : k);
    };
    walk(parseYaml(valuesText), schema, '');
    expect(loose).toEqual([]);
  });
});
