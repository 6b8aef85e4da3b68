// The capture bench's Node recorder: what a recorder written in Node does. node-recorder.mjs DIR PORT
// listens on 127.0.0.1:PORT and pipes every connection into its own file with fs.createWriteStream (every
// byte through user space: socket -> Node buffer -> write()). Prints "listening PORT", then one line
// "recorded BYTES" per connection once its file is closed.
import { createWriteStream } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';

const [dir, port] = process.argv.slice(2);
let n = 0;
const server = net.createServer((sock) => {
  const file = createWriteStream(join(dir, `${String(++n).padStart(9, '0')}.c2s`));
  let bytes = 0;
  sock.on('data', (d) => (bytes += d.length));
  sock.pipe(file);
  file.on('close', () => process.stdout.write(`recorded ${bytes}\n`));
  sock.on('error', () => file.end());
});
server.listen(Number(port), '127.0.0.1', () => process.stdout.write(`listening ${server.address().port}\n`));
process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
