#!/usr/bin/node
// /usr/local/bin/kstreams in the KStreams image is a symlink to this file: the `kstreams` CLI (`kstreams agent`,
// `kstreams agent wait`, ...) started without a shell or /usr/bin/env, which the image does not have.
// Node resolves the symlink, so the .mjs extension makes this an ES module wherever it is called from.
await import('/opt/kstreams/dist/sidecar/src/cli/main.js');
