// RFC 6902 'add'/'replace' as the apiserver applies them, for tests that check a patch on its result.
import type { JsonPatchOp } from '../patch.js';

function unescape(token: string): string {
  return token.replace(/~1/g, '/').replace(/~0/g, '~');
}

/** Returns a patched deep copy; throws like the apiserver would on a path that does not exist. */
export function applyJsonPatch<T>(doc: T, patch: readonly JsonPatchOp[]): T {
  const root = { value: structuredClone(doc) as unknown };
  for (const op of patch) {
    const tokens = op.path.split('/').slice(1).map(unescape);
    if (op.path === '' || tokens.length === 0) throw new Error('whole-document ops are not used');
    let parent: unknown = root.value;
    for (const t of tokens.slice(0, -1)) {
      if (Array.isArray(parent)) parent = parent[Number(t)];
      else if (typeof parent === 'object' && parent !== null) parent = (parent as Record<string, unknown>)[t];
      else throw new Error(`path ${op.path}: ${t} has no parent`);
      if (parent === undefined) throw new Error(`path ${op.path}: missing ${t}`);
    }
    const last = tokens[tokens.length - 1] as string;
    const value = structuredClone(op.value);
    if (Array.isArray(parent)) {
      if (last === '-') parent.push(value);
      else {
        const i = Number(last);
        if (!Number.isInteger(i) || i < 0 || i > parent.length) throw new Error(`path ${op.path}: bad index`);
        if (op.op === 'add') parent.splice(i, 0, value);
        else parent[i] = value;
      }
    } else if (typeof parent === 'object' && parent !== null) {
      (parent as Record<string, unknown>)[last] = value;
    } else throw new Error(`path ${op.path}: parent is not a container`);
  }
  return root.value as T;
}
