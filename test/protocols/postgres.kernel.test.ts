// PostgreSQL production mirrored to a PostgreSQL staging through the real `kstreams run`, driven by
// pgbench with libpq's defaults. sslmode=prefer makes every session begin with a negotiation: an 8-byte
// SSLRequest, wait for the server's 'N', then the startup message. A mirror that hands staging both in
// one read gets "FATAL: received unencrypted data after SSL request"; a turn-paced one replays each
// session as the client spoke it, so staging ends with production's data.
import { chmodSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cleanupAll, link, Netns } from '../../sidecar/src/netns.js';
import { KstreamsRun, Proc, runIn, waitFor, writeStreamPath } from './fixtures/harness.js';
import { libpqEnv, PG_BIN, PGBENCH_STATE_SQL, Postgres } from './fixtures/postgres.js';

const PORT = 5432;
const CLIENTS = 8;
const TRANSACTIONS = 300;

let app: Netns;
let staging: Netns;
let client: Netns;
let appAddress: string;
let stagingAddress: string;
let appOnStagingLink: string;
let dir: string;
let production: Postgres;
let stagingDb: Postgres;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'kstreams-pg-'));
  chmodSync(dir, 0o755); // user postgres must reach its directories below
  app = Netns.create('pg-app');
  staging = Netns.create('pg-stg');
  client = Netns.create('pg-cli');
  appAddress = link(client, app).bAddress;
  const l = link(app, staging);
  appOnStagingLink = l.aAddress;
  stagingAddress = l.bAddress;
  mkdirSync(join(dir, 'production'));
  mkdirSync(join(dir, 'staging'));
  [production, stagingDb] = await Promise.all([
    Postgres.start('production', app, join(dir, 'production'), appAddress, PORT),
    Postgres.start('staging', staging, join(dir, 'staging'), stagingAddress, PORT),
  ]);
  // The same deterministic initial data on both (pgbench -i is: abalance 0, fixed filler).
  await Promise.all([production.pgbenchInit(1), stagingDb.pgbenchInit(1)]);
});

afterAll(async () => {
  await Promise.all([production?.stop(), stagingDb?.stop()]);
  await Proc.killAll();
  await cleanupAll();
  rmSync(dir, { recursive: true, force: true });
});

/** pgbench from `ns` against host:PORT; default libpq settings apart from the user. */
async function pgbench(ns: Netns, host: string, args: string[]): Promise<string> {
  const r = await runIn(ns, join(PG_BIN, 'pgbench'), ['-h', host, '-p', String(PORT), '-U', 'postgres', '-n', ...args, 'postgres'], { env: libpqEnv(), timeoutMs: 90_000 });
  if (r.code !== 0) throw new Error(`pgbench failed (${r.code}): ${r.stderr}\n${r.stdout}`);
  return r.stdout;
}

const state = async (pg: Postgres) => (await pg.query(PGBENCH_STATE_SQL)).split('\n');

describe('PostgreSQL through a kstreams mirror', () => {
  it('fixture: both servers driven the same way (seeded pgbench, directly) end with the same data', async () => {
    expect(await state(production)).toEqual(await state(stagingDb));
    const seeded = ['-c', '4', '-j', '2', '-t', '50', '--random-seed=7'];
    await pgbench(app, appAddress, seeded);
    await pgbench(staging, stagingAddress, seeded);
    const p = await state(production);
    expect(p).toEqual(await state(stagingDb));
    expect(p.find((l) => l.startsWith('history|'))).toMatch(/^history\|200\|/);
  });

  it('pgbench with sslmode=prefer through the tap: staging replays every session and ends equal to production', async () => {
    expect(await state(production)).toEqual(await state(stagingDb));
    const before = await state(production);
    const file = writeStreamPath(dir, { name: 'pg-shadow', port: PORT, targets: { staging: `${stagingAddress}:${PORT}` } });
    const run = KstreamsRun.start(file, app);
    await run.attached();
    const logFrom = stagingDb.log.length;

    const out = await pgbench(client, appAddress, ['-c', String(CLIENTS), '-j', '2', '-t', String(TRANSACTIONS)]);
    expect(out).toContain(`number of transactions actually processed: ${CLIENTS * TRANSACTIONS}/${CLIENTS * TRANSACTIONS}`);
    expect(out).toMatch(/number of failed transactions: 0\b/);

    // Staging has the whole of every mirrored session once each of them has disconnected.
    const engineConnections = production.connectionsFrom('127.0.0.6');
    expect(engineConnections).toBeGreaterThanOrEqual(CLIENTS);
    await waitFor(
      'staging to finish every mirrored session',
      () => {
        const log = stagingDb.log.slice(logFrom);
        const received = log.split('\n').filter((l) => l.includes(`connection received: host=${appOnStagingLink} `)).length;
        const ended = log.split('\n').filter((l) => l.includes('disconnection: session time:') || /FATAL:/.test(l)).length;
        return received >= engineConnections && ended >= received;
      },
      30_000,
    ).catch(() => undefined); // the assertions below say what is missing

    const { code, summary } = await run.interrupt();
    expect(code).toBe(0);
    // Soft: a failure here should still show what staging logged and which data differ.
    expect.soft(summary!.connections).toBe(engineConnections);
    expect.soft(summary!.targets[0]).toMatchObject({
      name: 'staging',
      connectionsMirrored: engineConnections,
      connectionsCut: 0,
      connectFailures: 0,
      bytesDropped: 0,
    });
    expect.soft(summary!.bytesDropped).toBe(0);

    expect.soft(stagingDb.problems()).toEqual([]);
    expect.soft(production.problems()).toEqual([]);
    expect.soft(stagingDb.connectionsFrom(appOnStagingLink)).toBe(engineConnections);

    const after = await state(production);
    expect(after).not.toEqual(before);
    const historyRows = (st: string[]) => Number(st.find((l) => l.startsWith('history|'))!.split('|')[1]);
    expect(historyRows(after)).toBe(historyRows(before) + CLIENTS * TRANSACTIONS);
    expect(await state(stagingDb)).toEqual(after);
  });
});
