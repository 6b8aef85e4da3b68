// The public face of native/: the rest of the code reaches the addon only through here.
export * from './types.js';
export { Interception, DEFAULT_BYPASS_SOURCE, type InterceptionCounters } from './interception.js';
export { probeKernelFeatures, describeKernelProbe, type RawKernelProbe } from './kernel.js';
export { Engine, samplingBucket, DEFAULT_MIRROR_BUFFER_BUDGET } from './engine.js';
export { Replay, type ReplayConfig, type ReplayConnection, type ReplayFailure, type ReplayOutcome, type ReplayResult, type ReplayStats } from './replay.js';
