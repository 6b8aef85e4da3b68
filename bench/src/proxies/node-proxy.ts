// The user-level baseline: a Node.js stream.pipe TCP proxy, optionally with a user-space mirror copy.
//   node node-proxy.js UPSTREAM_PORT [MIRROR_PORT]
// Listens on 127.0.0.1 (a free port) and prints {"port":N} once ready. TCP_NODELAY everywhere, as a proxy
// written with care would do (HAProxy does the same), so small messages are not held back by Nagle. Half-close is kept (allowHalfOpen)
// so a client's FIN travels to the server and the server's reply still comes back, as with a real proxy.
// The mirror gets every chunk the client sends (written from user space) and is cut, never waited for,
// when more than MIRROR_BACKLOG bytes are queued for it: the same promise KStreams makes.
import net from 'node:net';

const MIRROR_BACKLOG = 16 * 1024 * 1024;
const host = '127.0.0.1';
const upstreamPort = Number(process.argv[2]);
const mirrorPort = process.argv[3] ? Number(process.argv[3]) : undefined;

if (!Number.isInteger(upstreamPort) || upstreamPort <= 0) {
  process.stderr.write('usage: node-proxy UPSTREAM_PORT [MIRROR_PORT]\n');
  process.exit(2);
}

function attachMirror(client: net.Socket, port: number): void {
  const mirror = net.connect({ host, port, noDelay: true });
  let cut = false;
  const cutMirror = (): void => {
    cut = true;
    mirror.destroy();
  };
  mirror.on('error', cutMirror);
  mirror.resume(); // a mirror's replies are discarded
  client.on('data', (chunk: Buffer) => {
    if (cut) return;
    if (mirror.writableLength > MIRROR_BACKLOG) cutMirror();
    else mirror.write(chunk);
  });
  client.on('end', () => {
    if (!cut) mirror.end();
  });
  client.on('close', () => {
    if (!cut) mirror.end();
  });
}

const server = net.createServer({ allowHalfOpen: true, noDelay: true }, (client) => {
  const upstream = net.connect({ host, port: upstreamPort, allowHalfOpen: true, noDelay: true });
  const fail = (): void => {
    client.destroy();
    upstream.destroy();
  };
  client.on('error', fail);
  upstream.on('error', fail);
  if (mirrorPort !== undefined) attachMirror(client, mirrorPort);
  client.pipe(upstream);
  upstream.pipe(client);
});

server.listen(0, host, () => {
  const address = server.address() as net.AddressInfo;
  process.stdout.write(`${JSON.stringify({ port: address.port })}\n`);
});

process.on('SIGTERM', () => process.exit(0));
