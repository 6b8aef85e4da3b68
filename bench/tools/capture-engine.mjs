// The capture bench's engine process: argv[2] is an EngineConfig (JSON). Prints "listening PORT", then on
// every stdin line one JSON line of the engine's stats; stops the engine and exits when stdin ends. Run as
// its own process so that the bench reads its CPU (all threads, the capture writer's included).
import { createRequire } from 'node:module';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const addon = require(process.env.KSTREAMS_ADDON ?? fileURLToPath(new URL('../../native/build/Release/kstreams.node', import.meta.url)));
const started = addon.engineStart(JSON.parse(process.argv[2]));
process.stdout.write(`listening ${started.listenPort}\n`);
const rl = createInterface({ input: process.stdin });
rl.on('line', () => process.stdout.write(`${JSON.stringify(addon.engineStats(started.handle))}\n`));
rl.on('close', async () => {
  await addon.engineStop(started.handle);
  process.exit(0);
});
