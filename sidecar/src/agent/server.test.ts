import { pino } from 'pino';
import { Registry } from 'prom-client';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentReportSchema, type AgentReport } from '../../../api/src/agent.js';
import { startAgentServer, type AgentHttpServer, type Readiness } from './server.js';

describe('the agent HTTP server', () => {
  let server: AgentHttpServer | undefined;
  afterEach(async () => {
    await server?.close();
    server = undefined;
  });

  async function start(readiness: Readiness, report: () => Promise<AgentReport>) {
    server = await startAgentServer(
      { readiness: () => readiness, report, registry: new Registry(), logger: pino({ level: 'silent' }) },
      0,
      '127.0.0.1',
    );
    return (path: string, init?: RequestInit) => fetch(`http://127.0.0.1:${server!.port}${path}`, init);
  }

  const sample: AgentReport = {
    pod: { namespace: 'shop', name: 'checkout-0' },
    ready: true,
    streamPaths: [{ name: 'a', generation: 2, attached: true, connections: 1, bytesPrimary: 10, bytesMirrored: 10, bytesDropped: 0, targets: [] }],
  };

  it('answers /healthz, and /readyz with the reasons it is not ready', async () => {
    const readiness: Readiness = { ready: false, reasons: ['first sync with the API not done yet'] };
    const get = await start(readiness, async () => sample);
    expect((await get('/healthz')).status).toBe(200);
    const r = await get('/readyz');
    expect(r.status).toBe(503);
    expect(await r.text()).toContain('first sync with the API not done yet');
    readiness.ready = true;
    readiness.reasons = [];
    expect((await get('/readyz')).status).toBe(200);
  });

  it('serves the report as JSON that parses with the contract schema', async () => {
    const get = await start({ ready: true, reasons: [] }, async () => sample);
    const r = await get('/v1/report');
    expect(r.headers.get('content-type')).toBe('application/json');
    expect(AgentReportSchema.parse(await r.json())).toEqual(sample);
  });

  it('turns a failing report into a 500 with the message, and keeps serving', async () => {
    const get = await start({ ready: true, reasons: [] }, async () => {
      throw new Error('counters unavailable');
    });
    const r = await get('/v1/report');
    expect(r.status).toBe(500);
    expect(await r.text()).toContain('counters unavailable');
    expect((await get('/healthz')).status).toBe(200);
  });

  it('refuses writes and unknown paths', async () => {
    const get = await start({ ready: true, reasons: [] }, async () => sample);
    expect((await get('/v1/report', { method: 'POST', body: '{}' })).status).toBe(405);
    expect((await get('/nope')).status).toBe(404);
  });
});
