// The Node replayer baseline of the replay bench: what one would write without KStreams. It plays a
// capture (docs/capture.md, one session directory) against HOST:PORT as fast as the target answers, with
// the same turns as `kstreams replay --speed max`: per connection a socket; per turn the c2s bytes piped
// from fs.createReadStream({start, end}) into the socket, then a wait until the target has sent as many
// bytes as the recording's answer; after the last turn, FIN and a wait for the target's end. Plain JS.
//
//   node node-replayer.mjs SESSION_DIR HOST PORT [--concurrency N]
//     -> one JSON line {"connections","bytesSent","bytesReceived","seconds","cpuSeconds"}
import { createReadStream, readdirSync, readFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';

const [dir, host, portText] = process.argv.slice(2);
const ci = process.argv.indexOf('--concurrency');
const concurrency = ci > 0 ? Number(process.argv[ci + 1]) : 256;
const conns = join(dir, 'conns');
const ids = readdirSync(conns).filter((n) => n.endsWith('.idx')).map((n) => n.slice(0, -4)).sort();

function indexOf(id) {
  const lines = readFileSync(join(conns, `${id}.idx`), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  return { turns: lines.filter((l) => l.r === 'turn'), end: lines.find((l) => l.r === 'end') };
}

let bytesSent = 0;
let bytesReceived = 0;

function replayOne(id) {
  const { turns, end } = indexOf(id);
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host, port: Number(portText), noDelay: true });
    let received = 0;
    let want = 0;
    let wake = () => {};
    sock.on('data', (d) => {
      received += d.length;
      bytesReceived += d.length;
      if (received >= want) wake();
    });
    sock.on('error', reject);
    const answer = (n) =>
      new Promise((r) => {
        want = n;
        if (received >= n) return r();
        wake = r;
      });
    sock.once('connect', async () => {
      try {
        for (let i = 0; i < turns.length; i++) {
          await answer(turns[i].s2c ?? 0);
          const stop = i + 1 < turns.length ? turns[i + 1].c2s : end.c2s;
          if (stop > turns[i].c2s) {
            await new Promise((r, j) => {
              const file = createReadStream(join(conns, `${id}.c2s`), { start: turns[i].c2s, end: stop - 1, highWaterMark: 1 << 16 });
              file.on('error', j);
              file.on('end', r);
              file.pipe(sock, { end: false });
            });
            bytesSent += stop - turns[i].c2s;
          }
        }
        await answer(end.s2c ?? 0);
        sock.end();
        sock.resume();
        sock.once('close', resolve);
      } catch (err) {
        reject(err);
      }
    });
  });
}

const t0 = process.hrtime.bigint();
const cpu0 = process.cpuUsage();
let next = 0;
await Promise.all(
  Array.from({ length: Math.min(concurrency, ids.length) }, async () => {
    while (next < ids.length) await replayOne(ids[next++]);
  }),
);
const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
const cpu = process.cpuUsage(cpu0);
process.stdout.write(`${JSON.stringify({ connections: ids.length, bytesSent, bytesReceived, seconds, cpuSeconds: (cpu.user + cpu.system) / 1e6 })}\n`);
