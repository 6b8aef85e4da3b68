// `kstreams agent wait`: the postStart hook the webhook adds on clusters without native sidecars. The
// kubelet starts the app container only after this hook returns, so the app's first connections already
// go through the data plane. It polls the agent's /readyz on loopback until 200 or the deadline.
import { request } from 'node:http';

export interface WaitOptions {
  port: number;
  timeoutSeconds: number;
  host?: string;
  /** Between polls. Default 200 ms. */
  intervalMs?: number;
}

export interface WaitResult {
  ready: boolean;
  /** The last answer (or error) from /readyz, to say why it was not ready. */
  last: string;
  polls: number;
}

function readyz(host: string, port: number, timeoutMs: number): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host, port, path: '/readyz', method: 'GET', timeout: timeoutMs }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d.slice(0, 4096)));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: body.trim() }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end();
  });
}

/** Polls until the agent is ready or `timeoutSeconds` passed; never throws. */
export async function waitForAgentReady(opts: WaitOptions): Promise<WaitResult> {
  const host = opts.host ?? '127.0.0.1';
  const interval = opts.intervalMs ?? 200;
  const deadline = Date.now() + opts.timeoutSeconds * 1000;
  let last = 'not polled';
  let polls = 0;
  for (;;) {
    polls++;
    try {
      const r = await readyz(host, opts.port, Math.max(100, Math.min(2000, deadline - Date.now())));
      if (r.status === 200) return { ready: true, last: r.body, polls };
      last = `HTTP ${r.status}: ${r.body}`;
    } catch (err) {
      last = (err as Error).message;
    }
    if (Date.now() + interval > deadline) return { ready: false, last, polls };
    await new Promise((r) => setTimeout(r, interval));
  }
}
