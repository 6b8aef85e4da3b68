// The real helm (v4) and kubectl binaries for the chart's tests, installed by scripts/install-helm.sh.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments } from 'yaml';

/** Must match HELM_VERSION in scripts/install-helm.sh. */
export const HELM_VERSION = '4.1.4';
export const DEFAULT_HELM = `/var/cache/kstreams/helm-${HELM_VERSION}/bin/helm`;
/** The cluster's own kubectl (1.20) for assertions against the integration apiserver. */
export const KUBECTL = process.env.KSTREAMS_KUBECTL ?? '/var/cache/kstreams/kubernetes-1.20.2/bin/kubectl';
export const CHART_DIR = join(dirname(fileURLToPath(import.meta.url)), '..');

/** Path of helm ($KSTREAMS_HELM or the cache); throws saying how to install it when absent. */
export function helmBinary(): string {
  const helm = process.env.KSTREAMS_HELM || DEFAULT_HELM;
  if (!existsSync(helm)) {
    throw new Error(
      `helm not found at ${helm}${process.env.KSTREAMS_HELM ? ' (KSTREAMS_HELM)' : ''}: ` +
        `run \`bash scripts/install-helm.sh\` (caches helm v${HELM_VERSION} in ${dirname(DEFAULT_HELM)}), or point KSTREAMS_HELM at a helm v4 binary.`,
    );
  }
  return helm;
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function run(file: string, args: string[], env: NodeJS.ProcessEnv = process.env, timeoutMs = 60_000): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    execFile(file, args, { env, timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err && typeof err.code !== 'number') return reject(new Error(`${file} ${args.join(' ')}: ${err.message}\n${stderr}`));
      resolve({ code: err ? (err.code as number) : 0, stdout, stderr });
    });
  });
}

/** Fails the test with helm's own words when the command did not succeed. */
export async function mustRun(file: string, args: string[], env?: NodeJS.ProcessEnv): Promise<string> {
  const r = await run(file, args, env);
  if (r.code !== 0) throw new Error(`\`${file.split('/').pop()} ${args.join(' ')}\` exited ${r.code}:\n${r.stderr}${r.stdout}`);
  return r.stdout;
}

export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  [key: string]: unknown;
}

export function parseManifests(text: string): K8sObject[] {
  return parseAllDocuments(text)
    .map((d) => {
      if (d.errors.length) throw new Error(`rendered YAML does not parse: ${d.errors[0]!.message}`);
      return d.toJS() as K8sObject | null;
    })
    .filter((o): o is K8sObject => o !== null);
}

/** `helm template` of the chart with --set-json pairs (values as JSON so types are exact). */
export async function renderChart(
  values: Record<string, unknown> = {},
  opts: { release?: string; namespace?: string; env?: NodeJS.ProcessEnv } = {},
): Promise<K8sObject[]> {
  const args = ['template', opts.release ?? 'kstreams', CHART_DIR, '--namespace', opts.namespace ?? 'kstreams-system'];
  for (const [key, value] of Object.entries(values)) args.push('--set-json', `${key}=${JSON.stringify(value)}`);
  return parseManifests(await mustRun(helmBinary(), args, opts.env));
}

export function findObject(objects: K8sObject[], kind: string, name?: string): K8sObject {
  const found = objects.filter((o) => o.kind === kind && (name === undefined || o.metadata.name === name));
  if (found.length !== 1)
    throw new Error(`expected one ${kind}${name ? ` ${name}` : ''}, found ${found.length} among ${objects.map((o) => `${o.kind}/${o.metadata.name}`).join(', ')}`);
  return found[0]!;
}
