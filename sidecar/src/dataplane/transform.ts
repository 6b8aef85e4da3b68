// spec.transform -> what the engine loads (docs/adr/0006-in-kernel-transforms.md): the ops encoded as bytes
// by the API's encodeOps(), and a user program's object read from where the spec says (a file for the CLI, a
// ConfigMap for the agent). Everything that can be refused without the kernel is refused here, before an
// engine or an interception exists; what only the kernel can refuse (the verifier) comes back from the
// engine's start or update as ProgramRejected, with the verifier's output.
import { encodeOps, type EncodedOp, type StreamPathSpec } from '../../../api/src/streampath.js';
import type { EngineTransform, EngineTransformOp } from '../../../native/lib/types.js';
import { AttachError } from './errors.js';

export type ProgramSource = Extract<EncodedOp, { kind: 'program' }>['source'];

/** Reads a user program's BPF object; throws an Error whose message says what is missing. */
export type ProgramReader = (source: ProgramSource) => Promise<Uint8Array>;

/** Program objects above this are refused before the kernel sees them (a ConfigMap holds 1 MiB). */
export const MAX_PROGRAM_BYTES = 1 << 20;

const KIND = { mask: 1, replace: 2, byteMap: 3 } as const;

function describe(source: ProgramSource): string {
  return 'path' in source ? source.path : `ConfigMap ${source.configMap} key ${source.key}`;
}

/** Undefined when the spec has no transform. */
export async function planTransform(
  transform: StreamPathSpec['transform'],
  readProgram?: ProgramReader,
): Promise<EngineTransform | undefined> {
  if (transform === undefined) return undefined;
  const ops: EngineTransformOp[] = [];
  let program: EngineTransform['program'];
  const encoded = encodeOps(transform);
  for (const [i, op] of encoded.entries()) {
    const field = `spec.transform.ops[${i}]`;
    switch (op.kind) {
      case 'mask':
        ops.push({ kind: KIND.mask, a: op.after, b: op.until, with: op.with });
        break;
      case 'replace':
        ops.push({ kind: KIND.replace, a: op.from, b: op.to });
        break;
      case 'byteMap':
        ops.push({ kind: KIND.byteMap, a: op.table });
        break;
      case 'program': {
        const where = describe(op.source);
        if (!readProgram) {
          throw new AttachError('InvalidSpec', `${field}.program: ${where} cannot be read here`, `${field}.program`);
        }
        let elf: Uint8Array;
        try {
          elf = await readProgram(op.source);
        } catch (err) {
          throw new AttachError('ProgramRejected', `${field}.program: ${(err as Error).message}`, `${field}.program`, {
            cause: err,
          });
        }
        if (elf.length > MAX_PROGRAM_BYTES) {
          throw new AttachError(
            'ProgramRejected',
            `${field}.program: ${where} is ${elf.length} bytes; a BPF object may have at most ${MAX_PROGRAM_BYTES}`,
            `${field}.program`,
          );
        }
        if (elf.length < 4 || elf[0] !== 0x7f || elf[1] !== 0x45 || elf[2] !== 0x4c || elf[3] !== 0x46) {
          throw new AttachError(
            'ProgramRejected',
            `${field}.program: ${where} is not an ELF object (compile it with clang -target bpf -c)`,
            `${field}.program`,
          );
        }
        program = { elf, name: where, ...(op.section !== undefined ? { section: op.section } : {}) };
        break;
      }
    }
  }
  const applyTo = transform.applyTo;
  return {
    mirror: applyTo === 'mirror' || applyTo === 'both',
    primary: applyTo === 'primary' || applyTo === 'both',
    ops,
    ...(transform.holdMs !== undefined ? { holdMs: transform.holdMs } : {}),
    ...(program ? { program } : {}),
  };
}

function sameBytes(a: Uint8Array | undefined, b: Uint8Array | undefined): boolean {
  if (a === b) return true;
  if (!a || !b || a.length !== b.length) return false;
  return Buffer.from(a.buffer, a.byteOffset, a.length).equals(Buffer.from(b.buffer, b.byteOffset, b.length));
}

/** Whether two plans load the same thing (an unchanged transform is not loaded again on an edit). */
export function sameTransform(a: EngineTransform | undefined, b: EngineTransform | undefined): boolean {
  if (a === undefined || b === undefined) return a === b;
  if (a.mirror !== b.mirror || a.primary !== b.primary || a.holdMs !== b.holdMs || a.ops.length !== b.ops.length) return false;
  for (let i = 0; i < a.ops.length; i++) {
    const x = a.ops[i]!, y = b.ops[i]!;
    if (x.kind !== y.kind || x.with !== y.with || !sameBytes(x.a, y.a) || !sameBytes(x.b, y.b)) return false;
  }
  if (!a.program || !b.program) return a.program === b.program;
  return a.program.section === b.program.section && sameBytes(a.program.elf, b.program.elf);
}
