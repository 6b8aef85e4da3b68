// Paths inside the repository, the same whether the bench runs from dist/ (npm run bench) or from source.
import { fileURLToPath } from 'node:url';

const root = new URL(import.meta.url.includes('/dist/') ? '../../../' : '../../', import.meta.url);

/** Absolute path of a file or folder given relative to the repository root. */
export function repoPath(relative: string): string {
  return fileURLToPath(new URL(relative, root));
}
