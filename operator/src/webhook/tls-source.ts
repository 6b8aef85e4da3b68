// Where the serving cert comes from, and how a running server learns that it changed.
//  - SelfManagedTls: a Secret in the operator's namespace shared by every replica. Each replica creates it
//    if absent, rotates it before expiry (optimistic concurrency: a 409 means another replica won, re-read),
//    keeps the MutatingWebhookConfiguration's caBundle in step, and watches the Secret so that a rotation
//    done by any replica reaches every replica's TLS context.
//  - MountedTls (cert-manager): files in a mounted Secret volume, re-read periodically; the caBundle is
//    cert-manager's CA injector's business.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { V1Secret } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { Backoff } from '../../../runtime/src/backoff.js';
import { systemClock as runtimeClock } from '../../../runtime/src/clock.js';
import { Informer, InformerLifecycle } from '../../../runtime/src/informer.js';
import type { KubeTransport } from '../../../runtime/src/rest.js';
import { formatApiError, kubeCall } from '../../../runtime/src/errors.js';
import {
  bundleFromSecretData,
  bundleToSecretData,
  caBundlePem,
  decideRotation,
  fingerprint,
  NEXT_CA_PUBLISHED_ANNOTATION,
  nextCaPublishedAt,
  promoteNextCa,
  rotateBundle,
  stageNextCa,
  servingSANs,
  type CertKeyPem,
  type TlsBundle,
} from './certs.js';
import type { CertManagerTls, SelfManagedTls as SelfManagedTlsConfig, WebhookConfig } from './config.js';
import { ensureWebhookConfiguration } from './webhook-configuration.js';

