// Copies the generated StreamPath CRD (crds/streampath.yaml, itself generated from the zod schema in
// operator/) into the chart, where templates/crds.yaml renders it gated by `crds.install`. Helm reads only
// files inside the chart, and never upgrades files under a chart's crds/ folder, hence a copy in files/.
//
//   npx tsx charts/kstreams/generate.ts           write the copy
//   npx tsx charts/kstreams/generate.ts --check   exit 1 when the copy is stale (CI)
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

export const CHART_DIR = dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = join(CHART_DIR, '..', '..');
/** The source of truth, written by `npm run crd:generate`. */
export const CRD_SOURCE = join(REPO_ROOT, 'crds', 'streampath.yaml');
/** The chart's copy, read by templates/crds.yaml through .Files.Get. */
export const CRD_CHART_COPY = join(CHART_DIR, 'files', 'crds', 'streampath.yaml');

export function readCrdSource(): string {
  return readFileSync(CRD_SOURCE, 'utf8');
}

/** Whether the chart's copy equals crds/streampath.yaml byte for byte. */
export function chartCrdIsCurrent(): boolean {
  let copy: string;
  try {
    copy = readFileSync(CRD_CHART_COPY, 'utf8');
  } catch {
    return false;
  }
  return copy === readCrdSource();
}

export function writeChartCrd(): void {
  writeFileSync(CRD_CHART_COPY, readCrdSource());
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const rel = (p: string) => relative(process.cwd(), p) || p;
  if (process.argv.includes('--check')) {
    if (!chartCrdIsCurrent()) {
      process.stderr.write(`${rel(CRD_CHART_COPY)} differs from ${rel(CRD_SOURCE)}: run \`npx tsx charts/kstreams/generate.ts\`\n`);
      process.exit(1);
    }
  } else {
    writeChartCrd();
    process.stdout.write(`wrote ${rel(CRD_CHART_COPY)} from ${rel(CRD_SOURCE)}\n`);
  }
}
