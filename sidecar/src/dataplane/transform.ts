// The seam where in-kernel transforms (sk_msg programs on the mirror and/or upstream sockets) plug in.
// attach.ts asks planTransform() for a plan before it starts anything, and hands the plan to the engine
// start; a later release returns a real plan here (programs to load, which sockets they go on) instead of
// refusing. Refusing is deliberate: mirroring without the transform would send unmasked bytes to staging.
import type { StreamPathSpec } from '../../../operator/src/api/streampath.js';
import { AttachError } from './errors.js';

/** What the data plane must set up to apply spec.transform. Empty in this version: nothing to apply. */
export interface TransformPlan {
  readonly applyTo: 'mirror' | 'primary' | 'both';
}

/** Undefined when the spec has no transform; throws when it has one this version cannot apply. */
export function planTransform(transform: StreamPathSpec['transform']): TransformPlan | undefined {
  if (transform === undefined) return undefined;
  throw new AttachError(
    'TransformUnsupported',
    'spec.transform: in-kernel transforms are not available in this version; remove spec.transform ' +
      '(mirroring without the transform would send unmasked bytes)',
    'spec.transform',
  );
}
