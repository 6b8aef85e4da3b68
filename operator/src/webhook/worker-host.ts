// The main thread's side of the webhook worker (thread: 'worker'): starts worker.ts with a snapshot of the
// admission inputs, forwards every change to it, restarts it with backoff (200 ms to 10 s) when it exits
// unasked, and adds the counts it posts to the main registry. ready() is false until a worker listens, and
// while one is being restarted.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { Logger } from 'pino';
import { Backoff } from '../../../runtime/src/backoff.js';
import type { CertKeyPem } from './certs.js';
import type { ServingObserver } from './serving.js';
import { FromWorkerSchema, type FromWorker, type StateDelta, type ToWorker, type WorkerStart } from './worker-protocol.js';

export interface WorkerHostOptions {
  /** Start data but for the port, the pem and the state, which are read at each (re)start. */
  start: Omit<WorkerStart, 'port' | 'pem' | 'state'>;
  port: number;
  log: Logger;
  /** The cert the TLS source serves now. */
  pem(): CertKeyPem;
  /** Every admission input as it is now, for a fresh worker. */
  snapshot(): StateDelta;
  observer: ServingObserver;
  /** A certificate sent with tls() was taken (or refused) by the worker. */
  onTlsApplied(pem: CertKeyPem, applied: boolean): void;
  onRestart(): void;
  backoff?: Backoff;
}

/** How the worker's module is loaded: the compiled .js beside this file, or the .ts source through tsx. */
function workerEntry(): { url: URL } {
  const here = import.meta.url;
  if (!here.endsWith('.ts')) return { url: new URL('./worker.js', here) };
  // Under tsx or vitest: a worker thread does not inherit the loader, so its first module registers tsx.
  const require = createRequire(here);
  const pkgFile = require.resolve('tsx/package.json');
  const pkg = JSON.parse(readFileSync(pkgFile, 'utf8')) as { exports: Record<string, { import: { default: string } }> };
  const api = pathToFileURL(join(dirname(pkgFile), pkg.exports['./esm/api']!.import.default)).href;
  const target = new URL('./worker.ts', here).href;
  const code = `import { register } from ${JSON.stringify(api)}; register(); await import(${JSON.stringify(target)});`;
  return { url: new URL(`data:text/javascript,${encodeURIComponent(code)}`) };
}

export class WebhookWorkerHost {
  private worker: Worker | undefined;
  private listening = false;
  private closing = false;
  private timer: NodeJS.Timeout | undefined;
  private port: number;
  private seq = 0;
  private readonly flushes = new Map<number, () => void>();
  private readonly tlsSent = new Map<number, CertKeyPem>();
  private readonly backoff: Backoff;
  private exited: Promise<void> = Promise.resolve();

  constructor(private readonly o: WorkerHostOptions) {
    this.port = o.port;
    // No jitter: a worker talks to nobody but this thread, so there is no herd of restarts to spread out.
    this.backoff = o.backoff ?? new Backoff({ initialMs: 200, maxMs: 10_000, jitter: 0 });
  }

  /** The first worker: resolves with its port once it listens, rejects with why it could not. */
  start(): Promise<number> {
    return new Promise((resolve, reject) => this.spawn({ resolve, reject }));
  }

  ready(): boolean {
    return this.listening && !this.closing;
  }

  get threadId(): number | undefined {
    return this.worker?.threadId;
  }

  /** Posts to the running worker; with none (restarting), dropped: the next one starts from a snapshot. */
  post(m: ToWorker): void {
    this.worker?.postMessage(m);
  }

  tls(pem: CertKeyPem): void {
    if (!this.worker) return;
    const seq = ++this.seq;
    this.tlsSent.set(seq, pem);
    this.post({ type: 'tls', seq, pem });
  }

