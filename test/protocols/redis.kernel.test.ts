// Redis production mirrored to a Redis staging through the real `kstreams run`, driven by
// redis-benchmark with pipelining (-P 16) from many connections. Every command the benchmark sends here
// is commutative across connections (SET of one constant value, INCR, LPUSH/SADD/HSET of constant
// members), so the order in which staging interleaves the sessions cannot change the final data: the
// datasets must be equal (DEBUG DIGEST), and so must the per-command call counts.
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cleanupAll, link, Netns } from '../../sidecar/src/netns.js';
import { KstreamsRun, Proc, runIn, waitForAsync, writeStreamPath } from './fixtures/harness.js';
import { Redis } from './fixtures/redis.js';

const PORT = 6379;
const TESTS = 'set,incr,lpush,sadd,hset';
const COMMANDS = ['set', 'incr', 'lpush', 'sadd', 'hset'];

let app: Netns;
let staging: Netns;
let client: Netns;
let appAddress: string;
let stagingAddress: string;
let dir: string;

let production: Redis;
let stagingRedis: Redis;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'kstreams-redis-'));
  chmodSync(dir, 0o700);
  app = Netns.create('rds-app');
  staging = Netns.create('rds-stg');
  client = Netns.create('rds-cli');
  appAddress = link(client, app).bAddress;
  stagingAddress = link(app, staging).bAddress;
  [production, stagingRedis] = await Promise.all([Redis.start('production', app, appAddress, dir), Redis.start('staging', staging, stagingAddress, dir)]);
});

afterAll(async () => {
  await Promise.all([production?.proc.stop('SIGTERM'), stagingRedis?.proc.stop('SIGTERM')]);
  await Proc.killAll();
  await cleanupAll();
  rmSync(dir, { recursive: true, force: true });
});

async function benchmark(ns: Netns, host: string, requests: number): Promise<string> {
  const r = await runIn(ns, 'redis-benchmark', ['-h', host, '-p', String(PORT), '-c', '20', '-P', '16', '-n', String(requests), '-r', '5000', '-t', TESTS, '-q'], { timeoutMs: 90_000 });
  if (r.code !== 0) throw new Error(`redis-benchmark failed (${r.code}): ${r.stderr}\n${r.stdout}`);
  return r.stdout;
}

const connectedClients = async (r: Redis) => Number((await r.info('clients'))['connected_clients']);

describe('Redis through a kstreams mirror', () => {
  it('fixture: DEBUG DIGEST compares datasets: equal data, equal digests; one more key, different', async () => {
    for (const r of [production, stagingRedis]) await r.cli('SET', 'fixture', 'same');
    expect(await production.cli('DEBUG', 'DIGEST')).toBe(await stagingRedis.cli('DEBUG', 'DIGEST'));
    await stagingRedis.cli('INCR', 'fixture:only-on-staging');
    expect(await production.cli('DEBUG', 'DIGEST')).not.toBe(await stagingRedis.cli('DEBUG', 'DIGEST'));
    for (const r of [production, stagingRedis]) await r.cli('FLUSHALL');
    expect(await production.cli('DBSIZE')).toBe('0');
    expect(await production.cli('DEBUG', 'DIGEST')).toBe(await stagingRedis.cli('DEBUG', 'DIGEST'));
  });

  it('redis-benchmark -P 16 through the tap: staging ends with the same dataset, no mirror cut', async () => {
    for (const r of [production, stagingRedis]) {
      await r.cli('FLUSHALL');
      await r.cli('CONFIG', 'RESETSTAT');
    }
    const file = writeStreamPath(dir, { name: 'redis-shadow', port: PORT, targets: { staging: `${stagingAddress}:${PORT}` } });
    const run = KstreamsRun.start(file, app);
    await run.attached();

    const out = await benchmark(client, appAddress, 50_000);
    for (const t of ['SET', 'INCR', 'LPUSH', 'SADD', 'HSET']) expect(out).toMatch(new RegExp(`^${t}: .*requests per second`, 'm'));

    const calls = await production.calls(COMMANDS);
    expect(calls).toEqual(Object.fromEntries(COMMANDS.map((c) => [c, 50_000])));
    // Staging is done when every mirrored connection has closed (the engine ends each after its last
    // byte) and only our redis-cli is connected.
    await waitForAsync('staging to close every mirrored connection', async () => (await connectedClients(stagingRedis)) === 1, 30_000).catch(() => undefined);
    const { code, summary } = await run.interrupt();
    expect(code).toBe(0);
    expect(summary!.targets[0]).toMatchObject({ name: 'staging', connectionsMirrored: summary!.connections, connectionsCut: 0, connectFailures: 0, bytesDropped: 0 });
    expect(summary!.bytesDropped).toBe(0);
    expect(summary!.bytesMirrored).toBe(summary!.bytesPrimary);
    // Staging answers every pipeline within milliseconds: no turn should wait out turnTimeoutMs.
    expect(summary!.targets[0]!.turnWaitsExpired ?? 0).toBe(0);

    expect(await stagingRedis.calls(COMMANDS)).toEqual(calls);
    expect(await stagingRedis.cli('DBSIZE')).toBe(await production.cli('DBSIZE'));
    expect(Number(await production.cli('DBSIZE'))).toBeGreaterThan(5000);
    expect(await stagingRedis.cli('DEBUG', 'DIGEST')).toBe(await production.cli('DEBUG', 'DIGEST'));
  });
});
