// `node --import <this file>`: every module the ESM loader loads, in this thread and in every worker thread
// (they inherit the flag), is appended as its URL to the file named by KSTREAMS_MODULE_LOG, as it loads.
// Tests read it to see which packages a process loaded (e.g. that an in-cluster operator never loads
// @kubernetes/client-node).
import { register } from 'node:module';

const file = process.env.KSTREAMS_MODULE_LOG;
if (file) register(new URL('./hooks.mjs', import.meta.url), { data: { file } });
