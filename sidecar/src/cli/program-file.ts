// The CLI's source of a transform's user program: spec.transform.ops[].program.path, read whole (after a
// size check, so a wrong path to a huge file is not read). A ConfigMap needs a cluster.
import { readFile, stat } from 'node:fs/promises';
import { MAX_PROGRAM_BYTES, type ProgramSource } from '../dataplane/transform.js';

export async function readProgramFile(source: ProgramSource): Promise<Uint8Array> {
  if (!('path' in source)) {
    throw new Error(`ConfigMap ${source.configMap} needs a cluster; for \`kstreams run\` give program.path (the BPF object file)`);
  }
  let size: number;
  try {
    const st = await stat(source.path);
    if (!st.isFile()) throw new Error(`${source.path} is not a file`);
    size = st.size;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new Error(`${source.path} does not exist`);
    throw err;
  }
  if (size > MAX_PROGRAM_BYTES) throw new Error(`${source.path} is ${size} bytes; a BPF object may have at most ${MAX_PROGRAM_BYTES}`);
  return new Uint8Array(await readFile(source.path));
}
