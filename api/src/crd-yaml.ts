import YAML from 'yaml';
import { buildCrd } from './crd.js';

export const CRD_HEADER = '# Generated from api/src/streampath.ts by `npm run crd:generate`. Do not edit.\n';

export function renderCrdYaml(): string {
  return CRD_HEADER + YAML.stringify(buildCrd(), { lineWidth: 0 });
}
