#!/usr/bin/env node
// Entry point of the `kstreams` binary.
import { readFileSync } from 'node:fs';
import { main } from './program.js';

function packageVersion(): string {
  // Two levels differ between the sources (sidecar/src/cli) and the build (dist/sidecar/src/cli).
  for (const rel of ['../../../package.json', '../../../../package.json']) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(rel, import.meta.url), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'kstreams' && pkg.version) return pkg.version;
    } catch {
      // Try the next layout.
    }
  }
  return 'unknown';
}

const code = await main(process.argv, packageVersion());
// Flush stdout before exiting: the JSON summary is read by scripts through a pipe.
process.stdout.write('', () => process.exit(code));
