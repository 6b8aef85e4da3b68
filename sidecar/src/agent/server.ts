// The agent's HTTP endpoints. Read-only, GET only, small answers; the operator polls /v1/report.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import type { AgentReport } from '../../../api/src/agent.js';

export interface Readiness {
  ready: boolean;
  /** Why not ready, one sentence each. */
  reasons: string[];
}

export interface AgentHttpHandlers {
  readiness(): Readiness;
  report(): Promise<AgentReport>;
  registry: Registry;
  logger: Logger;
}

export interface AgentHttpServer {
  server: Server;
  port: number;
  close(): Promise<void>;
}

export async function startAgentServer(
  handlers: AgentHttpHandlers,
  port: number,
  host: string,
): Promise<AgentHttpServer> {
  const server = createServer((req, res) => {
    const send = (status: number, body: string, type = 'text/plain; charset=utf-8') => {
      res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
      res.end(body);
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('allow', 'GET, HEAD');
      return send(405, 'method not allowed\n');
    }
    const path = (req.url ?? '/').split('?')[0];
    const fail = (err: unknown) => {
      handlers.logger.error({ err, path }, 'request failed');
      if (!res.headersSent) send(500, `internal error: ${(err as Error)?.message ?? String(err)}\n`);
      else res.destroy();
    };
    switch (path) {
      case '/healthz':
        return send(200, 'ok\n');
      case '/readyz': {
        const r = handlers.readiness();
        return send(r.ready ? 200 : 503, r.ready ? 'ok\n' : `not ready: ${r.reasons.join('; ')}\n`);
      }
      case '/metrics':
        handlers.registry
          .metrics()
          .then((text) => send(200, text, handlers.registry.contentType))
          .catch(fail);
        return;
      case '/v1/report':
        handlers
          .report()
          .then((report) => send(200, JSON.stringify(report), 'application/json'))
          .catch(fail);
        return;
      default:
        return send(404, 'not found: try /healthz, /readyz, /metrics or /v1/report\n');
    }
  });
  // Slow or idle clients must not pin sockets in a sidecar.
  server.requestTimeout = 10_000;
  server.headersTimeout = 5_000;
  server.keepAliveTimeout = 5_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return {
    server,
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
