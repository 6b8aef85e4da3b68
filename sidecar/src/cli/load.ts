// Reads one StreamPath from a file or stdin and parses it with the API's own schema, so the CLI accepts
// exactly what `kubectl apply` would, and names the field when it does not.
import { readFile } from 'node:fs/promises';
import { parseAllDocuments } from 'yaml';
import { parseStreamPath, type StreamPath } from '../../../api/src/streampath.js';
import { CliError, EXIT } from './errors.js';

async function readAll(stream: NodeJS.ReadableStream): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(typeof chunk === 'string' ? Buffer.from(chunk) : (chunk as Buffer));
  return Buffer.concat(chunks).toString('utf8');
}

/** The file's contents; `-` is stdin. */
export async function readSource(file: string, stdin: NodeJS.ReadableStream = process.stdin): Promise<string> {
  if (file === '-') return readAll(stdin);
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why =
      code === 'ENOENT'
        ? 'no such file'
        : code === 'EISDIR'
          ? 'it is a directory'
          : code === 'EACCES'
            ? 'permission denied'
            : (err as Error).message;
    throw new CliError(
      EXIT.usage,
      `cannot read ${file}: ${why}; give the path of a StreamPath YAML file (\`kstreams example > streampath.yaml\` writes one)`,
    );
  }
}

/** `spec.mirror: Unrecognized key: "colour"` -> `spec.mirror.colour: unknown field`: the typo is what the user looks for. */
export function nameUnknownField(issue: string): string {
  const one = /^(.*): Unrecognized key: "([^"]*)"$/.exec(issue);
  if (one) {
    const parent = one[1] === '(root)' ? '' : `${one[1]}.`;
    return `${parent}${one[2]}: unknown field (check its spelling and indentation)`;
  }
  return issue.replace(/: Unrecognized keys: (.*)$/, ': unknown fields $1 (check their spelling and indentation)');
}

/** Parses YAML text holding exactly one StreamPath; `label` names the source in messages. */
export function parseStreamPathText(text: string, label: string): StreamPath {
  const docs = parseAllDocuments(text);
  const list = Array.isArray(docs) ? docs : [];
  const nonEmpty = list.filter((d) => d.contents !== null || d.errors.length > 0);
  if (nonEmpty.length === 0) {
    throw new CliError(EXIT.usage, `${label} is empty; it must hold one StreamPath (see \`kstreams example\`)`);
  }
  if (nonEmpty.length > 1) {
    throw new CliError(
      EXIT.usage,
      `${label} holds ${nonEmpty.length} YAML documents; kstreams takes one StreamPath per file: put each in its own file and run one kstreams per file`,
    );
  }
  const doc = nonEmpty[0]!;
  const yamlError = doc.errors[0];
  if (yamlError) {
    const pos = yamlError.linePos?.[0];
    const what = yamlError.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '');
    throw new CliError(
      EXIT.usage,
      `${label}: YAML error${pos ? ` at line ${pos.line}, column ${pos.col}` : ''}: ${what}; fix the YAML and run again`,
    );
  }
  let value: unknown;
  try {
    value = doc.toJS();
  } catch (err) {
    throw new CliError(EXIT.usage, `${label}: YAML error: ${(err as Error).message}; fix the YAML and run again`);
  }
  const r = parseStreamPath(value);
  if (!r.ok) {
    const errors = r.errors.map(nameUnknownField);
    const n = errors.length;
    throw new CliError(
      EXIT.usage,
      `${label}: invalid StreamPath: ${errors.join('; ')}; fix ${n === 1 ? 'this field' : `these ${n} fields`} and run again`,
    );
  }
  return r.value;
}

export async function loadStreamPath(file: string, stdin?: NodeJS.ReadableStream): Promise<StreamPath> {
  const text = await readSource(file, stdin);
  return parseStreamPathText(text, file === '-' ? '<stdin>' : file);
}
