// Loads kstreams.node. The rest of native/lib wraps what it exports (declared in raw.ts) in typed classes.
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));

/** Where kstreams.node may be: beside the sources (native/lib) and beside the build output (dist/native/lib). */
function candidates(): string[] {
  const fromEnv = process.env['KSTREAMS_ADDON'];
  return [
    ...(fromEnv ? [fromEnv] : []),
    resolve(here, '../build/Release/kstreams.node'),
    resolve(here, '../../../native/build/Release/kstreams.node'),
  ];
}

import type { RawAddon } from './raw.js';

let loaded: RawAddon | undefined;

export function addon(): RawAddon {
  if (loaded) return loaded;
  const tried = candidates();
  const require = createRequire(import.meta.url);
  for (const path of tried) {
    if (existsSync(path)) {
      loaded = require(path) as RawAddon;
      return loaded;
    }
  }
  throw Object.assign(
    new Error(`kstreams.node not found; tried: ${tried.join(', ')}. Build it with: npm run build:native`),
    { code: 'EKSTREAMS_NO_ADDON' },
  );
}