export interface Clock {
  now(): number;
}
export interface Timers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}
export const systemClock: Clock = { now: () => Date.now() };
export const systemTimers: Timers = {
  setTimeout: (fn, ms) => {
    const t = setTimeout(fn, ms);
    t.unref();
    return t;
  },
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

export interface TlsSource {
  /** Resolves with the first usable cert/key; rejects with a message saying what is wrong. */
  start(): Promise<CertKeyPem>;
  /** Called with every new cert/key after start(). */
  onChange(listener: (pem: CertKeyPem) => void): void;
  stop(): Promise<void>;
  /** The CA certificates (PEM) a client of the served cert should trust; undefined when not known here. */
  trustPem?(): string | undefined;
  /**
   * Called with trustPem() each time it changes after start(). A CA rotation changes it before a cert of the
   * new CA is passed to onChange's listeners (a staged CA changes it alone).
   */
  onTrustChange?(listener: (caPem: string) => void): void;
}

/** setTimeout takes at most 2^31-1 ms; longer waits are re-checked at the resync anyway. */
const MAX_TIMER_MS = 2 ** 31 - 1;

function isStatus(e: unknown, code: number): boolean {
  return typeof e === 'object' && e !== null && (e as { code?: unknown }).code === code;
}

const secretPath = (namespace: string, name?: string) =>
  `/api/v1/namespaces/${encodeURIComponent(namespace)}/secrets${name === undefined ? '' : `/${encodeURIComponent(name)}`}`;

function errMessage(e: unknown): string {
  return formatApiError(e);
}

/** The fix for a 403 on the TLS Secret. */
function secretsHint(namespace: string): string {
  return (
    `the operator's ServiceAccount needs get, watch, update (on its Secret's name) and create on secrets in namespace ${namespace} ` +
    `(the chart's Role <release>-operator grants them; with rbac.create=false bind an equivalent Role)`
  );
}

export interface ReconcileResult {
  /** What happened to the Secret. staged-ca: a next CA was staged (stage 1 of a CA rotation); rotated-ca:
   *  it was promoted (stage 2); replaced-ca: the CA was unusable (broken or expired) and replaced at once. */
  secret: 'unchanged' | 'created' | 'rotated-cert' | 'staged-ca' | 'rotated-ca' | 'replaced-ca' | 'adopted-peer';
  webhookConfiguration: 'created' | 'updated' | 'unchanged' | 'unmanaged' | 'failed';
  servingFingerprint: string;
}

export class SelfManagedTls implements TlsSource {
  private readonly tls: SelfManagedTlsConfig;
  private readonly sans: string[];
  private listeners: Array<(pem: CertKeyPem) => void> = [];
  private trustListeners: Array<(caPem: string) => void> = [];
  private served: CertKeyPem | undefined;
  private trust: string | undefined;
  private timer: unknown;
  private informer: Informer<{ name: string; resourceVersion: string | undefined }> | undefined;
  /** The Secret's resourceVersion as the last reconcile read or wrote it: its own watch events need no reconcile. */
  private seenRv: string | undefined;
  private stopped = false;
  private chain: Promise<unknown> = Promise.resolve();
  /** A reconcile queued on the chain that has not started yet. */
  private queued: Promise<ReconcileResult & { resourceVersion?: string }> | undefined;
  private readonly watchBackoff = new Backoff({ initialMs: 500, maxMs: 30_000 });

  constructor(
    private readonly opts: {
      config: WebhookConfig;
      /** The operator's transport (KubeRest): the Secret, the MutatingWebhookConfiguration, the watch. */
      kube: KubeTransport;
      logger: Logger;
      clock?: Clock;
      timers?: Timers;
    },
  ) {
    if (opts.config.tls.mode !== 'self-managed') throw new Error('SelfManagedTls needs tls.mode self-managed');
    this.tls = opts.config.tls;
    this.sans = servingSANs(opts.config.serviceName, opts.config.namespace, this.tls.extraSANs);
  }

  private get clock(): Clock {
    return this.opts.clock ?? systemClock;
  }
  private get timers(): Timers {
    return this.opts.timers ?? systemTimers;
  }
  private get log(): Logger {
    return this.opts.logger;
  }

  onChange(listener: (pem: CertKeyPem) => void): void {
    this.listeners.push(listener);
  }

  onTrustChange(listener: (caPem: string) => void): void {
    this.trustListeners.push(listener);
  }

  async start(): Promise<CertKeyPem> {
    try {
      await this.reconcile();
    } catch (e) {
      // The hint follows the cause: RBAC for a 403, the network when the apiserver cannot be reached.
      throw new Error(`webhook TLS: ${errMessage(e)}`, { cause: e });
    }
    this.watch();
    if (!this.served) throw new Error('webhook TLS: no serving cert after reconcile');
    return this.served;
  }

  /**
   * Level-triggered: read the Secret, create or rotate it when needed, serve what it holds, put its CA
   * bundle into the MutatingWebhookConfiguration, schedule the next check. Calls are serialised, and this is
   * the only path that serves a bundle or writes the caBundle (watch events and timers come through here), so
   * two writers in one replica never race on the MutatingWebhookConfiguration or apply an older bundle last.
   * A call made while another reconcile is queued and not yet started joins it: that one reads everything
   * afresh when it starts.
   */
  reconcile(): Promise<ReconcileResult & { resourceVersion?: string }> {
    if (this.queued) return this.queued;
    const run = this.chain.then(async () => {
      this.queued = undefined;
      const r = await this.reconcileOnce();
      this.seenRv = r.resourceVersion;
      return r;
    });
    this.queued = run;
    this.chain = run.catch(() => undefined);
    return run;
  }

  private async reconcileOnce(): Promise<ReconcileResult & { resourceVersion?: string }> {
    const { namespace } = this.opts.config;
    const name = this.tls.secretName;
    let outcome: ReconcileResult['secret'] = 'unchanged';
    const ctx = (verb: string) => ({ verb, object: `Secret ${namespace}/${name}`, forbiddenHint: secretsHint(namespace) });
    let secret: V1Secret | undefined;
    let bundle: TlsBundle | undefined;
    const write = async (next: TlsBundle, annotations: Record<string, string | undefined>): Promise<boolean> => {
      const merged = { ...(secret?.metadata?.annotations ?? {}), ...annotations };
      for (const [k, v] of Object.entries(merged)) if (v === undefined) delete merged[k];
      const body: V1Secret = {
        apiVersion: 'v1',
        kind: 'Secret',
        type: 'kubernetes.io/tls',
        metadata: {
          ...(secret?.metadata ?? {}),
          name,
          namespace,
          labels: { ...(secret?.metadata?.labels ?? {}), 'app.kubernetes.io/managed-by': 'kstreams-operator' },
          annotations: merged as Record<string, string>,
        },
        data: bundleToSecretData(next),
      };
      try {
        if (secret) secret = await kubeCall(ctx('update'), () => this.opts.kube.request<V1Secret>('PUT', secretPath(namespace, name), { body }));
        else secret = await kubeCall(ctx('create'), () => this.opts.kube.request<V1Secret>('POST', secretPath(namespace), { body }));
        return true;
      } catch (e) {
        // Another replica created or rotated it first: adopt theirs on the next pass.
        if (isStatus(e, 409)) return false;
        // A Secret of another type cannot change type in place.
        if (secret && isStatus(e, 422)) {
          throw new Error(`Secret ${namespace}/${name} cannot be updated (${errMessage(e)}); delete it and the operator recreates it`);
        }
        throw e;
      }
    };
    for (let attempt = 0; ; attempt++) {
      if (attempt >= 5) throw new Error(`Secret ${namespace}/${name}: still conflicting after 5 attempts`);
      secret = undefined;
      try {
        secret = await kubeCall(ctx('get'), () => this.opts.kube.request<V1Secret>('GET', secretPath(namespace, name)));
      } catch (e) {
        if (!isStatus(e, 404)) throw e;
      }
      bundle = bundleFromSecretData(secret?.data);
      const nowMs = this.clock.now();
      const decision = decideRotation(bundle, { nowMs, rotateBeforeSeconds: this.tls.rotateBeforeSeconds, sans: this.sans });
      if (decision.action === 'none') break;
      const caCommonName = `kstreams-webhook-ca@${Math.floor(nowMs / 1000)}`;
      if (bundle && decision.action === 'new-ca' && decision.staged) {
        // A CA rotation in two stages, so that no replica ever serves a cert the apiserver does not trust yet:
        // 1. stage the next CA beside the current one (it joins the caBundle; the serving cert stays);
        // 2. once a caBundle with it was accepted and caPropagationSeconds passed, promote it and serve a
        //    cert it signed (the old CA stays trusted as previous).
        if (!bundle.nextCa) {
          const next = await stageNextCa(bundle, { nowMs, caValiditySeconds: this.tls.caValiditySeconds, caCommonName });
          if (!(await write(next, { [NEXT_CA_PUBLISHED_ANNOTATION]: undefined }))) {
            outcome = 'adopted-peer';
            continue;
          }
          bundle = next;
          outcome = 'staged-ca';
          this.log.info({ secret: `${namespace}/${name}`, why: decision.why, next: fingerprint(next.nextCa!.certPem) }, 'webhook TLS: next CA staged; it is published in the caBundle before anything it signs is served');
          break;
        }
        const publishedAt = nextCaPublishedAt(secret?.metadata?.annotations?.[NEXT_CA_PUBLISHED_ANNOTATION], bundle.nextCa);
        if (publishedAt === undefined || nowMs < publishedAt + this.tls.caPropagationSeconds * 1000) break; // not yet
        const next = await promoteNextCa(bundle as TlsBundle & { nextCa: CertKeyPem }, { nowMs, certValiditySeconds: this.tls.certValiditySeconds, sans: this.sans });
        if (!(await write(next, { [NEXT_CA_PUBLISHED_ANNOTATION]: undefined }))) {
          outcome = 'adopted-peer';
          continue;
        }
        bundle = next;
        outcome = 'rotated-ca';
        this.log.info({ secret: `${namespace}/${name}`, why: decision.why, publishedAt: new Date(publishedAt).toISOString() }, 'webhook TLS: next CA promoted; serving a certificate it signed');
        break;
      }
      const next = await rotateBundle(bundle, decision, {
        nowMs,
        caValiditySeconds: this.tls.caValiditySeconds,
        certValiditySeconds: this.tls.certValiditySeconds,
        sans: this.sans,
        caCommonName,
      });
      const existed = secret !== undefined;
      if (!(await write(next, { [NEXT_CA_PUBLISHED_ANNOTATION]: undefined }))) {
        outcome = 'adopted-peer';
        continue;
      }
      bundle = next;
      outcome = !existed ? 'created' : decision.action === 'new-ca' ? 'replaced-ca' : 'rotated-cert';
      this.log.info({ secret: `${namespace}/${name}`, why: decision.why, outcome }, 'webhook TLS: issued new certificate');
      break;
    }
    if (!bundle) throw new Error('unreachable: no bundle after reconcile');
    // The caBundle first, then the cert: a CA reaches the apiserver before anything it signed is served.
    const webhookConfiguration = await this.syncWebhookConfiguration(bundle);
    if (bundle.nextCa && (webhookConfiguration === 'updated' || webhookConfiguration === 'unchanged' || webhookConfiguration === 'created')) {
      await this.markPublished(bundle.nextCa, secret).catch((e) => this.log.warn({ err: errMessage(e) }, 'webhook TLS: could not record that the next CA is published; retrying at the next check'));
    }
    this.serve(bundle);
    this.scheduleCheck(bundle);
    const result: ReconcileResult & { resourceVersion?: string } = {
      secret: outcome,
      webhookConfiguration,
      servingFingerprint: fingerprint(bundle.serving.certPem),
    };
    if (this.lastSecretRv) result.resourceVersion = this.lastSecretRv;
    else if (secret?.metadata?.resourceVersion) result.resourceVersion = secret.metadata.resourceVersion;
    this.lastSecretRv = undefined;
    return result;
  }

  private lastSecretRv: string | undefined;

  /** Records on the Secret when a caBundle holding `nextCa` was accepted (once; the first record stands). */
  private async markPublished(nextCa: CertKeyPem, secret: V1Secret | undefined): Promise<void> {
    if (!secret?.metadata) return;
    const current = secret.metadata.annotations?.[NEXT_CA_PUBLISHED_ANNOTATION];
    if (nextCaPublishedAt(current, nextCa) !== undefined) return;
    const { namespace } = this.opts.config;
    const name = this.tls.secretName;
    const value = `${fingerprint(nextCa.certPem)}@${new Date(this.clock.now()).toISOString()}`;
    const body: V1Secret = { ...secret, metadata: { ...secret.metadata, annotations: { ...(secret.metadata.annotations ?? {}), [NEXT_CA_PUBLISHED_ANNOTATION]: value } } };
    try {
      const written = await kubeCall({ verb: 'update', object: `Secret ${namespace}/${name}`, forbiddenHint: secretsHint(namespace) }, () =>
        this.opts.kube.request<V1Secret>('PUT', secretPath(namespace, name), { body }),
      );
      this.lastSecretRv = written.metadata?.resourceVersion;
      this.log.info({ secret: `${namespace}/${name}`, at: value }, 'webhook TLS: next CA published in the caBundle');
    } catch (e) {
      if (isStatus(e, 409)) return; // changed meanwhile: the next reconcile looks again
      throw e;
    }
  }

  trustPem(): string | undefined {
    return this.trust;
  }

  private serve(bundle: TlsBundle): void {
    const trust = caBundlePem(bundle);
    const trustChanged = this.served !== undefined && this.trust !== trust;
    this.trust = trust;
    // The trust first: whoever hands it out (the webhook, to injected agents) has it before the new cert.
    if (trustChanged) for (const l of this.trustListeners) l(trust);
    if (this.served && this.served.certPem === bundle.serving.certPem && this.served.keyPem === bundle.serving.keyPem) return;
    const first = this.served === undefined;
    this.served = { ...bundle.serving };
    if (first) return;
    this.log.info({ fingerprint: fingerprint(bundle.serving.certPem) }, 'webhook TLS: serving a new certificate');
    for (const l of this.listeners) l(this.served);
  }

  private async syncWebhookConfiguration(bundle: TlsBundle): Promise<ReconcileResult['webhookConfiguration']> {
    if (!this.opts.config.manageWebhookConfiguration) return 'unmanaged';
    const pem = caBundlePem(bundle);
    try {
      const r = await ensureWebhookConfiguration(this.opts.kube, this.opts.config, pem);
      if (r !== 'unchanged') this.log.info({ name: this.opts.config.webhookConfigurationName, result: r }, 'webhook configuration written');
      return r;
    } catch (e) {
      // Serving goes on; the next check retries. Without RBAC for it, the chart must carry the caBundle.
      this.log.error({ err: errMessage(e) }, `cannot write MutatingWebhookConfiguration ${this.opts.config.webhookConfigurationName}`);
      return 'failed';
    }
  }

  private scheduleCheck(bundle: TlsBundle): void {
    if (this.stopped) return;
    if (this.timer !== undefined) this.timers.clearTimeout(this.timer);
    const nowMs = this.clock.now();
    const decision = decideRotation(bundle, { nowMs, rotateBeforeSeconds: this.tls.rotateBeforeSeconds, sans: this.sans });
    const resyncMs = this.tls.resyncSeconds * 1000;
    let untilRotation = decision.action === 'none' ? Math.max(0, decision.nextCheckAtMs - nowMs) : 0;
    if (bundle.nextCa) untilRotation = Math.max(0, this.tls.caPropagationSeconds * 1000 - 1000);
    const delay = Math.min(resyncMs, untilRotation + 1000, MAX_TIMER_MS);
    this.timer = this.timers.setTimeout(() => {
      this.timer = undefined;
      this.reconcile().catch((e) => {
        this.log.error({ err: errMessage(e) }, 'webhook TLS: periodic check failed; retrying at the next resync');
        if (this.served) this.timer = this.timers.setTimeout(() => void this.reconcile().catch(() => undefined), resyncMs);
      });
    }, delay);
  }

  /**
   * Watches the one Secret by name through the operator's watch layer (runtime/src/informer.ts: reconnects,
   * 410 Gone, bookmarks, idle timeout), its list being a get by name, which the Role grants. Every change the
   * last reconcile did not see itself (a peer's rotation, a deletion, an edit) triggers a reconcile, which
   * re-reads the Secret, serves it, repairs it when deleted, damaged or due, and syncs the caBundle, in turn.
   */
  private watch(): void {
    if (this.stopped) return;
    const { namespace } = this.opts.config;
    const name = this.tls.secretName;
    const object = `Secret ${namespace}/${name}`;
    const informer = new Informer<{ name: string; resourceVersion: string | undefined }>({
      name: `webhook TLS ${object}`,
      transport: this.opts.kube,
      path: secretPath(namespace),
      fieldSelector: `metadata.name=${name}`,
      list: async (signal) => {
        try {
          const s = await kubeCall({ verb: 'get', object, forbiddenHint: secretsHint(namespace) }, () => this.opts.kube.request<V1Secret>('GET', secretPath(namespace, name), { signal }));
          return { items: [s as Record<string, unknown>], resourceVersion: s.metadata?.resourceVersion };
        } catch (e) {
          if (isStatus(e, 404)) return { items: [] };
          throw e;
        }
      },
      transform: (raw) => {
        const meta = (raw as V1Secret).metadata;
        return { name: meta?.name ?? name, resourceVersion: meta?.resourceVersion };
      },
      key: (s) => s.name,
      equal: (a, b) => a.resourceVersion === b.resourceVersion,
      clock: runtimeClock,
      backoff: this.watchBackoff,
      resyncPeriodMs: this.tls.resyncSeconds * 1000,
      onLifecycle: (event, detail) => {
        if (event === InformerLifecycle.Listed || event === InformerLifecycle.WatchStarted || event === InformerLifecycle.ListStarted || event === InformerLifecycle.Resync) return;
        const err = detail.error === undefined ? undefined : errMessage(detail.error);
        if (event === InformerLifecycle.HandlerFailed) this.log.error({ err, handler: detail.handler }, 'webhook TLS: secret watch handler failed');
        else this.log.debug({ event, err, backoffMs: detail.delayMs }, 'webhook TLS: secret watch ended; re-reading and re-watching');
      },
    });
    const changed = (s: { resourceVersion: string | undefined } | undefined) => {
      if (this.stopped || (s?.resourceVersion !== undefined && s.resourceVersion === this.seenRv)) return;
      // Not applied here: the event for our own write can arrive while the reconcile that made it is still
      // running, and serving it or writing its caBundle from here raced that reconcile (two writers of the
      // MutatingWebhookConfiguration; an older bundle could land last). The reconcile reads it afresh, in turn.
      this.reconcile().catch((e) => this.log.error({ err: errMessage(e) }, 'webhook TLS: reconcile after a Secret event failed'));
    };
    informer.on({ add: changed, update: (_old, s) => changed(s), delete: () => changed(undefined) });
    this.informer = informer;
    informer.start();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer !== undefined) this.timers.clearTimeout(this.timer);
    await this.informer?.stop();
    await this.chain;
  }
}

