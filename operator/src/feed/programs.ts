// Transform programs for the feed: the operator reads the ConfigMaps that StreamPaths' program ops name
// (binaryData[key], in the StreamPath's namespace) and sends their bytes to the agents, so that no app
// pod's ServiceAccount needs to read ConfigMaps. Read on first use, then again every refreshMs while some
// agent's configuration still names them (one timer for all); the others are dropped.
import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import type { DeliveredProgram } from '../../../api/src/feed.js';
import { formatApiError } from '../../../runtime/src/errors.js';
import { isStatus, type KubeTransport } from '../../../runtime/src/rest.js';

interface Entry {
  /** undefined while the first read is in flight. */
  binaryData?: Record<string, string>;
  dataKeys?: string[];
  error?: string;
  /** The ConfigMap does not exist (the message names the key asked for). */
  missing?: boolean;
  fingerprint?: string;
  /** SHA-256 of each key's bytes, computed once per read. */
  hashes?: Map<string, string>;
  loading?: Promise<void>;
}

export interface ProgramCacheOptions {
  transport: KubeTransport;
  log: Logger;
  /** A ConfigMap read or changed: the agents whose configuration names it need a new one. */
  onChange: (namespace: string, configMap: string) => void;
}

export class ProgramCache {
  private readonly entries = new Map<string, Entry>();

  constructor(private readonly o: ProgramCacheOptions) {}

  /** The program's bytes or why not; undefined while the ConfigMap is being read (onChange follows). */
  get(namespace: string, configMap: string, key: string): DeliveredProgram | undefined {
    const id = `${namespace}/${configMap}`;
    let e = this.entries.get(id);
    if (!e) {
      e = {};
      this.entries.set(id, e);
      void this.load(namespace, configMap, e);
    }
    if (e.binaryData === undefined && e.error === undefined && !e.missing) return undefined;
    const what = `ConfigMap ${namespace}/${configMap}`;
    if (e.missing) return { error: `${what} does not exist (kubectl create configmap ${configMap} --from-file=${key}=PROGRAM.o -n ${namespace})` };
    if (e.error !== undefined) return { error: e.error };
    const b64 = e.binaryData?.[key];
    if (b64 === undefined) {
      const inData = e.dataKeys?.includes(key);
      return {
        error:
          `${what} has no binaryData key ${key}` +
          (inData ? ' (it is under data, as text: a BPF object must be binaryData; create it with --from-file)' : ''),
      };
    }
    e.hashes ??= new Map();
    let sha256 = e.hashes.get(key);
    if (sha256 === undefined) e.hashes.set(key, (sha256 = createHash('sha256').update(b64).digest('hex')));
    return { data: b64, sha256 };
  }

  private load(namespace: string, configMap: string, e: Entry): Promise<void> {
    if (e.loading) return e.loading;
    const what = `ConfigMap ${namespace}/${configMap}`;
    e.loading = (async () => {
      let next: Pick<Entry, 'binaryData' | 'dataKeys' | 'error' | 'missing'>;
      try {
        const cm = await this.o.transport.request<{ binaryData?: Record<string, string>; data?: Record<string, string> }>(
          'GET',
          `/api/v1/namespaces/${encodeURIComponent(namespace)}/configmaps/${encodeURIComponent(configMap)}`,
          { timeoutMs: 10_000 },
        );
        next = { binaryData: cm.binaryData ?? {}, dataKeys: Object.keys(cm.data ?? {}) };
      } catch (err) {
        next = isStatus(err, 404)
          ? { missing: true }
          : { error: formatApiError(err, { verb: 'get', object: what, forbiddenHint: 'the operator ClusterRole needs get on configmaps' }) };
      }
      const fingerprint = JSON.stringify(next);
      e.loading = undefined;
      if (this.entries.get(`${namespace}/${configMap}`) !== e) return;
      const changed = fingerprint !== e.fingerprint;
      e.binaryData = next.binaryData;
      e.dataKeys = next.dataKeys;
      e.error = next.error;
      e.missing = next.missing;
      e.fingerprint = fingerprint;
      if (changed) e.hashes = undefined;
      if (changed) this.o.onChange(namespace, configMap);
    })().catch((err: unknown) => this.o.log.warn({ err }, 'reading a program ConfigMap failed'));
    return e.loading;
  }

  /** Reads again every ConfigMap in `inUse` ("namespace/name"); drops the others. Resolves when all reads ended. */
  async refresh(inUse: ReadonlySet<string>): Promise<void> {
    const loads: Promise<void>[] = [];
    for (const [id, e] of this.entries) {
      if (!inUse.has(id)) {
        this.entries.delete(id);
        continue;
      }
      const [namespace, configMap] = id.split('/') as [string, string];
      loads.push(this.load(namespace, configMap, e));
    }
    await Promise.all(loads);
  }

  get size(): number {
    return this.entries.size;
  }
}
