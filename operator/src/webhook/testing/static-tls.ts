// A TlsSource over a cert minted in memory, for server tests that need no Kubernetes.
import { createCA, issueServingCert, type CertKeyPem } from '../certs.js';
import type { TlsSource } from '../tls-source.js';

export class StaticTls implements TlsSource {
  private listeners: Array<(pem: CertKeyPem) => void> = [];
  private trustListeners: Array<(caPem: string) => void> = [];
  constructor(
    public pem: CertKeyPem,
    public caPem: string,
  ) {}

  static async create(sans: string[] = ['127.0.0.1', 'localhost']): Promise<StaticTls> {
    const ca = await createCA({ commonName: 'test-ca', nowMs: Date.now(), validitySeconds: 3600 });
    const serving = await issueServingCert({ ca, sans, nowMs: Date.now(), validitySeconds: 3600 });
    return new StaticTls(serving, ca.certPem);
  }

  async start(): Promise<CertKeyPem> {
    return this.pem;
  }
  onChange(listener: (pem: CertKeyPem) => void): void {
    this.listeners.push(listener);
  }
  /** Serves a new cert, as a rotation would. */
  rotate(pem: CertKeyPem): void {
    this.pem = pem;
    for (const l of this.listeners) l(pem);
  }
  trustPem(): string {
    return this.caPem;
  }
  onTrustChange(listener: (caPem: string) => void): void {
    this.trustListeners.push(listener);
  }
  /** Changes the CA clients should trust, as a staged CA rotation would. */
  rotateTrust(caPem: string): void {
    this.caPem = caPem;
    for (const l of this.trustListeners) l(caPem);
  }
  async stop(): Promise<void> {}
}
