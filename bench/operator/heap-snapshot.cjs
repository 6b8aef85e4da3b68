// Preloaded into the operator by bench/operator/feed-scale.ts --heap-snapshot DIR (node --require): each
// SIGWINCH writes a V8 heap snapshot of the main thread to $KSTREAMS_HEAP_SNAPSHOT_DIR/<pid>-<n>.heapsnapshot,
// then <same>.done. bench/operator/heap-summary.ts compares two of them by what holds the bytes.
'use strict';
const v8 = require('node:v8');
const { writeFileSync } = require('node:fs');
const { join } = require('node:path');

const dir = process.env.KSTREAMS_HEAP_SNAPSHOT_DIR;
if (dir) {
  let n = 0;
  process.on('SIGWINCH', () => {
    const file = join(dir, `${process.pid}-${++n}.heapsnapshot`);
    v8.writeHeapSnapshot(file);
    writeFileSync(`${file}.done`, '');
  });
}
