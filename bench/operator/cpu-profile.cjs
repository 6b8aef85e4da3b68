// Preloaded into the operator by bench/operator/feed-scale.ts --profile-edit DIR (node --require): SIGUSR2
// starts a V8 CPU profile of the main thread, the next SIGUSR2 stops it and writes
// $KSTREAMS_CPU_PROFILE_DIR/<pid>-<n>.cpuprofile (Chrome DevTools format), then <same>.done. A profile of one
// window of the run (the edit), without the process having to exit: the bench SIGKILLs it afterwards.
'use strict';
const inspector = require('node:inspector');
const { writeFileSync } = require('node:fs');
const { join } = require('node:path');

const dir = process.env.KSTREAMS_CPU_PROFILE_DIR;
const intervalUs = Number(process.env.KSTREAMS_CPU_PROFILE_INTERVAL_US || 1000);
if (dir) {
  const session = new inspector.Session();
  session.connect();
  let running = false;
  let n = 0;
  process.on('SIGUSR2', () => {
    if (!running) {
      running = true;
      session.post('Profiler.enable', () =>
        session.post('Profiler.setSamplingInterval', { interval: intervalUs }, () => session.post('Profiler.start')),
      );
      return;
    }
    session.post('Profiler.stop', (err, res) => {
      running = false;
      const file = join(dir, `${process.pid}-${++n}.cpuprofile`);
      writeFileSync(file, err ? JSON.stringify({ error: String(err) }) : JSON.stringify(res.profile));
      writeFileSync(`${file}.done`, '');
    });
  });
}