/** cert-manager (or any tool) writes tls.crt/tls.key into a mounted Secret; re-read it periodically. */
export class MountedTls implements TlsSource {
  private listeners: Array<(pem: CertKeyPem) => void> = [];
  private trustListeners: Array<(caPem: string) => void> = [];
  private current: CertKeyPem | undefined;
  private ca: string | undefined;
  private timer: unknown;
  private stopped = false;

  constructor(
    private readonly opts: { tls: CertManagerTls; logger: Logger; timers?: Timers },
  ) {}

  onChange(listener: (pem: CertKeyPem) => void): void {
    this.listeners.push(listener);
  }

  trustPem(): string | undefined {
    return this.ca;
  }

  onTrustChange(listener: (caPem: string) => void): void {
    this.trustListeners.push(listener);
  }

  private async read(): Promise<CertKeyPem> {
    const { certDir, certFile, keyFile } = this.opts.tls;
    // cert-manager writes the issuing CA as ca.crt into the same Secret; agents of the feed trust it.
    const ca = await readFile(join(certDir, 'ca.crt'), 'utf8').catch(() => this.ca);
    const changed = this.current !== undefined && ca !== undefined && ca !== this.ca;
    this.ca = ca;
    if (changed) for (const l of this.trustListeners) l(ca);
    const [certPem, keyPem] = await Promise.all([readFile(join(certDir, certFile), 'utf8'), readFile(join(certDir, keyFile), 'utf8')]);
    return { certPem, keyPem };
  }

