// Types of xform-proxy.mjs's module side, for the bench's TypeScript tests.
import type { Transform } from 'node:stream';

/** The Transform for one op in the StreamPath's shape: {mask}, {replace} or {byteMap}. */
export function createTransform(op: unknown): Transform;
