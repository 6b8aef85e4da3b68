// A test helper for the drain tests (attach.kernel.test.ts, cli.kernel.test.ts): one keep-alive HTTP
// connection from the scene's client namespace to the app's port, held open by a small node process that
// sends a request per line it is given and says how the connection ended.
import type { ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { waitFor, type Scene } from '../demo/scenario.js';

/**
 * One keep-alive HTTP connection from the client namespace, held open by a small node process, which
 * says how the connection ended: 'closed by us', 'end' (the peer's FIN) or the socket error's code.
 */
export class KeepAlive {
  private readonly lines: string[] = [];
  private static readonly live = new Set<ChildProcess>();

  static {
    process.once('exit', () => {
      for (const c of KeepAlive.live) c.kill('SIGKILL');
    });
  }

  private constructor(private readonly child: ChildProcess) {
    KeepAlive.live.add(child);
    child.once('exit', () => KeepAlive.live.delete(child));
    createInterface({ input: child.stdout! }).on('line', (l) => this.lines.push(l));
  }

  /** How the connection ended: 'closed by us', 'end' (the peer's FIN), or the error code (ECONNRESET). */
  ended(timeoutMs = 30_000): Promise<string> {
    return waitFor('the connection to end', () => this.lines.find((l) => l.startsWith('ended '))?.slice(6), timeoutMs);
  }

  kill(): void {
    this.child.kill('SIGKILL');
  }

  static open(scene: Scene): KeepAlive {
    const script = String.raw`
      const net = require('node:net');
      const s = net.connect(${scene.port}, '${scene.appAddress}');
      let buf = '';
      let closing = false;
      s.on('data', (d) => {
        buf += d.toString('latin1');
        for (;;) {
          const head = buf.indexOf('\r\n\r\n');
          if (head < 0) return;
          const length = Number((/\r\ncontent-length: *(\d+)/i.exec(buf.slice(0, head)) || [])[1] || 0);
          if (buf.length < head + 4 + length) return;
          console.log('status ' + buf.slice(9, 12));
          buf = buf.slice(head + 4 + length);
        }
      });
      s.on('end', () => { console.log('ended ' + (closing ? 'closed by us' : 'end')); });
      s.on('error', (e) => { console.log('ended ' + (e.code || e.message)); });
      require('node:readline').createInterface({ input: process.stdin }).on('line', (l) => {
        if (l === 'close') { closing = true; s.end(); return; }
        s.write('GET ' + l + ' HTTP/1.1\r\nHost: app\r\n\r\n');
      });
      s.on('close', () => setTimeout(() => process.exit(0), 50));
    `;
    return new KeepAlive(scene.client.spawn(process.execPath, ['-e', script], { stdio: ['pipe', 'pipe', 'inherit'] }));
  }

  async request(path: string): Promise<number> {
    const n = this.lines.filter((l) => l.startsWith('status ')).length;
    this.child.stdin!.write(`${path}\n`);
    const line = await waitFor(`the answer to ${path}`, () => this.lines.filter((l) => l.startsWith('status '))[n]);
    return Number(line.slice(7));
  }

  close(): void {
    this.child.stdin!.write('close\n');
  }
}
