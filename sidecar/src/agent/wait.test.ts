import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { waitForAgentReady } from './wait.js';

describe('waitForAgentReady', () => {
  let server: Server | undefined;
  afterEach(async () => {
    await new Promise<void>((r) => (server ? server.close(() => r()) : r()));
    server = undefined;
  });

  async function agentReadyAfter(notReadyAnswers: number): Promise<number> {
    let answers = 0;
    server = createServer((req, res) => {
      expect(req.url).toBe('/readyz');
      answers++;
      if (answers <= notReadyAnswers) {
        res.writeHead(503);
        res.end('not ready: first sync with the API not done yet\n');
      } else {
        res.writeHead(200);
        res.end('ok\n');
      }
    });
    await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
    return (server.address() as AddressInfo).port;
  }

  it('returns once /readyz answers 200', async () => {
    const port = await agentReadyAfter(3);
    expect(await waitForAgentReady({ port, timeoutSeconds: 10, intervalMs: 5 })).toEqual({ ready: true, last: 'ok', polls: 4 });
  });

  it('gives up at the deadline with the last reason', async () => {
    const port = await agentReadyAfter(Number.MAX_SAFE_INTEGER);
    const r = await waitForAgentReady({ port, timeoutSeconds: 0.3, intervalMs: 20 });
    expect(r.ready).toBe(false);
    expect(r.last).toBe('HTTP 503: not ready: first sync with the API not done yet');
    expect(r.polls).toBeGreaterThan(1);
  });

  it('keeps polling while nothing listens yet (the agent is still starting)', async () => {
    const probe = createServer();
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
    const port = (probe.address() as AddressInfo).port;
    await new Promise<void>((r) => probe.close(() => r()));
    const r = await waitForAgentReady({ port, timeoutSeconds: 0.2, intervalMs: 20 });
    expect(r.ready).toBe(false);
    expect(r.last).toMatch(/ECONNREFUSED/);
  });
});
