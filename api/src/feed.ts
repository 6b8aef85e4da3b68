// The agent feed (docs/adr/0008-agents-get-their-configuration-from-the-operator.md): one long-lived TLS
// connection per agent to the operator's feed port, ALPN `kstreams-feed/1`, newline-delimited JSON frames
// both ways. The agent's first frame is its hello (the pod's projected token); the operator answers with
// configurations, or one redirect or refused frame before it closes. The operator sends the agent its configuration (the StreamPaths that select its pod,
// their Service targets resolved, their transform programs' bytes) whenever it changes; the agent sends its
// report whenever that changes, and at least every keepalive interval.
import { z } from 'zod';
import { AgentReportSchema } from './agent.js';

/** The feed's ALPN protocol: a TLS connection that does not offer it is closed after the handshake. */
export const FEED_ALPN = 'kstreams-feed/1';
/** Audience of the projected ServiceAccount token the agent presents: the apiserver and nothing else accept it there. */
export const FEED_AUDIENCE = 'kstreams.io/agent-feed';
export const DEFAULT_FEED_PORT = 9444;
/** Where the webhook mounts the projected token in the sidecar. */
export const FEED_TOKEN_DIR = '/var/run/secrets/kstreams.io/feed';
export const FEED_TOKEN_FILE = 'token';
/** Name of the pod volume holding the token. */
export const FEED_TOKEN_VOLUME = 'kstreams-feed-token';
/** Lease annotation where the leader publishes the address agents should stream to (host:port). */
export const FEED_ADDRESS_ANNOTATION = 'kstreams.io/feed-address';
/** One frame is at most this many bytes (a config with a few programs of some hundred KiB fits). */
export const MAX_FRAME_BYTES = 8 * 1024 * 1024;

/** A mirror target given as a Service, as the operator resolved it: an address or why not. */
export const ResolvedServiceSchema = z.union([
  z.object({ host: z.string(), port: z.number().int() }),
  z.object({ error: z.string() }),
]);
/**
 * A transform program's bytes (base64) from its ConfigMap, or why not. Bytes travel once per stream: with
 * their SHA-256 (hex) the first time, then as the SHA-256 alone while they stay the same (a config frame of
 * an unrelated change does not carry up to 1 MiB per program again). The feed client puts the bytes back
 * before the agent sees the frame; a hash it was never sent ends the stream (the next one starts afresh).
 */
export const DeliveredProgramSchema = z.union([
  z.object({ data: z.string(), sha256: z.string().optional() }),
  z.object({ sha256: z.string() }),
  z.object({ error: z.string() }),
]);

export const FeedStreamPathSchema = z.object({
  apiVersion: z.string(),
  kind: z.string(),
  metadata: z.object({
    name: z.string(),
    uid: z.string().optional(),
    generation: z.number().int().optional(),
    creationTimestamp: z.string().optional(),
  }),
  /** The raw spec: the agent parses it with the same schema as before, so an invalid one is reported by it. */
  spec: z.unknown(),
});

export const ConfigFrameSchema = z.object({
  type: z.literal('config'),
  /** Increases with every config sent on this stream; the agent echoes the last one it applied. */
  version: z.number().int(),
  pod: z.object({
    labels: z.record(z.string(), z.string()),
    /** Bounds the agent's drain when the pod terminates. */
    termination: z
      .object({
        deletionTimestamp: z.string().optional(),
        deletionGracePeriodSeconds: z.number().int().optional(),
        terminationGracePeriodSeconds: z.number().int().optional(),
      })
      .optional(),
  }),
  streamPaths: z.array(FeedStreamPathSchema),
  /** Keyed by serviceKey(namespace, name, port). */
  services: z.record(z.string(), ResolvedServiceSchema),
  /** Keyed by programKey(configMap, key), in the pod's namespace. */
  programs: z.record(z.string(), DeliveredProgramSchema),
});

/** A replica that does not lead says where the leader is; the agent goes there. */
export const RedirectFrameSchema = z.object({ type: z.literal('redirect'), address: z.string() });

/** The operator will not serve this agent (HTTP-like status: 401 token, 403 pod, 503 no leader yet); it closes. */
export const RefusedFrameSchema = z.object({ type: z.literal('refused'), status: z.number().int(), message: z.string() });
/** The answer to a ping: the agent's liveness check of the operator (a half-open connection gets none). */
export const PongFrameSchema = z.object({ type: z.literal('pong') });

export const OperatorFrameSchema = z.discriminatedUnion('type', [ConfigFrameSchema, RedirectFrameSchema, RefusedFrameSchema, PongFrameSchema]);

/** The agent's first frame on a connection. */
export const HelloFrameSchema = z.object({ type: z.literal('hello'), token: z.string().min(1) });
/**
 * Sent by the agent every keepalive; the operator answers with a pong. Its exact bytes are fixed (PING_LINE)
 * so that a transport may answer it without parsing JSON.
 */
export const PING_LINE = '{"type":"ping"}';
export const PONG_LINE = '{"type":"pong"}';

export const ReportFrameSchema = z.object({
  type: z.literal('report'),
  /** Version of the last config the agent applied (0: none yet). */
  applied: z.number().int(),
  report: AgentReportSchema,
});

export const AgentFrameSchema = z.discriminatedUnion('type', [ReportFrameSchema]);

export type HelloFrame = z.infer<typeof HelloFrameSchema>;
export type RefusedFrame = z.infer<typeof RefusedFrameSchema>;

export type ResolvedService = z.infer<typeof ResolvedServiceSchema>;
export type DeliveredProgram = z.infer<typeof DeliveredProgramSchema>;
export type FeedStreamPath = z.infer<typeof FeedStreamPathSchema>;
export type ConfigFrame = z.infer<typeof ConfigFrameSchema>;
export type RedirectFrame = z.infer<typeof RedirectFrameSchema>;
export type OperatorFrame = z.infer<typeof OperatorFrameSchema>;
export type ReportFrame = z.infer<typeof ReportFrameSchema>;
export type AgentFrame = z.infer<typeof AgentFrameSchema>;

export function serviceKey(namespace: string, name: string, port: number): string {
  return `${namespace}/${name}:${port}`;
}

export function programKey(configMap: string, key: string): string {
  return `${configMap}/${key}`;
}

/** Splits a byte stream into newline-delimited JSON frames; a line longer than `max` is an error. */
export class FrameDecoder {
  private buf = '';

  constructor(private readonly max = MAX_FRAME_BYTES) {}

  /** The complete lines in `chunk` (after what was buffered), parsed; throws on bad JSON or an oversized line. */
  push(chunk: Buffer | string): unknown[] {
    this.buf += typeof chunk === 'string' ? chunk : chunk.toString('utf8');
    const out: unknown[] = [];
    for (;;) {
      const nl = this.buf.indexOf('\n');
      if (nl < 0) break;
      const line = this.buf.slice(0, nl);
      this.buf = this.buf.slice(nl + 1);
      if (line.trim() === '') continue;
      out.push(JSON.parse(line));
    }
    if (this.buf.length > this.max) throw new Error(`frame larger than ${this.max} bytes`);
    return out;
  }
}

export function encodeFrame(frame: OperatorFrame | AgentFrame | HelloFrame): string {
  return `${JSON.stringify(frame)}\n`;
}
