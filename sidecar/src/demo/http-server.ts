// A small HTTP server for the demo and the CLI kernel test, run inside a network namespace. It logs each
// request line and each finished connection (with the bytes it received) to stdout as one JSON object per
// line, so the caller can compare what the app and the mirror target saw.
//   node http-server.js --name app --port 8080
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    name: { type: 'string', default: 'server' },
    port: { type: 'string', default: '8080' },
    host: { type: 'string', default: '0.0.0.0' },
  },
});
const name = values.name!;
const port = Number(values.port);

function log(event: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify({ server: name, ...event })}\n`);
}

const server = createServer((req, res) => {
  let bodyBytes = 0;
  req.on('data', (chunk: Buffer) => (bodyBytes += chunk.length));
  req.on('end', () => {
    log({
      event: 'request',
      requestLine: `${req.method} ${req.url} HTTP/${req.httpVersion}`,
      demoRequest: req.headers['x-demo-request'] ?? null,
      bodyBytes,
      remote: `${req.socket.remoteAddress}:${req.socket.remotePort}`,
    });
    const body = `hello from ${name}: ${req.method} ${req.url}\n`;
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  });
});

server.on('connection', (socket) => {
  const remote = `${socket.remoteAddress}:${socket.remotePort}`;
  socket.on('close', () => log({ event: 'connection-closed', remote, bytesRead: socket.bytesRead }));
});

server.listen(port, values.host, () => log({ event: 'listening', port }));

// The parent stops us with SIGTERM (or SIGKILL on cleanup); exit promptly either way.
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
