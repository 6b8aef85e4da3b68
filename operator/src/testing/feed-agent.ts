// A stand-in for the sidecar agent on the operator feed, for the operator's integration tests: the real
// feed client (sidecar/src/agent/feed-client.ts) with a pod-bound ServiceAccount token minted by the real
// apiserver's TokenRequest, and a report the test edits. It records every configuration it receives.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { FeedClient } from '../../../sidecar/src/agent/feed-client.js';
import type { AgentReport, AgentStreamPathReport } from '../../../api/src/agent.js';
import { FEED_AUDIENCE, type ConfigFrame } from '../../../api/src/feed.js';
import type { KubeTransport } from '../../../runtime/src/rest.js';

/** A token for the feed's audience bound to the pod, as the kubelet projects it into the sidecar. */
export async function podToken(kube: KubeTransport, namespace: string, pod: string, opts: { serviceAccount?: string; audience?: string; uid?: string } = {}): Promise<string> {
  const p = opts.uid ? { metadata: { uid: opts.uid } } : await kube.request<{ metadata: { uid: string } }>('GET', `/api/v1/namespaces/${namespace}/pods/${pod}`);
  const r = await kube.request<{ status: { token: string } }>('POST', `/api/v1/namespaces/${namespace}/serviceaccounts/${opts.serviceAccount ?? 'default'}/token`, {
    body: {
      apiVersion: 'authentication.k8s.io/v1',
      kind: 'TokenRequest',
      spec: { audiences: [opts.audience ?? FEED_AUDIENCE], expirationSeconds: 3600, boundObjectRef: { kind: 'Pod', apiVersion: 'v1', name: pod, uid: p.metadata.uid } },
    },
  });
  return r.status.token;
}

export interface FeedAgentOptions {
  serverName?: string;
  /** The token itself (default: one minted for the pod), or a file holding it, shared by many agents' runs. */
  token?: string;
  tokenFile?: string;
  /** How often the client compares its report with the last one sent (the agent's own default is 1 s). */
  reportCheckMs?: number;
  /** Only the last this many configurations are kept (a load generator runs thousands of agents). */
  keepConfigs?: number;
  /** false: the client's log is dropped instead of kept in `logs`. */
  keepLogs?: boolean;
}

const silent = pino({ level: 'silent' });

export class FeedAgent {
  report: AgentReport;
  readonly configs: ConfigFrame[] = [];
  /** Called for every report the client builds (the counters may grow with it). */
  onReport: ((r: AgentReport) => AgentReport) | undefined;
  /** Called for every configuration received, after it is recorded. */
  onConfig: ((f: ConfigFrame) => void) | undefined;
  reportsBuilt = 0;
  /** What the feed client logged (JSON lines), for a failing test to show. */
  readonly logs: string[] = [];
  private client: FeedClient | undefined;
  private dir: string | undefined;

  constructor(
    readonly namespace: string,
    readonly pod: string,
  ) {
    this.report = { pod: { namespace, name: pod }, ready: true, streamPaths: [] };
  }

  get lastConfig(): ConfigFrame | undefined {
    return this.configs.at(-1);
  }

  get connected(): boolean {
    return this.client?.connected ?? false;
  }

  /** Connects once the pod exists (its token is bound to it). */
  async connect(kube: KubeTransport | undefined, addresses: string[], caPem: string, opts: FeedAgentOptions = {}): Promise<void> {
    let tokenFile = opts.tokenFile;
    if (!tokenFile) {
      if (!kube && !opts.token) throw new Error('FeedAgent.connect: no token, no token file and no API client to mint one');
      this.dir = mkdtempSync(join(tmpdir(), 'kstreams-feed-agent-'));
      tokenFile = join(this.dir, 'token');
      writeFileSync(tokenFile, opts.token ?? (await podToken(kube!, this.namespace, this.pod)));
    }
    this.client = new FeedClient({
      addresses,
      caPem,
      serverName: opts.serverName ?? 'kstreams-webhook.kstreams-system.svc',
      tokenFile,
      logger: opts.keepLogs === false ? silent : pino({ level: 'debug' }, { write: (line: string) => void this.logs.push(line.trim()) }),
      reportCheckMs: opts.reportCheckMs ?? 100,
      onConfig: async (f) => {
        this.configs.push(f);
        if (opts.keepConfigs !== undefined && this.configs.length > opts.keepConfigs) this.configs.splice(0, this.configs.length - opts.keepConfigs);
        this.onConfig?.(f);
      },
      report: async () => {
        this.reportsBuilt++;
        if (this.onReport) this.report = this.onReport(this.report);
        // No copy: the feed client encodes the report as soon as it has it (the sidecar's own report is a
        // fresh snapshot each time; a structuredClone here cost the 10k-agent bench's agents ~0.4 s per s).
        return this.report;
      },
    });
    this.client.start();
  }

  attach(name: string, generation: number, counters: Partial<AgentStreamPathReport> = {}): void {
    this.report.streamPaths = this.report.streamPaths.filter((s) => s.name !== name);
    this.report.streamPaths.push({
      name,
      generation,
      attached: true,
      connections: 3,
      bytesPrimary: 3000,
      bytesMirrored: 2500,
      bytesDropped: 500,
      targets: [{ name: '127.0.0.1:9', connectionsMirrored: 3, connectionsCut: 1, connectFailures: 0, bytesMirrored: 2500, bytesDropped: 500 }],
      ...counters,
    });
  }

  detach(name: string): void {
    this.report.streamPaths = this.report.streamPaths.filter((s) => s.name !== name);
  }

  async stop(): Promise<void> {
    await this.client?.stop();
    if (this.dir) rmSync(this.dir, { recursive: true, force: true });
  }
}