  /**
   * Resolves once the worker has handled every message posted before (they are handled in order) and its
   * counts up to then are in the registry; at once without a listening worker, and after 1 s at most.
   */
  flush(): Promise<void> {
    if (!this.worker || !this.listening) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const seq = ++this.seq;
      const done = () => {
        clearTimeout(t);
        this.flushes.delete(seq);
        resolve();
      };
      const t = setTimeout(done, 1000);
      this.flushes.set(seq, done);
      this.post({ type: 'flush', seq });
    });
  }

  /** Stops restarting, lets the worker close its server (and post its last counts), then ends it. */
  async close(): Promise<void> {
    this.closing = true;
    if (this.timer) clearTimeout(this.timer);
    const w = this.worker;
    if (w) {
      const closed = new Promise<void>((resolve) => {
        const t = setTimeout(() => void w.terminate().then(() => resolve()), 5000);
        w.once('exit', () => (clearTimeout(t), resolve()));
      });
      w.postMessage({ type: 'close' } satisfies ToWorker);
      await closed;
    }
    await this.exited;
  }

  /** Ends the worker thread as a crash would (tests; an operator can see the restart in the metrics). */
  async kill(): Promise<void> {
    await this.worker?.terminate();
  }

  private spawn(first?: { resolve: (port: number) => void; reject: (e: Error) => void }): void {
    this.timer = undefined;
    if (this.closing) return;
    let w: Worker;
    const pem = this.o.pem();
    try {
      const start: WorkerStart = { ...this.o.start, port: this.port, pem, state: this.o.snapshot() };
      // The thread inherits this process's node flags (execArgv).
      w = new Worker(workerEntry().url, { workerData: start });
    } catch (e) {
      // Not even started (bad flags, out of memory): as if it had exited at once.
      if (first) return first.reject(new Error(`webhook worker cannot start: ${(e as Error).message}`));
      const delayMs = this.backoff.next();
      this.o.log.error({ err: (e as Error).message, delayMs }, 'webhook worker cannot start; trying again');
      this.o.onRestart();
      this.timer = setTimeout(() => this.spawn(), delayMs);
      return;
    }
    this.worker = w;
    let failed: string | undefined;
    let resolveExit!: () => void;
    this.exited = new Promise((r) => (resolveExit = r));
    w.on('message', (raw: unknown) => {
      const parsed = FromWorkerSchema.safeParse(raw);
      if (!parsed.success) {
        this.o.log.error({ err: parsed.error.message }, 'webhook worker: message does not parse; dropped');
        return;
      }
      this.onMessage(parsed.data, (m) => {
        if (m.type === 'listening') {
          this.port = m.port;
          this.listening = true;
          // A restarted worker serves what the TLS source served when it started.
          this.o.onTlsApplied(pem, true);
          this.backoff.reset();
          first?.resolve(m.port);
          first = undefined;
        } else if (m.type === 'failed') failed = m.message;
      });
    });
    w.on('error', (e) => {
      failed ??= e.message;
      this.o.log.error({ err: e.message }, 'webhook worker failed');
    });
    w.on('exit', (code) => {
      if (this.worker === w) this.worker = undefined;
      this.listening = false;
      for (const done of this.flushes.values()) done();
      this.tlsSent.clear();
      resolveExit();
      if (first) {
        first.reject(new Error(failed ?? `webhook worker exited with code ${code} before listening`));
        return;
      }
      if (this.closing) return;
      const delayMs = this.backoff.next();
      this.o.log.error({ code, err: failed, delayMs }, 'webhook worker exited; not ready until a new one listens');
      this.o.onRestart();
      this.timer = setTimeout(() => this.spawn(), delayMs);
    });
  }

  private onMessage(m: FromWorker, lifecycle: (m: FromWorker) => void): void {
    switch (m.type) {
      case 'metrics':
        for (const [kind, reason, seconds] of m.admissions) this.o.observer.admission(kind, reason, seconds);
        for (let i = 0; i < m.handshakes; i++) this.o.observer.handshake();
        if (m.seq !== undefined) this.flushes.get(m.seq)?.();
        return;
      case 'tls': {
        const pem = this.tlsSent.get(m.seq);
        this.tlsSent.delete(m.seq);
        if (pem) this.o.onTlsApplied(pem, m.applied);
        return;
      }
      case 'closed':
        return;
      default:
        lifecycle(m);
    }
  }
}
