// The agent's feed client against real feed servers on loopback (no apiserver needed): where it goes after a
// redirect to a leader that cannot be reached. A replica that is not the leader names the Lease holder; when
// that one was killed (its Lease not expired yet), the replica that answered is the one to try again, not
// the round of injected addresses, which may be as dead as the old leader.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { encodeFrame } from '../../../api/src/feed.js';
import { startFeedServer, type FeedConnection, type RunningFeedServer } from '../../../operator/src/feed/server.js';
import { createCA, issueServingCert } from '../../../operator/src/webhook/certs.js';
import { Backoff } from '../../../runtime/src/backoff.js';
import { FeedClient } from './feed-client.js';

let dir: string;
let feed: RunningFeedServer | undefined;
let client: FeedClient | undefined;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'kstreams-feed-client-'));
});
afterAll(async () => {
  await client?.stop();
  await feed?.close();
  rmSync(dir, { recursive: true, force: true });
});

/** A loopback port nothing listens on (bound, then closed). */
async function deadAddress(): Promise<string> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((r) => s.close(() => r()));
  return `127.0.0.1:${port}`;
}

type Backend = Parameters<typeof startFeedServer>[0]['backend'];

/** A feed server on loopback with a fresh CA, serving `backend`, in `feed`: its address and the CA's PEM. */
async function serve(backend: Backend): Promise<{ address: string; caPem: string }> {
  await client?.stop();
  await feed?.close();
  const now = Date.now();
  const ca = await createCA({ commonName: 'feed-client-ca', nowMs: now, validitySeconds: 3600 });
  const serving = await issueServingCert({ ca, sans: ['feed.test.svc', '127.0.0.1'], nowMs: now, validitySeconds: 3600 });
  feed = await startFeedServer({ host: '127.0.0.1', port: 0, tls: serving, log: pino({ level: 'silent' }), idleTimeoutMs: 30_000, backend });
  return { address: `127.0.0.1:${feed.port}`, caPem: ca.certPem };
}

it('after a redirect to an unreachable leader, tries the replica that redirected before the other addresses', async () => {
  const [oldLeader, otherReplica] = [await deadAddress(), await deadAddress()];
  let redirects = 0;
  const { address, caPem } = await serve({
    // Follows until it has redirected once (the old leader's Lease expiring meanwhile), then leads.
    leaderAddress: () => (redirects++ === 0 ? oldLeader : undefined),
    authenticate: async () => ({ namespace: 'ns', serviceAccount: 'default', pod: 'p', podUid: 'u' }),
    attach: (_id, conn) => {
      setImmediate(() => conn.send(encodeFrame({ type: 'config', version: 1, pod: { labels: {} }, streamPaths: [], services: {}, programs: {} })));
      return { frame: () => undefined, closed: () => undefined };
    },
  });
  const tokenFile = join(dir, 'token');
  writeFileSync(tokenFile, 'h.e30.s');
  const attempts: string[] = [];
  const logger = pino(
    { level: 'debug' },
    new Writable({
      write(chunk: Buffer, _enc, done) {
        const l = JSON.parse(chunk.toString()) as { operator?: string };
        if (l.operator) attempts.push(l.operator);
        done();
      },
    }),
  );
  const replica = address;
  let configured!: () => void;
  const got = new Promise<void>((r) => (configured = r));
  client = new FeedClient({
    addresses: [replica, otherReplica],
    caPem,
    serverName: 'feed.test.svc',
    tokenFile,
    logger,
    backoff: new Backoff({ initialMs: 20, maxMs: 50, jitter: 0 }),
    onConfig: async () => configured(),
    report: async () => ({ pod: { namespace: 'ns', name: 'p', uid: 'u' }, ready: true, streamPaths: [] }) as never,
  });
  client.start();
  await got;
  // The replica redirects, the old leader refuses, and the replica (leading by then) is next: the other
  // address is never tried.
  expect(attempts.slice(0, 2)).toEqual([replica, oldLeader]);
  expect(attempts).not.toContain(otherReplica);
  expect(client.connected).toBe(true);
});

it('numbers applied configurations per stream: after a reconnect it acknowledges nothing it was not sent there', async () => {
  const config = (version: number) => encodeFrame({ type: 'config', version, pod: { labels: {} }, streamPaths: [], services: {}, programs: {} });
  // Per stream, the `applied` of each report, in order.
  const streams: number[][] = [];
  const waiters: { stream: number; applied: number | undefined; resolve: () => void }[] = [];
  // A report of `stream` acknowledging `applied` (undefined: any report of it).
  const seen = (stream: number, applied?: number) =>
    new Promise<void>((resolve) => {
      if (streams[stream]?.some((a) => applied === undefined || a === applied)) return resolve();
      waiters.push({ stream, applied, resolve });
    });
  const conns: FeedConnection[] = [];
  const { address, caPem } = await serve({
    leaderAddress: () => undefined,
    authenticate: async () => ({ namespace: 'ns', serviceAccount: 'default', pod: 'p', podUid: 'u' }),
    attach: (_id, conn) => {
      const n = streams.push([]) - 1;
      conns.push(conn);
      // The first stream gets three configurations, a later one none until the test sends it one.
      if (n === 0) setImmediate(() => [1, 2, 3].forEach((v) => conn.send(config(v))));
      return {
        frame: (f) => {
          streams[n]!.push(f.applied);
          for (const w of waiters.filter((w) => w.stream === n && (w.applied === undefined || w.applied === f.applied))) w.resolve();
        },
        closed: () => undefined,
      };
    },
  });
  const tokenFile = join(dir, 'token');
  writeFileSync(tokenFile, 'h.e30.s');
  client = new FeedClient({
    addresses: [address],
    caPem,
    serverName: 'feed.test.svc',
    tokenFile,
    logger: pino({ level: 'silent' }),
    backoff: new Backoff({ initialMs: 20, maxMs: 50, jitter: 0 }),
    onConfig: async () => undefined,
    report: async () => ({ pod: { namespace: 'ns', name: 'p', uid: 'u' }, ready: true, streamPaths: [] }) as never,
  });
  client.start();
  await seen(0, 3);
  conns[0]!.close('the test ends the first stream');
  // The second stream's first report acknowledges nothing (its versions start again at 1)...
  await seen(1);
  expect(streams[1]![0]).toBe(0);
  // ...and its own configuration 1 is acknowledged as 1.
  conns[1]!.send(config(1));
  await seen(1, 1);
  expect(streams[1]).not.toContain(3);
});
