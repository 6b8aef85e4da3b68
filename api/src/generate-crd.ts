// Writes crds/streampath.yaml from the zod schema: `npm run crd:generate`.
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { renderCrdYaml } from './crd-yaml.js';

const target = fileURLToPath(new URL('../../crds/streampath.yaml', import.meta.url));
writeFileSync(target, renderCrdYaml());
console.log(`wrote ${target}`);