  async start(): Promise<CertKeyPem> {
    try {
      this.current = await this.read();
    } catch (e) {
      throw new Error(
        `webhook TLS (cert-manager mode): cannot read ${this.opts.tls.certFile}/${this.opts.tls.keyFile} in ${this.opts.tls.certDir}: ` +
          `${(e as Error).message}. Is the cert-manager Certificate's Secret mounted there?`,
      );
    }
    this.schedule();
    return this.current;
  }

  /** Re-reads the files now; returns true when they changed. */
  async reload(): Promise<boolean> {
    const next = await this.read();
    if (this.current && next.certPem === this.current.certPem && next.keyPem === this.current.keyPem) return false;
    this.current = next;
    for (const l of this.listeners) l(next);
    return true;
  }

  private schedule(): void {
    if (this.stopped) return;
    const timers = this.opts.timers ?? systemTimers;
    this.timer = timers.setTimeout(() => {
      this.reload()
        .catch((e) => this.opts.logger.warn({ err: (e as Error).message }, 'webhook TLS: cannot re-read mounted cert; keeping the old one'))
        .finally(() => this.schedule());
    }, this.opts.tls.reloadSeconds * 1000);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer !== undefined) (this.opts.timers ?? systemTimers).clearTimeout(this.timer);
  }
}
